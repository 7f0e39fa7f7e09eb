"""GRPO validation (`grpo_validation`, train/grpo_eval.py), as EasyR1 runs it: the loop runs a
`before_train` evaluator at step 0, every `every` steps and after the last one (not again at
step 0 of a resumed run); the validation prompts are a fixed set of held-out episodes disjoint
from the training prompts (a training dataset is refused); the same params give the same
samples and values whatever the step, other params give other samples; and each response is
scored against its own prompt's target (responses equal to the targets score 1).

The learning signal on the validation prompts is asserted by test_grpo_trainer.py."""

import dataclasses
import hashlib
import logging

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import tiny_qwen
from configs_loader import load_config
from roboalign_jax import data
from roboalign_jax.config.base import base_config
from roboalign_jax.data import pipeline
from roboalign_jax.demo import format_warmup
from roboalign_jax.fast import FASTTokenizer
from roboalign_jax.models.sampling import Rollout
from roboalign_jax.parallel import mesh as mesh_lib
from roboalign_jax.rl import rewards
from roboalign_jax.train import evaluators, grpo, grpo_eval, loop
from roboalign_jax.train.metrics import read_metrics

NUM_PROMPTS, BATCH, SAMPLES = 8, 4, 4  # two generation batches of 4 prompts x 4 samples


# ---- the loop: when an evaluator runs ------------------------------------------------------------
def _run_loop(workdir, num_steps, calls):
  import grain
  config = base_config("test")
  config.train.update(num_steps=num_steps, log_every=1)
  config.checkpoint.update(every_steps=100, async_save=False)
  mesh = mesh_lib.create_mesh({"data": -1, "fsdp": 1, "tensor": 1})
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  state = {"w": jax.device_put(jnp.zeros((), jnp.float32), device)}
  abstract = {"w": jax.ShapeDtypeStruct((), jnp.float32, sharding=device)}

  def step(state, batch, n):
    return {"w": state["w"] + 1.0}, {"loss": float(n)}

  def evaluate(state, n):
    calls.append((n, float(state["w"])))
    return {"val/w": float(state["w"])}

  stage = loop.Stage(name="test", state=state, abstract_state=abstract, step=step,
                     data_iter=iter(grain.MapDataset.range(1000).to_iter_dataset()), num_steps=num_steps,
                     evaluators=[evaluators.Evaluator("validation", 2, evaluate, before_train=True)])
  return loop.run(config, str(workdir), mesh, stage)


def test_before_train_every_and_final_steps_and_not_again_on_resume(tmp_path):
  calls = []
  _run_loop(tmp_path, 5, calls)
  # Step 0 sees the initial state (w = 0): it runs before the first step.
  assert calls == [(0, 0.0), (2, 2.0), (4, 4.0), (5, 5.0)]
  logged = [(r["step"], r["val/w"]) for r in read_metrics(str(tmp_path)) if "val/w" in r]
  assert logged == calls
  calls.clear()
  _run_loop(tmp_path, 7, calls)  # resumes at 5: no second "before training" validation
  assert calls == [(6, 6.0), (7, 7.0)]


def test_before_train_is_read_from_the_config(monkeypatch):
  monkeypatch.setitem(evaluators.EVALUATORS, "fake", f"{__name__}:_fake_factory")
  config = ml_collections.ConfigDict({"evals": {"a": {"type": "fake", "every": 3, "before_train": True},
                                                "b": {"type": "fake", "every": 4}}})
  assert [(e.name, e.every, e.before_train) for e in evaluators.build(config, setup=None)] == [
      ("a", 3, True), ("b", 4, False)]


def _fake_factory(options, setup):
  return lambda state, step: {}


# ---- the evaluator on the tiny backbone ----------------------------------------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory):
  """Training and held-out Bridge fixtures (other seeds: other scenes), FAST, the tiny random
  backbone as the policy, and a built GRPO setup whose config declares the validation."""
  root = tmp_path_factory.mktemp("grpo_val")
  train = data.write_fixture("bridge", str(root / "train"), 2, 0, episode_length=(20, 24))
  heldout = data.write_fixture("bridge", str(root / "heldout"), 1, 1, episode_length=(20, 24))
  cache = str(root / "cache")
  handles = pipeline.open_datasets(data.data_config(datasets=[data.dataset_entry("bridge", train)], cache_dir=cache,
                                                    progress=False, action_horizon=1))
  FASTTokenizer.fit(pipeline.action_chunks(handles, 1), vocab_size=16, scale=5.0).save(str(root / "fast"))
  config = load_config(f"configs/grpo.py:tiny,init={tiny_qwen.checkpoint_dir()},fast={root / 'fast'},data={train},"
                       f"eval_data={heldout},steps=2")
  config.data.update(cache_dir=cache, progress=False)
  config.evals.validation.update(num_prompts=NUM_PROMPTS, batch_size=BATCH, num_samples=SAMPLES)
  mesh = mesh_lib.create_mesh(config.mesh.to_dict())
  prompt_data = ml_collections.ConfigDict(config.data.to_dict())
  prompt_data.processor_dir = config.model.init_dir
  train_handles = pipeline.open_datasets(prompt_data, "train")
  setup = grpo.build(config, mesh, data=prompt_data, handles=train_handles)
  (validation,) = evaluators.build(config, setup)
  return {"config": config, "setup": setup, "validation": validation, "train": train, "heldout": heldout}


