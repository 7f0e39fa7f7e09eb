"""Qwen3-VL as a registered family through every stage, as a user selects it (`family=qwen3_vl` in
the config argument): a tiny random Qwen3-VL is trained by SFT and exported, GRPO starts from that
export and exports, a Stage 3 head trains on the GRPO export's features and its policy serves a
LIBERO request; the KNN probe and the MLLM harness read the exports. Each step checks what it
produced (action tokens, reloadable HF directories, the layer the head read, finite actions)."""

import json
import os
import time

import jax
import numpy as np
import pytest
import torch
from transformers import Qwen3VLForConditionalGeneration

import launch_helpers
import sft_helpers
import tiny_policies
import tiny_qwen
from configs_loader import load_config
from roboalign_jax import data, policies
from roboalign_jax.eval import knn_probe
from roboalign_jax.eval.mllm import runner
from roboalign_jax.models import backbone as backbone_lib
from roboalign_jax.models.qwen3_vl import Qwen3VL
from test_mllm_runner import write_jsonl
from test_mllm_scorers import WordOverlapJudgeForTests

IMAGE_PIXELS = 128 * 128  # 112 px frames resize to 128 px: 4 x 4 merged tokens per camera


def _train(config: str, workdir, *flags: str) -> dict:
  proc = launch_helpers.run(config, str(workdir), "--config.data.progress=False", *flags, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_sft_grpo_vla_probe_and_mllm_on_qwen3_vl(tmp_path):
  started = time.perf_counter()
  lap = lambda name: print(f"{name}: {time.perf_counter() - started:.0f} s")  # noqa: E731
  paths = sft_helpers.prepared()  # FAST tokenizer, Bridge-layout fixtures, conversations
  processor = tiny_qwen.qwen3_processor_dir(IMAGE_PIXELS)
  bridge, fast = paths["fixtures"]["bridge"], paths["fast_dir"]

  # Stage 1: random init of the tiny Qwen3-VL, 2 steps, HF export. Through launch/train.py on one
  # device, as a user runs it (8 emulated devices would make every compile several times slower).
  cache = f"--config.data.cache_dir={tmp_path / 'cache'}"
  summary = _train(f"configs/sft.py:tiny,family=qwen3_vl,processor={processor},fast={fast},data={bridge},"
                   f"vqa={paths['conversations']['vqa']},steps=2", tmp_path / "sft", cache,
                   "--config.data.global_batch_size=8", "--config.sft.images_per_batch=16")
  sft_dir = summary["hf_dir"]
  assert np.isfinite(summary["loss"])
  lap("sft")
  sft_backbone = backbone_lib.load_dir(sft_dir, family_name="qwen3_vl")
  assert isinstance(sft_backbone.model, Qwen3VL) and sft_backbone.family.name == "qwen3_vl"
  assert sft_backbone.model.config.text.vocab_size % 128 == 0 and sft_backbone.action_vocab.num_action_tokens == 2048
  # transformers reads the export (action tokens included in the vocabulary).
  hf = Qwen3VLForConditionalGeneration.from_pretrained(sft_dir, dtype=torch.float32)
  assert hf.lm_head.weight.shape[0] == sft_backbone.model.config.text.vocab_size

  # Stage 2: one rollout batch from the SFT export, HF export.
  summary = _train(f"configs/grpo.py:tiny,family=qwen3_vl,init={sft_dir},fast={fast},data={bridge},steps=1",
                   tmp_path / "grpo", cache, "--config.rollout.max_new_tokens=12")
  grpo_dir = summary["hf_dir"]
  assert 0.0 <= summary["reward"] <= 1.0
  lap("grpo")
  grpo_backbone = backbone_lib.load_dir(grpo_dir, family_name="qwen3_vl")
  assert grpo_backbone.action_vocab == sft_backbone.action_vocab

  # Stage 3: a few head steps on the GRPO export's layer-3 features (paper depth for 4 layers).
  libero = data.write_fixture("libero", str(tmp_path / "libero"), 4, 0)
  vla_spec = f"configs/vla.py:tiny,family=qwen3_vl,backbone={grpo_dir},data={libero},steps=3"
  summary = _train(vla_spec, tmp_path / "vla", cache, "--config.data.augment=False")
  assert np.isfinite(summary["loss"])
  policy_dir = summary["policy_dir"]
  lap("vla")
  with open(os.path.join(policy_dir, "policy.json")) as f:
    description = json.load(f)
  assert description["backbone"]["family"] == "qwen3_vl" and description["feature_layer"] == 3
  cfg = load_config(vla_spec)
  cfg.data.update(cache_dir=str(tmp_path / "cache"), progress=False)
  policy = policies.load(policy_dir)
  out = policy.infer(tiny_policies.libero_request(data.open_datasets(cfg.data)[0]))
  assert out["actions"].shape == (16, 7) and np.isfinite(out["actions"]).all()

  # The probe and the MLLM harness on the exports.
  probe_config = knn_probe.ProbeConfig(instruction="put the", match="substring", num_trajectories=4,
                                       num_classes=4, test_trajectories=1, test_per_class=2, k=3, batch_size=8)
  trajectories = knn_probe.load_trajectories(libero, "libero", probe_config)
  probe = knn_probe.run(grpo_backbone, grpo_backbone.params, trajectories, probe_config)
  lap("probe")
  assert probe.num_test == 8 and 0.0 <= probe.accuracy <= 1.0
  table = runner.evaluate([f"grpo={grpo_dir}"], [("jsonl", write_jsonl(str(tmp_path / "bench")))],
                          str(tmp_path / "mllm"), batch_size=2, max_new_tokens=4, judge=WordOverlapJudgeForTests(),
                          progress=False)
  lap("mllm")
  assert table["generated"] == {"grpo": {"jsonl": 2}} and 0.0 <= table["scores"]["grpo"]["jsonl"] <= 100.0
  assert jax.tree.structure(sft_backbone.params) == jax.tree.structure(grpo_backbone.params)
