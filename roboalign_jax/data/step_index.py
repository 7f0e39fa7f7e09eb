"""The flat index of training steps over a dataset's episodes, built once and cached.

Building it reads every episode once: it standardises each (which validates actions, states and
the instruction) and checks every stored frame's size from its JPEG/PNG header, so bad records
are found before training starts. A bad episode raises a DataError naming dataset / episode /
step, or -- when skipping is allowed -- is left out of the index and counted, with a warning.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os

import numpy as np
from tqdm.auto import tqdm

from roboalign_jax.data import image_transforms
from roboalign_jax.data.errors import DataError, SkipCounter
from roboalign_jax.data.rlds_source import RLDSSource
from roboalign_jax.data.specs.common import StandardEpisode

INDEX_FILE = "step_index.json"
log = logging.getLogger(__name__)


@dataclasses.dataclass
class StepIndex:
  """episodes: int64 [E] usable episode ids; lengths: int64 [E] their standardised lengths;
  skipped: [{"episode": i, "reason": str}] for episodes left out; image_sizes: camera ->
  [[H, W, number of frames], ...] over the usable episodes, one entry per size found."""
  episodes: np.ndarray
  lengths: np.ndarray
  skipped: list[dict]
  source: str = "computed"  # or "cache"
  image_sizes: dict[str, list[list[int]]] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    self.episodes = np.asarray(self.episodes, np.int64)
    self.lengths = np.asarray(self.lengths, np.int64)
    self.offsets = np.concatenate([[0], np.cumsum(self.lengths)])

  @property
  def num_steps(self) -> int:
    return int(self.offsets[-1])

  def locate(self, step_ids) -> tuple[np.ndarray, np.ndarray]:
    """Flat step ids (int [N]) -> (episode ids [N], step within the standardised episode [N])."""
    step_ids = np.asarray(step_ids, np.int64)
    position = np.searchsorted(self.offsets, step_ids, side="right") - 1
    return self.episodes[position], step_ids - self.offsets[position]

  def to_json(self) -> dict:
    return {"episodes": self.episodes.tolist(), "lengths": self.lengths.tolist(), "skipped": self.skipped,
            "image_sizes": self.image_sizes}


def check_frames(episode: StandardEpisode, source: RLDSSource) -> dict[str, collections.Counter]:
  """Every frame is readable and of the dataset's declared camera shape (checked from the header;
  no pixel decoding). Returns each camera's frame count per size {camera: {(H, W): frames}}."""
  sizes = {}
  for camera, frames in episode.images.items():
    path, declared = source.spec.cameras[camera][0], source.camera_shapes[camera]
    sizes[camera] = collections.Counter()
    for t, data in enumerate(frames):
      try:
        found = image_transforms.frame_shape(data)
      except Exception as error:
        raise DataError(f"steps/{path} is not a readable image ({error})", dataset=source.name,
                        episode=episode.episode, step=int(episode.step_ids[t])) from error
      problem = image_transforms.shape_mismatch(found, declared)
      if problem:
        raise DataError(f"steps/{path} {problem}", dataset=source.name, episode=episode.episode,
                        step=int(episode.step_ids[t]))
      sizes[camera][found[:2]] += 1
  return sizes


def build_step_index(source: RLDSSource, *, skip_bad: bool = False, min_length: int = 1,
                     counter: SkipCounter | None = None, progress: bool = True) -> StepIndex:
  episodes, lengths, skipped = [], [], []
  frames_per_size = collections.defaultdict(collections.Counter)  # camera -> (H, W) -> frames
  counter = counter or SkipCounter()
  for index in tqdm(range(len(source)), desc=f"indexing {source.name}", disable=not progress, leave=False):
    try:
      episode = source.episode(index)
      sizes = check_frames(episode, source)
      if len(episode) < min_length:
        raise DataError(f"has {len(episode)} steps after cleaning; expected at least {min_length}",
                        dataset=source.name, episode=index)
    except DataError as error:
      if not skip_bad:
        raise
      counter.skip(error)
      skipped.append({"episode": index, "reason": str(error)})
      continue
    episodes.append(index)
    lengths.append(len(episode))
    for camera, counts in sizes.items():
      frames_per_size[camera].update(counts)
  if not episodes:
    raise DataError(f"no usable episodes out of {len(source)} ({len(skipped)} skipped)", dataset=source.name)
  image_sizes = {camera: [[h, w, n] for (h, w), n in sorted(counts.items())]
                 for camera, counts in sorted(frames_per_size.items())}
  for camera, entries in image_sizes.items():
    if len(entries) > 1:  # allowed: every frame is resized to the model input on its own
      log.warning("dataset %r: %s camera frames come in %d sizes (%s); each frame is resized to the model input",
                  source.name, camera, len(entries), ", ".join(f"{h}x{w}: {n}" for h, w, n in entries))
  return StepIndex(np.array(episodes), np.array(lengths), skipped, image_sizes=image_sizes)


def load_or_build(source: RLDSSource, cache_dir: str, *, skip_bad: bool = False,
                  counter: SkipCounter | None = None, progress: bool = True) -> StepIndex:
  """The cached index at `<cache_dir>/<fingerprint>/step_index.json`, built on first use.

  A cached index built with skipping is only reused when skipping is allowed now; its skipped
  episodes count again so the counter reflects the data in use.
  """
  path = os.path.join(cache_dir, source.fingerprint(), INDEX_FILE)
  cached = None
  if os.path.isfile(path):
    with open(path) as f:
      cached = json.load(f)
    if "image_sizes" not in cached:
      cached = None  # written before frame sizes were recorded: rebuild
  if cached is not None:
    if cached["skipped"] and not skip_bad:
      first = cached["skipped"][0]["reason"]
      raise DataError(f"{len(cached['skipped'])} bad episodes (first: {first}); set skip_bad_records to "
                      "train without them", dataset=source.name)
    if cached["skipped"]:
      log.warning("%s: %d bad episodes left out (from the cached index)", source.name, len(cached["skipped"]))
      if counter is not None:
        counter.counts[source.name] += len(cached["skipped"])
    return StepIndex(cached["episodes"], cached["lengths"], cached["skipped"], source="cache",
                     image_sizes=cached["image_sizes"])
  index = build_step_index(source, skip_bad=skip_bad, counter=counter, progress=progress)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(index.to_json(), f)
  os.replace(tmp, path)  # atomic: concurrent processes never read a half-written index
  return index
