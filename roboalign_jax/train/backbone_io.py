"""The backbone a trainer starts from and the HF directory it leaves behind.

    backbone = load_backbone(hf_dir)          # Qwen2.5-VL dir (weights, tokenizer, image processor)
    backbone.model, backbone.params, backbone.tokenizer, backbone.action_vocab
    export_hf(params, backbone, out_dir)      # HF safetensors + config + tokenizer (action tokens kept)

The tokenizer gets the action tokens if it lacks them, and the model's vocabulary grows to hold
them (`vocab_extension.extend_vocabulary`); a directory exported after Stage 1 already has both,
so loading it changes nothing. Parameters come back as host-resident arrays; trainers place them
on their mesh (`jax.device_put` with the shardings of their train state).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from typing import Any

import jax.numpy as jnp

from roboalign_jax.fast.vocab import ActionVocab

# Files of a checkpoint directory that are not weights, config or tokenizer: the processor needs them.
_PROCESSOR_FILES = ("preprocessor_config.json", "chat_template.jinja", "chat_template.json")


@dataclasses.dataclass
class Backbone:
  model: Any            # models.qwen2_5_vl.Qwen2_5_VL (vocabulary including the action tokens)
  params: dict          # its parameters
  tokenizer: Any        # HF tokenizer with the action tokens
  action_vocab: ActionVocab
  source_dir: str       # where it was loaded from (processor files are copied from here on export)


def load_backbone(hf_dir: str, dtype=jnp.float32, compute_dtype=None, remat: bool = False) -> Backbone:
  """Loads weights and tokenizer from `hf_dir`, extending both with the action tokens if needed."""
  from transformers import AutoTokenizer

  from roboalign_jax.models.qwen2_5_vl import Qwen2_5_VL, load_pretrained
  from roboalign_jax.models.qwen2_5_vl.vocab_extension import extend_vocabulary
  if not hf_dir or not os.path.isdir(hf_dir):
    raise FileNotFoundError(f"backbone directory {hf_dir!r} not found; expected a Qwen2.5-VL checkpoint "
                            "directory (config.json, *.safetensors, tokenizer files)")
  model, params = load_pretrained(hf_dir, dtype=dtype, compute_dtype=compute_dtype, remat=remat)
  tokenizer = AutoTokenizer.from_pretrained(hf_dir)
  vocab_before = model.config.text.vocab_size
  tokenizer, params, config, action_vocab = extend_vocabulary(tokenizer, params, model.config)
  if config.text.vocab_size != vocab_before:
    model = Qwen2_5_VL(config, param_dtype=dtype)
  return Backbone(model=model, params=params, tokenizer=tokenizer, action_vocab=action_vocab,
                  source_dir=os.path.abspath(hf_dir))


def export_hf(params: dict, backbone: Backbone, out_dir: str) -> str:
  """Writes `params` as an HF checkpoint directory loadable by `load_backbone` and transformers:
  config.json + safetensors, the tokenizer (with the action tokens) and the image-processor /
  chat-template files of the source directory. Returns `out_dir`."""
  from roboalign_jax.models.qwen2_5_vl import save_pretrained
  os.makedirs(out_dir, exist_ok=True)
  save_pretrained(params, backbone.model.config, out_dir)
  backbone.tokenizer.save_pretrained(out_dir)
  for name in _PROCESSOR_FILES:
    src = os.path.join(backbone.source_dir, name)
    if os.path.isfile(src) and not os.path.isfile(os.path.join(out_dir, name)):
      shutil.copyfile(src, os.path.join(out_dir, name))
  return out_dir
