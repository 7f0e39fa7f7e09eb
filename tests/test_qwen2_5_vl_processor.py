"""Processor parity with HF: pixel_values / image_grid_thw identical to HF's image processor
(PIL backend) for several sizes; chat-template ids identical to HF's Qwen2_5_VLProcessor."""


import numpy as np
import pytest
from PIL import Image
from transformers import AutoTokenizer, Qwen2_5_VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.processing_utils import ProcessorMixin

from roboalign_jax.models.qwen2_5_vl.image_processing import ImageProcessor, smart_resize
from roboalign_jax.models.qwen2_5_vl.processor import Processor
import tiny_qwen


def _image(h, w, seed=0):
  return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _tokenizer_dir():
  return tiny_qwen.processor_dir(28 * 28 * 1280)


@pytest.fixture(scope="module")
def processors(monkeypatch_module):
  d = _tokenizer_dir()
  tok = AutoTokenizer.from_pretrained(d)
  # HF's processor insists on a video processor class, which needs torchvision (not installed);
  # images only are compared here, so skip that one class check.
  original = ProcessorMixin.check_argument_for_proper_class
  monkeypatch_module.setattr(ProcessorMixin, "check_argument_for_proper_class",
                             lambda self, name, arg: None if name == "video_processor" else original(self, name, arg))
  hf = Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessorPil(), tokenizer=tok, video_processor=None,
                           chat_template=tok.chat_template)
  return hf, Processor.from_pretrained(d)


@pytest.fixture(scope="module")
def monkeypatch_module():
  mp = pytest.MonkeyPatch()
  yield mp
  mp.undo()


@pytest.mark.parametrize("size", [(224, 224), (256, 256), (200, 200), (480, 640)])
def test_image_processor_matches_hf(size):
  img = _image(*size, seed=size[0])
  ref = Qwen2VLImageProcessorPil()(images=[img], return_tensors="np")
  ours = ImageProcessor()([img])
  np.testing.assert_array_equal(ours["image_grid_thw"], ref["image_grid_thw"])
  np.testing.assert_array_equal(ours["pixel_values"], ref["pixel_values"])


def test_token_counts_from_design_notes():
  assert ImageProcessor().num_image_tokens(224, 224) == 64
  assert ImageProcessor().num_image_tokens(256, 256) == 81
  assert smart_resize(480, 640) == (476, 644)


def test_image_processor_rejects_bad_images():
  with pytest.raises(ValueError, match=r"image 0: expected a PIL image or uint8 \[H, W, 3\]"):
    ImageProcessor()([np.zeros((32, 32), np.float32)])
  with pytest.raises(ValueError, match="aspect ratio"):
    ImageProcessor()([np.zeros((2, 500, 3), np.uint8)])


def test_chat_template_ids_match_hf(processors):
  hf, ours = processors
  a, b = _image(224, 224, 1), _image(200, 300, 2)
  conversation = [
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
  n_pad = int((got["input_ids"] == ours.image_token_id).sum())
  assert n_pad == int(np.prod(got["image_grid_thw"], 1).sum()) // 4


def test_text_only_with_system_prompt_matches_hf(processors):
  hf, ours = processors
  conversation = [{"role": "system", "content": "You control a robot."},
                  {"role": "user", "content": "Where is the cup?"}]
  ref = hf.apply_chat_template(conversation, tokenize=True, return_dict=True, add_generation_prompt=True,
                               return_tensors="np")
  got = ours.apply_chat_template([conversation])
  np.testing.assert_array_equal(got["input_ids"], ref["input_ids"])
  assert got["pixel_values"] is None


def test_batch_is_left_padded(processors):
  _, ours = processors
  short = [{"role": "user", "content": [{"type": "image", "image": _image(56, 56)}, {"type": "text", "text": "hi"}]}]
  long = [{"role": "user", "content": [{"type": "image", "image": _image(112, 84)},
                                       {"type": "text", "text": "a much longer question about the scene"}]}]
  batch = ours.apply_chat_template([short, long])
  alone = ours.apply_chat_template([short])
  t = alone["input_ids"].shape[1]
  assert batch["attention_mask"][0, :-t].sum() == 0 and batch["attention_mask"][0, -t:].all()
  np.testing.assert_array_equal(batch["input_ids"][0, -t:], alone["input_ids"][0])
  with pytest.raises(ValueError, match="placeholders"):
    ours(["<|image_pad|> and <|image_pad|>"], [_image(56, 56)])
