"""The `config.data` block of the robot-data stages, with its defaults.

    data = data_config(datasets=[dataset_entry("libero", "/data/libero_spatial_no_noops/1.0.0")])
    ds = make_dataset(data, split="train")

Each entry of `datasets`: spec (layout name), path (TFDS version directory), weight (mixture
weight) and name (for statistics and errors; defaults to the spec name).
"""

from __future__ import annotations

from typing import Any, Sequence

import ml_collections


def dataset_entry(spec: str, path: str, weight: float = 1.0, name: str = "") -> dict[str, Any]:
  return {"spec": spec, "path": path, "weight": float(weight), "name": name or spec}


def data_config(datasets: Sequence[dict] = (), **overrides: Any) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.datasets = list(datasets)
  # LLaVA-format JSONL sources mixed into SFT batches: {"path", "weight", "image_root"?, "name"?}.
  config.conversations = []
  config.seed = 0
  config.global_batch_size = 32
  # Where step indices and statistics are cached ("" = ~/.cache/roboalign_jax/data).
  config.cache_dir = ""
  config.action_horizon = 16
  config.history = 1  # observation frames per sample (current one included)
  config.image_size = (224, 224)
  config.cameras = ("primary", "wrist")
  config.augment = True  # training split only
  config.shuffle_block_episodes = 32  # 0 = full shuffle of all steps (see ordering.py)
  config.cache_episodes = 48  # per worker; keep >= shuffle_block_episodes
  config.skip_bad_records = False  # True: leave out bad episodes (counted, warned) instead of failing
  config.num_workers = 0  # Grain worker processes (0 = in the main process)
  # With workers: seconds without a batch (start-up included) before next() raises WorkerTimeout
  # naming the workers, instead of waiting forever on a stalled one (0 = wait forever).
  config.worker_timeout_s = 600.0
  config.num_threads = 2  # reader threads per process (or per worker)
  config.prefetch_buffer = 2  # batches read ahead
  # What a sample is: "standard" (common format), "vla", "fast_sft" or "grpo" (see samples.py).
  config.sample = "standard"
  config.fast_tokenizer_dir = ""  # for fast_sft / grpo
  config.processor_dir = ""  # a backbone checkpoint dir; tokenises fast_sft / grpo / vla samples when set
  config.model_family = "qwen2_5_vl"  # whose processor reads processor_dir (models/backbone.py)
  # System turn of the prompts ("" = the sample kind's default, see samples.py).
  config.system_prompt = ""
  config.max_seq_len = 0  # pad token sequences to this (0 = the longest in the batch)
  config.max_state_dim = 64
  config.max_action_dim = 32
  config.progress = True
  for key, value in overrides.items():
    if key not in config:
      raise ValueError(f"unknown data config field {key!r}; known: {sorted(config.keys())}")
    config[key] = value
  return config
