"""Text + image inputs for Qwen3-VL: Qwen2.5-VL's processor (`qwen2_5_vl/processor.py`) with
Qwen3-VL's released image settings when a directory has no preprocessor_config.json: 16-px
patches (a merged token covers 32 x 32 px), mean = std = 0.5, 256^2 to 4096^2 pixels.

Everything else is the same as for Qwen2.5-VL and equal to HF's `Qwen3VLProcessor` for images
(tests/test_qwen3_vl_processor.py): the chat template of the checkpoint directory, each
`<|image_pad|>` expanded to t*h*w/4 tokens, bicubic smart_resize to multiples of 32. HF's
processor also returns `mm_token_type_ids` (1 at image tokens) for its M-RoPE; our model derives
the same from `image_token_id`, so it is not an input here.
"""

from __future__ import annotations

from roboalign_jax.models.qwen2_5_vl import processor as qwen2_5_vl_processor
from roboalign_jax.models.qwen2_5_vl.image_processing import ImageProcessor

# Qwen/Qwen3-VL-*-Instruct preprocessor_config.json: size {shortest_edge: 65536, longest_edge: 16777216}.
RELEASED_IMAGE_PROCESSOR = ImageProcessor(min_pixels=65536, max_pixels=16777216, patch_size=16,
                                          temporal_patch_size=2, merge_size=2, image_mean=(0.5, 0.5, 0.5),
                                          image_std=(0.5, 0.5, 0.5))


class Processor(qwen2_5_vl_processor.Processor):
  default_image_processor = RELEASED_IMAGE_PROCESSOR
