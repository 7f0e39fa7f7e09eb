"""Converts a Qwen2.5-VL or Qwen3-VL checkpoint between HF (safetensors + config.json) and our
format (`params.safetensors` with our parameter tree + `roboalign_config.json`).

HF -> ours:   python launch/convert_checkpoint.py --hf_dir=/ckpt/Qwen2.5-VL-7B-Instruct --out=/ckpt/qwen7b_jax
ours -> HF:   python launch/convert_checkpoint.py --to_hf --flax_dir=/ckpt/qwen7b_jax --out=/ckpt/qwen7b_hf
Qwen3-VL:     python launch/convert_checkpoint.py --family=qwen3_vl --hf_dir=/ckpt/Qwen3-VL-8B-Instruct --out=...

Tokenizer, chat template and image-processor files travel along both ways, so each output
directory is complete. Weights are read and written with safetensors only (never pickle).
"""

from __future__ import annotations

import importlib
import os
import shutil

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_enum("family", "qwen2_5_vl", ["qwen2_5_vl", "qwen3_vl"], "Backbone family of the checkpoint.")
flags.DEFINE_string("hf_dir", None, "HF checkpoint directory to read (HF -> ours).")
flags.DEFINE_string("flax_dir", None, "Directory in our format to read (with --to_hf).")
flags.DEFINE_string("out", None, "Output directory.", required=True)
flags.DEFINE_bool("to_hf", False, "Convert ours -> HF instead of HF -> ours.")
flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "Parameter dtype to write (default: as stored).")

# Files that are not weights or model config: copied so the output is usable on its own.
_SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
               "added_tokens.json", "chat_template.jinja", "chat_template.json", "preprocessor_config.json",
               "processor_config.json", "generation_config.json", "video_preprocessor_config.json")


def _copy_side_files(src: str, dst: str) -> None:
  for name in _SIDE_FILES:
    if os.path.isfile(os.path.join(src, name)):
      shutil.copy2(os.path.join(src, name), os.path.join(dst, name))


def convert(hf_dir: str | None, flax_dir: str | None, out: str, to_hf: bool, dtype: str | None = None,
            family: str = "qwen2_5_vl") -> str:
  import jax.numpy as jnp
  checkpoint_io = importlib.import_module(f"roboalign_jax.models.{family}.checkpoint_io")
  jdtype = None if dtype is None else jnp.dtype(dtype)
  if to_hf:
    if not flax_dir:
      raise ValueError("--to_hf needs --flax_dir (a directory written by this tool)")
    model, params = checkpoint_io.load_flax(flax_dir, dtype=jdtype)
    checkpoint_io.save_pretrained(params, model.config, out)
    _copy_side_files(flax_dir, out)
  else:
    if not hf_dir:
      raise ValueError("--hf_dir is required (or pass --to_hf --flax_dir=... for the reverse)")
    model, params = checkpoint_io.load_pretrained(hf_dir, dtype=jdtype or checkpoint_io.stored_dtype(hf_dir))
    checkpoint_io.save_flax(params, model.config, out)
    _copy_side_files(hf_dir, out)
  return out


def main(argv):
  del argv
  out = convert(FLAGS.hf_dir, FLAGS.flax_dir, FLAGS.out, FLAGS.to_hf, FLAGS.dtype, FLAGS.family)
  print(f"wrote {out}")


if __name__ == "__main__":
  app.run(main)
