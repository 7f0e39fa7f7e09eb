"""Held-out evaluation of the SFT model on FAST samples: the `sft_heldout` evaluator.

    config.evals.heldout = dict(type="sft_heldout", every=500, datasets=[...], num_batches=4,
                                batch_size=32, max_new_tokens=64)

  * teacher-forced: loss and accuracy of the next-token argmax on the supervised tokens, and on
    the `<action_k>` tokens alone (the FAST-token accuracy);
  * greedy generation from the prompt alone (`models.sampling.generate`, temperature 0):
    format validity  response = `<action_start> <action_k>+ <action_end>` then end of turn;
    decode failure   the FAST ids do not decode to an H x D chunk (or there are none);
    action L1        mean |decoded - true| over real steps, both unnormalised by the inverse of the
                     dataset's action normalisation (`data.transforms`; malformed answers count
                     with their tolerant decode).
"""

from __future__ import annotations

import dataclasses

import jax
import ml_collections
import numpy as np

from roboalign_jax.data import transforms
from roboalign_jax.data.pipeline import make_dataset, open_heldout_datasets
from roboalign_jax.data.samples import Tokenizing, fast_messages, pad_to
from roboalign_jax.fast import FASTTokenizer
from roboalign_jax.models import sampling
from roboalign_jax.parallel.sharding import host_array
from roboalign_jax.train import sft_batches


@dataclasses.dataclass
class EvalSet:
  """Host arrays of the held-out samples (E rows)."""
  teacher: list[dict[str, np.ndarray]]  # shaped SFT batches (see sft_batches.shape_batch)
  prompts: list[dict[str, np.ndarray]]  # input_ids / attention_mask [b, Tp] left-padded, vision inputs
  actions: np.ndarray                   # float32 [E, H, 7] unnormalised true chunks
  action_mask: np.ndarray               # bool [E, H]
  to_units: list[transforms.Transform]  # per row: the inverse of its dataset's action normalisation


def build_eval_set(data: ml_collections.ConfigDict, eval_config: ml_collections.ConfigDict, *,
                   pad_multiple: int, train_handles=()) -> EvalSet | None:
  """The first `eval.num_batches` batches of the held-out datasets (no augmentation, fixed order).

  A held-out dataset named like a training one (held-out episodes of the same dataset) is
  normalised with the training statistics, as the model's actions are at inference."""
  if not eval_config.datasets:
    return None
  held_out = ml_collections.ConfigDict(data.to_dict())
  held_out.datasets = [dict(d) for d in eval_config.datasets]
  held_out.conversations = []
  held_out.augment = False
  held_out.global_batch_size = eval_config.batch_size
  held_out.num_workers = 0
  handles = open_heldout_datasets(held_out, train_handles)
  stream = iter(make_dataset(held_out, "train", handles=handles, process_index=0, process_count=1))
  tokenizing = Tokenizing(held_out.processor_dir, family=held_out.model_family)
  pad_id = tokenizing.processor.pad_token_id
  to_units = {h.name: transforms.action_normalizer(h.statistics.action).inverse() for h in handles}
  teacher, prompts, actions, masks, row_units = [], [], [], [], []
  for _ in range(eval_config.num_batches):
    batch = next(stream)
    teacher.append(sft_batches.shape_batch(batch, pad_multiple=pad_multiple, max_len=held_out.max_seq_len))
    rows = []
    for messages, instruction in zip(batch["messages"], batch["instruction"]):
      image = messages[1]["content"][0]["image"]
      rows.append(tokenizing.prompt(fast_messages(image, instruction, None), [image]))
    length = max(len(r["input_ids"]) for r in rows)
    prompts.append({
        "input_ids": pad_to([r["input_ids"] for r in rows], length, pad_id, left=True),
        "attention_mask": pad_to([np.ones(len(r["input_ids"]), np.int32) for r in rows], length, 0, left=True),
        "pixel_values": np.concatenate([r["pixel_values"] for r in rows]).astype(np.float32),
        "image_grid_thw": np.concatenate([r["image_grid_thw"] for r in rows]).astype(np.int32)})
    for chunk, source in zip(batch["actions"], batch["source"]):
      row_units.append(to_units[source])
      actions.append(to_units[source]({"actions": chunk})["actions"])
    masks.append(np.asarray(batch["action_mask"], bool))
  return EvalSet(teacher=teacher, prompts=prompts, actions=np.stack(actions), action_mask=np.concatenate(masks),
                 to_units=row_units)


