"""`make_dataset(config.data, split)`: RLDS datasets -> Grain -> this process's batches.

    index -> order (seeded, per epoch) -> mix (weights) -> batch of global positions
      -> this process's rows -> read + standardise + chunk + normalise + images -> sample builder
      -> collate -> [worker processes, watched: workers.py] -> iterator (its state goes into checkpoints)

Process p of P takes rows [p*b, (p+1)*b) of every global batch (b = global / P), so the global
order is the same for any number of processes and `jax.make_array_from_process_local_data`
assembles the global batch. Everything random is a function of (seed, global position): the
order, the mixture and the augmentation; a restored iterator continues exactly.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import grain
import jax
from absl import flags
import ml_collections
import numpy as np

from roboalign_jax.data import (chunking, image_transforms, mixture, normalization, samples, step_index, transforms,
                                workers)
from roboalign_jax.data.conversations import ConversationSource
from roboalign_jax.data.errors import SkipCounter
from roboalign_jax.data.ordering import StepOrder
from roboalign_jax.data.rlds_source import RLDSSource
from roboalign_jax.data.specs import get_spec

EPOCHS = 10**6  # "forever" for training; Grain's mix needs finite parents
DEFAULT_WORKER_TIMEOUT_S = 600.0  # for configs made before data_config had worker_timeout_s


def default_cache_dir() -> str:
  return os.path.join(os.path.expanduser("~"), ".cache", "roboalign_jax", "data")


@dataclasses.dataclass
class DatasetHandle:
  """One opened dataset of a mixture with its index and statistics."""
  name: str
  source: RLDSSource
  index: step_index.StepIndex
  statistics: normalization.DatasetStatistics
  weight: float


def open_datasets(data: ml_collections.ConfigDict, split: str = "train",
                  counter: SkipCounter | None = None) -> list[DatasetHandle]:
  """Opens every dataset of `data.datasets`, building (or loading) index and statistics."""
  if not data.datasets and not data.get("conversations"):
    raise ValueError("config.data.datasets is empty; expected entries like "
                     "{'spec': 'libero', 'path': '/data/libero_spatial_no_noops/1.0.0', 'weight': 1.0}")
  cache_dir = data.cache_dir or default_cache_dir()
  handles = []
  for entry in data.datasets:
    entry = dict(entry)
    for key in ("spec", "path"):
      if not entry.get(key):
        raise ValueError(f"config.data.datasets entry {entry} has no {key!r}")
    spec = get_spec(entry["spec"])
    name = entry.get("name") or spec.name
    source = RLDSSource(entry["path"], spec, split=split, name=name, cache_episodes=data.cache_episodes)
    index = step_index.load_or_build(source, cache_dir, skip_bad=data.skip_bad_records, counter=counter,
                                     progress=data.progress)
    stats = normalization.load_or_compute(source, index, cache_dir, progress=data.progress)
    handles.append(DatasetHandle(name, source, index, stats, float(entry.get("weight", 1.0))))
  return handles


def open_heldout_datasets(data: ml_collections.ConfigDict, train_handles=(), split: str = "train",
                          counter: SkipCounter | None = None) -> list[DatasetHandle]:
  """`open_datasets` for held-out data: a dataset named like one of `train_handles` (held-out
  episodes of a training dataset) takes that dataset's normalisation statistics, so its actions
  and FAST targets are normalised as the model's training targets were."""
  trained: dict[str, normalization.DatasetStatistics] = {}
  for handle in train_handles:
    trained.setdefault(handle.name, handle.statistics)
  handles = open_datasets(data, split, counter)
  for handle in handles:
    handle.statistics = trained.get(handle.name, handle.statistics)
  return handles


