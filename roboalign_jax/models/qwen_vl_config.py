"""What the Qwen-VL config classes (`qwen2_5_vl/config.py`, `qwen3_vl/config.py`) share in reading an
HF `config.json`: the file itself, the model-type check, required text fields, the vision fields
(tuples for lists, the rotary theta from `rope_parameters`) and the special token ids. Each family
keeps its own dataclasses, rope layout and defaults."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

TEXT_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
_VISION_TOKEN_IDS = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")


def read_json(path: str) -> dict:
  """The dict of an HF config.json; FileNotFoundError / ValueError naming `path`."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config file {path!r} not found; expected an HF config.json")
  with open(path) as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: not valid JSON ({e})") from None


def check_model_type(d: dict, source: str, *, model_type: str, architecture: str, display_name: str) -> None:
  """ValueError unless `d` is (or does not say it is not) a config of this family."""
  archs = d.get("architectures") or []
  found = d.get("model_type")
  if found not in (model_type, None) or (archs and architecture not in archs):
    raise ValueError(f"{source}: expected a {display_name} config (model_type {model_type!r}, architectures "
                     f"[{architecture!r}]), got model_type={found!r}, architectures={archs}")


def check_text_fields(td: dict, source: str, where: str = "text config") -> None:
  missing = [k for k in TEXT_FIELDS if k not in td]
  if missing:
    raise ValueError(f"{source}: {where} lacks {missing}")


def vision_fields(vd: dict, vision_cls: type) -> dict[str, Any]:
  """Keyword arguments of `vision_cls` found in the HF vision config (lists as tuples); the rotary
  theta comes from `rope_parameters` when given there."""
  kw = {f.name: tuple(vd[f.name]) if isinstance(vd[f.name], list) else vd[f.name]
        for f in dataclasses.fields(vision_cls) if f.name in vd}
  rope = vd.get("rope_parameters") or {}
  if "rope_theta" in rope:
    kw["rope_theta"] = float(rope["rope_theta"])
  return kw


def token_ids(d: dict, td: dict) -> dict[str, Any]:
  """The vision placeholder ids (top level) and bos / eos / pad (text config)."""
  ids = {k: d[k] for k in _VISION_TOKEN_IDS if k in d}
  ids.update({k: td[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in td})
  return ids
