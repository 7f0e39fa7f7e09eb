"""What the Qwen-VL config classes (`qwen2_5_vl/config.py`, `qwen3_vl/config.py`) share in reading an
HF `config.json` and in checking it: the file itself, the model-type check, required text fields,
the vision fields (tuples for lists, the rotary theta from `rope_parameters`), the special token
ids and the shape rules. Each family keeps its own dataclasses, rope layout and defaults."""

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


def check_shapes(t: Any, v: Any) -> None:
  """The shape rules every Qwen-VL config obeys (t: its text config, v: its vision config): GQA,
  M-RoPE sections covering half the head, a vision head dim the 2-D rotary can split, and a vision
  output as wide as the decoder."""
  if t.num_attention_heads % t.num_key_value_heads:
    raise ValueError(f"num_attention_heads {t.num_attention_heads} not a multiple of "
                     f"num_key_value_heads {t.num_key_value_heads}")
  if sum(t.mrope_section) * 2 != t.head_dim:
    raise ValueError(f"mrope_section {t.mrope_section} must sum to head_dim/2 = {t.head_dim // 2}")
  if v.hidden_size % v.num_heads or v.head_dim % 4:
    raise ValueError(f"vision hidden_size {v.hidden_size} / num_heads {v.num_heads} must give a head dim "
                     "divisible by 4 (2D rotary)")
  if v.out_hidden_size != t.hidden_size:
    raise ValueError(f"vision out_hidden_size {v.out_hidden_size} != text hidden_size {t.hidden_size}")


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
