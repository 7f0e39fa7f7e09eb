"""Per-step transforms and their inverses; the training pipeline and a Policy read a step through
the same transforms; a Policy maps a model's normalised chunk back to the dataset's actions; a
FAST-token policy of a backbone runs, saves and loads; bad observations get clear errors."""

import numpy as np
import pytest

from roboalign_jax import data, policies
from roboalign_jax.data import image_transforms, normalization, pipeline, transforms
from roboalign_jax.data.specs.common import CLOSE_POSITIVE, OPEN_AMOUNT, OPEN_POSITIVE
from roboalign_jax.policies.policy import Policy, PolicyDescription
import tiny_qwen

HORIZON = 4


@pytest.fixture(scope="module")
def libero(tmp_path_factory):
  root = tmp_path_factory.mktemp("libero")
  path = data.write_fixture("libero", str(root / "rlds"), 3, 0, episode_length=(20, 24))
  config = data.data_config(datasets=[data.dataset_entry("libero", path)], cache_dir=str(root / "cache"),
                            progress=False, augment=False, action_horizon=HORIZON, image_size=(112, 112))
  return {"root": root, "config": config, "handles": data.open_datasets(config)}


def _stats(rng, dim):
  values = rng.normal(size=(500, dim)) * rng.uniform(0.1, 3.0, dim) + rng.normal(size=dim)
  return normalization.Stats.of(values)


def test_inverses_undo_their_transforms():
  rng = np.random.default_rng(0)
  stats = _stats(rng, 7)
  mask = tuple(bool(m) for m in normalization.action_mask(7))
  normalize = transforms.Normalize("actions", stats, mask)
  inside = stats.q01 + (stats.q99 - stats.q01) * rng.uniform(0, 1, (5, 7))
  inside[:, 6] = rng.choice([-1.0, 1.0], 5)
  step = {"actions": inside.astype(np.float32), "other": "kept"}
  forward = normalize(step)
  assert forward["other"] == "kept" and np.abs(forward["actions"]).max() <= 1.0
  np.testing.assert_allclose(normalize.inverse()(forward)["actions"], inside, rtol=1e-5, atol=1e-5)
  pad = transforms.PadWidth("state", 8, 64, mask_key="state_mask")
  padded = pad({"state": np.arange(8.0)})
  assert padded["state"].shape == (64,) and not padded["state"][8:].any() and padded["state_mask"].sum() == 8
  np.testing.assert_array_equal(pad.inverse()(padded)["state"], np.arange(8.0))
  image = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
  rotate = transforms.Rotate180(("image/primary",))
  np.testing.assert_array_equal(rotate.inverse()(rotate({"image/primary": image}))["image/primary"], image)
  both = transforms.Compose((normalize, transforms.PadWidth("actions", 7, 32)))
  np.testing.assert_allclose(both.inverse()(both(step))["actions"], inside, rtol=1e-5, atol=1e-5)
  # Resize-with-pad keeps the aspect ratio: a 100 x 50 (H x W) image fills the middle 32 columns.
  tall = np.full((100, 50, 3), 200, np.uint8)
  padded_image = transforms.ResizeImages(("image/wrist",), (64, 64), pad=True)({"image/wrist": tall})["image/wrist"]
  assert padded_image.shape == (64, 64, 3)
  assert not padded_image[:, :16].any() and not padded_image[:, 48:].any() and (padded_image[:, 17:47] == 200).all()
  with pytest.raises(ValueError, match="ResizeImages has no inverse"):
    transforms.Compose((transforms.ResizeImages(("image/primary",), (4, 4)),)).inverse()
  with pytest.raises(ValueError, match="state has width 9 .*expected 8"):
    pad({"state": np.zeros(9)})


@pytest.mark.parametrize("convention, raw_close, raw_open", [
    (CLOSE_POSITIVE, 1.0, -1.0),    # LIBERO
    (OPEN_POSITIVE, -1.0, 1.0),     # CALVIN
    (OPEN_AMOUNT, 0.0, 1.0),        # Bridge: open amount
])
def test_gripper_conventions_round_trip(convention, raw_close, raw_open):
  actions = np.zeros((4, 7), np.float32)
  actions[:, 6] = [raw_close, raw_open, raw_open, raw_close]
  common = transforms.GripperToCommon("actions", convention)({"actions": actions})["actions"]
  np.testing.assert_array_equal(common[:, 6], [1, -1, -1, 1])  # +1 close, -1 open
  # The model's continuous output snaps back to the dataset's own values.
  noisy = common.copy()
  noisy[:, 6] *= 0.7
  back = transforms.GripperFromCommon("actions", convention)({"actions": noisy})["actions"]
  np.testing.assert_array_equal(back[:, 6], actions[:, 6])
  # Per-step and whole-episode standardisation agree on decided values.
  np.testing.assert_array_equal(convention.standardize_episode(actions[:, 6]), common[:, 6])


def _request(handle, episode_id, t):
  """A serving request built from a dataset step, as a client would send it (dataset orientation)."""
  source = handle.source
  episode = source.episode(episode_id)
  request = {"observation/state": episode.states[t], "prompt": episode.instruction}
  for camera, (path, shape) in source.spec.cameras.items():
    image = image_transforms.decode(episode.images[camera][t], shape, dataset="x", episode=0, step=t, path=path)
    request[path] = np.asarray(image)
  return request, episode


