"""RLDS fixtures -> Grain pipeline: shapes, cleaning, chunking, normalisation, caching, mixtures,
sharding, resumption and TFRecord conversion, for every published layout."""

import os
import subprocess
import sys

import numpy as np
import pytest

from roboalign_jax import data
from roboalign_jax.data import chunking, fixtures, normalization, pipeline
from roboalign_jax.data.rlds_source import RLDSSource
from roboalign_jax.data.specs import get_spec

SPECS = ("bridge", "bridge_oxe", "libero", "calvin")
EPISODES, SEED, LENGTH = 3, 0, (20, 30)


@pytest.fixture(scope="module")
def fixture_dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("rlds")
  return {spec: data.write_fixture(spec, str(root), EPISODES, SEED, episode_length=LENGTH) for spec in SPECS}


def config_for(dirs, tmp_path, specs=("libero",), weights=None, **overrides):
  entries = [data.dataset_entry(s, dirs[s], weight=(weights or {}).get(s, 1.0)) for s in specs]
  defaults = dict(cache_dir=str(tmp_path / "cache"), global_batch_size=4, progress=False, action_horizon=8)
  return data.data_config(datasets=entries, **{**defaults, **overrides})


def native(spec):
  return list(fixtures.episodes(spec, EPISODES, SEED, LENGTH))


@pytest.mark.parametrize("spec", SPECS)
def test_batches_have_exact_shapes_and_dtypes(fixture_dirs, tmp_path, spec):
  config = config_for(fixture_dirs, tmp_path, (spec,), image_size=(224, 224))
  batch = next(iter(data.make_dataset(config, process_index=0, process_count=1)))
  state_dim = get_spec(spec).state_dim
  expected = {"images": ((4, 2, 1, 224, 224, 3), np.uint8), "image_mask": ((4, 2), np.bool_),
              "state": ((4, 1, state_dim), np.float32), "state_mask": ((4, state_dim), np.bool_),
              "observation_mask": ((4, 1), np.bool_), "actions": ((4, 8, 7), np.float32),
              "action_mask": ((4, 8), np.bool_), "dataset_id": ((4,), np.int32), "episode": ((4,), np.int32),
              "step": ((4,), np.int32)}
  for key, (shape, dtype) in expected.items():
    assert batch[key].shape == shape and batch[key].dtype == dtype, (key, batch[key].shape, batch[key].dtype)
  has_wrist = "wrist" in get_spec(spec).cameras
  np.testing.assert_array_equal(batch["image_mask"], [[True, has_wrist]] * 4)
  if not has_wrist:
    assert not batch["images"][:, 1].any()
  assert all(text.startswith("put the ") for text in batch["instruction"])
  assert np.abs(batch["actions"]).max() <= 1.0


def test_frames_keep_the_published_shapes(fixture_dirs):
  for spec in SPECS:
    source = RLDSSource(fixture_dirs[spec], get_spec(spec))
    raw = source.raw_episode(0)
    for path, shape in get_spec(spec).cameras.values():
      from PIL import Image
      import io
      with Image.open(io.BytesIO(raw.images[path][0])) as image:
        assert (image.height, image.width, 3) == shape


def test_all_datasets_agree_on_the_gripper_convention(fixture_dirs):
  """Same seed -> same trajectories in every layout; after standardisation the gripper
  commands must coincide (+1 close), whatever each layout stored."""
  libero_native = [np.stack([s["action"][6] for s in ep["steps"]]) for ep in native("libero")]
  for spec in SPECS:
    source = RLDSSource(fixture_dirs[spec], get_spec(spec))
    for i, expected in enumerate(libero_native):
      gripper = source.episode(i).actions[:, 6]
      if spec.startswith("bridge"):
        expected = expected[1:-1]  # Bridge cleaning drops the first and last step
      np.testing.assert_array_equal(gripper, expected, err_msg=f"{spec} episode {i}")
      assert set(np.unique(gripper)) <= {-1.0, 1.0}
      # The trajectory closes the gripper (+1) to pick and opens it (-1) to place.
      assert gripper[0] == -1.0 and 1.0 in gripper


