"""A Qwen-VL model family (Qwen2.5-VL, Qwen3-VL) as a backbone registry entry.

The families share everything around the model: Qwen's tokenizer and chat format, the processor
(`qwen2_5_vl/processor.py`, with the family's image settings), the action-token vocabulary
extension, and the export layout (HF safetensors + config + tokenizer + the source directory's
processor files). They differ in the Flax module, its config class and the checkpoint converter,
which `make_family` takes.

Loading a checkpoint directory extends the tokenizer with the action tokens if it lacks them and
grows the vocabulary to hold them (`vocab_extension.extend_vocabulary`); a directory exported
after Stage 1 already has both, so loading it changes nothing.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from types import ModuleType
from typing import Any, Callable

import jax.numpy as jnp

from roboalign_jax.models.backbone import Backbone, BackboneFamily
from roboalign_jax.models.qwen2_5_vl.vocab_extension import add_action_tokens, extend_vocabulary, padded_vocab_size

# Files of a checkpoint directory that are not weights, config or tokenizer: the processor needs them.
PROCESSOR_FILES = ("preprocessor_config.json", "chat_template.jinja", "chat_template.json")
# Qwen's chat format ends an assistant turn with <|im_end|>; <|endoftext|> ends a document.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|endoftext|>")


def make_family(name: str, *, display_name: str, model_cls: type, config_cls: Any, checkpoint_io: ModuleType,
                processor_cls: type, write_tiny: Callable[..., str], variants: tuple[str, ...]) -> BackboneFamily:
  """The BackboneFamily of one Qwen-VL generation.

  checkpoint_io: module with load_pretrained(dir, dtype=, compute_dtype=, remat=) -> (model, params),
    save_pretrained(params, config, out_dir) and dummy_inputs(config).
  config_cls: has from_variant(variant, dtype=, remat=) and `.text` / `.vision` sub-configs.
  """
  family: BackboneFamily  # bound below; the functions close over it

  def load_processor(processor_dir: str):
    """(Processor with the action tokens added to its tokenizer, ActionVocab)."""
    processor = processor_cls.from_pretrained(processor_dir)
    return processor, add_action_tokens(processor.tokenizer)

  def load(hf_dir: str, *, dtype=jnp.float32, compute_dtype=None, remat: bool = False) -> Backbone:
    """Weights, tokenizer and image processor from `hf_dir`, vocabulary extended if needed."""
    if not hf_dir or not os.path.isdir(hf_dir):
      raise FileNotFoundError(f"backbone directory {hf_dir!r} not found; expected a {display_name} checkpoint "
                              "directory (config.json, *.safetensors, tokenizer files)")
    model, params = checkpoint_io.load_pretrained(hf_dir, dtype=dtype, compute_dtype=compute_dtype, remat=remat)
    processor = processor_cls.from_pretrained(hf_dir)
    vocab_before = model.config.text.vocab_size
    _, params, config, action_vocab = extend_vocabulary(processor.tokenizer, params, model.config)
    if config.text.vocab_size != vocab_before:
      model = model_cls(config, param_dtype=dtype)
    return Backbone(family=family, model=model, params=params, processor=processor, action_vocab=action_vocab,
                    source_dir=os.path.abspath(hf_dir))

  def random_init(variant: str, processor_dir: str, *, dtype=jnp.float32, compute_dtype=None,
                  remat: bool = False) -> Backbone:
    """The `variant` shapes with a vocabulary that holds `processor_dir`'s tokenizer plus the action
    tokens (rounded up to a multiple of 128); params None (the trainer initialises them sharded)."""
    processor, action_vocab = load_processor(processor_dir)
    config = config_cls.from_variant(variant, dtype=compute_dtype or dtype, remat=remat)
    vocab = padded_vocab_size(config.text.vocab_size, len(processor.tokenizer))
    config = config.replace(text=dataclasses.replace(config.text, vocab_size=vocab))
    return Backbone(family=family, model=model_cls(config, param_dtype=dtype), params=None, processor=processor,
                    action_vocab=action_vocab, source_dir=os.path.abspath(processor_dir))

  def save_processor(backbone: Backbone, out_dir: str) -> str:
    """The tokenizer (with the action tokens) and the image-processor / chat-template files of the
    source directory: what `load_processor(out_dir)` reads back."""
    os.makedirs(out_dir, exist_ok=True)
    backbone.tokenizer.save_pretrained(out_dir)
    for file_name in PROCESSOR_FILES:
      src = os.path.join(backbone.source_dir, file_name)
      if os.path.isfile(src) and not os.path.isfile(os.path.join(out_dir, file_name)):
        shutil.copyfile(src, os.path.join(out_dir, file_name))
    return out_dir

  def export(params: dict, backbone: Backbone, out_dir: str) -> str:
    """HF checkpoint directory loadable by `load` and by transformers. Returns `out_dir`."""
    os.makedirs(out_dir, exist_ok=True)
    checkpoint_io.save_pretrained(params, backbone.model.config, out_dir)
    return save_processor(backbone, out_dir)

  def vision_token_ids(config) -> tuple[int, ...]:
    return (config.image_token_id, config.video_token_id, config.vision_start_token_id, config.vision_end_token_id)

  family = BackboneFamily(
      name=name, load=load, random_init=random_init, load_processor=load_processor, export=export,
      save_processor=save_processor, dummy_inputs=checkpoint_io.dummy_inputs, write_tiny=write_tiny,
      hidden_size=lambda c: c.text.hidden_size, num_layers=lambda c: c.text.num_hidden_layers,
      patch_dim=lambda c: c.vision.patch_dim, vision_token_ids=vision_token_ids,
      end_of_turn_tokens=END_OF_TURN_TOKENS, variants=variants)
  return family