def test_pipeline_and_policy_read_a_step_the_same_way(libero):
  handle = libero["handles"][0]
  reader = pipeline.StepReader(libero["handles"], libero["config"], train=False)
  layout = pipeline.layout_transforms(libero["config"], handle, reader.state_dim)
  step_id = int(handle.index.offsets[1]) + 5  # step 5 of the second episode
  example = reader(0, step_id, 0)
  episode_id, t = int(example["episode"]), int(example["step"])
  request, episode = _request(handle, episode_id, t)
  model_input = layout.inputs()(request)
  np.testing.assert_array_equal(model_input["image/primary"], example["images"][0, 0])
  np.testing.assert_array_equal(model_input["image/wrist"], example["images"][1, 0])
  np.testing.assert_array_equal(model_input["state"], example["state"][0])
  assert model_input["instruction"] == example["instruction"]
  # And back: the normalised training target of that step unnormalises to the dataset's actions.
  chunk = layout.outputs({"actions": example["actions"]})["actions"]
  raw = episode.actions[t:t + HORIZON]
  within = (raw >= handle.statistics.action.q01) & (raw <= handle.statistics.action.q99)
  np.testing.assert_allclose(chunk[within], raw[within], rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(chunk[:, 6], raw[:, 6])


def test_policy_returns_the_dataset_actions_of_an_oracle_model(libero):
  handle = libero["handles"][0]
  reader = pipeline.StepReader(libero["handles"], libero["config"], train=False)
  description = PolicyDescription(kind="oracle", layout="libero", cameras=("primary", "wrist"),
                                  image_size=(112, 112), state_width=64, action_horizon=HORIZON,
                                  statistics=handle.statistics)
  target = reader(0, 3, 0)
  seen = {}

  def oracle(model_input):
    seen.update(model_input)
    padded = np.zeros((HORIZON, 32), np.float32)
    padded[:, :7] = target["actions"]
    return padded

  policy = Policy(description, oracle)
  request, episode = _request(handle, int(target["episode"]), int(target["step"]))
  out = policy.infer(request)
  assert out["actions"].shape == (HORIZON, 7) and out["actions"].dtype == np.float32
  assert seen["state"].shape == (64,) and not seen["state"][8:].any()
  assert seen["image/primary"].shape == (112, 112, 3)
  t = int(target["step"])
  raw = episode.actions[t:t + HORIZON]
  within = (raw >= handle.statistics.action.q01) & (raw <= handle.statistics.action.q99)
  np.testing.assert_allclose(out["actions"][within], raw[within], rtol=1e-5, atol=1e-5)
  assert out["policy_timing"]["infer_ms"] > 0


@pytest.mark.parametrize("change, message", [
    (lambda r: r.pop("observation/wrist_image"), "no 'observation/wrist_image' .*wrist camera.*uint8"),
    (lambda r: r.update({"observation/image": r["observation/image"].astype(np.float32)}),
     r"observation\['observation/image'\] is float32 .*expected uint8 \[H, W, 3\]"),
    (lambda r: r.update({"observation/image": r["observation/image"][..., 0]}), r"expected uint8 \[H, W, 3\]"),
    (lambda r: r.update({"observation/state": np.zeros(7)}), r"observation/state'\] is float64 \(7,\); expected float \[8\]"),
    (lambda r: r.update({"observation/state": np.full(8, np.nan)}), "non-finite"),
    (lambda r: r.update({"prompt": "  "}), "expected a non-empty instruction string"),
    (lambda r: r.pop("prompt"), "expected a non-empty instruction string"),
    (lambda r: r.update({"prompt": "pick " * 201}), r"observation\['prompt'\] has 1005 characters; expected an "
     "instruction of at most 1000"),
    (lambda r: r.update({"observation/image": np.zeros((0, 5, 3), np.uint8)}), "with H, W >= 1"),
    (lambda r: r.update({"observation/state": np.zeros(8, "m8[s]")}), r"is timedelta64\[s\] \(8,\); expected float"),
    (lambda r: r.update({"observation/state": np.zeros(8, bool)}), r"is bool \(8,\); expected float"),
])
def test_bad_observations_are_named(libero, change, message):
  handle = libero["handles"][0]
  description = PolicyDescription(kind="oracle", layout="libero", cameras=("primary", "wrist"),
                                  image_size=(112, 112), state_width=64, action_horizon=HORIZON,
                                  statistics=handle.statistics)
  policy = Policy(description, lambda inputs: np.zeros((HORIZON, 7)))
  request, _ = _request(handle, int(handle.index.episodes[0]), 0)
  change(request)
  with pytest.raises((KeyError, ValueError), match=message):
    policy.infer(request)


def test_fast_policy_infers_saves_and_loads(libero, tmp_path):
  from roboalign_jax.fast import FASTTokenizer
  from roboalign_jax.models import backbone as backbone_lib
  from roboalign_jax.policies import fast_policy
  handle = libero["handles"][0]
  backbone = backbone_lib.load_dir(tiny_qwen.checkpoint_dir(112 * 112))
  fast = FASTTokenizer.fit(pipeline.action_chunks(libero["handles"], HORIZON), vocab_size=64)
  policy = fast_policy.make(backbone, backbone.params, fast, handle.statistics, layout="libero",
                            action_horizon=HORIZON, image_size=(112, 112), max_new_tokens=8)
  request, _ = _request(handle, int(handle.index.episodes[0]), 2)
  first = policy.infer(request)["actions"]
  assert first.shape == (HORIZON, 7) and np.isfinite(first).all()
  assert set(np.unique(first[:, 6])) <= {-1.0, 1.0}  # LIBERO's gripper values
  np.testing.assert_array_equal(policy.infer(request)["actions"], first)  # greedy: deterministic
  fast_policy.save(policy, str(tmp_path / "policy"))
  loaded = policies.load(str(tmp_path / "policy"))
  np.testing.assert_array_equal(loaded.infer(request)["actions"], first)
  assert loaded.metadata["action_horizon"] == HORIZON and loaded.metadata["layout"] == "libero"
  with pytest.raises(FileNotFoundError, match="has no policy.json"):
    policies.load(str(tmp_path))
