"""The Qwen2-VL / Qwen2.5-VL image processor in NumPy + PIL, equal to HF's
(`Qwen2VLImageProcessorPil`): smart_resize (bicubic) to multiples of patch * merge inside
[min_pixels, max_pixels], rescale 1/255, CLIP normalisation, the frame repeated to the temporal
patch size, and patches emitted in merge-window order.

    proc = ImageProcessor()                      # or ImageProcessor.from_pretrained(hf_dir)
    out = proc([img_a, img_b])                   # PIL images or uint8 [H, W, 3] arrays
    out["pixel_values"]    # float32 [sum t*h*w, 3 * 2 * 14 * 14]
    out["image_grid_thw"]  # int64 [n_images, 3], (1, H / 14, W / 14) per image
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

import numpy as np
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56,
                 max_pixels: int = 28 * 28 * 1280) -> tuple[int, int]:
  """Nearest (h, w) that are multiples of `factor`, with h * w in [min_pixels, max_pixels] and
  about the input's aspect ratio."""
  if min(height, width) <= 0:
    raise ValueError(f"image size must be positive, got {height}x{width}")
  if max(height, width) / min(height, width) > 200:
    raise ValueError(f"image aspect ratio must be below 200, got {height}x{width}")
  h, w = round(height / factor) * factor, round(width / factor) * factor
  if h * w > max_pixels:
    scale = math.sqrt(height * width / max_pixels)
    h = max(factor, math.floor(height / scale / factor) * factor)
    w = max(factor, math.floor(width / scale / factor) * factor)
  elif h * w < min_pixels:
    scale = math.sqrt(min_pixels / (height * width))
    h = math.ceil(height * scale / factor) * factor
    w = math.ceil(width * scale / factor) * factor
  return h, w


@dataclasses.dataclass(frozen=True)
class ImageProcessor:
  min_pixels: int = 56 * 56
  max_pixels: int = 28 * 28 * 1280
  patch_size: int = 14
  temporal_patch_size: int = 2
  merge_size: int = 2
  image_mean: tuple[float, ...] = CLIP_MEAN
  image_std: tuple[float, ...] = CLIP_STD
  rescale_factor: float = 1 / 255

  @classmethod
  def from_pretrained(cls, hf_dir: str, default: "ImageProcessor | None" = None) -> "ImageProcessor":
    """Reads `preprocessor_config.json` (min/max pixels from `size` or the legacy keys); what it
    does not set comes from `default` (the family's released settings; Qwen2.5-VL's if None)."""
    default = default or cls()
    path = os.path.join(hf_dir, "preprocessor_config.json")
    if not os.path.isfile(path):
      return default
    with open(path) as f:
      d = json.load(f)
    size = d.get("size") or {}
    kw = dict(
        min_pixels=size.get("shortest_edge", d.get("min_pixels", default.min_pixels)),
        max_pixels=size.get("longest_edge", d.get("max_pixels", default.max_pixels)))
    for k in ("patch_size", "temporal_patch_size", "merge_size", "rescale_factor"):
      if k in d:
        kw[k] = d[k]
    for k in ("image_mean", "image_std"):
      if k in d:
        kw[k] = tuple(d[k])
    return dataclasses.replace(default, **kw)

  @property
  def factor(self) -> int:
    return self.patch_size * self.merge_size

  def num_image_tokens(self, height: int, width: int) -> int:
    """LLM tokens for an image of this size: (H / 28) * (W / 28) after smart_resize."""
    h, w = smart_resize(height, width, self.factor, self.min_pixels, self.max_pixels)
    return (h // self.factor) * (w // self.factor)

  def _to_rgb_uint8(self, image, index: int) -> Image.Image:
    if isinstance(image, Image.Image):
      return image.convert("RGB")
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
      raise ValueError(f"image {index}: expected a PIL image or uint8 [H, W, 3], got {arr.dtype} {arr.shape}")
    return Image.fromarray(arr)

  def preprocess_one(self, image, index: int = 0) -> tuple[np.ndarray, tuple[int, int, int]]:
    """One image -> (patches float32 [h*w, C*T*P*P], (1, h, w))."""
    pil = self._to_rgb_uint8(image, index)
    h, w = smart_resize(pil.height, pil.width, self.factor, self.min_pixels, self.max_pixels)
    pil = pil.resize((w, h), resample=Image.Resampling.BICUBIC)
    x = (np.asarray(pil).astype(np.float64) * self.rescale_factor).astype(np.float32)  # [H, W, C]
    x = (x - np.asarray(self.image_mean, np.float32)) / np.asarray(self.image_std, np.float32)
    p, m, tp = self.patch_size, self.merge_size, self.temporal_patch_size
    gh, gw = h // p, w // p
    # [H, W, C] -> (block row, block col, row in block, col in block, C, py, px)
    x = x.reshape(gh // m, m, p, gw // m, m, p, 3).transpose(0, 3, 1, 4, 6, 2, 5)
    x = np.broadcast_to(x[:, :, :, :, :, None], (*x.shape[:5], tp, p, p))  # one frame, repeated in time
    return np.ascontiguousarray(x.reshape(gh * gw, 3 * tp * p * p)), (1, gh, gw)

  def __call__(self, images) -> dict[str, np.ndarray]:
    if isinstance(images, (Image.Image, np.ndarray)):
      images = [images]
    if not images:
      raise ValueError("images: expected at least one image")
    patches, grids = zip(*(self.preprocess_one(im, i) for i, im in enumerate(images)))
    return {"pixel_values": np.concatenate(patches, 0), "image_grid_thw": np.array(grids, np.int64)}
