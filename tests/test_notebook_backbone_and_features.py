"""notebooks/backbone_and_features.ipynb runs top to bottom on the tiny Qwen2.5-VL and a LIBERO-layout
fixture, and what it measured holds.

The test points the notebook's BACKBONE_DIR / DATA_DIR at a tiny checkpoint and a fixture written here
(the checkpoint is the one every test of this process shares), which is the path a user takes with a
real checkpoint; the notebook's own defaults write the same two things into its WORKDIR.
"""

import numpy as np
import pytest

import notebook_runner
import tiny_qwen
from roboalign_jax import data
from roboalign_jax.models import backbone as backbone_lib

pytestmark = pytest.mark.slow

EPISODES, NUM_PHASES, MAX_NEW_TOKENS = 4, 8, 16


def test_backbone_and_features_notebook(tmp_path):
  fixture = data.write_fixture("libero", str(tmp_path / "fixture"), EPISODES, 0)
  summary, seconds = notebook_runner.run_notebook("backbone_and_features", parameters={
      "WORKDIR": str(tmp_path / "work"), "BACKBONE_DIR": tiny_qwen.checkpoint_dir(), "DATA_DIR": fixture,
      "NUM_PHASES": NUM_PHASES, "MAX_NEW_TOKENS": MAX_NEW_TOKENS})
  print(f"\nbackbone_and_features.ipynb ran in {seconds:.1f} s")
  layers, width = summary["num_layers"], summary["hidden_size"]
  assert summary["family"] == "qwen2_5_vl" and (layers, width) == (4, 64)

  # The Stage 3 layer rule (18 of 28, scaled): layer 3 of the tiny model's 4.
  assert summary["feature_layer"] == backbone_lib.paper_feature_layer(layers) == 3

  # Processor: one image of grid (1, 8, 8) -> 16 merged image tokens inside a longer chat prompt.
  t, h, w = summary["image_grid"]
  assert summary["image_tokens"] == t * h * w // 4 > 0
  assert summary["prompt_tokens"] > summary["image_tokens"]

  # Embeddings + one hidden state per layer, all with finite positive norms.
  assert summary["num_hidden_states"] == layers + 1
  for norms in (summary["hidden_norm_image"], summary["hidden_norm_text"]):
    assert len(norms) == layers + 1 and all(np.isfinite(norms)) and min(norms) > 0

  # Greedy generation: something decoded, its first token the full forward's arg-max.
  assert 1 <= summary["generated_tokens"] <= MAX_NEW_TOKENS and summary["generated_text"].strip()
  assert summary["first_token_is_argmax"] == 1

  # Stage 3 features of every step: [steps, max_seq_len (tiny VLA config: 192), width].
  steps = summary["episode_length"]
  assert summary["feature_shape"] == [steps, 192, width] and steps >= 20
  assert summary["pooled_tokens"] > summary["image_tokens"]  # two cameras' images + the instruction

  # DTW phases of the episode: monotone in time, inside [0, NUM_PHASES), most phases visited.
  phases = summary["phase_labels"]
  assert len(phases) == steps and summary["phase_episodes"] == EPISODES
  assert all(a <= b for a, b in zip(phases, phases[1:])) and 0 <= phases[0] and phases[-1] < NUM_PHASES
  assert len(set(phases)) >= NUM_PHASES // 2

  # PCA: two explained-variance fractions in (0, 1], ordered, summing to at most 1.
  first, second = summary["pca_explained_variance"]
  assert 0 < second <= first <= 1 and first + second <= 1 + 1e-6
  # Adjacent frames are near copies: their features are closer than those of two random steps.
  assert 0 < summary["neighbour_distance_ratio"] < 1
