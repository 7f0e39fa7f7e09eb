"""Degenerate GRPO batches have defined, counted and logged outcomes: every reward equal (no
optimiser step, with and without online filtering), every response cut at the token limit, empty
targets and empty answers, and prompts longer than config.data.max_seq_len (left out of the
update through the real Grain pipeline; a batch of only those raises).

The trainer's steps 2-5 (`learn_from_rollout`) run on a small stand-in model with the backbone's
call signature and the tiny tokenizer extended by the action tokens, so no backbone compiles."""

import functools
import logging
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import tiny_qwen
from configs_loader import load_config
from test_grpo_trainer_units import TinyLM
from roboalign_jax import data
from roboalign_jax.data import pipeline, samples
from roboalign_jax.fast import FASTTokenizer
from roboalign_jax.fast.vocab import fast_ids_to_text
from roboalign_jax.parallel import mesh as mesh_lib
from roboalign_jax.rl import grpo as grpo_lib
from roboalign_jax.rl import rewards
from roboalign_jax.train import grpo
from roboalign_jax.train.train_state import TrainState

PROMPT, RESPONSE, PATCHES, B, G = 4, 24, 2, 2, 4
TARGET = [12, 7, 3]
GOOD = f"<think>move left</think><answer>{fast_ids_to_text(TARGET)}</answer><|im_end|>"
HALF = f"<think>move left</think><answer>{fast_ids_to_text([12, 9])}</answer><|im_end|>"


@pytest.fixture(scope="module")
def tok():
  return tiny_qwen.extended_tokenizer()


def _responses(tokenizer, texts, eos=True):
  """Rollout-like tokens / mask [len(texts), RESPONSE]: mask True up to and including EOS."""
  tokens = np.full((len(texts), RESPONSE), tokenizer.convert_tokens_to_ids("<|endoftext|>"), np.int32)
  mask = np.zeros(tokens.shape, bool)
  for i, text in enumerate(texts):
    ids = tokenizer.encode(text)[:RESPONSE]
    assert eos or len(ids) == RESPONSE, f"{text!r} must fill the {RESPONSE} tokens to be truncated"
    tokens[i, :len(ids)] = ids
    mask[i, :len(ids)] = True
  return tokens, mask


@pytest.fixture(scope="module")
def trainer(tok):
  """A GRPO setup around a small model over the extended tokenizer's vocabulary."""
  tokenizer, vocab = tok
  config = load_config("configs/grpo.py:tiny,init=/x,data=/y,fast=/z")
  config.data.max_seq_len = PROMPT
  config.rollout.update(num_samples=G, max_new_tokens=RESPONSE, temperature=1.0)
  config.grpo.update(update_batch_size=B * G, micro_batch_size=B * G)
  model = TinyLM(vocab=len(tokenizer))
  n = B * G
  params = model.init(jax.random.key(0), np.zeros((n, PROMPT + RESPONSE), np.int32),
                      np.ones((n, PROMPT + RESPONSE), np.int32), np.zeros((n * PATCHES, 6), np.float32),
                      np.tile([[1, 1, PATCHES]], (n, 1)), frame_patches=PATCHES)["params"]
  tx = optax.adamw(1e-2)
  kw = dict(prompt_len=PROMPT, temperature=1.0, frame_patches=PATCHES)
  logprobs = jax.jit(functools.partial(grpo.batch_logprobs, model=model, num_micro=1, **kw))
  update = jax.jit(functools.partial(grpo.update_step, model=model, tx=tx, schedule=optax.constant_schedule(1e-2),
                                     loss_config=grpo_lib.GRPOLossConfig(), num_micro=1, use_ref=True, **kw))
  im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
  setup = grpo.GRPOSetup(backbone=types.SimpleNamespace(tokenizer=tokenizer, action_vocab=vocab),
                         state=TrainState.create(params, tx, jax.random.key(1)), abstract_state=None,
                         ref_params=params, eos_ids=[im_end], make_functions=lambda _: (logprobs, update))
  mesh = mesh_lib.create_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
  return config, setup, mesh


