"""The representation probe of RoboAlign B.1 / Table 9: how well a backbone's hidden state of
(image, instruction) tells where in a task the robot is.

N demonstrations of one task are read from an RLDS dataset; every timestep gets one of C phase
classes by dynamic time warping over the robot states (`phase_labels`); a k-nearest-neighbour
classifier over the backbone's pooled layer-L features (`backbone_features`) predicts the class of
held-out timesteps (`knn_predict`, `evaluate`). The paper (Qwen3-VL-8B, 20 trajectories of one
LIBERO-Long task, 32 classes, k = 5) reports 39.06 (base) -> 43.23 (SFT) -> 69.79 (SFT+RL).

The paper leaves the rest unstated; these are `ProbeConfig` fields with our defaults:
  labelling  the medoid demonstration (least total DTW distance to the others) is cut into 32
             equal-duration phases; every timestep of every demonstration takes the phase of the
             reference step DTW aligns it with (the middle one when it aligns with several).
             States are z-scored per dimension first so no state unit dominates the distance.
  features   hidden states after the Stage 3 feature layer (`backbone.paper_feature_layer`), of
             Stage 3's own prompt (`data.samples.vla_messages`, primary camera), mean-pooled over
             the image and user-text tokens.
  split      the last 4 of the 20 demonstrations are held out; 6 of their timesteps per class are
             drawn (seeded) as test points -> 32 x 6 = 192, the denominator all three paper figures
             share; every timestep of the other 16 is a neighbour candidate. Timesteps of one
             demonstration never serve as each other's neighbours (adjacent frames are near copies,
             so that would measure memory, not representation).
  distance   cosine; ties in the vote go to the tied class whose nearest member is closest.

    config = ProbeConfig(instruction="put the white mug on the left plate and put ...")
    probe = load_trajectories(rlds_dir, "libero", config)
    result = run(backbone, backbone.params, probe, config)    # ProbeResult(accuracy=..., ...)
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from dtaidistance import dtw_ndim

from roboalign_jax.data import image_transforms
from roboalign_jax.data.rlds_source import RLDSSource
from roboalign_jax.data.samples import Tokenizing, user_text, vla_messages
from roboalign_jax.data.specs import get_spec
from roboalign_jax.models import backbone as backbone_lib
from roboalign_jax.policies.vla_policy import frame_patches_of

POOLINGS = ("image_instruction", "last", "all")
DISTANCES = ("cosine", "euclidean")
SPLITS = ("heldout_trajectories", "leave_one_trajectory_out")
REFERENCES = ("medoid", "first")
MATCHES = ("exact", "substring")
PAPER_INSTRUCTION = ("put the white mug on the left plate and put the yellow and white mug on the right plate")


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
  """What the probe reads and how it scores (defaults: see the module docstring)."""
  instruction: str = PAPER_INSTRUCTION
  match: str = "exact"               # "exact" (case, spaces and a final period ignored) or "substring"
  num_trajectories: int = 20
  num_classes: int = 32
  reference: str = "medoid"          # the demonstration whose equal-duration phases define the classes
  standardize_states: bool = True
  layer: int = 0                     # 0 = the Stage 3 feature layer of the backbone
  pooling: str = "image_instruction"  # mean over image + user-text tokens | "last" token | "all" real tokens
  cameras: tuple[str, ...] = ("primary",)
  k: int = 5
  distance: str = "cosine"
  split: str = "heldout_trajectories"
  test_trajectories: int = 4         # held out by "heldout_trajectories" (the last ones read)
  test_per_class: int = 6            # test timesteps drawn per class (all of a class if fewer; 0 = every one)
  batch_size: int = 8
  seed: int = 0

  def check(self) -> None:
    """Raises ValueError naming the field and what was expected."""
    for name, value, allowed in (("pooling", self.pooling, POOLINGS), ("distance", self.distance, DISTANCES),
                                 ("split", self.split, SPLITS), ("reference", self.reference, REFERENCES),
                                 ("match", self.match, MATCHES)):
      if value not in allowed:
        raise ValueError(f"knn probe {name}={value!r}; expected one of {list(allowed)}")
    for name in ("num_trajectories", "num_classes", "k", "batch_size"):
      if getattr(self, name) < 1:
        raise ValueError(f"knn probe {name}={getattr(self, name)}; expected >= 1")
    if self.split == "heldout_trajectories" and not 1 <= self.test_trajectories < self.num_trajectories:
      raise ValueError(f"knn probe test_trajectories={self.test_trajectories}; expected 1..num_trajectories-1 = "
                       f"{self.num_trajectories - 1} (some demonstrations must remain as neighbours)")
    if self.match == "exact" and not self.instruction.strip():
      raise ValueError("knn probe instruction is empty; expected the task's instruction (or match='substring')")

  @classmethod
  def from_options(cls, options: Any) -> "ProbeConfig":
    """From a mapping / ConfigDict holding any of the fields (others are ignored)."""
    options = options.to_dict() if isinstance(options, ml_collections.ConfigDict) else dict(options)
    fields = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in options.items() if k in fields}
    if "cameras" in values:
      values["cameras"] = tuple(values["cameras"])
    return cls(**values)


@dataclasses.dataclass
class Trajectory:
  """One demonstration: states float32 [T, S] and its encoded frames per camera (decoded only for
  the timesteps the probe uses: 20 LIBERO demonstrations decoded whole would take gigabytes)."""
  dataset: str
  episode: int
  instruction: str
  states: np.ndarray
  frames: dict[str, list[Any]]
  frame_specs: dict[str, tuple[str, tuple]]  # camera -> (step path, declared shape), for decode errors

  def __len__(self) -> int:
    return len(self.states)

  def image(self, camera: str, t: int) -> np.ndarray:
    """uint8 [H, W, 3] frame of `camera` at timestep t."""
    path, shape = self.frame_specs[camera]
    return np.asarray(image_transforms.decode(self.frames[camera][t], shape, dataset=self.dataset,
                                              episode=self.episode, step=t, path=path))


@dataclasses.dataclass
class ProbeData:
  """The demonstrations and their phase labels (int [T_i] each)."""
  source: str
  trajectories: list[Trajectory]
  labels: list[np.ndarray]


@dataclasses.dataclass
class ProbeResult:
  """accuracy = correct / tested; per-class int [C] counts of correct and tested timesteps; the
  decoder layer the features came from."""
  accuracy: float
  num_test: int
  num_train: int
  per_class_correct: np.ndarray
  per_class_total: np.ndarray
  layer: int = 0

  def as_dict(self) -> dict[str, Any]:
    return {"accuracy": self.accuracy, "num_test": self.num_test, "num_train": self.num_train, "layer": self.layer,
            "per_class_correct": self.per_class_correct.tolist(), "per_class_total": self.per_class_total.tolist()}


# ---- labels ---------------------------------------------------------------------------------------
def _standardize(states: Sequence[np.ndarray]) -> list[np.ndarray]:
  stacked = np.concatenate(states).astype(np.float64)
  mean, std = stacked.mean(0), stacked.std(0)
  std = np.where(std > 1e-8, std, 1.0)  # constant dimensions carry no timing information
  return [(np.asarray(s, np.float64) - mean) / std for s in states]


def reference_index(states: Sequence[np.ndarray], rule: str) -> int:
  """Which demonstration defines the phases: 0 ("first") or the DTW medoid (first on ties)."""
  if rule == "first" or len(states) == 1:
    return 0
  if rule != "medoid":
    raise ValueError(f"knn probe reference={rule!r}; expected one of {list(REFERENCES)}")
  n = len(states)
  distances = np.zeros((n, n))
  for i in range(n):
    for j in range(i + 1, n):
      distances[i, j] = distances[j, i] = dtw_ndim.distance(states[i], states[j], use_c=True)
  return int(np.argmin(distances.sum(1)))


def phase_labels(states: Sequence[np.ndarray], num_classes: int = 32, *, reference: str = "medoid",
                 standardize: bool = True) -> list[np.ndarray]:
  """Phase class int [T_i] in [0, num_classes) of every timestep of every state sequence float [T_i, S].

  The reference sequence (length R) is cut into `num_classes` equal-duration phases (step j has
  phase floor(j * C / R)); a timestep of any sequence takes the phase of the reference step the
  DTW path aligns it with, the middle one ((first + last) // 2) when it aligns with several.
  """
  states = [np.asarray(s, np.float64).reshape(len(s), -1) for s in states]
  if not states:
    raise ValueError("phase_labels got no state sequences; expected at least one float [T, S] array")
  if standardize:
    states = _standardize(states)
  ref = states[reference_index(states, reference)]
  ref_len = len(ref)
  if ref_len < num_classes:
    raise ValueError(f"the reference demonstration has {ref_len} steps; expected at least num_classes={num_classes} "
                     "so every phase holds a step")
  ref_phase = (np.arange(ref_len) * num_classes) // ref_len
  labels = []
  for seq in states:
    path = np.asarray(dtw_ndim.warping_path(seq, ref, use_c=True))  # (i in seq, j in ref) pairs
    first = np.full(len(seq), ref_len, np.int64)
    last = np.full(len(seq), -1, np.int64)
    np.minimum.at(first, path[:, 0], path[:, 1])
    np.maximum.at(last, path[:, 0], path[:, 1])
    labels.append(ref_phase[(first + last) // 2].astype(np.int32))
  return labels


# ---- k-NN -----------------------------------------------------------------------------------------
def knn_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, *, k: int = 5,
                distance: str = "cosine", num_classes: int | None = None, train_groups: np.ndarray | None = None,
                test_groups: np.ndarray | None = None, chunk: int = 1024) -> np.ndarray:
  """Majority vote of the k nearest training rows: int [M] predictions for test_x float [M, D].

  train_x float [N, D], train_y int [N]. Rows of the same group (a demonstration's id) are never
  neighbours of each other when groups are given. A tied vote goes to the tied class whose nearest
  member among the k is closest.
  """
  if distance not in DISTANCES:
    raise ValueError(f"knn distance={distance!r}; expected one of {list(DISTANCES)}")
  train_x, test_x = np.asarray(train_x, np.float64), np.asarray(test_x, np.float64)
  train_y = np.asarray(train_y)
  if len(train_x) < k:
    raise ValueError(f"knn has {len(train_x)} training rows; expected at least k={k}")
  num_classes = int(num_classes or train_y.max() + 1)
  if distance == "cosine":
    train_x = train_x / np.maximum(np.linalg.norm(train_x, axis=1, keepdims=True), 1e-12)
    test_x = test_x / np.maximum(np.linalg.norm(test_x, axis=1, keepdims=True), 1e-12)
  predictions = np.empty(len(test_x), np.int64)
  for start in range(0, len(test_x), chunk):
    rows = test_x[start:start + chunk]
    if distance == "cosine":
      d = 1.0 - rows @ train_x.T
    else:
      d = (rows ** 2).sum(1)[:, None] - 2 * rows @ train_x.T + (train_x ** 2).sum(1)[None]
    if train_groups is not None and test_groups is not None:
      same = np.asarray(test_groups)[start:start + chunk, None] == np.asarray(train_groups)[None]
      d = np.where(same, np.inf, d)
    nearest = np.argsort(d, axis=1, kind="stable")[:, :k]
    if np.isinf(np.take_along_axis(d, nearest, 1)).any():
      raise ValueError(f"knn: fewer than k={k} training rows outside a test row's own group")
    votes = np.zeros((len(rows), num_classes), np.int64)
    np.add.at(votes, (np.arange(len(rows))[:, None], train_y[nearest]), 1)
    for r, (v, order) in enumerate(zip(votes, nearest)):
      tied = np.flatnonzero(v == v.max())
      # `order` is sorted by distance, so the first neighbour in a tied class is that class's nearest.
      predictions[start + r] = next(int(c) for c in train_y[order] if c in tied)
  return predictions


def split_indices(lengths: Sequence[int], labels: Sequence[np.ndarray], config: ProbeConfig
                  ) -> tuple[np.ndarray, np.ndarray]:
  """(train, test) rows as int [n, 2] (trajectory, timestep) pairs for `config.split`."""
  all_rows = np.array([(t, s) for t, n in enumerate(lengths) for s in range(n)], np.int64).reshape(-1, 2)
  if config.split == "leave_one_trajectory_out":
    return all_rows, all_rows
  held = len(lengths) - config.test_trajectories
  train = all_rows[all_rows[:, 0] < held]
  test = all_rows[all_rows[:, 0] >= held]
  if config.test_per_class:
    rng = np.random.default_rng(config.seed)
    test_labels = np.array([labels[t][s] for t, s in test])
    chosen = []
    for c in range(config.num_classes):
      members = np.flatnonzero(test_labels == c)
      chosen.extend(rng.choice(members, size=min(config.test_per_class, len(members)), replace=False))
    test = test[np.sort(np.asarray(chosen, np.int64))]
  return train, test


def evaluate(features: dict[tuple[int, int], np.ndarray], labels: Sequence[np.ndarray], train: np.ndarray,
             test: np.ndarray, config: ProbeConfig) -> ProbeResult:
  """k-NN accuracy of the test rows against the train rows (rows: (trajectory, timestep) pairs);
  features maps each row to its float [D] feature."""
  def stack(rows):
    return np.stack([features[(int(t), int(s))] for t, s in rows])

  y_train = np.array([labels[t][s] for t, s in train])
  y_test = np.array([labels[t][s] for t, s in test])
  predicted = knn_predict(stack(train), y_train, stack(test), k=config.k, distance=config.distance,
                          num_classes=config.num_classes, train_groups=train[:, 0], test_groups=test[:, 0])
  correct = predicted == y_test
  return ProbeResult(accuracy=float(correct.mean()), num_test=len(test), num_train=len(train),
                     per_class_correct=np.bincount(y_test[correct], minlength=config.num_classes),
                     per_class_total=np.bincount(y_test, minlength=config.num_classes))


# ---- data -----------------------------------------------------------------------------------------
def _normalize_instruction(text: str) -> str:
  return " ".join(text.lower().split()).rstrip(".")


def load_trajectories(path: str, spec_name: str, config: ProbeConfig, *, split: str = "train") -> ProbeData:
  """The first `num_trajectories` episodes of an RLDS dataset whose instruction matches, decoded
  and labelled. Raises ValueError naming the dataset when too few match."""
  config.check()
  spec = get_spec(spec_name)
  missing = [c for c in config.cameras if c not in spec.cameras]
  if missing:
    raise ValueError(f"knn probe cameras {missing} are not cameras of the {spec_name} layout; expected some of "
                     f"{list(spec.cameras)}")
  source = RLDSSource(path, spec, split=split, cache_episodes=1)
  wanted = _normalize_instruction(config.instruction)
  trajectories, seen = [], set()
  for index in range(len(source)):
    episode = source.episode(index)
    found = _normalize_instruction(episode.instruction)
    seen.add(found)
    if (found == wanted) if config.match == "exact" else (wanted in found):
      trajectories.append(Trajectory(source.name, index, episode.instruction, np.asarray(episode.states, np.float32),
                                     {c: list(episode.images[c]) for c in config.cameras},
                                     {c: spec.cameras[c] for c in config.cameras}))
      if len(trajectories) == config.num_trajectories:
        break
  if len(trajectories) < config.num_trajectories:
    examples = sorted(seen)[:5]
    raise ValueError(f"{path}: {len(trajectories)} episodes have an instruction {config.match}-matching "
                     f"{config.instruction!r}; expected num_trajectories={config.num_trajectories} (instructions "
                     f"there include {examples})")
  labels = phase_labels([t.states for t in trajectories], config.num_classes, reference=config.reference,
                        standardize=config.standardize_states)
  return ProbeData(source=path, trajectories=trajectories, labels=labels)


# ---- features -------------------------------------------------------------------------------------
@dataclasses.dataclass
class PromptBatch:
  """Model inputs of B prompts padded to one length: input_ids / attention_mask / pool_mask
  int32 [B, T], pixel_values float32 [B*P, d], image_grid_thw int32 [B*n, 3]."""
  input_ids: np.ndarray
  attention_mask: np.ndarray
  pool_mask: np.ndarray
  pixel_values: np.ndarray
  image_grid_thw: np.ndarray


def _subsequence_end(ids: np.ndarray, pattern: np.ndarray) -> int:
  """Index just past the last occurrence of `pattern` in `ids` (-1 when absent)."""
  n = len(pattern)
  for end in range(len(ids), n - 1, -1):
    if np.array_equal(ids[end - n:end], pattern):
      return end
  return -1


def pool_mask(input_ids: np.ndarray, instruction: str, backbone: backbone_lib.Backbone, pooling: str) -> np.ndarray:
  """int32 [T] weights of one unpadded prompt's tokens in its pooled feature."""
  if pooling not in POOLINGS:
    raise ValueError(f"knn probe pooling={pooling!r}; expected one of {list(POOLINGS)}")
  mask = np.zeros(len(input_ids), np.int32)
  if pooling == "all":
    mask[:] = 1
  elif pooling == "last":
    mask[-1] = 1
  else:
    mask[np.isin(input_ids, backbone.vision_token_ids)] = 1
    # The user text sits between special tokens (<|vision_end|>, <|im_end|>), so alone it
    # tokenises exactly as inside the prompt.
    text = np.asarray(backbone.tokenizer(user_text(instruction), add_special_tokens=False)["input_ids"])
    end = _subsequence_end(np.asarray(input_ids), text)
    if end < 0:
      raise ValueError(f"the user text of {instruction!r} was not found in its rendered prompt; the chat template "
                       "changed the text's tokenisation (use pooling='all' or 'last')")
    mask[end - len(text):end] = 1
  return mask


def prompt_batches(backbone: backbone_lib.Backbone, frames: Sequence[Sequence[np.ndarray]],
                   instructions: Sequence[str], config: ProbeConfig) -> list[PromptBatch]:
  """Stage 3's prompts (every camera frame, then the instruction) in batches of `config.batch_size`,
  all padded (left) to one length and the last batch filled up by repetition, so one compiled
  shape serves every batch."""
  tokenizing = Tokenizing(processor=backbone.processor, action_vocab=backbone.action_vocab)
  prompts = []
  for images, instruction in zip(frames, instructions):
    images = list(images)
    prompt = tokenizing.prompt(vla_messages(images, instruction), images)
    prompt["pool_mask"] = pool_mask(prompt["input_ids"], instruction, backbone, config.pooling)
    prompts.append(prompt)
  if not prompts:
    return []
  length = max(len(p["input_ids"]) for p in prompts)
  b = config.batch_size
  prompts = prompts + [prompts[-1]] * (-len(prompts) % b)
  pad = backbone.pad_token_id
  batches = []
  for start in range(0, len(prompts), b):
    rows = prompts[start:start + b]
    ids = np.stack([np.pad(r["input_ids"], (length - len(r["input_ids"]), 0), constant_values=pad) for r in rows])
    real = np.stack([np.pad(np.ones(len(r["input_ids"]), np.int32), (length - len(r["input_ids"]), 0)) for r in rows])
    pool = np.stack([np.pad(r["pool_mask"], (length - len(r["pool_mask"]), 0)) for r in rows])
    batches.append(PromptBatch(ids.astype(np.int32), real, pool.astype(np.int32),
                               np.concatenate([r["pixel_values"] for r in rows]).astype(np.float32),
                               np.concatenate([r["image_grid_thw"] for r in rows]).astype(np.int32)))
  return batches


def _pooled(model, params, input_ids, attention_mask, weights, pixel_values, image_grid_thw, *, layer: int,
            frame_patches: int | None):
  hidden = backbone_lib.layer_features(model, params, input_ids, attention_mask, pixel_values, image_grid_thw,
                                       layer=layer, frame_patches=frame_patches).astype(jnp.float32)
  w = weights.astype(jnp.float32)[..., None]
  return (hidden * w).sum(1) / jnp.maximum(w.sum(1), 1.0)


def resolve_layer(backbone: backbone_lib.Backbone, layer: int) -> int:
  """`layer`, or 0 = the Stage 3 feature layer; ValueError when outside 1..num_layers."""
  return backbone_lib.feature_layer(backbone.num_layers, layer, name="knn probe layer")


def feature_function(backbone: backbone_lib.Backbone):
  """Jitted (params, batch arrays, layer, frame_patches) -> pooled features float32 [B, hidden];
  built once per backbone so every batch of one shape reuses one compilation."""
  return jax.jit(functools.partial(_pooled, backbone.model), static_argnames=("layer", "frame_patches"))


def backbone_features(fn, params: Any, batches: Sequence[PromptBatch], count: int, *, layer: int) -> np.ndarray:
  """Pooled layer-`layer` features float32 [count, hidden] of the first `count` prompts
  (fn: `feature_function(backbone)`)."""
  out = []
  for batch in batches:
    pooled = fn(params, batch.input_ids, batch.attention_mask, batch.pool_mask,
                     batch.pixel_values, batch.image_grid_thw, layer=layer,
                     frame_patches=frame_patches_of(batch.image_grid_thw))
    out.append(np.asarray(jax.device_get(pooled)))
  return np.concatenate(out)[:count]


@dataclasses.dataclass
class PreparedProbe:
  """Everything but the parameters: reused when the same probe scores many checkpoints."""
  config: ProbeConfig
  data: ProbeData
  train: np.ndarray
  test: np.ndarray
  rows: np.ndarray          # int [R, 2] distinct (trajectory, timestep) pairs whose features are needed
  batches: list[PromptBatch]
  layer: int
  fn: Any                   # feature_function(backbone)
  vocab_size: int           # of the tokenizer the prompts were tokenised with


def prepare(backbone: backbone_lib.Backbone, data: ProbeData, config: ProbeConfig) -> PreparedProbe:
  """Split, tokenised prompts of the rows the split uses, and the resolved layer."""
  config.check()
  layer = resolve_layer(backbone, config.layer)
  lengths = [len(t) for t in data.trajectories]
  train, test = split_indices(lengths, data.labels, config)
  rows = np.unique(np.concatenate([train, test]), axis=0)
  frames = [[data.trajectories[t].image(c, s) for c in config.cameras] for t, s in rows]
  instructions = [data.trajectories[t].instruction for t, _ in rows]
  return PreparedProbe(config, data, train, test, rows, prompt_batches(backbone, frames, instructions, config), layer,
                       feature_function(backbone), len(backbone.tokenizer))


def for_backbone(prepared: PreparedProbe, backbone: backbone_lib.Backbone) -> PreparedProbe:
  """The same prompts for another backbone with the same tokenizer and image processor (the
  checkpoints of one training run), without tokenising them again."""
  if len(backbone.tokenizer) != prepared.vocab_size:
    raise ValueError(f"the backbone's tokenizer has {len(backbone.tokenizer)} tokens; the probe's prompts were "
                     f"tokenised with {prepared.vocab_size} (expected the same tokenizer; call prepare instead)")
  return dataclasses.replace(prepared, layer=resolve_layer(backbone, prepared.config.layer),
                             fn=feature_function(backbone))


def score(params: Any, prepared: PreparedProbe) -> ProbeResult:
  """The probe's accuracy for `params` (host or sharded) of the backbone `prepared` was built for."""
  features = backbone_features(prepared.fn, params, prepared.batches, len(prepared.rows), layer=prepared.layer)
  by_row = {(int(t), int(s)): f for (t, s), f in zip(prepared.rows, features)}
  result = evaluate(by_row, prepared.data.labels, prepared.train, prepared.test, prepared.config)
  result.layer = prepared.layer
  return result


def run(backbone: backbone_lib.Backbone, params: Any, data: ProbeData, config: ProbeConfig) -> ProbeResult:
  """prepare + score."""
  return score(params, prepare(backbone, data, config))


# ---- evaluator ------------------------------------------------------------------------------------
def make_evaluator(options: ml_collections.ConfigDict, setup: Any):
  """The `knn_probe` evaluator: probes the model being trained (`state.params` of `setup.backbone`).

      config.evals.probe = dict(type="knn_probe", every=500, data="/data/libero_10_no_noops/1.0.0",
                                spec="libero", instruction="...", num_trajectories=20)

  Declines (None) when `options.data` is empty. Returns {"probe/knn_accuracy": accuracy}.
  """
  if not options.get("data"):
    return None
  config = ProbeConfig.from_options(options)
  backbone = setup.backbone
  data = load_trajectories(options.data, options.get("spec", "libero"), config)
  prepared = prepare(backbone, data, config)

  def evaluate_state(state, step):
    del step
    return {"probe/knn_accuracy": score(state.params, prepared).accuracy}
  return evaluate_state
