"""Runs models on benchmarks: batched greedy answers with the KV-cache sampler, cached per example,
scored by each benchmark's public rules, written as the paper's Table 8.

    table = evaluate(["base=hf/Qwen2.5-VL-7B", "sft=runs/sft/hf", "grpo=runs/grpo/hf"],
                     [("mmstar", "data/MMStar"), ("where2place", "data/where2place")], "runs/mllm",
                     batch_size=8)
    table["scores"]["grpo"]["mmstar"]   # headline score in %

A model is any exported HF directory of a registered backbone family (config.json's model_type
picks the family unless `family` is given), optionally labelled "label=DIR". The prompt of each
example is one user turn (images first, or at its `<image>` placeholders) rendered by the
model's chat template; prompts are left-padded to a multiple of `prompt_multiple` tokens so a
few shapes compile. Answers go to `<out_dir>/answers.jsonl` as they are produced; a rerun (or a
run with more models / benchmarks) generates only what that file lacks, and loads no model
when nothing is missing. Per-example scores: `<out_dir>/examples/<model>/<benchmark>.jsonl`.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from roboalign_jax.data.conversations import IMAGE_TOKEN, to_messages
from roboalign_jax.eval.mllm import registry, table
from roboalign_jax.eval.mllm.cache import AnswerCache, make_key
from roboalign_jax.eval.mllm.examples import Benchmark, Example, decode_image
from roboalign_jax.models import backbone as backbone_lib
from roboalign_jax.models import sampling

ANSWERS_FILE = "answers.jsonl"


def parse_models(models: str | Sequence[str]) -> list[tuple[str, str]]:
  """"DIR" or "label=DIR" items (a comma-separated string or a list) -> [(label, dir), ...]."""
  items = [m.strip() for m in (models.split(",") if isinstance(models, str) else models) if m.strip()]
  if not items:
    raise ValueError(f"no models in {models!r}; expected DIR[,DIR...] or label=DIR[,...]")
  pairs = []
  for item in items:
    label, sep, directory = item.partition("=")
    if not sep:
      label, directory = os.path.normpath(item), item
    if not os.path.isfile(os.path.join(directory, "config.json")):
      raise FileNotFoundError(f"model {item!r}: {directory!r} has no config.json; expected an exported HF "
                              "checkpoint directory (config.json, *.safetensors, tokenizer files)")
    pairs.append((label, directory))
  labels = [label for label, _ in pairs]
  if len(set(labels)) != len(labels):
    raise ValueError(f"model labels {labels} repeat; give each model once (label=DIR to rename)")
  return pairs


def family_of(model_dir: str) -> str:
  """The registered backbone family of a checkpoint directory, from config.json's model_type."""
  with open(os.path.join(model_dir, "config.json")) as f:
    model_type = json.load(f).get("model_type")
  if model_type not in backbone_lib.FAMILIES:
    raise ValueError(f"{model_dir}/config.json has model_type={model_type!r}; expected one of the registered "
                     f"backbone families {sorted(backbone_lib.FAMILIES)} (or pass the family explicitly)")
  return model_type


def model_id(label: str, model_dir: str) -> str:
  """What the cache knows a model by: its label and the hash of its weights."""
  return f"{label}@{backbone_lib.content_hash(model_dir)[:16]}"


def generation_id(max_new_tokens: int) -> str:
  return f"greedy,max_new_tokens={int(max_new_tokens)}"


def messages_of(example: Example, images: Sequence[np.ndarray]) -> list[dict]:
  """One user turn: the images at the prompt's `<image>` placeholders, else before the text."""
  if example.prompt.count(IMAGE_TOKEN) == len(images) and images:
    return to_messages([{"from": "human", "value": example.prompt}], list(images))
  content = [{"type": "image", "image": image} for image in images] + [{"type": "text", "text": example.prompt}]
  return [{"role": "user", "content": content}]


