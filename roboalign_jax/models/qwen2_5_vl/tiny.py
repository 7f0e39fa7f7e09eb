"""Offline stand-ins for a Qwen2.5-VL checkpoint directory: a tiny byte-level BPE tokenizer with
the Qwen special tokens and chat format, an image-processor config, and random weights written
by our own `save_pretrained` (no torch, no Hub).

    from roboalign_jax.models.qwen2_5_vl import tiny
    tiny.write_checkpoint("/tmp/qwen_tiny")   # config.json, model.safetensors, tokenizer files
    model, params = qwen2_5_vl.load_pretrained("/tmp/qwen_tiny")

The special tokens take ids 0..13 in Qwen's order (Qwen id - 151643), matching the `tiny`
variant of `config.VARIANTS`.
"""

from __future__ import annotations

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from roboalign_jax.models.qwen2_5_vl.checkpoint_io import dummy_inputs, save_pretrained
from roboalign_jax.models.qwen2_5_vl.config import Qwen2_5_VLConfig
from roboalign_jax.models.qwen2_5_vl.model import Qwen2_5_VL

# Qwen2.5's added tokens from <|endoftext|> (151643) to <|video_pad|> (151656), in order.
SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)
TINY_VOCAB_SIZE = 1024

# The Qwen2-VL chat format: a default system turn, `<|im_start|>role\n...<|im_end|>\n` per turn,
# images and videos as a vision_start / pad / vision_end triple inside the content.
CHAT_TEMPLATE = (
    "{%- set image_count = namespace(value=0) -%}"
    "{%- set video_count = namespace(value=0) -%}"
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' or 'image' in item or 'image_url' in item -%}"
    "{%- set image_count.value = image_count.value + 1 -%}"
    "{%- if add_vision_id -%}{{- 'Picture ' + image_count.value|string + ': ' -}}{%- endif -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif item['type'] == 'video' or 'video' in item -%}"
    "{%- set video_count.value = video_count.value + 1 -%}"
    "{%- if add_vision_id -%}{{- 'Video ' + video_count.value|string + ': ' -}}{%- endif -%}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif 'text' in item -%}{{- item['text'] -}}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

IMAGE_PROCESSOR_CONFIG = dict(
    image_processor_type="Qwen2VLImageProcessor",
    processor_class="Qwen2_5_VLProcessor",
    do_resize=True, do_rescale=True, do_normalize=True, do_convert_rgb=True,
    rescale_factor=1 / 255,
    image_mean=[0.48145466, 0.4578275, 0.40821073],
    image_std=[0.26862954, 0.26130258, 0.27577711],
    resample=3,  # bicubic
    patch_size=14, temporal_patch_size=2, merge_size=2,
    min_pixels=56 * 56, max_pixels=28 * 28 * 1280,
    size={"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 1280},
)


def _corpus() -> list[str]:
  """A few hundred lines of robot / VQA-flavoured English and numbers to train the BPE on."""
  objects = ["red block", "blue cup", "green bowl", "yellow sponge", "drawer", "spoon", "towel", "carrot",
             "pot", "plate", "knife", "banana", "cloth", "lid", "mug"]
  places = ["on the table", "in the sink", "into the drawer", "next to the plate", "on the left",
            "on the right", "behind the pot", "in front of the robot", "inside the basket"]
  verbs = ["pick up", "put", "move", "place", "push", "open", "close", "wipe", "stack", "grasp"]
  lines = ["You are a helpful assistant.", "system", "user", "assistant",
           "What action should the robot take to", "Describe the image.", "Answer the question.",
           "<think>", "</think>", "<answer>", "</answer>", "The answer is", "yes", "no",
           "How many objects are on the table?", "Where is the", "Which object is closer to the camera?"]
  rng = np.random.default_rng(0)
  for i in range(600):
    o, p, v = (objects[rng.integers(len(objects))], places[rng.integers(len(places))],
               verbs[rng.integers(len(verbs))])
    lines.append(f"{v} the {o} {p}. Step {i}: move {rng.integers(-99, 99)} mm, rotate {rng.normal():.2f} rad.")
    lines.append(f"Q: Is the {o} {p}? A: {'yes' if i % 2 else 'no'}, it is {p}.")
  return lines


def write_tokenizer(out_dir: str, vocab_size: int = TINY_VOCAB_SIZE, chat_template: str = CHAT_TEMPLATE) -> None:
  """Trains a byte-level BPE with Qwen's pre-tokenizer and writes it as a Qwen2 tokenizer with
  `chat_template` (Qwen2.5-VL's format by default; Qwen3-VL's tiny passes its own)."""
  # Lazy: transformers is heavy (and imports torch when installed); only writing a tiny tokenizer needs it.
  from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
  from transformers import AddedToken, Qwen2Tokenizer
  from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

  bpe = Tokenizer(models.BPE())
  bpe.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  bpe.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
  bpe.train_from_iterator(_corpus(), trainer)
  model = json.loads(bpe.to_str())["model"]
  merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
  tok = Qwen2Tokenizer(vocab=model["vocab"], merges=merges, unk_token=None, bos_token=None,
                       eos_token="<|im_end|>", pad_token="<|endoftext|>")
  tok.add_special_tokens({"additional_special_tokens": [AddedToken(t, special=True, normalized=False)
                                                        for t in SPECIAL_TOKENS]})
  for i, t in enumerate(SPECIAL_TOKENS):
    if tok.convert_tokens_to_ids(t) != i:
      raise RuntimeError(f"tiny tokenizer: {t} got id {tok.convert_tokens_to_ids(t)}, expected {i}")
  tok.chat_template = chat_template
  tok.save_pretrained(out_dir)
  with open(os.path.join(out_dir, "chat_template.jinja"), "w") as f:
    f.write(chat_template)


def write_image_processor_config(out_dir: str, max_pixels: int | None = None) -> None:
  cfg = dict(IMAGE_PROCESSOR_CONFIG)
  if max_pixels is not None:
    cfg["max_pixels"] = max_pixels
    cfg["size"] = {"shortest_edge": cfg["min_pixels"], "longest_edge": max_pixels}
  with open(os.path.join(out_dir, "preprocessor_config.json"), "w") as f:
    json.dump(cfg, f, indent=2)


def random_params(config, seed: int = 0, dtype=jnp.float32) -> dict:
  """HF-style random init (normal(0.02) weights, zero biases, unit norms) for our model."""
  model = Qwen2_5_VL(config, param_dtype=dtype)
  return nn.unbox(jax.jit(model.init)(jax.random.key(seed), *dummy_inputs(config))["params"])


def write_checkpoint(out_dir: str, variant: str = "tiny", seed: int = 0, max_pixels: int = 64 * 28 * 28) -> str:
  """A complete Qwen2.5-VL directory with random weights: loadable by us and by transformers.

  max_pixels bounds the image processor's resize (64 merged tokens per image by default) so
  CPU demos stay fast.
  """
  os.makedirs(out_dir, exist_ok=True)
  config = Qwen2_5_VLConfig.from_variant(variant)
  save_pretrained(random_params(config, seed), config, out_dir)
  write_tokenizer(out_dir)
  write_image_processor_config(out_dir, max_pixels=max_pixels)
  return out_dir
