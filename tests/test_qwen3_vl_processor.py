"""Qwen3-VL processor parity with HF: pixel_values / image_grid_thw identical to HF's image
processor (PIL backend) at Qwen3-VL's settings (16-px patches, mean = std = 0.5), both the released
pixel budget and the tiny one; chat-template ids identical to HF's Qwen3VLProcessor, whose
mm_token_type_ids mark exactly the image tokens our model finds by id."""

import json
import os

import numpy as np
import pytest
from PIL import Image
from transformers import AutoTokenizer, Qwen3VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.processing_utils import ProcessorMixin

from roboalign_jax.models import backbone as backbone_lib
from roboalign_jax.models.qwen3_vl.processor import RELEASED_IMAGE_PROCESSOR, Processor
import tiny_qwen


def _image(h, w, seed=0):
  return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _hf_image_processor(directory=None):
  """HF's image processor with the released Qwen3-VL settings, or those of `directory`."""
  cfg = {"size": {"shortest_edge": 65536, "longest_edge": 16777216}}
  if directory:
    with open(os.path.join(directory, "preprocessor_config.json")) as f:
      cfg = json.load(f)
  return Qwen2VLImageProcessorPil(patch_size=16, temporal_patch_size=2, merge_size=2, image_mean=[0.5] * 3,
                                  image_std=[0.5] * 3, size=cfg["size"])


@pytest.fixture(scope="module")
def processors():
  d = tiny_qwen.qwen3_processor_dir()
  tok = AutoTokenizer.from_pretrained(d)
  # HF's processor insists on a video processor class, which needs torchvision (not installed);
  # images only are compared here, so skip that one class check.
  mp = pytest.MonkeyPatch()
  original = ProcessorMixin.check_argument_for_proper_class
  mp.setattr(ProcessorMixin, "check_argument_for_proper_class",
             lambda self, name, arg: None if name == "video_processor" else original(self, name, arg))
  hf = Qwen3VLProcessor(image_processor=_hf_image_processor(d), tokenizer=tok, video_processor=None,
                        chat_template=tok.chat_template)
  yield hf, Processor.from_pretrained(d)
  mp.undo()


@pytest.mark.parametrize("size", [(224, 224), (256, 256), (200, 300), (480, 640)])
def test_released_image_settings_match_hf(size):
  img = _image(*size, seed=size[0])
  ref = _hf_image_processor()(images=[img], return_tensors="np")
  ours = RELEASED_IMAGE_PROCESSOR([img])
  np.testing.assert_array_equal(ours["image_grid_thw"], ref["image_grid_thw"])
  np.testing.assert_array_equal(ours["pixel_values"], ref["pixel_values"])
  assert ours["pixel_values"].shape[1] == 3 * 2 * 16 * 16


def test_directory_without_preprocessor_config_gets_released_settings(tmp_path):
  tiny_qwen_dir = tiny_qwen.qwen3_processor_dir()
  for name in os.listdir(tiny_qwen_dir):
    if name != "preprocessor_config.json":
      with open(os.path.join(tiny_qwen_dir, name), "rb") as src, open(tmp_path / name, "wb") as dst:
        dst.write(src.read())
  assert Processor.from_pretrained(str(tmp_path)).image_processor == RELEASED_IMAGE_PROCESSOR


def test_chat_template_ids_and_pixels_match_hf(processors):
  hf, ours = processors
  a, b = _image(224, 224, 1), _image(160, 256, 2)
  conversation = [
      {"role": "system", "content": "You control a robot arm."},
      {"role": "user", "content": [{"type": "image", "image": a}, {"type": "text", "text": "pick up the red block"},
                                   {"type": "image", "image": b}]},
      {"role": "assistant", "content": [{"type": "text", "text": "<think>move left</think>"}]},
      {"role": "user", "content": [{"type": "text", "text": "then?"}]},
  ]
  ref = hf.apply_chat_template(conversation, tokenize=True, return_dict=True, add_generation_prompt=True,
                               return_tensors="np")
  got = ours.apply_chat_template([conversation], add_generation_prompt=True)
  np.testing.assert_array_equal(got["input_ids"], ref["input_ids"])
  np.testing.assert_array_equal(got["pixel_values"], ref["pixel_values"])
  np.testing.assert_array_equal(got["image_grid_thw"], ref["image_grid_thw"])
  np.testing.assert_array_equal(ref["mm_token_type_ids"], (got["input_ids"] == ours.image_token_id).astype(int))
  assert len(got["image_grid_thw"]) == 2 and not np.array_equal(*got["image_grid_thw"])


def test_no_default_system_turn(processors):
  """Qwen3-VL's format, unlike Qwen2.5-VL's, adds no system turn of its own."""
  hf, ours = processors
  conversation = [{"role": "user", "content": "Where is the cup?"}]
  text = ours.render(conversation)
  assert text == "<|im_start|>user\nWhere is the cup?<|im_end|>\n<|im_start|>assistant\n"
  ref = hf.apply_chat_template(conversation, tokenize=True, return_dict=True, add_generation_prompt=True,
                               return_tensors="np")
  np.testing.assert_array_equal(ours.apply_chat_template([conversation])["input_ids"], ref["input_ids"])


def test_registry_processor_has_action_tokens():
  processor, vocab = backbone_lib.load_processor("qwen3_vl", tiny_qwen.qwen3_processor_dir())
  assert isinstance(processor, Processor)
  ids = processor.tokenizer("<action_start><action_5><action_end>", add_special_tokens=False)["input_ids"]
  assert ids == vocab.wrap([5])
