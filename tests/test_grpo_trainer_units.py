"""GRPO trainer pieces without the backbone: the update batches, micro-batching equal to one
pass, non-finite updates skipped, the paper's schedule numbers, and config errors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs_loader import load_config
from roboalign_jax.models.qwen2_5_vl.model import Output
from roboalign_jax.rl import grpo as grpo_lib
from roboalign_jax.train import grpo
from roboalign_jax.train.optimizer import make_optimizer
from roboalign_jax.train.train_state import TrainState

VOCAB, PROMPT, RESPONSE, PATCHES = 11, 3, 4, 2


class TinyLM(nn.Module):
  """Stands in for the backbone's call signature: logits depend on tokens and the image."""
  vocab: int = VOCAB

  @nn.compact
  def __call__(self, input_ids, attention_mask, pixel_values, image_grid_thw, frame_patches=None):
    del attention_mask, image_grid_thw
    image = pixel_values.reshape(input_ids.shape[0], frame_patches, -1).mean(1)
    x = nn.Embed(self.vocab, 8)(input_ids) + nn.Dense(8)(image)[:, None]
    return Output(logits=nn.Dense(self.vocab)(jnp.tanh(x)))


def _rows(n, seed=0):
  rng = np.random.default_rng(seed)
  mask = (np.arange(RESPONSE)[None] < rng.integers(1, RESPONSE + 1, n)[:, None]).astype(np.float32)
  ids = rng.integers(0, VOCAB, (n, PROMPT + RESPONSE)).astype(np.int32)
  return {"input_ids": ids,
          "attention_mask": np.concatenate([np.ones((n, PROMPT), np.int32), mask.astype(np.int32)], 1),
          "response_mask": mask, "advantages": rng.normal(size=n).astype(np.float32),
          "pixel_values": rng.normal(size=(n, PATCHES, 6)).astype(np.float32),
          "image_grid_thw": np.tile(np.array([[1, 1, PATCHES]], np.int32), (n, 1)),
          "old_logprobs": rng.normal(-2.5, 0.3, (n, RESPONSE)).astype(np.float32),
          "ref_logprobs": rng.normal(-2.5, 0.3, (n, RESPONSE)).astype(np.float32)}


def _state_and_step(num_micro):
  model = TinyLM()
  rows = _rows(8)
  params = model.init(jax.random.key(0), rows["input_ids"], rows["attention_mask"],
                      rows["pixel_values"].reshape(-1, 6), rows["image_grid_thw"], frame_patches=PATCHES)["params"]
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-2, weight_decay=1e-2))
  state = TrainState.create(params, tx, jax.random.PRNGKey(0))
  step = jax.jit(lambda s, r: grpo.update_step(
      s, r, model=model, tx=tx, schedule=optax.constant_schedule(1e-2), loss_config=grpo_lib.GRPOLossConfig(),
      num_micro=num_micro, use_ref=True, prompt_len=PROMPT, temperature=0.7, frame_patches=PATCHES))
  return state, step, rows


def test_micro_batches_give_the_update_of_one_pass():
  state, one_pass, rows = _state_and_step(1)
  _, in_four, _ = _state_and_step(4)
  a, metrics_a = one_pass(state, rows)
  b, metrics_b = in_four(state, rows)
  # Micro-batch losses are weighted by their share of the tokens: the sum is the whole update's token mean.
  for key in ("loss", "pg_loss", "kl", "clip_frac_upper", "grad_norm"):
    np.testing.assert_allclose(metrics_a[key], metrics_b[key], rtol=1e-5, atol=1e-7)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7), a.params, b.params)
  assert int(a.step) == 1 and float(metrics_a["update_skipped"]) == 0.0
  # And the loss is policy_loss on the whole update's log-probs.
  logp = grpo.sequence_logprobs(state.params, TinyLM(), rows, prompt_len=PROMPT, temperature=0.7,
                                frame_patches=PATCHES)
  want, _ = grpo_lib.policy_loss(logp, rows["old_logprobs"], rows["ref_logprobs"], rows["advantages"],
                                 rows["response_mask"], grpo_lib.GRPOLossConfig())
  np.testing.assert_allclose(metrics_a["loss"], want, rtol=1e-5)


def test_batch_logprobs_in_micro_batches_equal_one_forward():
  state, _, rows = _state_and_step(1)
  kw = dict(prompt_len=PROMPT, temperature=0.7, frame_patches=PATCHES)
  whole = grpo.sequence_logprobs(state.params, TinyLM(), rows, **kw)
  micro = grpo.batch_logprobs(state.params, rows, model=TinyLM(), num_micro=4, **kw)
  np.testing.assert_allclose(micro, whole, rtol=1e-6, atol=1e-6)


def test_non_finite_update_is_skipped_and_counted():
  state, step, rows = _state_and_step(2)
  rows["advantages"][3] = np.nan
  new, metrics = step(state, rows)
  assert float(metrics["update_skipped"]) == 1.0 and not np.isfinite(float(metrics["grad_norm"]))
  jax.tree.map(np.testing.assert_array_equal, new.params, state.params)
  assert int(new.step) == 1  # the step counter moves on


def test_split_updates_pads_the_last_update_with_masked_copies():
  rows = {k: v for k, v in _rows(10).items()}
  updates = grpo.split_updates(rows, 4)
  assert [u["input_ids"].shape[0] for u in updates] == [4, 4, 4]
  np.testing.assert_array_equal(np.concatenate([u["input_ids"] for u in updates])[:10], rows["input_ids"])
  assert updates[-1]["response_mask"][2:].sum() == 0 and updates[-1]["response_mask"][:2].sum() > 0
  tokens = sum(u["response_mask"].sum() for u in updates)
  assert tokens == rows["response_mask"].sum()


