"""The string argument after the colon in `--config=configs/x.py:ARG`.

Every config file accepts the same syntax, so a reader learns it once:

    configs/sft.py:tiny                      -> variant="tiny"
    configs/sft.py:variant=3b,steps=10       -> variant="3b", steps=10
    configs/sft.py:tiny,steps=10             -> a bare first item is the variant

Values are parsed as Python literals when they are one (`10`, `1e-4`, `True`, `'a'`),
else kept as strings. Only the keys a config declares are accepted, and their
types must match the declared defaults, so a typo fails loudly instead of being ignored.
"""

from __future__ import annotations

import ast
from typing import Any, Sequence

import ml_collections


class ConfigArgError(ValueError):
  """A config string argument names an unknown variant or key, or has a wrong type."""


def _parse_value(text: str) -> Any:
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def _coerce(key: str, value: Any, default: Any) -> Any:
  if default is None or isinstance(value, type(default)):
    return value
  # An int where a float is declared is what people type (`lr=1`); bools are not ints here.
  if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
    return float(value)
  raise ConfigArgError(
      f"config argument {key}={value!r} has type {type(value).__name__}; expected "
      f"{type(default).__name__} (default {default!r})")


def parse(arg: str | None, *, variants: Sequence[str], default_variant: str | None = None,
          **defaults: Any) -> ml_collections.ConfigDict:
  """Parses `arg` into a frozen ConfigDict with `variant` plus the declared `defaults`.

  Args:
    arg: the text after the colon, or None/"" for the default variant.
    variants: allowed variant names.
    default_variant: used when `arg` names none; defaults to `variants[0]`.
    **defaults: the other keys this config accepts, with default values that fix their types.
  Raises:
    ConfigArgError naming the offending variant/key and the allowed values.
  """
  if not variants:
    raise ValueError("a config must declare at least one variant")
  values: dict[str, Any] = {"variant": default_variant or variants[0], **defaults}
  items = [item.strip() for item in (arg or "").split(",") if item.strip()]
  for position, item in enumerate(items):
    if "=" not in item:
      if position != 0:
        raise ConfigArgError(
            f"config argument {item!r} has no '='; only the first item may be a bare variant name")
      key, value = "variant", item
    else:
      key, text = (part.strip() for part in item.split("=", 1))
      value = text if key == "variant" else _parse_value(text)
    if key not in values:
      raise ConfigArgError(
          f"unknown config argument {key!r}; allowed: {sorted(values)}")
    values[key] = value if key == "variant" else _coerce(key, value, defaults[key])
  if values["variant"] not in variants:
    raise ConfigArgError(
        f"unknown config variant {values['variant']!r}; allowed variants: {list(variants)}")
  return ml_collections.FrozenConfigDict(values)


# Model shapes each backbone family offers (models/<family>/config.py VARIANTS), spelled out here
# so reading a config does not import a model; tests/test_config.py checks them against the registry.
FAMILY_VARIANTS = {"qwen2_5_vl": ("tiny", "3b", "7b"), "qwen3_vl": ("tiny", "2b", "4b", "8b")}


def check_family(family: str, variant: str | None = None) -> str:
  """`family` if it is a registered backbone family (and `variant`, when given, one of its model
  shapes); ConfigArgError naming the allowed values otherwise."""
  if family not in FAMILY_VARIANTS:
    raise ConfigArgError(f"unknown config argument family={family!r}; allowed: {sorted(FAMILY_VARIANTS)}")
  if variant is not None and variant not in FAMILY_VARIANTS[family]:
    raise ConfigArgError(f"variant {variant!r} is not a {family} model; {family} variants: "
                         f"{list(FAMILY_VARIANTS[family])}")
  return family
