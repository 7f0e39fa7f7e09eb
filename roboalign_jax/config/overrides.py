"""Checks `--config.a.b=value` command-line overrides before absl parses them.

ml_collections reports an unknown field as a bare `AttributeError` deep in flag parsing; this
check names the field, the fields that do exist at that level, and the expected type.
"""

from __future__ import annotations

import ast
import importlib.util
import os
from typing import Sequence

import ml_collections


class ConfigOverrideError(ValueError):
  """A command-line override names an unknown config field or gives a value of the wrong type."""


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """Loads `path.py[:arg]` the way `config_flags.DEFINE_config_file` does."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise ConfigOverrideError(f"--config={spec}: no config file at {path!r}")
  module_spec = importlib.util.spec_from_file_location("_roboalign_config_check", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def _expected_ok(current, text: str) -> bool:
  if current is None or isinstance(current, str):
    return True
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return False
  if isinstance(current, bool):
    return isinstance(value, bool)
  if isinstance(current, float):
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if isinstance(current, int):
    return isinstance(value, int) and not isinstance(value, bool)
  if isinstance(current, (tuple, list)):
    return isinstance(value, (tuple, list))
  return True


def check_overrides(argv: Sequence[str], flag_name: str = "config") -> None:
  """Raises ConfigOverrideError for the first bad `--<flag_name>.field=value` in `argv`."""
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith(f"--{flag_name}=")), None)
  overrides = [a[len(f"--{flag_name}."):] for a in argv if a.startswith(f"--{flag_name}.")]
  if spec is None or not overrides:
    return
  config = load_config_file(spec)
  for override in overrides:
    name, has_value, text = override.partition("=")
    node, walked = config, []
    for part in name.split("."):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        where = "config" + "".join(f".{w}" for w in walked)
        fields = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        raise ConfigOverrideError(
            f"--{flag_name}.{name}: unknown config field {part!r} in {where}; "
            f"allowed fields: {fields}")
      node = node[part]
      walked.append(part)
    if isinstance(node, ml_collections.ConfigDict):
      raise ConfigOverrideError(
          f"--{flag_name}.{name} is a group, not a value; its fields: {sorted(node.keys())}")
    if has_value and not _expected_ok(node, text):
      raise ConfigOverrideError(
          f"--{flag_name}.{name}={text}: expected a value of type {type(node).__name__} "
          f"(current value {node!r})")
