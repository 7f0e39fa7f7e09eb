"""The KNN representation probe (eval/knn_probe.py): DTW phase labels, the k-NN vote, the split,
real backbone features, the `knn_probe` evaluator and `launch/probe.py`."""

import dataclasses
import functools
import json
import os
import subprocess
import sys
import types

import jax
import ml_collections
import numpy as np
import pytest

import launch_helpers
import tiny_qwen
from configs_loader import REPO_ROOT
from roboalign_jax import data
from roboalign_jax.eval import knn_probe
from roboalign_jax.models import backbone as backbone_lib
from roboalign_jax.train import evaluators

C = 32


def _reference(length=64):
  """A smooth state path whose steps are all distinct (float [length, 3])."""
  t = np.linspace(0.0, 1.0, length)
  return np.stack([t, np.sin(3 * t), t ** 2], 1)


def _repeated_set(num=20, length=64):
  """Demonstrations that replay the reference 1x..3x slower (each step held r times), and the phase
  every timestep must get: the reference step it replays has phase floor(j * C / length)."""
  ref = _reference(length)
  repeats = [1] + [1 + i % 3 for i in range(1, num)]
  states = [np.repeat(ref, r, axis=0) for r in repeats]
  truth = [np.repeat(np.arange(length) * C // length, r) for r in repeats]
  return states, truth


def test_labels_of_replayed_demonstrations_are_the_reference_phases():
  states, truth = _repeated_set()
  labels = knn_probe.phase_labels(states, C)
  for got, want in zip(labels, truth):
    np.testing.assert_array_equal(got, want)
  assert set(np.concatenate(labels)) == set(range(C))


def test_labels_are_invariant_to_time_stretching():
  ref = _reference(64)
  # 2x slower by linear interpolation: even steps are the reference's own states, odd ones the
  # midpoints between consecutive reference states.
  slow = np.stack([np.interp(np.arange(127) / 2, np.arange(64), ref[:, d]) for d in range(3)], 1)
  ref_labels, slow_labels = knn_probe.phase_labels([ref, slow], C, reference="first")
  np.testing.assert_array_equal(ref_labels, np.arange(64) * C // 64)
  # Every step the two share gets the reference's phase exactly; a midpoint gets the phase of one
  # of its two neighbours (they differ only at a phase boundary).
  np.testing.assert_array_equal(slow_labels[0::2], ref_labels)
  for t in range(63):
    assert slow_labels[2 * t + 1] in (ref_labels[t], ref_labels[t + 1])
  # Against the slow one as reference, a fast step t (= slow step 2t) aligns with slow steps 2t and
  # possibly 2t - 1 (an equally distant midpoint), so it takes the phase of 2t or, at a phase
  # boundary, that of 2t - 1.
  slow_ref, fast = knn_probe.phase_labels([slow, ref], C, reference="first")
  assert fast[0] == slow_ref[0]
  for t in range(1, 64):
    assert fast[t] in (slow_ref[2 * t], slow_ref[2 * t - 1])


def test_standardisation_keeps_a_large_state_dimension_from_dominating():
  ref = _reference(64)
  loud = ref.copy()
  loud[:, 2] *= 1e4
  np.testing.assert_array_equal(knn_probe.phase_labels([loud], C)[0], knn_probe.phase_labels([ref], C)[0])


def _features_for(labels, encode_phase: bool, seed=0):
  rng = np.random.default_rng(seed)
  out = {}
  for t, lab in enumerate(labels):
    for s, c in enumerate(lab):
      noise = rng.normal(size=C + 8) * 0.05
      out[(t, s)] = noise + (np.eye(C + 8)[c] if encode_phase else rng.normal(size=C + 8))
  return out


def test_phase_encoding_features_score_one_on_192_held_out_points():
  states, _ = _repeated_set()
  labels = knn_probe.phase_labels(states, C)
  config = knn_probe.ProbeConfig()
  train, test = knn_probe.split_indices([len(s) for s in states], labels, config)
  # The default split: 4 held-out demonstrations, 6 timesteps per class = 192 test points, the
  # denominator of the paper's figures; the other 16 demonstrations are the neighbours.
  assert len(test) == 192 and set(test[:, 0]) <= {16, 17, 18, 19} and set(train[:, 0]) == set(range(16))
  result = knn_probe.evaluate(_features_for(labels, True), labels, train, test, config)
  assert result.accuracy == 1.0 and result.num_test == 192
  np.testing.assert_array_equal(result.per_class_total, np.full(C, 6))
  np.testing.assert_array_equal(result.per_class_correct, np.full(C, 6))


def test_noise_features_score_chance():
  states, _ = _repeated_set()
  labels = knn_probe.phase_labels(states, C)
  config = knn_probe.ProbeConfig(split="leave_one_trajectory_out")
  train, test = knn_probe.split_indices([len(s) for s in states], labels, config)
  result = knn_probe.evaluate(_features_for(labels, False), labels, train, test, config)
  n, p = result.num_test, 1 / C
  assert n == sum(len(s) for s in states)
  # Balanced classes and label-free features: correct with probability 1/C; allow 4 binomial sigmas.
  assert abs(result.accuracy - p) < 4 * np.sqrt(p * (1 - p) / n), result.accuracy


def test_knn_hand_worked_cases():
  train_x = np.array([[10.0, 0.0], [1.0, 1.0]])
  train_y = np.array([0, 1])
  query = np.array([[1.0, 0.1]])
  # Euclidean: (1, 1) is 0.9 away, (10, 0) 9.0 -> class 1; cosine: (10, 0) is 5.7 degrees away,
  # (1, 1) 39.3 -> class 0.
  assert knn_probe.knn_predict(train_x, train_y, query, k=1, distance="euclidean").tolist() == [1]
  assert knn_probe.knn_predict(train_x, train_y, query, k=1, distance="cosine").tolist() == [0]
  # k = 4 on a line: neighbours at 1, 2 (class 1), 3, 4 (class 0) -> 2:2 tie -> the class of the
  # nearest neighbour; the farther class 2 rows never vote.
  xs = np.array([[1.0], [2.0], [3.0], [4.0], [50.0], [60.0]])
  ys = np.array([1, 1, 0, 0, 2, 2])
  assert knn_probe.knn_predict(xs, ys, np.array([[0.0]]), k=4, distance="euclidean").tolist() == [1]
  # 3:1 majority beats the nearest neighbour.
  ys = np.array([1, 0, 0, 0, 2, 2])
  assert knn_probe.knn_predict(xs, ys, np.array([[0.0]]), k=4, distance="euclidean").tolist() == [0]
  # Rows of the query's own demonstration are not neighbours: rows 0-3 are group 7 like the query.
  groups = np.array([7, 7, 7, 7, 1, 2])
  assert knn_probe.knn_predict(xs, ys, np.array([[0.0]]), k=1, distance="euclidean", train_groups=groups,
                               test_groups=np.array([7])).tolist() == [2]


def test_bad_inputs_name_what_was_expected():
  with pytest.raises(ValueError, match=r"pooling='max'.*'image_instruction', 'last', 'all'"):
    knn_probe.ProbeConfig(pooling="max").check()
  with pytest.raises(ValueError, match="distance='l1'"):
    knn_probe.knn_predict(np.zeros((5, 2)), np.zeros(5, int), np.zeros((1, 2)), distance="l1")
  with pytest.raises(ValueError, match="3 training rows; expected at least k=5"):
    knn_probe.knn_predict(np.eye(3), np.arange(3), np.eye(3)[:1], k=5)
  with pytest.raises(ValueError, match="fewer than k=2 training rows outside"):
    knn_probe.knn_predict(np.eye(3), np.arange(3), np.eye(3)[:1], k=2, train_groups=np.array([0, 0, 1]),
                          test_groups=np.array([0]))
  with pytest.raises(ValueError, match="test_trajectories=20"):
    knn_probe.ProbeConfig(test_trajectories=20).check()
  with pytest.raises(ValueError, match="reference demonstration has 10 steps; expected at least num_classes=32"):
    knn_probe.phase_labels([_reference(10)], 32)


# ---- real data and the tiny backbone --------------------------------------------------------------
SMALL = knn_probe.ProbeConfig(instruction="put the", match="substring", num_trajectories=4, num_classes=4,
                              test_trajectories=1, test_per_class=2, k=3, batch_size=8)


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory):
  return data.write_fixture("libero", str(tmp_path_factory.mktemp("probe_rlds")), 4, seed=0, episode_length=(20, 24))


@pytest.fixture(scope="module")
def backbone():
  return backbone_lib.load_dir(tiny_qwen.checkpoint_dir())


def test_trajectory_selection_errors_name_the_dataset(fixture_dir):
  with pytest.raises(ValueError, match=r"0 episodes have an instruction exact-matching 'open the drawer'.*"
                                       r"expected num_trajectories=4"):
    knn_probe.load_trajectories(fixture_dir, "libero", knn_probe.ProbeConfig(instruction="open the drawer",
                                                                             num_trajectories=4, test_trajectories=1))
  with pytest.raises(ValueError, match=r"4 episodes .* expected num_trajectories=5"):
    knn_probe.load_trajectories(fixture_dir, "libero", knn_probe.ProbeConfig(instruction="put the", match="substring",
                                                                             num_trajectories=5, test_trajectories=1))
  with pytest.raises(ValueError, match=r"cameras \['left'\].*libero"):
    knn_probe.load_trajectories(fixture_dir, "libero", knn_probe.ProbeConfig(cameras=("left",)))


def test_backbone_features_are_pooled_layer_states_and_deterministic(fixture_dir, backbone):
  probe = knn_probe.load_trajectories(fixture_dir, "libero", SMALL)
  assert [len(t) for t in probe.trajectories] == [len(lab) for lab in probe.labels]
  prepared = knn_probe.prepare(backbone, probe, SMALL)
  assert prepared.layer == backbone_lib.paper_feature_layer(backbone.num_layers) == 3
  shapes = {b.input_ids.shape for b in prepared.batches}
  assert len(shapes) == 1 and next(iter(shapes))[0] == 8  # one compiled shape
  features = knn_probe.backbone_features(prepared.fn, backbone.params, prepared.batches, len(prepared.rows), layer=3)
  assert features.shape == (len(prepared.rows), backbone.hidden_size) and np.isfinite(features).all()
  again = knn_probe.backbone_features(prepared.fn, backbone.params, prepared.batches, len(prepared.rows), layer=3)
  np.testing.assert_array_equal(features, again)
  # The pooled feature is the mean of layer-3 states over the image and user-text tokens.
  batch = prepared.batches[0]
  layer_3 = jax.jit(functools.partial(backbone_lib.layer_features, backbone.model, layer=3))
  hidden = np.asarray(layer_3(backbone.params, batch.input_ids, batch.attention_mask, batch.pixel_values,
                              batch.image_grid_thw))
  mask = batch.pool_mask[0].astype(bool)
  assert mask.sum() > np.isin(batch.input_ids[0], backbone.vision_token_ids).sum()  # text tokens too
  np.testing.assert_allclose(features[0], hidden[0][mask].mean(0), rtol=1e-4, atol=1e-5)
  result = knn_probe.score(backbone.params, prepared)
  assert result.num_test == 8 and 0.0 <= result.accuracy <= 1.0
  assert result.per_class_total.sum() == 8


def test_knn_probe_evaluator_probes_the_state_params(fixture_dir, backbone):
  config = ml_collections.ConfigDict({"evals": {"probe": dict(type="knn_probe", every=10, data=fixture_dir,
                                                              spec="libero", **_options(SMALL))}})
  built = evaluators.build(config, types.SimpleNamespace(backbone=backbone))
  assert [e.name for e in built] == ["probe"] and built[0].every == 10
  metrics = built[0](types.SimpleNamespace(params=backbone.params), 10)
  probe = knn_probe.load_trajectories(fixture_dir, "libero", SMALL)
  assert metrics == {"probe/knn_accuracy": knn_probe.run(backbone, backbone.params, probe, SMALL).accuracy}
  # Other parameters, another score input: the evaluator reads the state it is given.
  zeros = jax.tree_util.tree_map(np.zeros_like, backbone.params)
  assert built[0](types.SimpleNamespace(params=zeros), 20)["probe/knn_accuracy"] >= 0.0
  declined = ml_collections.ConfigDict({"evals": {"probe": dict(type="knn_probe", data="")}})
  assert evaluators.build(declined, types.SimpleNamespace(backbone=backbone)) == []


def _options(config):
  return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(config).items()}


@pytest.mark.slow  # a subprocess that imports the whole stack
def test_launch_probe_prints_a_table_and_writes_json(fixture_dir, tmp_path):
  ckpt = tiny_qwen.checkpoint_dir()
  out = tmp_path / "probe.json"
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO_ROOT, "launch", "probe.py"), f"--backbone=a={ckpt},b={ckpt}",
       f"--data={fixture_dir}", "--spec=libero", "--instruction=put the", "--match=substring", "--num_trajectories=4",
       "--num_classes=4", "--test_trajectories=1", "--test_per_class=2", "--k=3", "--pooling=last", f"--out={out}"],
      cwd=REPO_ROOT, env=launch_helpers.subprocess_env(), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads(out.read_text())["results"]
  assert set(results) == {"a", "b"} and results["a"] == results["b"] and results["a"]["num_test"] == 8
  assert "backbone  accuracy  correct/tested" in proc.stdout
  assert f"a         {100 * results['a']['accuracy']:8.2f}" in proc.stdout
  bad = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "launch", "probe.py"), "--backbone=/nonexistent",
                        f"--data={fixture_dir}"], cwd=REPO_ROOT, env=launch_helpers.subprocess_env(),
                       capture_output=True, text=True, timeout=600)
  assert bad.returncode != 0 and "directory '/nonexistent' not found" in bad.stderr
