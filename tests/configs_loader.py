"""Loads a config file the way `--config=path:arg` does, relative to the repository root."""

import os

from roboalign_jax.config.overrides import load_config_file

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(spec: str):
  path, sep, arg = spec.partition(":")
  return load_config_file(os.path.join(REPO_ROOT, path) + sep + arg)