@pytest.mark.parametrize("spec", ["bridge", "bridge_oxe"])
def test_bridge_cleaning_relabels_from_states(fixture_dirs, spec):
  source = RLDSSource(fixture_dirs[spec], get_spec(spec))
  for i, episode_dict in enumerate(native(spec)):
    states = np.stack([s["observation"]["state"] for s in episode_dict["steps"]])
    episode = source.episode(i)
    assert len(episode) == len(states) - 2
    np.testing.assert_allclose(episode.actions[:, :6], states[2:, :6] - states[1:-1, :6], atol=1e-6)
    np.testing.assert_array_equal(episode.states, states[1:-1])
    np.testing.assert_array_equal(episode.step_ids, np.arange(1, len(states) - 1))


def test_action_chunk_pads_at_episode_end(fixture_dirs, tmp_path):
  config = config_for(fixture_dirs, tmp_path, ("libero",), action_horizon=8, augment=False)
  handles = pipeline.open_datasets(config)
  reader = pipeline.StepReader(handles, config, train=False)
  index = handles[0].index
  last = int(index.offsets[1]) - 1  # last step of the first usable episode
  example = reader(0, last - 2, 0)
  np.testing.assert_array_equal(example["action_mask"], [True] * 3 + [False] * 5)
  np.testing.assert_array_equal(example["actions"][3:], np.repeat(example["actions"][2:3], 5, axis=0))
  episode = handles[0].source.episode(int(index.episodes[0]))
  expected = normalization.normalize(episode.actions[-3:], handles[0].statistics.action,
                                     normalization.action_mask())
  np.testing.assert_allclose(example["actions"][:3], expected)
  # History at the episode start repeats the first frame and masks the missing ones.
  steps, mask = chunking.history_steps(1, 3)
  np.testing.assert_array_equal(steps, [0, 0, 1])
  np.testing.assert_array_equal(mask, [False, True, True])


def test_normalize_unnormalize_round_trip(fixture_dirs, tmp_path):
  handles = pipeline.open_datasets(config_for(fixture_dirs, tmp_path, ("calvin",)))
  stats = handles[0].statistics.action
  actions = handles[0].source.episode(0).actions
  inside = np.clip(actions, stats.q01, stats.q99)
  inside[:, 6] = actions[:, 6]
  mask = normalization.action_mask()
  normed = normalization.normalize(inside, stats, mask)
  assert normed[:, :6].min() >= -1 and normed[:, :6].max() <= 1
  np.testing.assert_array_equal(normed[:, 6], actions[:, 6])  # gripper untouched
  np.testing.assert_allclose(normalization.unnormalize(normed, stats, mask), inside, atol=1e-5)
  np.testing.assert_allclose(normalization.normalize(stats.q01, stats)[stats.q99 > stats.q01], -1)
  np.testing.assert_allclose(normalization.normalize(stats.q99, stats)[stats.q99 > stats.q01], 1)


def test_index_and_statistics_are_computed_once(fixture_dirs, tmp_path):
  config = config_for(fixture_dirs, tmp_path, ("libero", "bridge"))
  first = pipeline.open_datasets(config)
  assert [h.statistics.source for h in first] == ["computed", "computed"]
  assert [h.index.source for h in first] == ["computed", "computed"]
  second = pipeline.open_datasets(config)
  assert [h.statistics.source for h in second] == ["cache", "cache"]
  assert [h.index.source for h in second] == ["cache", "cache"]
  for a, b in zip(first, second):
    np.testing.assert_allclose(a.statistics.action.q99, b.statistics.action.q99)
    np.testing.assert_array_equal(a.index.lengths, b.index.lengths)
  # Files are keyed by dataset content: a different dataset gets its own entry.
  assert len(os.listdir(tmp_path / "cache")) == 2
  # The statistics are what the checkpoint metadata stores.
  assert set(pipeline.dataset_statistics(second)) == {"libero", "bridge"}


