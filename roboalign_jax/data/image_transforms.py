"""Frame decoding (Pillow), resizing and training augmentation.

Training views of third-person cameras get a random crop of 95% of the area resized back to the
model size, a small rotation and colour jitter (brightness, contrast, saturation, hue) -- each
group done as one affine map, so a view costs one resampling and one colour pass; wrist
views are only resized, because their geometry (where the object sits between the fingers) is
what the policy reads off them. Evaluation never augments. Randomness comes from the generator
passed in, so a sample's augmentation is a function of (seed, sample position).
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
from PIL import Image

from roboalign_jax.data.errors import DataError


@dataclasses.dataclass(frozen=True)
class Augmentation:
  crop_area: float = 0.95
  rotation_degrees: float = 5.0
  brightness: float = 0.2
  contrast: float = 0.2
  saturation: float = 0.2
  hue: float = 0.05  # fraction of the hue circle


def frame_shape(data: bytes | np.ndarray) -> tuple[int, ...]:
  """(H, W, channels) of an encoded frame from its header (no pixel decoding), or a raw array's shape."""
  if isinstance(data, np.ndarray):
    return tuple(data.shape)
  with Image.open(io.BytesIO(data)) as image:
    return (image.height, image.width, len(image.getbands()))


def shape_mismatch(found: tuple[int, ...], declared: tuple[int | None, ...]) -> str | None:
  """Why a frame of shape `found` is not a frame of the dataset's declared camera shape (None: any
  size), or None when it is."""
  if len(found) != 3 or found[-1] != 3:
    return f"has shape {found}; expected [H, W, 3]"
  if any(d is not None and d != f for d, f in zip(declared, found)):
    return f"has shape {found}; expected {tuple(declared)} as the dataset declares"
  return None


def decode(data: bytes | np.ndarray, declared_shape: tuple[int | None, ...], *, dataset: str, episode: int,
           step: int, path: str) -> Image.Image:
  """A frame (encoded bytes, or a raw uint8 array) -> RGB PIL image; DataError naming the frame if it
  is unreadable or not of the dataset's declared camera shape (None dims: any size)."""
  try:
    if isinstance(data, np.ndarray):
      image = Image.fromarray(data) if data.dtype == np.uint8 and data.ndim == 3 and data.shape[-1] == 3 else None
      found = tuple(data.shape)
    else:
      image = Image.open(io.BytesIO(data))
      image.load()
      found = (image.height, image.width, len(image.getbands()))
  except Exception as error:
    raise DataError(f"steps/{path} could not be decoded ({error}); expected a JPEG/PNG frame",
                    dataset=dataset, episode=episode, step=step) from error
  problem = shape_mismatch(found, declared_shape)
  if problem or image is None:
    raise DataError(f"steps/{path} {problem or 'is not uint8; expected uint8 [H, W, 3]'}",
                    dataset=dataset, episode=episode, step=step)
  return image.convert("RGB") if image.mode != "RGB" else image


def resize(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
  """PIL image -> uint8 [H, W, 3] at size (H, W), bilinear."""
  h, w = size
  if image.size != (w, h):
    image = image.resize((w, h), Image.BILINEAR)
  return np.asarray(image, np.uint8)


def geometric_affine(size: tuple[int, int], crop_box: tuple[float, float, float, float],
                     degrees: float) -> tuple[float, ...]:
  """Pillow AFFINE coefficients (output -> input coordinates) for "crop `crop_box`, resize to
  `size`, rotate by `degrees` about the centre" as one resampling."""
  h, w = size
  x0, y0, x1, y1 = crop_box
  sx, sy = (x1 - x0) / w, (y1 - y0) / h
  cos, sin = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
  a, b, d, e = sx * cos, -sx * sin, sy * sin, sy * cos
  cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
  return (a, b, cx - a * w / 2 - b * h / 2, d, e, cy - d * w / 2 - e * h / 2)


_LUMA = np.array([0.299, 0.587, 0.114])
_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def colour_affine(mean_rgb: np.ndarray, brightness: float, contrast: float, saturation: float,
                  hue: float, order: np.ndarray) -> tuple[float, ...]:
  """The colour jitters, in `order`, composed into one affine RGB map x -> M x + b (12 numbers,
  Pillow's `convert("RGB", matrix)` layout). Each jitter is affine in RGB: brightness scales,
  contrast blends with the image's mean grey, saturation with each pixel's grey, hue rotates the
  chroma plane of YIQ by `hue` turns. mean_rgb: float [3], the input's mean colour."""
  matrix, offset, mean = np.eye(3), np.zeros(3), np.asarray(mean_rgb, np.float64)
  for k in order:
    if k == 0:
      m, b = brightness * np.eye(3), np.zeros(3)
    elif k == 1:
      m, b = contrast * np.eye(3), (1 - contrast) * (_LUMA @ mean) * np.ones(3)
    elif k == 2:
      m, b = saturation * np.eye(3) + (1 - saturation) * np.outer(np.ones(3), _LUMA), np.zeros(3)
    else:
      angle = 2 * np.pi * hue
      rotation = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
      m, b = np.linalg.inv(_TO_YIQ) @ rotation @ _TO_YIQ, np.zeros(3)
    matrix, offset, mean = m @ matrix, m @ offset + b, m @ mean + b
  return tuple(np.concatenate([matrix, offset[:, None]], axis=1).reshape(-1).tolist())


def augment(image: Image.Image, size: tuple[int, int], rng: np.random.Generator,
            config: Augmentation = Augmentation()) -> np.ndarray:
  """Random crop + resize + rotation (one affine resampling) and colour jitter (one affine colour
  map; torchvision-style random order): PIL image -> uint8 [H, W, 3]."""
  h, w = size
  side = float(np.sqrt(config.crop_area))
  aspect = np.exp(rng.uniform(np.log(0.95), np.log(1.05)))  # a slight aspect-ratio change too
  crop_w = min(1.0, side * np.sqrt(aspect)) * image.width
  crop_h = min(1.0, side / np.sqrt(aspect)) * image.height
  x0 = rng.uniform(0, image.width - crop_w)
  y0 = rng.uniform(0, image.height - crop_h)
  degrees = rng.uniform(-config.rotation_degrees, config.rotation_degrees)
  out = image.transform((w, h), Image.AFFINE, geometric_affine(size, (x0, y0, x0 + crop_w, y0 + crop_h), degrees),
                        resample=Image.BILINEAR)
  factors = [rng.uniform(1 - c, 1 + c) for c in (config.brightness, config.contrast, config.saturation)]
  hue = rng.uniform(-config.hue, config.hue)
  mean = np.asarray(out.reduce(8), np.float64).reshape(-1, 3).mean(0)  # a cheap estimate of the mean colour
  out = out.convert("RGB", colour_affine(mean, *factors, hue, rng.permutation(4)))
  return np.asarray(out, np.uint8)
