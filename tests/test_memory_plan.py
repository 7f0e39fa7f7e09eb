"""benchmarks/memory_plan.py: its per-device bytes follow the real train state's shardings, split
as the mesh says, and the flags it prints pass the trainers' own checks."""

import functools
import math
import os
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest
from transformers import AutoTokenizer

import tiny_qwen
from configs_loader import REPO_ROOT, load_config
from roboalign_jax.models.qwen2_5_vl.config import Qwen2_5_VLConfig
from roboalign_jax.models.qwen_vl_checkpoint import dummy_inputs
from roboalign_jax.parallel.mesh import create_mesh
from roboalign_jax.parallel.sharding import DEFAULT_RULES
from roboalign_jax.train import grpo, sft

sys.path.insert(0, os.path.join(REPO_ROOT, "benchmarks"))
import memory_plan as mp  # noqa: E402

GIB = 1024 ** 3


def device_bytes(tree) -> int:
  """The largest per-device total of a tree of real (sharded) arrays."""
  per_device: dict = {}
  for leaf in jax.tree.leaves(tree):
    for shard in leaf.addressable_shards:
      per_device[shard.device] = per_device.get(shard.device, 0) + shard.data.nbytes
  return max(per_device.values())


@pytest.fixture(scope="module")
def tiny_vocab():
  """The tiny model's vocabulary by the plan's rule (tokenizer + action tokens, rounded to 128)."""
  base = len(AutoTokenizer.from_pretrained(tiny_qwen.processor_dir()))
  return mp.extended_vocab_size(Qwen2_5_VLConfig.from_variant("tiny").text.vocab_size, base)


def test_tiny_sft_state_bytes_equal_the_trainers_sharded_state(tiny_vocab):
  sizes = dict(data=2, fsdp=2, tensor=2)  # every rule in play: embed on fsdp, heads / mlp / vocab on tensor
  config = load_config(f"configs/sft.py:tiny,processor={tiny_qwen.processor_dir()}")
  config.mesh.update(sizes)
  setup = sft.build(config, create_mesh(sizes), num_steps=10)
  assert setup.backbone.model.config.text.vocab_size == tiny_vocab  # the plan's vocabulary rule
  p = mp.plan("sft", "tiny", 8, sizes, vocab_size=tiny_vocab, activations=False)
  assert p.params == device_bytes(setup.state.params)
  assert p.optimizer == device_bytes(setup.state.opt_state)  # the real optax state, frozen parts without
  assert p.optimizer < 2 * p.params  # the frozen vision tower has no AdamW moments


def test_tiny_grpo_state_and_reference_bytes_equal_the_trainers(tiny_vocab):
  sizes = dict(data=1, fsdp=8, tensor=1)
  config = load_config(f"configs/grpo.py:tiny,init={tiny_qwen.checkpoint_dir()}")
  config.mesh.update(sizes)
  setup = grpo.build(config, create_mesh(sizes))
  p = mp.plan("grpo", "tiny", 8, sizes, vocab_size=setup.backbone.model.config.text.vocab_size, activations=False)
  assert p.params == device_bytes(setup.state.params)
  assert p.optimizer == device_bytes(setup.state.opt_state)
  assert p.reference == device_bytes(setup.ref_params) == p.params
  # Nothing frozen in GRPO: AdamW's mu and nu for every parameter (plus the step counts).
  assert 2 * p.params <= p.optimizer < 2 * p.params + 1024


@functools.lru_cache(maxsize=None)
def _split_and_whole(variant: str) -> tuple[int, int]:
  """(bytes of the parameters with an `embed` dim, bytes of the others) of the real model, from
  jax.eval_shape and its logical axis names: the default rules put `embed` (only) on fsdp."""
  assert [name for name, axis in DEFAULT_RULES if axis == "fsdp"] == ["embed"]
  config = load_config(f"configs/sft.py:{variant}")
  model = mp.make_model(config)
  boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), *dummy_inputs(model.config)))["params"]
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  nbytes = lambda box: math.prod(box.value.shape) * box.value.dtype.itemsize
  return (sum(nbytes(b) for b in leaves if "embed" in b.names),
          sum(nbytes(b) for b in leaves if "embed" not in b.names))


def test_7b_parameters_split_over_fsdp_except_the_small_vectors():
  split, whole = _split_and_whole("7b")
  assert 8.29e9 < (split + whole) / 4 < 8.32e9  # Qwen2.5-VL-7B + the action-token rows, fp32
  p = mp.plan("sft", "7b", 8, dict(data=1, fsdp=8, tensor=1), activations=False)
  assert p.params == split // 8 + whole
  assert whole < 1e-3 * p.params  # norms and biases without an embed dim
  assert not p.uneven
  # The configs' default mesh (data=-1) replicates everything: the 7B state cannot fit 80 GB.
  default = mp.plan("sft", "7b", 8, activations=False)
  assert default.params == split + whole and default.mesh == dict(data=8, fsdp=1, tensor=1)