def test_mixture_proportions(fixture_dirs, tmp_path):
  config = config_for(fixture_dirs, tmp_path, ("libero", "calvin"), weights={"libero": 3.0, "calvin": 1.0})
  handles = pipeline.open_datasets(config)
  positions = pipeline._positions(handles, config, train=True)
  ids = np.array([positions[i][0] for i in range(2000)])
  assert abs((ids == 0).mean() - 0.75) < 0.02
  # Every step of a dataset is visited once per epoch before any repeats.
  libero_steps = [positions[i][1] for i in range(4000) if positions[i][0] == 0][:handles[0].index.num_steps]
  assert sorted(libero_steps) == list(range(handles[0].index.num_steps))
  batch = next(iter(data.make_dataset(config.copy_and_resolve_references(), process_index=0, process_count=1)))
  assert batch["state"].shape[-1] == 15  # the mixture pads states to its widest (CALVIN)


def test_same_seed_same_batches_and_processes_split_global_batches(fixture_dirs, tmp_path):
  config = config_for(fixture_dirs, tmp_path, ("libero",), global_batch_size=4)
  whole = [next(it) for it in [iter(data.make_dataset(config, process_index=0, process_count=1))] for _ in range(2)]
  again = iter(data.make_dataset(config, process_index=0, process_count=1))
  halves = [iter(data.make_dataset(config, process_index=p, process_count=2)) for p in range(2)]
  for batch in whole:
    np.testing.assert_array_equal(next(again)["images"], batch["images"])
    parts = [next(h) for h in halves]
    for key in ("images", "actions", "episode", "step"):
      np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), batch[key])
  other_seed = next(iter(data.make_dataset(config_for(fixture_dirs, tmp_path, ("libero",), seed=1),
                                           process_index=0, process_count=1)))
  assert not np.array_equal(other_seed["step"], whole[0]["step"]) or not np.array_equal(
      other_seed["images"], whole[0]["images"])


def test_iterator_state_restores_through_the_checkpointer(fixture_dirs, tmp_path):
  import jax.numpy as jnp
  import jax
  from roboalign_jax.train.checkpoint import Checkpointer
  config = config_for(fixture_dirs, tmp_path, ("libero", "calvin"))
  it = iter(data.make_dataset(config, process_index=0, process_count=1))
  for _ in range(3):
    next(it)
  state = {"w": jnp.zeros(2)}
  checkpointer = Checkpointer(str(tmp_path / "ckpt"), every_steps=1, async_save=False)
  checkpointer.save(3, state, data_iter=it, metadata={"dataset_statistics": {}})
  checkpointer.wait()
  expected = [next(it) for _ in range(2)]
  fresh = iter(data.make_dataset(config, process_index=0, process_count=1))
  checkpointer.restore(3, jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state), data_iter=fresh)
  checkpointer.close()
  for want in expected:
    got = next(fresh)
    for key in ("images", "actions", "state", "dataset_id", "episode", "step"):
      np.testing.assert_array_equal(got[key], want[key])


def test_tfrecord_fixture_converted_to_array_record_reads_identically(fixture_dirs, tmp_path):
  from roboalign_jax.data import convert
  tfrecord = data.write_fixture("libero", str(tmp_path / "tfr"), EPISODES, SEED, episode_length=LENGTH,
                                file_format="tfrecord")
  converted = convert.convert_to_array_record(tfrecord, str(tmp_path / "ar" / "libero_spatial_no_noops" / "1.0.0"),
                                              progress=False)
  report = convert.validate(converted, "libero", progress=False)
  assert report["usable_episodes"] == EPISODES and not report["skipped"]
  a, b = (RLDSSource(p, get_spec("libero")) for p in (converted, fixture_dirs["libero"]))
  for i in range(EPISODES):
    ra, rb = a.raw_episode(i), b.raw_episode(i)
    assert ra.fields.keys() == rb.fields.keys()
    for key in ra.fields:
      np.testing.assert_array_equal(ra.fields[key], rb.fields[key])
    assert ra.images == rb.images
  batches = [next(iter(data.make_dataset(config_for({"libero": p}, tmp_path / name), process_index=0,
                                         process_count=1))) for name, p in (("c", converted), ("f", fixture_dirs["libero"]))]
  np.testing.assert_array_equal(batches[0]["images"], batches[1]["images"])
  np.testing.assert_array_equal(batches[0]["actions"], batches[1]["actions"])