class StepReader:
  """(dataset id, flat step id, global position) -> one example in the common format.

  Example (S = max native state width over the mixture, V = len(cameras), h = history):
    images           uint8 [V, h, H, W, 3]   (zeros for a camera the dataset lacks)
    image_mask       bool [V]
    state            float32 [h, S]  normalised, zero-padded;  state_mask bool [S]
    observation_mask bool [h]        False for history steps before the episode start
    actions          float32 [horizon, 7]  normalised (gripper as is: +1 close, -1 open)
    action_mask      bool [horizon]  False past the episode end
    instruction      str;  dataset_id, episode, step  int32
  Images, state and actions go through each dataset's `transforms.LayoutTransforms`, the ones a
  policy serving this model applies to live observations; training views of third-person cameras
  are augmented (crop, rotation, colour) instead of only resized.
  """

  def __init__(self, handles: list[DatasetHandle], data: ml_collections.ConfigDict, *, train: bool):
    self.sources = [h.source for h in handles]
    self.indices = [h.index for h in handles]
    self.cameras = tuple(data.cameras)
    self.size = tuple(data.image_size)
    self.horizon = int(data.action_horizon)
    self.history = int(data.history)
    self.augment = bool(data.augment and train)
    self.seed = int(data.seed)
    self.state_dim = max(h.source.spec.state_dim for h in handles)
    self.layouts = [layout_transforms(data, h, self.state_dim) for h in handles]
    self.augmentation = image_transforms.Augmentation()

  def __call__(self, dataset_id: int, step_id: int, position: int) -> dict[str, Any]:
    source, layout = self.sources[dataset_id], self.layouts[dataset_id]
    episode_ids, steps = self.indices[dataset_id].locate([step_id])
    episode = source.episode(int(episode_ids[0]))
    t = int(steps[0])
    rng = np.random.default_rng([self.seed, int(position)])
    frames, frame_mask = chunking.history_steps(t, self.history)
    images = np.zeros((len(self.cameras), self.history, *self.size, 3), np.uint8)
    image_mask = np.zeros(len(self.cameras), bool)
    for v, camera in enumerate(self.cameras):
      if camera not in episode.images:
        continue
      image_mask[v] = True
      path, shape = source.spec.cameras[camera][0], source.camera_shapes[camera]
      for k, f in enumerate(frames):
        image = image_transforms.decode(episode.images[camera][f], shape, dataset=source.name,
                                        episode=episode.episode, step=int(episode.step_ids[f]), path=path)
        if self.augment and camera != "wrist":
          images[v, k] = image_transforms.augment(image, self.size, rng, self.augmentation)
        else:
          images[v, k] = layout.images.resize(image)
    native = source.spec.state_dim
    state = layout.state({"state": episode.states[frames]})["state"]
    state_mask = np.arange(self.state_dim) < native
    actions, action_mask = chunking.action_chunk(episode.actions, t, self.horizon)
    return {
        "images": images, "image_mask": image_mask, "state": state, "state_mask": state_mask,
        "observation_mask": frame_mask, "actions": layout.actions({"actions": actions})["actions"],
        "action_mask": action_mask, "instruction": episode.instruction, "dataset_id": np.int32(dataset_id),
        "episode": np.int32(episode.episode), "step": np.int32(episode.step_ids[t]),
    }


def layout_transforms(data: ml_collections.ConfigDict, handle: DatasetHandle,
                      state_width: int | None = None) -> transforms.LayoutTransforms:
  """The transforms of `handle`'s layout for `data`'s image size and cameras, with its statistics."""
  spec = handle.source.spec
  return transforms.layout_transforms(spec, handle.statistics, image_size=data.image_size,
                                      cameras=[c for c in data.cameras if c in spec.cameras],
                                      state_width=state_width)


def _positions(handles: list[DatasetHandle], data: ml_collections.ConfigDict, train: bool,
               conversations: list | None = None) -> grain.MapDataset:
  """(dataset id, flat step id) per position of the (mixed, ordered) stream.

  Conversation sources follow the robot datasets: id len(handles) + k, "step" = record index.
  """
  conversations = conversations or []
  parents, weights, names = [], [h.weight for h in handles], [h.name for h in handles]
  for dataset_id, handle in enumerate(handles):
    order = StepOrder(handle.index, seed=data.seed + 7919 * dataset_id, shuffle=train,
                      block_episodes=data.shuffle_block_episodes)
    length = handle.index.num_steps * (EPOCHS if train else 1)
    parents.append(grain.MapDataset.range(length).map(lambda p, order=order, d=dataset_id: (d, order(p))))
  for k, (source, weight) in enumerate(conversations):
    dataset_id = len(handles) + k
    records = step_index.StepIndex(np.arange(len(source)), np.ones(len(source)), [])
    order = StepOrder(records, seed=data.seed + 7919 * dataset_id, shuffle=train, block_episodes=0)
    length = len(source) * (EPOCHS if train else 1)
    parents.append(grain.MapDataset.range(length).map(lambda p, order=order, d=dataset_id: (d, order(p))))
    weights.append(weight)
    names.append(source.name)
  if not train:
    return grain.MapDataset.concatenate(parents) if len(parents) > 1 else parents[0]
  return mixture.mix(parents, weights, names)


def make_examples(data: ml_collections.ConfigDict, split: str = "train", *,
                  handles: list[DatasetHandle] | None = None) -> grain.MapDataset:
  """All examples (common format) of the stream in global order, unbatched and unsharded."""
  train = split == "train"
  handles = handles or open_datasets(data, split)
  reader = StepReader(handles, data, train=train)
  return _positions(handles, data, train).map_with_index(lambda p, item: reader(item[0], item[1], p))