def test_doubling_fsdp_halves_the_sharded_state():
  _, whole = _split_and_whole("7b")
  p8 = mp.plan("grpo", "7b", 8, dict(data=1, fsdp=8, tensor=1), activations=False)
  p16 = mp.plan("grpo", "7b", 16, dict(data=1, fsdp=16, tensor=1), activations=False)
  for part in ("params", "grads", "optimizer", "reference"):
    a, b = getattr(p8, part), getattr(p16, part)
    replicated = a - 2 * (a - b)  # what stays whole on every device
    assert 0 <= replicated <= 2 * whole + 1024, part
  assert p16.reference == p16.params and p16.grads == 2 * p16.params  # scan accumulator + a micro-batch
  # Data parallelism next to fsdp leaves the state per device as it is.
  p8x2 = mp.plan("grpo", "7b", 16, dict(data=2, fsdp=8, tensor=1), activations=False)
  assert (p8x2.params, p8x2.optimizer) == (p8.params, p8.optimizer)


def test_activations_and_cache_follow_the_rows_per_device(tiny_vocab):
  # 8 prompts x 4 samples, updates of 16 rows: the same rows per device on 16 devices either way.
  a = mp.plan("grpo", "tiny", 16, dict(data=2, fsdp=8, tensor=1), vocab_size=tiny_vocab)
  b = mp.plan("grpo", "tiny", 16, dict(data=1, fsdp=16, tensor=1), vocab_size=tiny_vocab)
  assert a.activations == b.activations > 0 and a.kv_cache == b.kv_cache > 0
  # Half the devices: twice the rollout rows, so twice the cache.
  c = mp.plan("grpo", "tiny", 8, dict(data=1, fsdp=8, tensor=1), vocab_size=tiny_vocab)
  assert c.kv_cache == pytest.approx(2 * a.kv_cache, rel=1e-5)  # all but the cache's scalar length
  # SFT: 16 rows per batch; 8 per device has more activations than 2.
  s2 = mp.plan("sft", "tiny", 8, dict(data=1, fsdp=8, tensor=1), vocab_size=tiny_vocab)
  s8 = mp.plan("sft", "tiny", 2, dict(data=1, fsdp=2, tensor=1), vocab_size=tiny_vocab)
  assert s8.detail["rows_per_device"] == 4 * s2.detail["rows_per_device"]
  assert s8.detail["saved"] > 3 * s2.detail["saved"]


def test_remat_saves_only_the_layer_inputs(tiny_vocab):
  with_remat = mp.plan("grpo", "tiny", 8, dict(data=1, fsdp=8, tensor=1), overrides={"model.remat": True},
                       vocab_size=tiny_vocab)
  without = mp.plan("grpo", "tiny", 8, dict(data=1, fsdp=8, tensor=1), vocab_size=tiny_vocab)
  assert with_remat.detail["saved"] < without.detail["saved"]


@pytest.mark.parametrize("gpus", [16, 64])
def test_grpo_flags_pass_the_trainers_check(gpus):
  ways = gpus  # data x fsdp with tensor=1
  extra = mp.required_overrides("grpo", "7b", ways, gpus // 8)
  config = mp.load_config("grpo", "7b", extra)
  config.model.init_dir, config.data.datasets = "/ckpt", [dict(name="bridge")]
  grpo.check_config(config, ways)
  assert config.grpo.micro_batch_size // ways == 1  # one row per device, as on 8 GPUs
  bare = mp.load_config("grpo", "7b")
  bare.model.init_dir, bare.data.datasets = "/ckpt", [dict(name="bridge")]
  with pytest.raises(ValueError, match="micro_batch_size"):
    grpo.check_config(bare, ways)


def test_sft_flags_for_several_hosts():
  extra = mp.required_overrides("sft", "7b", 64, 8)
  config = mp.load_config("sft", "7b", extra)
  assert config.evals.heldout.batch_size % 64 == 0  # sampling.generate splits rows over data x fsdp
  assert config.sft.images_per_batch and config.model.per_image_vision in ("on", "off")  # sft.py's multi-process checks
  assert mp.required_overrides("sft", "7b", 8, 1) == {}


def test_fsdp_across_nodes_moves_more_between_nodes():
  one_node = mp.plan("sft", "7b", 8, dict(data=1, fsdp=8, tensor=1), activations=False)
  inside = mp.plan("sft", "7b", 16, dict(data=2, fsdp=8, tensor=1), activations=False)
  across = mp.plan("sft", "7b", 16, dict(data=1, fsdp=16, tensor=1), activations=False)
  assert mp.traffic(one_node, 8) == 0
  assert 0 < mp.traffic(inside, 8) < mp.traffic(across, 8) / 10
  np.testing.assert_allclose(mp.traffic(inside, 8), 2 * inside.model_bytes / 8 / 2)
