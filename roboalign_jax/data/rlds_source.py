"""Random access to the episodes of a TFDS RLDS dataset without TensorFlow.

Reads `tfds.builder_from_directory(dir).as_data_source(split)` (ArrayRecord shards); steps are
decoded lazily by TFDS with image decoding skipped, so an episode costs one record read plus the
non-image fields, and only the frames a sample uses are ever decoded (with Pillow).

    source = RLDSSource("/data/libero_spatial_no_noops/1.0.0", get_spec("libero"))
    episode = source.episode(3)       # StandardEpisode (cleaned, common gripper convention)
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import threading
from typing import Any

import numpy as np

from roboalign_jax.data.errors import DataError
from roboalign_jax.data.specs.common import DatasetSpec, RawEpisode, StandardEpisode

log = logging.getLogger(__name__)
_WARNED_SIZES: set[tuple[str, str]] = set()
_OPEN_LOCK = threading.Lock()  # see RLDSSource._data_source


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, dict):
    out = {}
    for key, value in tree.items():
      out.update(_flatten(value, f"{prefix}{key}/"))
    return out
  return {prefix[:-1]: tree}


def _feature_paths(features) -> dict[str, Any]:
  """steps/... feature connectors by step path ("observation/state" -> Tensor)."""
  import tensorflow_datasets as tfds  # lazy: heavy, needed only for its builder and feature classes
  steps = features["steps"] if "steps" in features else None
  if steps is None:
    return {}

  def walk(feature, prefix):
    if isinstance(feature, tfds.features.FeaturesDict):
      out = {}
      for key, sub in feature.items():
        out.update(walk(sub, f"{prefix}{key}/"))
      return out
    return {prefix[:-1]: feature}
  return walk(steps.feature, "")


class RLDSSource:
  """Episodes of one split of one RLDS dataset directory, standardised by `spec`.

  Picklable (for Grain worker processes): the TFDS data source is reopened in each process.
  Keeps the last `cache_episodes` standardised episodes (encoded frames included), since
  consecutive samples usually come from a small set of episodes (see `ordering.py`).
  """

  def __init__(self, path: str, spec: DatasetSpec, *, split: str = "train", name: str | None = None,
               cache_episodes: int = 32):
    self.path = os.path.abspath(os.path.expanduser(path))
    self.spec = spec
    self.split = split
    self.name = name or spec.name
    self.cache_episodes = cache_episodes
    if not os.path.isfile(os.path.join(self.path, "dataset_info.json")):
      raise DataError(f"no dataset_info.json in {self.path}; expected a TFDS dataset version directory "
                      f"(<data_dir>/{spec.builder_name}/<version>) in the {spec.name} layout", dataset=self.name)
    self._source = None
    self._cache: collections.OrderedDict[int, StandardEpisode] = collections.OrderedDict()
    self._check_features()
    self._length = len(self._data_source())

  def _builder(self):
    import tensorflow_datasets as tfds  # lazy: heavy, needed only for its builder and feature classes
    return tfds.builder_from_directory(self.path)

  def _check_features(self) -> None:
    """The dataset's features must have the spec's required step fields and uint8 [H, W, 3] cameras.

    A camera may be an encoded Image or a raw uint8 Tensor, at any size: the size it declares is
    kept in `camera_shapes` (None for a size that varies per frame) and a size other than the
    published one is logged once.
    """
    builder = self._builder()
    if self.split not in builder.info.splits:
      raise DataError(f"has no split {self.split!r}; available: {sorted(builder.info.splits)}", dataset=self.name)
    paths = _feature_paths(builder.info.features)
    missing = [p for p in self.spec.required if p not in paths]
    if missing:
      raise DataError(f"features lack {['steps/' + p for p in missing]}; expected the {self.spec.name} layout "
                      f"with {['steps/' + p for p in self.spec.required]}", dataset=self.name)
    self._image_paths = [p for p, f in paths.items() if type(f).__name__ == "Image"]
    self._raw_camera_paths = []
    self.camera_shapes: dict[str, tuple[int | None, ...]] = {}
    for camera, (path, published) in self.spec.cameras.items():
      if path not in paths:
        continue
      feature = paths[path]
      kind = type(feature).__name__
      shape, dtype = tuple(feature.shape), np.dtype(feature.np_dtype)
      if kind not in ("Image", "Tensor") or dtype != np.uint8 or len(shape) != 3 or shape[-1] != 3:
        raise DataError(f"steps/{path} ({camera} camera) is a {kind} of {dtype.name} {shape}; expected uint8 "
                        f"[H, W, 3] images (encoded or raw), published as {tuple(published)}", dataset=self.name)
      if kind == "Tensor":
        self._raw_camera_paths.append(path)
      self.camera_shapes[camera] = shape
      if shape != tuple(published) and (self.path, path) not in _WARNED_SIZES:
        _WARNED_SIZES.add((self.path, path))  # once per process, not at every reopen
        log.warning("dataset %r: steps/%s (%s camera) is %s%s, not %s as published for %s; reading it as is "
                    "(frames are resized to the model input)", self.name, path, camera, shape,
                    " (any size)" if None in shape else "", tuple(published), self.spec.name)
  def _data_source(self):
    if self._source is None:
      # One reader thread opens it; the others wait. In a fresh Grain worker two threads resolving
      # tfds' lazy (etils) imports at once deadlock on Python 3.11: one holds functools.cached_property's
      # lock and waits for the import lock, the other the reverse (the worker then never answers).
      with _OPEN_LOCK:
        if self._source is None:
          import tensorflow_datasets as tfds  # lazy: heavy, needed only for its builder and feature classes
          skip = {}
          for path in getattr(self, "_image_paths", []):
            node = skip
            parts = path.split("/")
            for part in parts[:-1]:
              node = node.setdefault(part, {})
            node[parts[-1]] = tfds.decode.SkipDecoding()
          self._source = self._builder().as_data_source(self.split, decoders={"steps": skip} if skip else None)
    return self._source

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_source"] = None
    state["_cache"] = collections.OrderedDict()
    return state

  def __len__(self) -> int:
    return self._length

  def fingerprint(self) -> str:
    """Content hash of the split: dataset_info's split record, the layout and the first/last records.

    Moving the directory keeps it; rewriting the data or changing the standardisation changes it.
    """
    import tensorflow_datasets as tfds  # lazy: heavy, needed only for its builder and feature classes
    with open(os.path.join(self.path, "dataset_info.json")) as f:
      info = json.load(f)
    split_info = [s for s in info.get("splits", []) if s.get("name") == self.split]
    digest = hashlib.sha256(json.dumps(
        {"name": info.get("name"), "version": info.get("version"), "split": split_info,
         "spec": self.spec.name, "spec_version": self.spec.version}, sort_keys=True).encode())
    raw = self._builder().as_data_source(self.split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
    for i in sorted({0, len(raw) - 1}):
      digest.update(hashlib.sha256(raw[i]).digest())
    return digest.hexdigest()[:16]

  def raw_episode(self, index: int) -> RawEpisode:
    """Episode `index` as stored (images still encoded). Raises DataError on an unreadable record."""
    if not 0 <= index < self._length:
      raise IndexError(f"episode {index} out of range for {self.name} ({self._length} episodes)")
    try:
      record = self._data_source()[index]
      steps = record["steps"]
      rows = [_flatten(steps[t]) for t in range(len(steps))]
    except Exception as error:  # protobuf / ArrayRecord errors have no common base class
      raise DataError(f"record could not be read or parsed ({type(error).__name__}: {error}); expected a "
                      f"serialized {self.spec.name} episode", dataset=self.name, episode=index) from error
    if not rows:
      raise DataError("episode has no steps", dataset=self.name, episode=index)
    images = {p: [row[p] for row in rows] for p in self._image_paths + self._raw_camera_paths if p in rows[0]}
    fields = {}
    for key in rows[0]:
      if key in images:
        continue
      values = [row[key] for row in rows]
      fields[key] = (np.array(values, dtype=object) if isinstance(values[0], (bytes, str))
                     else np.stack([np.asarray(v) for v in values]))
    metadata = _flatten(record.get("episode_metadata", {})) if isinstance(record, dict) else {}
    return RawEpisode(dataset=self.name, index=index, fields=fields, images=images, metadata=metadata)

  def episode(self, index: int) -> StandardEpisode:
    """Episode `index` standardised into the common format (cached)."""
    if index in self._cache:
      self._cache.move_to_end(index)
      return self._cache[index]
    raw = self.raw_episode(index)
    try:
      episode = self.spec.standardize(raw)
    except KeyError as error:
      raise DataError(f"step field {error} is missing; expected {list(self.spec.required)}",
                      dataset=self.name, episode=index) from error
    if episode.states.ndim != 2 or episode.states.shape[1] != self.spec.state_dim:
      raise DataError(f"state is {episode.states.shape[1:]} per step; expected ({self.spec.state_dim},) as published "
                      f"for {self.spec.name}", dataset=self.name, episode=index)
    episode.dataset = self.name
    self._cache[index] = episode
    while len(self._cache) > self.cache_episodes:
      self._cache.popitem(last=False)
    return episode
