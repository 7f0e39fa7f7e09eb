"""The Stage 1/2 model as a policy: it answers the SFT prompt (primary camera + instruction) with
FAST action tokens, greedily, and those decode to the normalised action chunk -- an autoregressive
policy in the manner of pi0-FAST, and the way to run an aligned backbone in closed loop before
any Stage 3 head exists.

    policy = fast_policy.make(backbone, params, fast_tokenizer, statistics, layout="libero", ...)
    fast_policy.save(policy, "runs/sft/policy")      # policy.json + fast/ (+ backbone/ when copied)
    policies.load("runs/sft/policy").infer(observation)["actions"]   # [H, 7]

Malformed answers decode tolerantly (truncated or zero-padded coefficients: FASTTokenizer's
"pad" mode); `last_answer_valid` says whether the latest one was well formed. Prompts are
left-padded to a multiple of `prompt_multiple` tokens so a few shapes are compiled, not one per
instruction length.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from typing import Any

import jax
import numpy as np

from roboalign_jax.data.samples import SYSTEM_PROMPT, fast_messages
from roboalign_jax.fast import FASTTokenizer
from roboalign_jax.models import backbone as backbone_lib
from roboalign_jax.models import sampling
from roboalign_jax.policies.policy import Policy, PolicyDescription, write_description

FAST_DIR = "fast"
BACKBONE_DIR = "backbone"


@dataclasses.dataclass
class FastTokenModel:
  """Model input (see `Policy`) -> normalised chunk float32 [horizon, action_dim]."""
  backbone: backbone_lib.Backbone
  params: Any
  fast: FASTTokenizer
  horizon: int
  action_dim: int = 7
  max_new_tokens: int = 64
  system: str = SYSTEM_PROMPT
  prompt_multiple: int = 64
  last_answer_valid: bool = False

  def prompt(self, inputs: dict) -> dict[str, np.ndarray]:
    """Left-padded prompt ids [1, T], mask, pixel_values, image_grid_thw of one observation."""
    processor = self.backbone.processor
    image = inputs["image/primary"]
    text = processor.render(fast_messages(image, inputs["instruction"], None, system=self.system),
                            add_generation_prompt=True)
    out = processor(text, [image])
    ids = out["input_ids"][0]
    length = -(-len(ids) // self.prompt_multiple) * self.prompt_multiple
    padded = np.full((1, length), processor.pad_token_id, np.int32)
    mask = np.zeros((1, length), np.int32)
    padded[0, length - len(ids):], mask[0, length - len(ids):] = ids, 1
    return {"input_ids": padded, "attention_mask": mask, "pixel_values": out["pixel_values"],
            "image_grid_thw": out["image_grid_thw"]}

  def __call__(self, inputs: dict) -> np.ndarray:
    prompt = self.prompt(inputs)
    out = sampling.generate(self.backbone.model, self.params, prompt["input_ids"], prompt["attention_mask"],
                            prompt["pixel_values"], prompt["image_grid_thw"], max_new_tokens=self.max_new_tokens,
                            temperature=0.0, eos_token_id=self.backbone.end_of_turn_ids,
                            suppress_token_ids=self.backbone.vision_token_ids)
    tokens = np.asarray(jax.device_get(out.tokens))[0]
    fast_ids = self.backbone.action_vocab.extract_fast_ids(tokens)
    chunks, valid = self.fast.decode([fast_ids], horizon=self.horizon, action_dim=self.action_dim,
                                     return_valid=True)
    self.last_answer_valid = bool(valid[0]) and len(fast_ids) > 0
    return chunks[0].astype(np.float32)


def make(backbone: backbone_lib.Backbone, params: Any, fast_tokenizer: FASTTokenizer, statistics, *,
         layout: str, action_horizon: int, image_size=(224, 224), max_new_tokens: int = 64,
         system: str = SYSTEM_PROMPT, fast_dir: str = "") -> Policy:
  """A FAST-token policy of `backbone` with `params` (host or device arrays)."""
  description = PolicyDescription(
      kind="fast", layout=layout, cameras=("primary",), image_size=tuple(image_size), state_width=None,
      action_horizon=int(action_horizon), statistics=statistics,
      extra={"max_new_tokens": int(max_new_tokens), "system_prompt": system,
             "backbone": {"family": backbone.family.name, "dir": backbone.source_dir},
             "fast_tokenizer": os.path.abspath(fast_dir) if fast_dir else ""})
  model = FastTokenModel(backbone, params, fast_tokenizer, int(action_horizon), max_new_tokens=int(max_new_tokens),
                         system=system)
  return Policy(description, model)


def save(policy: Policy, policy_dir: str, *, copy_backbone: bool = False) -> str:
  """policy.json + the FAST tokenizer (+ the backbone directory when `copy_backbone`)."""
  model: FastTokenModel = policy._model
  extra = dict(policy.description.extra)
  model.fast.save(os.path.join(policy_dir, FAST_DIR))
  extra["fast_tokenizer"] = FAST_DIR
  backbone = dict(extra["backbone"])
  if copy_backbone:
    target = os.path.join(policy_dir, BACKBONE_DIR)
    if os.path.isdir(target):
      shutil.rmtree(target)
    shutil.copytree(backbone["dir"], target)
    backbone["dir"] = BACKBONE_DIR
  extra["backbone"] = backbone
  write_description(policy_dir, dataclasses.replace(policy.description, extra=extra))
  return policy_dir


def load(policy_dir: str, description: PolicyDescription) -> Policy:
  extra = description.extra
  backbone_dir = extra["backbone"]["dir"]
  if not os.path.isabs(backbone_dir):
    backbone_dir = os.path.join(policy_dir, backbone_dir)
  backbone = backbone_lib.load_dir(backbone_dir, family_name=extra["backbone"]["family"])
  fast = FASTTokenizer.load(os.path.join(policy_dir, extra["fast_tokenizer"]))
  model = FastTokenModel(backbone, backbone.params, fast, description.action_horizon,
                         max_new_tokens=int(extra.get("max_new_tokens", 64)),
                         system=extra.get("system_prompt", SYSTEM_PROMPT))
  return Policy(description, model)