def _prompts(targets, lengths=None, instructions=None):
  b = len(targets)
  return grpo.Prompts(input_ids=np.arange(b * PROMPT, dtype=np.int32).reshape(b, PROMPT) % 50 + 1,
                      attention_mask=np.ones((b, PROMPT), np.int32),
                      pixel_values=np.random.default_rng(0).normal(size=(b, PATCHES, 6)).astype(np.float32),
                      image_grid_thw=np.tile(np.array([[1, 1, PATCHES]], np.int32), (b, 1)), targets=targets,
                      prompt_lengths=None if lengths is None else np.asarray(lengths, np.int32),
                      instructions=instructions or [f"task {i}" for i in range(b)])


def _learn(trainer, prompts, tokens, mask, online_filtering=False):
  config, setup, mesh = trainer
  config.grpo.online_filtering = online_filtering
  logp = np.full(tokens.shape, -3.0, np.float32)
  return grpo.learn_from_rollout(config, setup, mesh, setup.state, prompts, tokens, mask, logp, step=7)


def _unchanged(state, before):
  return all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), state.params, before.params)))


# ---- every reward equal ------------------------------------------------------------------------
@pytest.mark.parametrize("online_filtering", [False, True])
def test_all_equal_rewards_are_counted_and_filtering_skips_the_step(trainer, tok, caplog, online_filtering):
  tokenizer, _ = tok
  _, setup, _ = trainer
  prompts = _prompts([{"fast_ids": TARGET}, {"fast_ids": TARGET}])
  # Every sample of every group the same answer: rewards all 1, every advantage exactly 0.
  tokens, mask = _responses(tokenizer, [GOOD] * (B * G))
  with caplog.at_level(logging.WARNING, logger="roboalign_jax.train.grpo"):
    state, record = _learn(trainer, prompts, tokens, mask, online_filtering)
  assert record["zero_advantage_batch"] == 1.0 and record["informative_groups"] == 0.0
  assert record["reward"] == 1.0 and all(np.isfinite(v) for v in record.values())
  assert "GRPO rollout batch 7: every group's 4 rewards are equal (rewards 1)" in caplog.text
  if online_filtering:  # nothing to learn from: no step
    assert record["updates"] == 0 and record["optimizer_steps"] == int(setup.state.step) == 0 and int(state.step) == 0
    assert _unchanged(state, setup.state)
    assert "loss" not in record  # no update, so no update metrics (never a NaN stand-in)
    assert "no optimiser step" in caplog.text
  else:  # EasyR1's behaviour: the step is taken, with a zero policy-gradient term
    assert record["updates"] == 1 and int(state.step) == 1
    assert record["pg_loss"] == 0.0 and np.isfinite(record["loss"]) and np.isfinite(record["grad_norm"])
    assert "only through the KL term" in caplog.text

  # Control: one group whose rewards differ trains (so the check above is not vacuous).
  caplog.clear()
  tokens, mask = _responses(tokenizer, [GOOD, HALF, GOOD, HALF] + [GOOD] * G)
  with caplog.at_level(logging.WARNING, logger="roboalign_jax.train.grpo"):
    state, record = _learn(trainer, prompts, tokens, mask, online_filtering)
  assert record["zero_advantage_batch"] == 0.0 and record["updates"] == 1 and record["informative_groups"] == 0.5
  assert int(state.step) == 1 and not _unchanged(state, setup.state)
  assert np.isfinite(record["loss"]) and np.isfinite(record["grad_norm"]) and record["updates_skipped"] == 0.0
  assert "rewards are equal" not in caplog.text


def test_all_equal_advantages_and_empty_losses_are_zero_not_nan():
  # Values whose float32 group mean is inexact: the advantage must still be exactly 0, not ~1e-2.
  for value in (0.0, 1.0, 1 / 3, 0.1 + 0.2, 0.7, 1e6):
    adv = np.asarray(grpo_lib.group_advantages(np.full(4 * 5, value, np.float32), 5))
    np.testing.assert_array_equal(adv, 0.0)
  plan = grpo.plan_update({"overall": np.full(8, 0.25, np.float32), "format": np.full(8, 0.5, np.float32),
                           "length": np.full(8, 3.0, np.float32)}, np.ones((8, 3), np.int32), np.ones((8, 3), bool),
                          usable=np.ones(2, bool), num_samples=4, online_filtering=True, eos_ids=[1],
                          max_new_tokens=3)
  assert plan.keep.size == 0 and plan.record["zero_advantage_batch"] == 1.0
  # The loss of zero advantages over zero valid tokens (an update of padding only): 0 with 0 gradient.
  logp = jnp.full((4, 6), -2.0)
  zeros = jnp.zeros((4, 6))
  grad, metrics = jax.grad(lambda lp: grpo_lib.policy_loss(lp, lp + 0.1, lp - 0.1, jnp.zeros(4), zeros,
                                                          grpo_lib.GRPOLossConfig()), has_aux=True)(logp)
  assert all(float(v) == 0.0 for v in metrics.values()) and not np.asarray(grad).any()