def response_metrics(tokens: np.ndarray, action_vocab, end_of_turn: int, fast_tokenizer,
                     eval_set: EvalSet, rows: slice) -> dict[str, np.ndarray]:
  """Per-row format validity, decode failure and L1 of greedy responses tokens int [b, N]."""
  horizon, dim = eval_set.actions.shape[1:]
  valid_format, fast_ids = [], []
  for row in np.asarray(tokens):
    try:
      ids = action_vocab.extract_fast_ids(row, strict=True)
      start = int(np.flatnonzero(row == action_vocab.action_start_id)[0])
      end = start + 1 + len(ids)
      # Nothing before the answer, and the turn ends right after <action_end>.
      ok = start == 0 and end + 1 < len(row) and row[end + 1] == end_of_turn and len(ids) > 0
    except ValueError:
      ids, ok = action_vocab.extract_fast_ids(row, strict=False), False
    valid_format.append(ok)
    fast_ids.append(ids)
  decoded, decodable = fast_tokenizer.decode(fast_ids, horizon=horizon, action_dim=dim, return_valid=True)
  decodable = decodable & np.array([len(i) > 0 for i in fast_ids])
  predicted = np.stack([to_units({"actions": a})["actions"] for a, to_units in zip(decoded, eval_set.to_units[rows])])
  true, step_mask = eval_set.actions[rows], eval_set.action_mask[rows]
  l1 = (np.abs(predicted - true).mean(-1) * step_mask).sum(-1) / np.maximum(step_mask.sum(-1), 1)
  return {"format_valid": np.array(valid_format, np.float32), "decode_failure": (~decodable).astype(np.float32),
          "action_l1": l1.astype(np.float32)}


def evaluate(params, *, model, eval_set: EvalSet, teacher_fn, action_vocab, fast_tokenizer, end_of_turn: int,
             max_new_tokens: int, mesh=None, rules=None) -> dict[str, float]:
  """All held-out metrics as `eval/<name>` scalars. teacher_fn(params, host batch) -> metric dict."""
  teacher: dict[str, list[float]] = {}
  for batch in eval_set.teacher:
    for key, value in jax.device_get(teacher_fn(params, batch)).items():
      teacher.setdefault(key, []).append(float(value))
  per_row: dict[str, list[np.ndarray]] = {}
  start = 0
  for prompt in eval_set.prompts:
    b = prompt["input_ids"].shape[0]
    grid = prompt["image_grid_thw"]
    out = sampling.generate(model, params, prompt["input_ids"], prompt["attention_mask"], prompt["pixel_values"],
                           grid, max_new_tokens=max_new_tokens, temperature=0.0, eos_token_id=end_of_turn,
                           mesh=mesh, rules=rules)
    metrics = response_metrics(host_array(out.tokens), action_vocab, end_of_turn, fast_tokenizer, eval_set,
                               slice(start, start + b))
    for key, value in metrics.items():
      per_row.setdefault(key, []).append(value)
    start += b
  result = {f"eval/{k}": float(np.mean(v)) for k, v in teacher.items()}
  result.update({f"eval/{k}": float(np.mean(np.concatenate(v))) for k, v in per_row.items()})
  return result


def make_evaluator(options: ml_collections.ConfigDict, setup):
  """The `sft_heldout` evaluator of an `SFTSetup` (None when `options.datasets` is empty)."""
  eval_set = build_eval_set(setup.data, options, pad_multiple=setup.config.sft.pad_multiple,
                            train_handles=setup.handles)
  if eval_set is None:
    return None
  fast_tokenizer = FASTTokenizer.load(setup.data.fast_tokenizer_dir)
  backbone = setup.backbone
  end_of_turn = backbone.end_of_turn_ids[0]

  def run(state, step):
    del step
    return evaluate(state.params, model=backbone.model, eval_set=eval_set, teacher_fn=setup.teacher_eval,
                    action_vocab=backbone.action_vocab, fast_tokenizer=fast_tokenizer, end_of_turn=end_of_turn,
                    max_new_tokens=options.max_new_tokens, mesh=setup.mesh, rules=setup.rules)
  return run