def make_dataset(data: ml_collections.ConfigDict, split: str = "train", *, process_index: int | None = None,
                 process_count: int | None = None, handles: list[DatasetHandle] | None = None,
                 read: Callable[[int, int], dict] | None = None,
                 collate_fn: Callable[[list[dict]], dict] | None = None) -> grain.IterDataset:
  """This process's batches of `data.sample` samples (see samples.py), as a Grain IterDataset.

  Training streams repeat forever in a seeded order; other splits are one ordered pass (the last
  incomplete global batch is dropped). Batches are dicts of arrays (strings as lists).
  `read(dataset id, flat step id) -> sample` and `collate_fn` replace the step reader and sample
  builder while keeping the order, mixture, sharding and checkpointable position (Stage 3 reads
  cached backbone features this way).
  """
  train = split == "train"
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  global_batch = int(data.global_batch_size)
  if global_batch <= 0 or global_batch % process_count:
    raise ValueError(f"config.data.global_batch_size={global_batch} must be a positive multiple of the "
                     f"{process_count} processes")
  local = global_batch // process_count
  handles = handles if handles is not None else (open_datasets(data, split) if data.datasets else [])
  reader = StepReader(handles, data, train=train) if handles and read is None else None
  builder = samples.make_builder(data) if read is None else None
  conversations = _conversation_sources(data) if read is None else []
  if conversations and (data.sample != "fast_sft" or builder.tokenizing is None):
    raise ValueError("config.data.conversations are mixed in as tokenised SFT samples; set "
                     "config.data.sample='fast_sft' and config.data.processor_dir")
  positions = _positions(handles, data, train, conversations).map_with_index(lambda p, item: (item[0], item[1], p))
  rows = positions.batch(global_batch, drop_remainder=True)
  start = process_index * local

  def example(d: int, s: int, p: int) -> dict:
    if d >= len(handles):
      source = conversations[d - len(handles)][0]
      record = source[s]
      return {"messages": record["messages"], "source": source.name,
              **builder.tokenizing.conversation(record["messages"], record["images"])}
    if read is not None:
      return read(d, s)
    return {**builder(reader(d, s, p)), "source": handles[d].name}

  collate_batch = collate_fn or builder.collate

  def build(batch):
    dataset_ids, step_ids, where = (np.asarray(x)[start:start + local] for x in batch)
    return collate_batch([example(int(d), int(s), int(p)) for d, s, p in zip(dataset_ids, step_ids, where)])

  # A few threads suffice (decoding releases the GIL); Grain's default of 16 threads and 500
  # batches of read-ahead would build hundreds of batches up front.
  read_options = grain.ReadOptions(num_threads=data.num_threads, prefetch_buffer_size=data.prefetch_buffer)
  stream = rows.map(build).to_iter_dataset(read_options)
  if data.num_workers > 0:
    if not flags.FLAGS.is_parsed():
      # Grain's worker pool reads its absl flags; outside an absl app (tests, notebooks) they
      # would be unparsed, so use their defaults.
      flags.FLAGS.mark_as_parsed()
    stream = stream.mp_prefetch(grain.MultiprocessingOptions(num_workers=data.num_workers,
                                                             per_worker_buffer_size=data.prefetch_buffer))
    # Unlinks each batch's shared memory on arrival and raises (naming the worker) on a dead or
    # stalled worker instead of waiting forever; see workers.py.
    stream = workers.watch_workers(stream, num_workers=data.num_workers,
                                   timeout_s=data.get("worker_timeout_s", DEFAULT_WORKER_TIMEOUT_S))
  return stream


def _conversation_sources(data: ml_collections.ConfigDict) -> list:
  """(ConversationSource, weight) for each entry of `data.conversations` ({path, weight, image_root})."""
  out = []
  for entry in data.get("conversations") or []:
    entry = dict(entry)
    if not entry.get("path"):
      raise ValueError(f"config.data.conversations entry {entry} has no 'path'")
    source = ConversationSource(entry["path"], entry.get("image_root") or None, entry.get("name") or None)
    out.append((source, float(entry.get("weight", 1.0))))
  return out


def dataset_statistics(handles: list[DatasetHandle]) -> dict[str, Any]:
  """JSON statistics of each dataset, for checkpoint metadata (`unnormalize` at inference)."""
  return {h.name: h.statistics.to_json() for h in handles}


def action_chunks(handles: list[DatasetHandle], horizon: int) -> np.ndarray:
  """Every step's normalised action chunk (padding repeats the last action): float32 [N, horizon, 7].

  What a FAST tokenizer is fitted on (`FASTTokenizer.fit(action_chunks(handles, H))`).
  """
  chunks = []
  for handle in handles:
    normalize = transforms.action_normalizer(handle.statistics.action)
    for episode_id in handle.index.episodes:
      episode = handle.source.episode(int(episode_id))
      normed = normalize({"actions": episode.actions})["actions"]
      chunks.extend(chunking.action_chunk(normed, t, horizon)[0] for t in range(len(normed)))
  return np.stack(chunks).astype(np.float32)