# ---- every response truncated -------------------------------------------------------------------
def test_every_response_truncated_is_scored_counted_and_logged(trainer, tok, caplog):
  tokenizer, _ = tok
  ids = lambda n: fast_ids_to_text(n)[:-len("<action_end>")]  # cut inside the action span
  texts = ["<think>" + "keep moving left " * 12,                                          # rambling
           "<think>a</think><answer>" + ids([12, 7]) + "<action_1>" * 20,                 # looping actions
           "<think>a</think><answer>" + ids([12]) + "<action_9>" * 20,
           "<think>" + "lower the arm " * 12]
  tokens, mask = _responses(tokenizer, texts * B, eos=False)
  assert mask.all()
  prompts = _prompts([{"fast_ids": TARGET}] * B)
  scores = rewards.score_responses(tokens, mask, [{"fast_ids": TARGET}] * (B * G), tokenizer, tok[1])
  np.testing.assert_array_equal(scores["format"], 0.0)  # a cut-off answer never passes the format check
  np.testing.assert_allclose(scores["accuracy"][:4], [0, 2 / 3, 1 / 3, 0], rtol=1e-6)  # ids generated so far
  with caplog.at_level(logging.WARNING, logger="roboalign_jax.train.grpo"):
    state, record = _learn(trainer, prompts, tokens, mask)
  assert record["response_truncated"] == 1.0 and record["format_reward"] == 0.0
  assert record["response_length"] == RESPONSE
  assert record["updates"] == 1 and int(state.step) == 1
  assert all(np.isfinite(record[k]) for k in ("loss", "pg_loss", "kl", "grad_norm", "reward"))
  assert f"every response reached rollout.max_new_tokens={RESPONSE} without an end-of-turn token" in caplog.text
  # One response that stops in time: no warning, the fraction says how many were cut.
  caplog.clear()
  stop = tokens.copy()
  stop[0, -1] = trainer[1].eos_ids[0]
  with caplog.at_level(logging.WARNING, logger="roboalign_jax.train.grpo"):
    _, record = _learn(trainer, prompts, stop, mask)
  assert record["response_truncated"] == pytest.approx(7 / 8) and "max_new_tokens" not in caplog.text


# ---- empty targets and empty answers ------------------------------------------------------------
@pytest.mark.parametrize("target", [{"fast_ids": []}, {"fast_ids": ""}, {"fast_ids": None}, [], np.zeros(0, int)],
                         ids=["empty list", "empty string", "None", "plain empty", "empty array"])
def test_empty_target_scores_zero_accuracy(tok, target):
  tokenizer, vocab = tok
  assert rewards.is_empty_target(target)
  tokens, mask = _responses(tokenizer, [GOOD])
  out = rewards.score_responses(tokens, mask, [target], tokenizer, vocab)
  assert float(out["accuracy"][0]) == 0.0 and float(out["format"][0]) == 1.0
  assert float(out["overall"][0]) == 0.5


def test_is_empty_target():
  assert rewards.is_empty_target({}) and rewards.is_empty_target(None) and rewards.is_empty_target("")
  assert not rewards.is_empty_target({"fast_ids": [0]}) and not rewards.is_empty_target([5])
  assert not rewards.is_empty_target({"fast_ids": [], "letter": "B"})  # another reward's payload has ground truth


def test_bad_target_types_raise_naming_the_input():
  with pytest.raises(ValueError, match="target_action_ids: expected a 1-D sequence of integer FAST ids, got the "
                                       "string '<action_start>'"):
    rewards.accuracy_reward([1], "<action_start>")
  with pytest.raises(ValueError, match="needs a target payload with 'fast_ids'"):
    rewards.roboalign_score(rewards.ParsedResponse("", []), {})