def test_eval_split_is_ordered_and_unaugmented(fixture_dirs, tmp_path):
  config = config_for(fixture_dirs, tmp_path, ("libero",), global_batch_size=2)
  handles = pipeline.open_datasets(config)
  examples = pipeline.make_examples(config, split="train", handles=handles)
  train_a, train_b = examples[0], pipeline.make_examples(config, "train", handles=handles)[0]
  np.testing.assert_array_equal(train_a["images"], train_b["images"])  # augmentation is seeded by position
  reader = pipeline.StepReader(handles, config, train=False)
  plain = reader(0, 0, 0)
  from roboalign_jax.data import image_transforms
  from PIL import Image
  import io
  episode = handles[0].source.episode(int(handles[0].index.episodes[0]))
  expected = image_transforms.resize(Image.open(io.BytesIO(episode.images["primary"][0])).convert("RGB"), (224, 224))
  np.testing.assert_array_equal(plain["images"][0, 0], expected)


def test_reading_never_imports_tensorflow(fixture_dirs, tmp_path):
  code = f"""
import sys
from roboalign_jax import data
config = data.data_config(datasets=[data.dataset_entry("libero", {fixture_dirs['libero']!r})],
                          cache_dir={str(tmp_path / 'cache')!r}, global_batch_size=2, progress=False)
next(iter(data.make_dataset(config, process_index=0, process_count=1)))
bad = sorted(m for m in sys.modules if m == "tensorflow" or m.startswith("tensorflow.") or m == "torch")
assert not bad, bad[:5]
print("ok")
"""
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


def test_worker_processes_give_the_same_batches_and_resume(fixture_dirs, tmp_path):
  import jax
  import jax.numpy as jnp
  from roboalign_jax.train.checkpoint import Checkpointer
  plain = iter(data.make_dataset(config_for(fixture_dirs, tmp_path, ("libero",)), process_index=0, process_count=1))
  expected = [next(plain) for _ in range(5)]
  config = config_for(fixture_dirs, tmp_path, ("libero",), num_workers=2)
  workers = iter(data.make_dataset(config, process_index=0, process_count=1))
  for want in expected[:3]:
    np.testing.assert_array_equal(next(workers)["images"], want["images"])
  state = {"w": jnp.zeros(1)}
  checkpointer = Checkpointer(str(tmp_path / "ckpt"), every_steps=1, async_save=False)
  checkpointer.save(3, state, data_iter=workers, metadata={})
  checkpointer.wait()
  workers.close()
  resumed = iter(data.make_dataset(config, process_index=0, process_count=1))
  checkpointer.restore(3, jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state), data_iter=resumed)
  checkpointer.close()
  for want in expected[3:]:
    got = next(resumed)
    np.testing.assert_array_equal(got["images"], want["images"])
    np.testing.assert_array_equal(got["step"], want["step"])
  resumed.close()


def test_augmentation_is_the_documented_transform():
  from PIL import Image
  from roboalign_jax.data import image_transforms as it
  scene = fixtures.sample_scene(np.random.default_rng(0))
  image = Image.fromarray(fixtures.render(scene, fixtures.HOME, -1.0, (256, 256, 3)))
  identity = it.Augmentation(crop_area=1.0, rotation_degrees=0, brightness=0, contrast=0, saturation=0, hue=0)
  same = it.augment(image, (224, 224), np.random.default_rng(0), identity)
  assert np.abs(same.astype(int) - it.resize(image, (224, 224))).mean() < 1.0
  pixels = np.asarray(image, np.float64)
  half = np.asarray(image.convert("RGB", it.colour_affine(pixels.reshape(-1, 3).mean(0), 0.5, 1, 1, 0, np.arange(4))))
  assert np.abs(half - pixels * 0.5).max() <= 0.5 + 1e-9
  grey = np.array([[0.3] * 3, [0.7] * 3]) * 255
  for k in range(1, 4):  # contrast / saturation / hue leave greys grey
    factors = [1.0, 1.0, 1.0, 0.0]
    factors[k - 1 if k < 3 else 3] = 0.2 if k < 3 else 0.3
    m = np.array(it.colour_affine(grey.mean(0), *factors, np.arange(4))).reshape(3, 4)
    mapped = grey @ m[:, :3].T + m[:, 3]
    np.testing.assert_allclose(mapped[:, 0], mapped[:, 1], atol=1e-6)
    np.testing.assert_allclose(mapped[:, 1], mapped[:, 2], atol=1e-6)
  a, b = (it.augment(image, (224, 224), np.random.default_rng(k)) for k in (1, 2))
  assert a.shape == b.shape == (224, 224, 3) and np.abs(a.astype(int) - b).mean() > 1