def prompt_batch(backbone: backbone_lib.Backbone, benchmark: str, examples: Sequence[Example], *,
                 prompt_multiple: int = 64) -> dict[str, Any]:
  """Model inputs of a batch: input_ids / attention_mask int32 [B, T] (left-padded, T a multiple of
  `prompt_multiple`), pixel_values float [N, patch_dim] and image_grid_thw int32 [n_images, 3] (or None)."""
  processor = backbone.processor
  texts, images = [], []
  for example in examples:
    decoded = [decode_image(ref, benchmark=benchmark, example_id=example.id) for ref in example.images]
    texts.append(processor.render(messages_of(example, decoded), add_generation_prompt=True))
    images.extend(decoded)
  out = processor(texts, images)
  ids, mask = out["input_ids"], out["attention_mask"]
  length = -(-ids.shape[1] // prompt_multiple) * prompt_multiple
  pad = length - ids.shape[1]
  out["input_ids"] = np.pad(ids, ((0, 0), (pad, 0)), constant_values=processor.pad_token_id)
  out["attention_mask"] = np.pad(mask, ((0, 0), (pad, 0)))
  return out


def answer(backbone: backbone_lib.Backbone, params: Any, benchmark: str, examples: Sequence[Example], *,
           max_new_tokens: int, prompt_multiple: int = 64) -> list[str]:
  """Greedy answers (decoded text, special tokens dropped, stripped) of a batch of examples."""
  batch = prompt_batch(backbone, benchmark, examples, prompt_multiple=prompt_multiple)
  out = sampling.generate(backbone.model, params, batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
                          batch["image_grid_thw"], max_new_tokens=max_new_tokens, temperature=0.0,
                          eos_token_id=backbone.end_of_turn_ids, suppress_token_ids=backbone.vision_token_ids)
  tokens, mask = jax.device_get((out.tokens, out.mask))
  tokenizer = backbone.tokenizer
  return [tokenizer.decode(np.asarray(row)[np.asarray(keep)].tolist(), skip_special_tokens=True).strip()
          for row, keep in zip(tokens, mask)]


def _slug(text: str) -> str:
  return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "model"


def evaluate(models: str | Sequence[str], benchmarks: str | Sequence[tuple[str, str]], out_dir: str, *,
             batch_size: int = 8, max_new_tokens: int | None = None, judge=None, family: str | None = None,
             dtype: str = "float32", prompt_multiple: int = 64, progress: bool = True) -> dict:
  """Answers, scores and the Table 8 files (`results.json`, `results.md`) under `out_dir`.

  models: see `parse_models`; benchmarks: "name:path,..." or [(name, path)]; max_new_tokens:
  None = each benchmark's default. Returns results.json's object plus "generated"
  {model: {benchmark: answers generated in this call}}.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  model_pairs = parse_models(models)
  specs = registry.parse_specs(benchmarks) if isinstance(benchmarks, str) else list(benchmarks)
  names = [name for name, _ in specs]
  if len(set(names)) != len(names):
    raise ValueError(f"benchmarks {names} repeat; give each benchmark once")
  loaded: list[Benchmark] = [registry.load(name, path, judge=judge) for name, path in specs]
  order = {name: k for k, name in enumerate(registry.TABLE_ORDER)}
  loaded.sort(key=lambda b: order.get(b.name, len(order)))
  cache = AnswerCache(os.path.join(out_dir, ANSWERS_FILE))

  details: dict[str, dict[str, dict]] = {}
  generated: dict[str, dict[str, int]] = {}
  for label, model_dir in model_pairs:
    ident = model_id(label, model_dir)
    backbone = None
    details[label], generated[label] = {}, {}
    for bench in loaded:
      budget = int(max_new_tokens or bench.max_new_tokens)
      gen = generation_id(budget)
      keys = [make_key(bench.name, e.id, ident, gen) for e in bench.examples]
      missing = [(e, k) for e, k in zip(bench.examples, keys) if k not in cache]
      generated[label][bench.name] = len(missing)
      if missing and backbone is None:
        backbone = backbone_lib.load_dir(model_dir, family_name=family or family_of(model_dir),
                                         dtype=jnp.dtype(dtype))
      bar = tqdm.tqdm(total=len(bench.examples), initial=len(bench.examples) - len(missing),
                      desc=f"{label} / {bench.name}", disable=not progress)
      for start in range(0, len(missing), batch_size):
        chunk = missing[start:start + batch_size]
        # A short last batch is filled with copies of its last example (answers dropped), so every
        # batch of a benchmark with same-size images runs one compiled program.
        filled = [e for e, _ in chunk] + [chunk[-1][0]] * (batch_size - len(chunk))
        answers = answer(backbone, backbone.params, bench.name, filled, max_new_tokens=budget,
                         prompt_multiple=prompt_multiple)[:len(chunk)]
        cache.put_many([(k, a) for (_, k), a in zip(chunk, answers)])
        bar.update(len(chunk))
      bar.close()
      records = []
      for example, key in zip(bench.examples, keys):
        text = cache.get(key)
        records.append({"id": example.id, "answer": text, **bench.score(example, text)})
      details[label][bench.name] = bench.aggregate(bench.examples, records)
      _write_records(os.path.join(out_dir, "examples", _slug(label), f"{bench.name}.jsonl"), records)
    del backbone
  result = table.write(out_dir, [label for label, _ in model_pairs], [b.name for b in loaded], details,
                       sources={b.name: b.source for b in loaded}, model_dirs=dict(model_pairs),
                       generation="greedy" + (f",max_new_tokens={max_new_tokens}" if max_new_tokens else ""))
  return {**result, "generated": generated}


def _write_records(path: str, records: Sequence[dict]) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    for record in records:
      f.write(json.dumps(record) + "\n")