@pytest.mark.parametrize("text", ["<|im_end|>", "", "<think>a</think><answer><action_start><action_end></answer>"],
                         ids=["only EOS", "nothing (mask all False)", "empty action span"])
def test_empty_answer_scores_zero(tok, text):
  tokenizer, vocab = tok
  tokens, mask = _responses(tokenizer, [text])
  assert mask.sum() == len(tokenizer.encode(text))
  out = rewards.score_responses(tokens, mask, [{"fast_ids": TARGET}], tokenizer, vocab)
  assert (float(out["format"][0]), float(out["accuracy"][0]), float(out["overall"][0])) == (0.0, 0.0, 0.0)


def test_empty_target_prompt_is_left_out_counted_and_logged(trainer, tok, caplog):
  tokenizer, _ = tok
  prompts = _prompts([{"fast_ids": TARGET}, {"fast_ids": []}], instructions=["open the drawer", "wipe the table"])
  tokens, mask = _responses(tokenizer, [GOOD, HALF, GOOD, HALF] * B)
  with caplog.at_level(logging.WARNING, logger="roboalign_jax.train.grpo"):
    state, record = _learn(trainer, prompts, tokens, mask)
  assert record["empty_targets"] == 1.0 and record["prompts_too_long"] == 0.0
  # Only the scored prompt counts: its rewards are 1 and 2/3 (the empty target's would be 0.5 and 0.5).
  assert record["reward"] == pytest.approx(5 / 6) and record["informative_groups"] == 1.0
  assert record["updates"] == 1 and int(state.step) == 1 and np.isfinite(record["loss"])
  assert "1 prompt(s) with an empty target" in caplog.text and "'wipe the table'" in caplog.text
  # The update carries the scored prompt's 4 samples only.
  usable, _ = grpo.check_prompts(prompts, PROMPT)
  plan = grpo.plan_update(rewards.score_responses(tokens, mask, [{"fast_ids": TARGET}] * G + [{"fast_ids": []}] * G,
                                                  tokenizer, tok[1]),
                          tokens, mask, usable=usable, num_samples=G, online_filtering=False, eos_ids=[0],
                          max_new_tokens=RESPONSE)
  np.testing.assert_array_equal(plan.keep, np.arange(G))
  with pytest.raises(ValueError, match="none of the 2 prompts of this rollout batch can be trained on: 0 longer than "
                                       r"config.data.max_seq_len=4 tokens, 2 with an empty target \(prompt 0 \('a'\)"):
    grpo.check_prompts(_prompts([{"fast_ids": []}, {"fast_ids": None}], instructions=["a", "b"]), PROMPT)


# ---- prompts longer than max_seq_len ------------------------------------------------------------
@pytest.fixture(scope="module")
def grpo_data(tmp_path_factory):
  root = tmp_path_factory.mktemp("grpo_degenerate")
  path = data.write_fixture("bridge", str(root / "rlds"), 3, 0, episode_length=(20, 26))
  base = dict(datasets=[data.dataset_entry("bridge", path)], cache_dir=str(root / "cache"), global_batch_size=4,
              progress=False, action_horizon=1)
  handles = pipeline.open_datasets(data.data_config(**base))
  FASTTokenizer.fit(pipeline.action_chunks(handles, 1), vocab_size=16, scale=5.0).save(str(root / "fast"))
  config = data.data_config(**base, sample="grpo", fast_tokenizer_dir=str(root / "fast"),
                            processor_dir=tiny_qwen.processor_dir(), image_size=(112, 112), cameras=("primary",))
  first = next(iter(data.make_dataset(config, process_index=0, process_count=1)))
  return config, handles, first["attention_mask"].sum(1), {"root": root, "path": path}


def _first_batch(config, handles, collate=True):
  fn = grpo.PromptCollate(samples.make_builder(config), config.max_seq_len) if collate else None
  return next(iter(data.make_dataset(config, process_index=0, process_count=1, handles=handles, collate_fn=fn)))