def _prompt_keys(prompts):
  return {hashlib.sha1(ids.tobytes() + pixels.tobytes()).hexdigest()
          for ids, pixels in zip(prompts.input_ids, prompts.pixel_values)}


def test_validation_prompts_are_a_fixed_held_out_set(world):
  validation = world["validation"]
  assert validation.before_train and validation.every == 5
  ev = validation.fn
  held_out = set().union(*map(_prompt_keys, ev.prompts))
  assert sum(len(p.targets) for p in ev.prompts) == NUM_PROMPTS and len(held_out) == NUM_PROMPTS
  # Every training prompt of an epoch (and some more): none is a validation prompt.
  setup = world["setup"]
  stream = iter(pipeline.make_dataset(setup.data, "train", handles=setup.handles, process_index=0, process_count=1))
  batches = -(-setup.handles[0].index.num_steps // setup.data.global_batch_size) + 1
  trained = set().union(*(_prompt_keys(grpo.prompts_from_batch(next(stream))) for _ in range(batches)))
  assert not held_out & trained
  # The set is fixed: built again, it is the same prompts with the same targets.
  again = grpo_eval.make_evaluator(world["config"].evals.validation, setup)
  assert [_prompt_keys(p) for p in again.prompts] == [_prompt_keys(p) for p in ev.prompts]
  assert again.targets() == ev.targets()
  # Training data as validation data is refused; its other split would be accepted.
  options = ml_collections.ConfigDict(world["config"].evals.validation.to_dict())
  options.datasets = [data.dataset_entry("bridge", world["train"])]
  with pytest.raises(ValueError, match="is a training dataset"):
    grpo_eval.make_evaluator(options, setup)
  assert grpo_eval.make_evaluator(ml_collections.ConfigDict({**options.to_dict(), "datasets": []}), setup) is None


def test_same_params_same_values_other_params_other_samples(world):
  ev, state = world["validation"].fn, world["setup"].state
  tokens, mask = ev.sample(state.params)
  assert tokens.shape == (NUM_PROMPTS * SAMPLES, world["config"].rollout.max_new_tokens)
  again, _ = ev.sample(state.params)
  np.testing.assert_array_equal(tokens, again)
  # Fixed keys, not the step's: the values at two steps differ only if the params do.
  assert ev(state, 0) == ev(state, 35)
  # The G samples of a prompt differ (sampled, temperature 1 in the tiny config) ...
  per_prompt = tokens.reshape(NUM_PROMPTS, SAMPLES, -1)
  assert all(len({row.tobytes() for row in group}) > 1 for group in per_prompt)
  # ... and other params sample other responses.
  moved = jax.tree.map(lambda x: x * 1.5 if x.ndim == 2 else x, state.params)
  other, _ = ev.sample(moved)
  assert (other != tokens).any()


def test_each_response_is_scored_against_its_own_prompts_target(world, monkeypatch):
  ev, state = world["validation"].fn, world["setup"].state
  backbone = ev.backbone
  n = world["config"].rollout.max_new_tokens

  def oracle(shift):
    """generate() answering sample g of prompt b with the GRPO-format answer of prompt b + shift."""
    calls = iter(range(len(ev.prompts)))

    def generate(model, params, input_ids, *args, num_samples, pad_token_id, **kw):
      targets = ev.prompts[next(calls)].targets
      assert len(targets) == input_ids.shape[0]
      tokens = np.full((len(targets) * num_samples, n), pad_token_id, np.int32)
      mask = np.zeros(tokens.shape, bool)
      for b in range(len(targets)):
        ids = format_warmup.response_ids(targets[(b + shift) % len(targets)]["fast_ids"], backbone.tokenizer,
                                         backbone.action_vocab)[:n]
        tokens[b * num_samples:(b + 1) * num_samples, :len(ids)] = ids
        mask[b * num_samples:(b + 1) * num_samples, :len(ids)] = True
      return Rollout(tokens=jnp.asarray(tokens), logprobs=jnp.zeros(tokens.shape), mask=jnp.asarray(mask),
                     num_steps=jnp.int32(n))
    return generate

  monkeypatch.setattr(grpo_eval.sampling, "generate", oracle(0))
  right = ev(state, 0)
  assert right["val/accuracy_reward"] == 1.0 and right["val/format_reward"] == 1.0 and right["val/reward"] == 1.0
  assert set(right) == {"val/reward", "val/accuracy_reward", "val/format_reward", "val/response_length",
                        "val/prompts_left_out"} and right["val/prompts_left_out"] == 0
  lengths = [len(format_warmup.response_ids(t["fast_ids"], backbone.tokenizer, backbone.action_vocab))
             for t in ev.targets()]
  assert right["val/response_length"] == pytest.approx(np.mean(lengths))
  # The neighbour's answer: still well formed, scored by the prefix it shares with this prompt's target.
  monkeypatch.setattr(grpo_eval.sampling, "generate", oracle(1))
  wrong = ev(state, 0)
  want = np.mean([rewards.accuracy_reward(p.targets[(b + 1) % len(p.targets)]["fast_ids"], p.targets[b]["fast_ids"])
                  for p in ev.prompts for b in range(len(p.targets))])
  assert wrong["val/format_reward"] == 1.0 and wrong["val/accuracy_reward"] == pytest.approx(want) and want < 1.0


def test_too_long_held_out_prompts_are_sampled_but_left_out_of_the_means(world, monkeypatch, caplog, tmp_path):
  """A held-out prompt longer than data.max_seq_len keeps its batch's shape (grpo.PromptCollate),
  is named in a warning and counted, and its responses do not enter the means."""
  setup, state = world["setup"], world["setup"].state
  # Episodes of several instructions (the shared held-out set has one, so one prompt length).
  options = ml_collections.ConfigDict(world["config"].evals.validation.to_dict())
  options.datasets = [data.dataset_entry("bridge", data.write_fixture("bridge", str(tmp_path / "heldout"), 4, 2,
                                                                      episode_length=(20, 24)))]
  options.batch_size = NUM_PROMPTS  # one generation batch: it needs only one prompt under the limit
  lengths = [p.prompt_lengths for p in grpo_eval.make_evaluator(options, setup).prompts]
  # The largest limit each generation batch still has a prompt under, so every batch keeps one.
  limit = max(int(batch.min()) for batch in lengths)
  too_long = np.concatenate(lengths) > limit
  assert too_long.any(), f"the fixture's held-out prompts all fit {limit} tokens: {lengths}"
  shorter = dataclasses.replace(setup, data=ml_collections.ConfigDict({**setup.data.to_dict(), "max_seq_len": limit}))
  with caplog.at_level(logging.WARNING, logger="roboalign_jax.train.grpo_eval"):
    ev = grpo_eval.make_evaluator(options, shorter)
  np.testing.assert_array_equal(ev.usable, ~too_long)
  assert ev.prompts[0].input_ids.shape[1] == limit
  assert f"longer than config.data.max_seq_len={limit} tokens left out of the validation means" in caplog.text
  backbone, n = ev.backbone, world["config"].rollout.max_new_tokens
  calls = iter(ev.prompts)

  def generate(model, params, input_ids, *args, num_samples, pad_token_id, **kw):
    """Each usable prompt answered with its own target; the left-out ones with nothing (reward 0)."""
    prompts = next(calls)
    usable = grpo.check_prompts(prompts, limit)[0]
    tokens = np.full((len(prompts.targets) * num_samples, n), pad_token_id, np.int32)
    mask = np.zeros(tokens.shape, bool)
    for b in np.flatnonzero(usable):
      ids = format_warmup.response_ids(prompts.targets[b]["fast_ids"], backbone.tokenizer, backbone.action_vocab)[:n]
      tokens[b * num_samples:(b + 1) * num_samples, :len(ids)] = ids
      mask[b * num_samples:(b + 1) * num_samples, :len(ids)] = True
    return Rollout(tokens=jnp.asarray(tokens), logprobs=jnp.zeros(tokens.shape), mask=jnp.asarray(mask),
                   num_steps=jnp.int32(n))

  monkeypatch.setattr(grpo_eval.sampling, "generate", generate)
  values = ev(state, 0)
  assert values["val/reward"] == values["val/accuracy_reward"] == values["val/format_reward"] == 1.0
  assert values["val/prompts_left_out"] == too_long.sum()

