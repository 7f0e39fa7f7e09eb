"""Frame decoding (Pillow), resizing and training augmentation.

Training views of third-person cameras get a random crop of 95% of the area resized back to the
model size, a small rotation and colour jitter (brightness, contrast, saturation, hue); wrist
views are only resized, because their geometry (where the object sits between the fingers) is
what the policy reads off them. Evaluation never augments. Randomness comes from the generator
passed in, so a sample's augmentation is a function of (seed, sample position).
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
from PIL import Image, ImageEnhance

from roboalign_jax.data.errors import DataError


@dataclasses.dataclass(frozen=True)
class Augmentation:
  crop_area: float = 0.95
  rotation_degrees: float = 5.0
  brightness: float = 0.2
  contrast: float = 0.2
  saturation: float = 0.2
  hue: float = 0.05  # fraction of the hue circle


def decode(data: bytes, expected_shape: tuple[int, int, int], *, dataset: str, episode: int, step: int,
           path: str) -> Image.Image:
  """Encoded frame -> RGB PIL image; DataError naming the frame if unreadable or the wrong size."""
  try:
    image = Image.open(io.BytesIO(data))
    image.load()
  except Exception as error:
    raise DataError(f"steps/{path} could not be decoded ({error}); expected a JPEG/PNG frame",
                    dataset=dataset, episode=episode, step=step) from error
  found = (image.height, image.width, len(image.getbands()))
  if found != tuple(expected_shape):
    raise DataError(f"steps/{path} has shape {found}; expected {tuple(expected_shape)}",
                    dataset=dataset, episode=episode, step=step)
  return image.convert("RGB") if image.mode != "RGB" else image


def resize(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
  """PIL image -> uint8 [H, W, 3] at size (H, W), bilinear."""
  h, w = size
  if image.size != (w, h):
    image = image.resize((w, h), Image.BILINEAR)
  return np.asarray(image, np.uint8)


def augment(image: Image.Image, size: tuple[int, int], rng: np.random.Generator,
            config: Augmentation = Augmentation()) -> np.ndarray:
  """Random crop + resize, rotation and colour jitter: PIL image -> uint8 [H, W, 3]."""
  h, w = size
  side = float(np.sqrt(config.crop_area))
  aspect = np.exp(rng.uniform(np.log(0.95), np.log(1.05)))  # a slight aspect-ratio change too
  crop_w = min(1.0, side * np.sqrt(aspect)) * image.width
  crop_h = min(1.0, side / np.sqrt(aspect)) * image.height
  x0 = rng.uniform(0, image.width - crop_w)
  y0 = rng.uniform(0, image.height - crop_h)
  out = image.resize((w, h), Image.BILINEAR, box=(x0, y0, x0 + crop_w, y0 + crop_h))
  if config.rotation_degrees:
    out = out.rotate(rng.uniform(-config.rotation_degrees, config.rotation_degrees), resample=Image.BILINEAR)
  order = rng.permutation(3)  # torchvision-style random order of the photometric jitters
  factors = [rng.uniform(1 - c, 1 + c) for c in (config.brightness, config.contrast, config.saturation)]
  enhancers = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)
  for k in order:
    out = enhancers[k](out).enhance(factors[k])
  if config.hue:
    shift = int(round(rng.uniform(-config.hue, config.hue) * 255))
    if shift:
      hsv = np.asarray(out.convert("HSV")).copy()
      hsv[..., 0] = (hsv[..., 0].astype(np.int16) + shift).astype(np.uint8)  # wraps around the circle
      out = Image.fromarray(hsv, "HSV").convert("RGB")
  return np.asarray(out, np.uint8)