def test_too_long_prompt_is_left_out_counted_and_named(grpo_data, caplog):
  config, handles, lengths, _ = grpo_data
  assert lengths.min() < lengths.max(), "the fixture's instructions must give prompts of different lengths"
  config = config.copy_and_resolve_references()
  config.max_seq_len = int(lengths.min())
  # Without PromptCollate the builder's padding ends the run at the first long prompt.
  with pytest.raises(ValueError, match=f"exceeds config.data.max_seq_len={lengths.min()}"):
    _first_batch(config, handles, collate=False)
  batch = _first_batch(config, handles)
  long = batch["prompt_length"] > config.max_seq_len
  np.testing.assert_array_equal(batch["prompt_length"], lengths)
  assert batch["input_ids"].shape == (4, config.max_seq_len) and 0 < long.sum() < 4
  prompts = grpo.prompts_from_batch(batch)
  too_long, empty = prompts.left_out()
  np.testing.assert_array_equal(too_long, long)
  assert not empty.any()
  usable, warnings = grpo.check_prompts(prompts, config.max_seq_len)
  np.testing.assert_array_equal(usable, ~long)
  assert warnings == [f"{long.sum()} prompt(s) longer than config.data.max_seq_len={config.max_seq_len} tokens left "
                      f"out of the update (prompts_too_long): " + ", ".join(
                          f"prompt {j} ({batch['instruction'][j]!r}) has {lengths[j]} tokens" for j in np.flatnonzero(long))]
  # The update leaves the too-long prompts' samples out, and so do the reward means.
  n = 4 * 2
  scores = {"overall": np.arange(n, dtype=np.float32), "length": np.ones(n, np.float32)}
  plan = grpo.plan_update(scores, np.zeros((n, 3), np.int32), np.ones((n, 3), bool), usable=usable, num_samples=2,
                          online_filtering=False, eos_ids=[0], max_new_tokens=3)
  np.testing.assert_array_equal(plan.keep, np.flatnonzero(np.repeat(usable, 2)))
  assert plan.record["reward"] == pytest.approx(scores["overall"][np.repeat(usable, 2)].mean())


def test_batch_of_only_too_long_prompts_raises(grpo_data):
  config, handles, lengths, _ = grpo_data
  config = config.copy_and_resolve_references()
  config.max_seq_len = int(lengths.min()) - 1
  with pytest.raises(ValueError, match=f"every prompt of this GRPO batch is longer than config.data.max_seq_len="
                                       f"{lengths.min() - 1} tokens"):
    _first_batch(config, handles)
  prompts = _prompts([{"fast_ids": TARGET}] * 2, lengths=[PROMPT + 1, PROMPT + 9])
  with pytest.raises(ValueError, match="2 longer than config.data.max_seq_len=4 tokens, 0 with an empty target"):
    grpo.check_prompts(prompts, PROMPT)


@pytest.mark.slow
def test_tiny_trainer_run_leaves_too_long_prompts_out(grpo_data, caplog):
  """`grpo.train` end to end: the data iterator keeps a batch with too-long prompts (the builder
  alone would end the run), the step counts and names them, and the record stays finite."""
  from roboalign_jax.train.metrics import read_metrics
  config_data, _, lengths, paths = grpo_data
  root = paths["root"]
  config = load_config(f"configs/grpo.py:tiny,init={tiny_qwen.checkpoint_dir()},fast={root / 'fast'},"
                       f"data={paths['path']},steps=1")
  config.data.update(cache_dir=config_data.cache_dir, progress=False, global_batch_size=4, max_seq_len=int(lengths.min()))
  config.rollout.update(num_samples=2, max_new_tokens=6)
  config.grpo.update(update_batch_size=8, micro_batch_size=8)
  config.export.hf_dir = "none"
  workdir = str(root / "run")
  with caplog.at_level(logging.WARNING, logger="roboalign_jax.train.grpo"):
    grpo.train(config, workdir)
  (record,) = [r for r in read_metrics(workdir) if "reward" in r]
  assert 1 <= record["prompts_too_long"] <= 3 and record["empty_targets"] == 0
  assert f"longer than config.data.max_seq_len={lengths.min()} tokens left out of the update" in caplog.text
  assert all(np.isfinite(v) for v in record.values() if isinstance(v, (int, float)))
  # Without online filtering (the default) the batch trains once whatever the random policy sampled.
  assert not config.grpo.online_filtering and (record["updates"], record["optimizer_steps"]) == (1, 1)