def test_paper_defaults_in_the_7b_variant():
  config = load_config("configs/grpo.py:7b")
  assert grpo.updates_per_rollout(config) == 20  # 512 prompts x 5 samples / 128
  assert grpo.num_rollout_steps(config) == 25  # one epoch over 12.8K prompts
  assert (config.data.global_batch_size, config.rollout.num_samples, config.grpo.update_batch_size) == (512, 5, 128)
  assert (config.rollout.temperature, config.rollout.top_p) == (1.0, 1.0)
  assert (config.grpo.clip_low, config.grpo.clip_high, config.grpo.clip_dual, config.grpo.kl_coef) == (0.2, 0.3, 3.0, 1e-2)
  o = config.optim
  assert (o.lr, o.schedule, o.weight_decay, o.grad_clip, o.warmup_steps, o.warmup_ratio) == (1e-6, "constant", 1e-2, 1.0, 0, 0.0)
  _, schedule = make_optimizer(o, 500)
  assert float(schedule(0)) == float(schedule(499)) == 1e-6
  assert load_config("configs/grpo.py:7b,steps=3").train.num_steps == 3
  # Validation as EasyR1's example config: val_before_train, val_freq 5, temperature 0.6, top_p 0.95, n 1.
  v = config.evals.validation
  assert (v.type, v.before_train, v.every, v.temperature, v.top_p, v.num_samples) == (
      "grpo_validation", True, 5, 0.6, 0.95, 1)
  assert v.datasets == [] and load_config("configs/grpo.py:7b,eval_data=/d,eval_split=val").evals.validation.split == "val"


@pytest.mark.parametrize("change,message", [
    (dict(init_dir=""), "config.model.init_dir is empty"),
    (dict(datasets=[]), "config.data.datasets is empty"),
    (dict(micro_batch_size=3), "update_batch_size=16 must be a positive multiple of config.grpo.micro_batch_size=3"),
    (dict(num_samples=1), "needs at least 2"),
    (dict(max_seq_len=0), "max_seq_len must be > 0"),
    (dict(temperature=0.0), "temperature=0.0"),
    (dict(clip_dual=0.5), "clip_dual must be > 1"),
])
def test_config_errors(change, message):
  config = load_config("configs/grpo.py:tiny,init=/x,data=/y,fast=/z")
  for key, value in change.items():
    for section in ("model", "data", "grpo", "rollout"):
      if key in config[section]:
        config[section][key] = value
  with pytest.raises(ValueError, match=message.replace("(", r"\(")):
    grpo.check_config(config, data_parallel=1)


def test_micro_batch_must_split_over_the_mesh():
  config = load_config("configs/grpo.py:tiny,init=/x,data=/y,fast=/z")
  with pytest.raises(ValueError, match="micro_batch_size=16 does not split over the mesh's data x fsdp = 3 ways"):
    grpo.check_config(config, data_parallel=3)


def test_online_filtering_keeps_groups_with_different_rewards():
  rewards = np.array([0.5, 0.5, 0.5, 1.0, 0.0, 0.5, 0.2, 0.2, 0.2], np.float32)
  keep = grpo.informative_samples(rewards, 3)
  np.testing.assert_array_equal(keep, [False] * 3 + [True] * 3 + [False] * 3)
  prompts = grpo.Prompts(input_ids=np.arange(6).reshape(3, 2), attention_mask=np.ones((3, 2), np.int32),
                         pixel_values=np.zeros((3, 1, 6), np.float32), image_grid_thw=np.ones((3, 3), np.int32),
                         targets=[[1], [2], [3]])
  tokens = np.arange(9 * 2).reshape(9, 2)
  rows = grpo.training_rows(prompts, tokens, np.ones((9, 2), bool), np.arange(9.0), np.zeros((9, 2)),
                            np.flatnonzero(keep), 3)
  # The kept samples of prompt 1, each after its own prompt, in rollout order.
  np.testing.assert_array_equal(rows["input_ids"], [[2, 3, 6, 7], [2, 3, 8, 9], [2, 3, 10, 11]])
  np.testing.assert_array_equal(rows["advantages"], [3, 4, 5])


def test_rollouts_never_sample_vision_placeholders():
  from roboalign_jax.models import qwen2_5_vl
  from roboalign_jax.models.qwen2_5_vl import backbone as qwen_backbone
  from roboalign_jax.models.qwen2_5_vl import tiny
  from roboalign_jax.rl import rollout
  config = qwen2_5_vl.Qwen2_5_VLConfig.from_variant("tiny")
  model, params = qwen2_5_vl.Qwen2_5_VL(config), tiny.random_params(config)
  banned = qwen_backbone.FAMILY.vision_token_ids(config)
  # A head that prefers the placeholders: without suppression greedy decoding picks one.
  head = params["lm_head"]["kernel"]
  params["lm_head"]["kernel"] = head.at[:, list(banned)].set(head[:, list(banned)] + 5.0 * jnp.sign(head.mean(1))[:, None])
  ids = jnp.array([[20, 21, 22, 23]], jnp.int32)
  free = rollout.generate(model, params, ids, max_new_tokens=6, temperature=0.0)
  assert np.isin(np.asarray(free.tokens), banned).any()
  for temperature in (0.0, 1.0):
    out = rollout.generate(model, params, ids, max_new_tokens=6, temperature=temperature, num_samples=4,
                           rng=jax.random.key(0), suppress_token_ids=banned)
    assert not np.isin(np.asarray(out.tokens), banned).any()
  with pytest.raises(ValueError, match="suppress_token_ids must be ids >= 0"):
    rollout.generate(model, params, ids, max_new_tokens=2, temperature=0.0, suppress_token_ids=[-1])
