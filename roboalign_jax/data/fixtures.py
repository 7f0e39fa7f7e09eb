"""Small, learnable RLDS datasets in the published layouts, written by a real TFDS builder.

Each episode is a procedurally rendered table scene -- three coloured objects (discs or squares)
at random positions -- and a smooth pick-and-place trajectory: the gripper moves above the object
named first in the instruction, descends, closes, lifts, carries it above the object named
second, descends and opens. Images show the objects and the gripper (a ring whose size grows with
height, filled when closed), so the action at every step is a function of the image and the
instruction, which a small model can learn.

    path = write_fixture("libero", "/tmp/fixtures", num_episodes=4, seed=0)
    builder = tfds.builder_from_directory(path)   # <out_dir>/<builder name>/1.0.0
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Iterator, Mapping

import numpy as np

from roboalign_jax.data.specs import get_spec
from roboalign_jax.data.specs.common import DatasetSpec, image_feature

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 200, 40),
           "purple": (140, 60, 170), "orange": (240, 130, 30)}
SHAPES = ("block", "bowl")  # drawn as squares and discs
HOME = np.array([0.5, 0.5, 0.3])
HIGH, LOW = 0.3, 0.05
BACKGROUND = np.array([205, 190, 160], np.float32)


def sample_scene(rng: np.random.Generator) -> dict[str, Any]:
  """Three objects at distinct positions in [0.15, 0.85]^2 and an instruction over two of them."""
  colours = rng.choice(list(COLOURS), size=3, replace=False)
  shapes = rng.choice(SHAPES, size=3)
  while True:
    xy = rng.uniform(0.15, 0.85, size=(3, 2))
    if min(np.linalg.norm(xy[i] - xy[j]) for i in range(3) for j in range(i + 1, 3)) > 0.22:
      break
  objects = [{"colour": str(c), "shape": str(s), "xy": p} for c, s, p in zip(colours, shapes, xy)]
  return {"objects": objects, "pick": 0, "place": 1,
          "instruction": f"put the {colours[0]} {shapes[0]} on the {colours[1]} {shapes[1]}"}


def _min_jerk(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
  s = np.linspace(0.0, 1.0, n + 1)[1:, None]
  return a + (b - a) * (10 * s**3 - 15 * s**4 + 6 * s**5)


def trajectory(scene: dict, num_steps: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
  """Gripper pose over time: position [T, 3] in the unit workspace, rpy [T, 3], grip [T] (+1 closed)."""
  pick, place = scene["objects"][scene["pick"]]["xy"], scene["objects"][scene["place"]]["xy"]
  start = HOME + rng.normal(0, 0.03, 3)
  waypoints = [start, [*pick, HIGH], [*pick, LOW], [*pick, HIGH], [*place, HIGH], [*place, LOW + 0.05]]
  grip_after = [-1, -1, 1, 1, 1, -1]  # gripper state once each waypoint is reached
  # Steps per segment in proportion to distance (+ a constant), one step per grip change.
  lengths = np.array([np.linalg.norm(np.subtract(b, a)) for a, b in zip(waypoints[:-1], waypoints[1:])]) + 0.1
  moving = num_steps - 1 - 2
  counts = np.maximum(1, np.floor(lengths / lengths.sum() * moving).astype(int))
  counts[-1] += moving - counts.sum()
  positions, grips = [np.asarray(start, float)[None]], [np.array([-1.0])]
  for i, n in enumerate(counts):
    positions.append(_min_jerk(np.asarray(waypoints[i], float), np.asarray(waypoints[i + 1], float), n))
    grips.append(np.full(n, float(grip_after[i])))
    if grip_after[i + 1] != grip_after[i]:  # hold still while the gripper closes / opens
      positions.append(positions[-1][-1:])
      grips.append(np.array([float(grip_after[i + 1])]))
  position = np.concatenate(positions)[:num_steps]
  grip = np.concatenate(grips)[:num_steps]
  # Yaw turns towards the object being approached; roll/pitch stay near zero.
  target_yaw = np.where(np.arange(num_steps) < num_steps // 2, 0.6 * (pick[0] - 0.5), 0.6 * (place[0] - 0.5))
  yaw = np.convolve(np.pad(target_yaw, (4, 4), mode="edge"), np.ones(9) / 9, mode="valid")
  rpy = np.stack([0.02 * np.sin(np.linspace(0, np.pi, num_steps)), np.zeros(num_steps), yaw], axis=1)
  return {"position": position, "rpy": rpy, "grip": grip}


def picked_object_xy(scene: dict, traj: dict[str, np.ndarray]) -> np.ndarray:
  """[T, 2]: where the picked object is -- it follows the gripper while closed, stays where released."""
  xy = np.empty((len(traj["grip"]), 2))
  current = scene["objects"][scene["pick"]]["xy"]
  for t, (grip, position) in enumerate(zip(traj["grip"], traj["position"])):
    if grip > 0:
      current = position[:2]
    xy[t] = current
  return xy


def render(scene: dict, position: np.ndarray, grip: float, shape: tuple[int, int, int], *,
           wrist: bool = False, pick_xy: np.ndarray | None = None) -> np.ndarray:
  """uint8 [H, W, 3]: the scene from above (or, for the wrist view, a close-up around the gripper).

  pick_xy: where the picked object is now (default: its initial position).
  """
  h, w = shape[:2]
  ys, xs = np.meshgrid((np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w, indexing="ij")
  if wrist:  # a window around the gripper, wider when higher
    half = 0.12 + 0.5 * position[2]
    xs = position[0] + (xs - 0.5) * 2 * half
    ys = position[1] + (ys - 0.5) * 2 * half
  image = np.broadcast_to(BACKGROUND * (0.9 + 0.1 * ys[..., None]), (h, w, 3)).copy()
  for i, obj in enumerate(scene["objects"]):
    x, y = pick_xy if (i == scene["pick"] and pick_xy is not None) else obj["xy"]
    size = 0.07
    if obj["shape"] == "bowl":
      mask = (xs - x) ** 2 + (ys - y) ** 2 < size**2
    else:
      mask = (np.abs(xs - x) < size * 0.85) & (np.abs(ys - y) < size * 0.85)
    image[mask] = COLOURS[obj["colour"]]
  if not wrist:
    radius = 0.03 + 0.1 * position[2]
    d2 = (xs - position[0]) ** 2 + (ys - position[1]) ** 2
    ring = (d2 < radius**2) & (d2 > (radius * (0.0 if grip > 0 else 0.7)) ** 2)
    image[ring] = (30, 30, 30)
  else:  # fingers at the image edges, closer together when closed
    gap = 0.15 if grip > 0 else 0.35
    fingers = (np.abs(np.abs((np.arange(w) + 0.5) / w - 0.5) - gap) < 0.04)[None, :] & (
        (np.arange(h) + 0.5)[:, None] / h > 0.7)
    image[fingers] = (30, 30, 30)
  return image.astype(np.uint8)


def native_episode(spec: DatasetSpec, scene: dict, traj: dict[str, np.ndarray], index: int,
                   image_shapes: Mapping[str, tuple[int, int, int]] | None = None) -> dict:
  """The episode in `spec`'s published layout (the dict a TFDS builder yields); `image_shapes`:
  camera -> (H, W, 3) rendered instead of the published size."""
  shapes = {cam: tuple((image_shapes or {}).get(cam, shape)) for cam, (_, shape) in spec.cameras.items()}
  position, rpy, grip = traj["position"], traj["rpy"], traj["grip"]
  n = len(position)
  metres = position * np.array([0.5, 0.5, 0.3])  # unit workspace -> metres
  d_pos = np.diff(metres, axis=0, append=metres[-1:])
  d_rot = np.diff(rpy, axis=0, append=rpy[-1:])
  # The command at step t produces the state at t + 1; the gripper command is the state it goes to.
  grip_cmd = np.append(grip[1:], grip[-1])
  pick_xy = picked_object_xy(scene, traj)
  frames = {path: [render(scene, position[t], grip[t], shapes[cam], wrist=cam == "wrist", pick_xy=pick_xy[t])
                   for t in range(n)] for cam, (path, _) in spec.cameras.items()}
  steps = []
  for t in range(n):
    step: dict[str, Any] = {"discount": np.float32(1.0), "reward": np.float32(t == n - 1),
                            "is_first": t == 0, "is_last": t == n - 1, "is_terminal": t == n - 1}
    observation = {path.split("/", 1)[1]: frames[path][t] for path in frames}
    if spec.name == "libero":
      qpos = 0.04 if grip[t] < 0 else 0.005
      observation["state"] = np.concatenate([metres[t], rpy[t], [qpos, -qpos]]).astype(np.float32)
      observation["joint_state"] = np.concatenate([np.sin(metres[t] * 3), np.cos(rpy[t]), [grip[t]]]).astype(np.float32)
      step["action"] = np.concatenate([np.clip(d_pos[t] / 0.02, -1, 1), np.clip(d_rot[t] / 0.05, -1, 1),
                                       [grip_cmd[t]]]).astype(np.float32)
      step["language_instruction"] = scene["instruction"]
    elif spec.name == "calvin":
      width = 0.08 if grip[t] < 0 else 0.01
      joints = np.concatenate([np.sin(metres[t] * 2), np.cos(metres[t] * 2), [rpy[t, 2]]])
      observation["state"] = np.concatenate([metres[t], rpy[t], [width], joints, [-grip[t]]]).astype(np.float32)
      step["action"] = np.concatenate([np.clip(d_pos[t] * 50, -1, 1), np.clip(d_rot[t] * 20, -1, 1),
                                       [-grip_cmd[t]]]).astype(np.float32)
      step["language_instruction"] = scene["instruction"]
    elif spec.name in ("bridge", "bridge_oxe"):
      # Bridge records the gripper as an open amount in [0, 1]; transitions pass through 0.5.
      open_amount = 1.0 if grip[t] < 0 else 0.0
      if t > 0 and grip[t] != grip[t - 1]:
        open_amount = 0.5
      observation["state"] = np.concatenate([metres[t], rpy[t], [open_amount]]).astype(np.float32)
      if spec.name == "bridge":
        for k in range(1, 4):
          observation[f"image_{k}"] = np.zeros(spec.cameras["primary"][1], np.uint8)
        step["action"] = np.concatenate([d_pos[t], d_rot[t], [1.0 if grip_cmd[t] < 0 else 0.0]]).astype(np.float32)
        step["language_instruction"] = scene["instruction"]
        step["language_embedding"] = np.zeros(512, np.float32)
      else:
        observation["natural_language_instruction"] = scene["instruction"]
        observation["natural_language_embedding"] = np.zeros(512, np.float32)
        step["action"] = {"world_vector": d_pos[t].astype(np.float32), "rotation_delta": d_rot[t].astype(np.float32),
                          "open_gripper": bool(grip_cmd[t] < 0), "terminate_episode": np.float32(t == n - 1)}
    else:
      raise ValueError(f"no fixture renderer for spec {spec.name!r}")
    step["observation"] = observation
    steps.append(step)
  episode: dict[str, Any] = {"steps": steps}
  if spec.name == "bridge":
    episode["episode_metadata"] = {"file_path": f"fixture/{index}", "episode_id": np.int32(index),
                                   "has_language": True, "has_image_0": True,
                                   **{f"has_image_{k}": False for k in range(1, 4)}}
  elif spec.name in ("libero", "calvin"):
    episode["episode_metadata"] = {"file_path": f"fixture/{index}"}
  return episode


def episodes(spec_name: str, num_episodes: int, seed: int, episode_length: tuple[int, int] = (20, 40),
             image_shapes: Mapping[str, tuple[int, int, int]] | None = None) -> Iterator[dict]:
  """Native-layout episodes, a pure function of (spec, seed, index)."""
  spec = get_spec(spec_name)
  for index in range(num_episodes):
    rng = np.random.default_rng([seed, index])
    scene = sample_scene(rng)
    num_steps = int(rng.integers(episode_length[0], episode_length[1] + 1))
    yield native_episode(spec, scene, trajectory(scene, num_steps, rng), index, image_shapes)


def camera_features(spec_name: str, image_shapes: Mapping[str, tuple[int, int, int]] | None = None,
                    encodings: Mapping[str, str] | None = None) -> Any:
  """`spec_name`'s published features with some cameras at another size and/or encoding
  ("jpeg", "png" or "raw"), as in re-exported copies of a dataset."""
  spec = get_spec(spec_name)
  unknown = sorted((set(image_shapes or {}) | set(encodings or {})) - set(spec.cameras))
  if unknown:
    raise ValueError(f"cameras {unknown} are not in {spec_name!r} (it has {sorted(spec.cameras)})")
  replace = {}
  for cam, (path, published) in spec.cameras.items():
    if cam in (image_shapes or {}) or cam in (encodings or {}):
      replace[path.split("/", 1)[1]] = image_feature((image_shapes or {}).get(cam, published),
                                                     (encodings or {}).get(cam, "jpeg"))
  return spec.features(replace=replace)


def write_episodes(spec_name: str, out_dir: str, episode_dicts: Iterable[dict], *,
                   file_format: str = "array_record", split: str = "train", features: Any = None,
                   builder_name: str | None = None, description: str | None = None) -> str:
  """Writes episodes with a TFDS builder named like the published dataset; returns the version dir.

  `features` overrides the spec's FeaturesDict (tests use it to write deliberately broken data).
  `builder_name` replaces the spec's dataset name (e.g. "libero_object_no_noops" for the libero
  spec, whose default is the spatial suite); `description` the dataset_info description.
  """
  import tensorflow_datasets as tfds  # writing needs TFDS (and TensorFlow for jpeg encoding)
  spec = get_spec(spec_name)
  items = list(episode_dicts)
  feature_dict = features if features is not None else spec.features()

  class _FixtureBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Procedural fixture in the published layout."}

    def _info(self):
      # disable_shuffling: record i is episode i (TFDS would order records by a hash of their keys).
      return tfds.core.DatasetInfo(builder=self, features=feature_dict, disable_shuffling=True,
                                   description=description or f"roboalign_jax fixture in the {spec.name} layout")

    def _split_generators(self, dl_manager):
      del dl_manager
      return {split: self._generate_examples()}

    def _generate_examples(self):
      for i, episode in enumerate(items):
        yield f"episode_{i:06d}", episode

  _FixtureBuilder.name = builder_name or spec.builder_name
  # TFDS looks for a builder's source file through importlib_resources when its module path
  # has dots, which fails for an editable install; a top-level module name skips that lookup.
  _FixtureBuilder.__module__ = "roboalign_jax_fixture"
  builder = _FixtureBuilder(data_dir=os.path.abspath(out_dir), file_format=file_format)
  builder.download_and_prepare(file_format=file_format,
                               download_config=tfds.download.DownloadConfig(verify_ssl=False))
  return os.fspath(builder.data_path)


def write_fixture(spec_name: str, out_dir: str, num_episodes: int, seed: int, *,
                  file_format: str = "array_record", episode_length: tuple[int, int] = (20, 40),
                  split: str = "train", image_shapes: Mapping[str, tuple[int, int, int]] | None = None,
                  encodings: Mapping[str, str] | None = None) -> str:
  """Writes a real TFDS dataset in `spec_name`'s published layout; returns its version directory
  (`<out_dir>/<builder name>/1.0.0`, with dataset_info.json, features.json and the shards).

  file_format: "array_record" (what the pipeline reads) or "tfrecord" (what downloads come as).
  image_shapes / encodings: camera -> (H, W, 3) / "jpeg" | "png" | "raw" instead of the published
  ones (see camera_features).
  """
  if num_episodes < 1:
    raise ValueError(f"num_episodes={num_episodes}; expected at least 1")
  features = camera_features(spec_name, image_shapes, encodings) if image_shapes or encodings else None
  return write_episodes(spec_name, out_dir, episodes(spec_name, num_episodes, seed, episode_length, image_shapes),
                        file_format=file_format, split=split, features=features)