def test_fixture_actions_follow_the_image_and_the_instruction(fixture_dirs):
  """The first motion heads from the gripper ring to the object the instruction names first,
  found in the first frame by its colour: the action is readable from image + instruction."""
  from PIL import Image
  import io
  source = RLDSSource(fixture_dirs["libero"], get_spec("libero"))
  for i in range(EPISODES):
    episode = source.episode(i)
    colour = episode.instruction.split()[2]  # "put the <colour> <shape> on the ..."
    frame = np.asarray(Image.open(io.BytesIO(episode.images["primary"][0])).convert("RGB"), np.int32)
    target = np.argwhere(np.abs(frame - fixtures.COLOURS[colour]).sum(-1) < 60).mean(0)[::-1] / 256  # (x, y)
    ring = np.argwhere(np.abs(frame - 30).sum(-1) < 30).mean(0)[::-1] / 256
    motion = episode.actions[:4, :2].sum(0)
    cosine = motion @ (target - ring) / (np.linalg.norm(motion) * np.linalg.norm(target - ring))
    assert cosine > 0.95, (i, cosine)


def test_convert_cli(fixture_dirs, tmp_path):
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  tfrecord = data.write_fixture("calvin", str(tmp_path / "tfr"), 2, SEED, episode_length=LENGTH,
                                file_format="tfrecord")
  out = tmp_path / "ar" / "calvin_abc" / "1.0.0"
  run = subprocess.run([sys.executable, os.path.join(repo, "launch", "convert_rlds.py"), f"--in_dir={tfrecord}",
                        f"--out_dir={out}", "--spec=calvin"], capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-2000:]
  assert '"usable_episodes": 2' in run.stdout
  run = subprocess.run([sys.executable, os.path.join(repo, "launch", "convert_rlds.py"), f"--out_dir={out}",
                        "--spec=libero", "--validate_only"], capture_output=True, text=True, timeout=300)
  # CALVIN's 200x200 / 84x84 cameras are accepted as a copy at other sizes; its 15-wide state is not LIBERO's.
  assert run.returncode != 0 and "state is (15,) per step; expected (8,) as published for libero" in run.stderr


def test_observation_history(fixture_dirs, tmp_path):
  config = config_for(fixture_dirs, tmp_path, ("calvin",), history=3, augment=False)
  handles = pipeline.open_datasets(config)
  reader = pipeline.StepReader(handles, config, train=False)
  first = reader(0, 0, 0)  # step 0 of the first episode: two frames before the start
  assert first["images"].shape == (2, 3, 224, 224, 3) and first["state"].shape == (3, 15)
  np.testing.assert_array_equal(first["observation_mask"], [False, False, True])
  np.testing.assert_array_equal(first["images"][:, 0], first["images"][:, 2])
  later = reader(0, 5, 0)
  assert later["observation_mask"].all()
  np.testing.assert_array_equal(later["images"][:, 2], reader(0, 5, 1)["images"][:, 2])
  np.testing.assert_array_equal(later["images"][:, 1], reader(0, 4, 0)["images"][:, 2])
  batch = next(iter(data.make_dataset(config, process_index=0, process_count=1)))
  assert batch["images"].shape == (4, 2, 3, 224, 224, 3)
