"""Text + image inputs for Qwen2.5-VL: the tokenizer and chat template from a checkpoint
directory (via `transformers.AutoTokenizer`), each `<|image_pad|>` expanded to the image's
number of merged patches, and the NumPy image processor.

    proc = Processor.from_pretrained(hf_dir)
    messages = [{"role": "user", "content": [{"type": "image", "image": pil},
                                             {"type": "text", "text": "What should the robot do?"}]}]
    batch = proc.apply_chat_template([messages], add_generation_prompt=True)
    # batch: input_ids int32 [B, T] (left-padded), attention_mask int32 [B, T],
    #        pixel_values float32 [N, 1176], image_grid_thw int32 [n_images, 3] (None without images)
    out = model.apply({"params": params}, **batch)
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from roboalign_jax.models.qwen2_5_vl.image_processing import ImageProcessor

IMAGE_PAD = "<|image_pad|>"


def _images_in(messages: Sequence[dict]) -> list[Any]:
  """Images of a conversation in order ({"type": "image", "image": ...} content items)."""
  found = []
  for message in messages:
    content = message.get("content")
    if isinstance(content, str) or content is None:
      continue
    for item in content:
      if item.get("type") == "image" or "image" in item:
        if "image" not in item:
          raise ValueError(f"image content item without an 'image' entry: {item}")
        found.append(item["image"])
  return found


class Processor:
  image_placeholder = IMAGE_PAD  # one per image in rendered text; expanded to the image's tokens
  # Image settings when the checkpoint directory has no preprocessor_config.json (a family's
  # subclass names its own released settings).
  default_image_processor = ImageProcessor()

  def __init__(self, tokenizer, image_processor: ImageProcessor | None = None):
    self.tokenizer = tokenizer
    self.image_processor = image_processor or self.default_image_processor
    self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
    if self.image_token_id is None or self.image_token_id == tokenizer.unk_token_id:
      raise ValueError(f"tokenizer has no {IMAGE_PAD} token; expected a Qwen-VL tokenizer")
    self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

  @classmethod
  def from_pretrained(cls, hf_dir: str) -> "Processor":
    from transformers import AutoTokenizer  # lazy: heavy, and imports torch when installed
    return cls(AutoTokenizer.from_pretrained(hf_dir),
               ImageProcessor.from_pretrained(hf_dir, default=cls.default_image_processor))

  def render(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
    """The chat template's text, one `<|image_pad|>` per image."""
    if getattr(self.tokenizer, "chat_template", None) is None:
      raise ValueError("tokenizer has no chat_template; expected one in the checkpoint directory")
    return self.tokenizer.apply_chat_template(list(messages), tokenize=False,
                                              add_generation_prompt=add_generation_prompt)

  def __call__(self, texts: str | Sequence[str], images: Sequence[Any] | None = None) -> dict:
    """texts with one `<|image_pad|>` per image (images of all texts, in order) -> model inputs."""
    if isinstance(texts, str):
      texts = [texts]
    images = list(images or [])
    n_pads = sum(t.count(IMAGE_PAD) for t in texts)
    if n_pads != len(images):
      raise ValueError(f"texts contain {n_pads} {IMAGE_PAD} placeholders but {len(images)} images were given")
    vision = self.image_processor(images) if images else None
    unit = self.image_processor.merge_size ** 2
    counts = iter([] if vision is None else (np.prod(vision["image_grid_thw"], axis=1) // unit).tolist())
    rows = []
    for text in texts:
      pieces = text.split(IMAGE_PAD)
      expanded = pieces[0] + "".join(IMAGE_PAD * int(next(counts)) + piece for piece in pieces[1:])
      rows.append(self.tokenizer(expanded, add_special_tokens=False)["input_ids"])
    t = max(len(r) for r in rows)
    ids = np.full((len(rows), t), self.pad_token_id, np.int32)
    mask = np.zeros((len(rows), t), np.int32)
    for b, r in enumerate(rows):  # left padding: generation continues at the right edge
      ids[b, t - len(r):] = r
      mask[b, t - len(r):] = 1
    out = {"input_ids": ids, "attention_mask": mask, "pixel_values": None, "image_grid_thw": None}
    if vision is not None:
      out["pixel_values"] = vision["pixel_values"]
      out["image_grid_thw"] = vision["image_grid_thw"].astype(np.int32)
    return out

  def apply_chat_template(self, conversations: Sequence[Sequence[dict]], add_generation_prompt: bool = True) -> dict:
    """A batch of conversations (images inside the messages) -> model inputs."""
    if conversations and isinstance(conversations[0], dict):
      conversations = [conversations]
    texts = [self.render(c, add_generation_prompt) for c in conversations]
    images = [im for c in conversations for im in _images_in(c)]
    return self(texts, images)
