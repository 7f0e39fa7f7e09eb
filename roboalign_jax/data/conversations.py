"""Conversation (VQA / reasoning) data for Stage 1, in the LLaVA JSONL format, and a fixture writer.

One JSON object per line:
    {"id": "...", "image": "images/0001.png" | ["a.png", "b.png"] (optional),
     "conversations": [{"from": "human", "value": "<image>\\nWhat colour ...?"},
                       {"from": "gpt", "value": "red"}, ...]}
Each `<image>` placeholder is one image, in order; image paths are relative to the JSONL's
directory (or `image_root`). Turns alternate human / gpt, starting with human.

The fixture writer asks questions about the procedural scenes of `fixtures.py` whose answers
are computed from the scene (so they are verifiable: each record also stores `answer`);
reasoning answers are `<think>...</think><answer>...</answer>`.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
from PIL import Image

from roboalign_jax.data import fixtures
from roboalign_jax.data.errors import DataError

IMAGE_TOKEN = "<image>"
ROLES = {"human": "user", "gpt": "assistant"}


class ConversationSource:
  """Random access to the records of a LLaVA-format JSONL file (a Grain-compatible source).

  source[i] -> {"messages": processor-format messages with the images inside (uint8 [H, W, 3]),
                "images": [uint8 [H, W, 3]], "id": str, "answer": str | None}
  Every record is validated when read; DataError names the file, line and what was expected.
  """

  def __init__(self, path: str, image_root: str | None = None, name: str | None = None):
    self.path = os.path.abspath(path)
    self.image_root = image_root or os.path.dirname(self.path)
    self.name = name or os.path.basename(path)
    if not os.path.isfile(self.path):
      raise DataError(f"conversation file {self.path} does not exist; expected LLaVA-format JSONL", dataset=self.name)
    self._offsets = []
    with open(self.path, "rb") as f:
      offset = 0
      for line in f:
        if line.strip():
          self._offsets.append(offset)
        offset += len(line)
    if not self._offsets:
      raise DataError(f"{self.path} has no records", dataset=self.name)

  def __len__(self) -> int:
    return len(self._offsets)

  def record(self, index: int) -> dict:
    with open(self.path, "rb") as f:
      f.seek(self._offsets[index])
      line = f.readline()
    try:
      record = json.loads(line)
    except json.JSONDecodeError as error:
      raise DataError(f"line is not valid JSON ({error})", dataset=self.name, episode=index) from error
    self._validate(record, index)
    return record

  def _validate(self, record: Any, index: int) -> None:
    def fail(message):
      raise DataError(message, dataset=self.name, episode=index)
    if not isinstance(record, dict) or not isinstance(record.get("conversations"), list) or not record["conversations"]:
      fail("record has no 'conversations' list; expected {'image': ..., 'conversations': [{'from', 'value'}, ...]}")
    for k, turn in enumerate(record["conversations"]):
      expected = "human" if k % 2 == 0 else "gpt"
      if not isinstance(turn, dict) or turn.get("from") != expected or not isinstance(turn.get("value"), str):
        fail(f"turn {k} is {turn!r}; expected {{'from': {expected!r}, 'value': str}} (turns alternate human/gpt)")
      if not turn["value"].strip():
        fail(f"turn {k} has an empty value")
    if record["conversations"][-1]["from"] != "gpt":
      fail("the last turn is from 'human'; expected a 'gpt' answer to supervise")
    images = self._image_paths(record)
    placeholders = sum(t["value"].count(IMAGE_TOKEN) for t in record["conversations"])
    if placeholders != len(images):
      fail(f"{placeholders} {IMAGE_TOKEN} placeholders but {len(images)} images")
    for path in images:
      if not os.path.isfile(path):
        fail(f"image {path} does not exist")

  def _image_paths(self, record: dict) -> list[str]:
    images = record.get("image")
    if images is None:
      return []
    images = [images] if isinstance(images, str) else list(images)
    return [p if os.path.isabs(p) else os.path.join(self.image_root, p) for p in images]

  def __getitem__(self, index: int) -> dict:
    record = self.record(index)
    images = []
    for path in self._image_paths(record):
      try:
        with Image.open(path) as image:
          images.append(np.asarray(image.convert("RGB"), np.uint8))
      except Exception as error:
        raise DataError(f"image {path} could not be decoded ({error})", dataset=self.name, episode=index) from error
    return {"messages": to_messages(record["conversations"], images), "images": images,
            "id": str(record.get("id", index)), "answer": record.get("answer")}


def to_messages(turns: list[dict], images: list) -> list[dict]:
  """LLaVA turns -> processor messages; each `<image>` becomes an image item at its place."""
  remaining = iter(images)
  messages = []
  for turn in turns:
    parts = turn["value"].split(IMAGE_TOKEN)
    content = []
    for k, part in enumerate(parts):
      if k:
        content.append({"type": "image", "image": next(remaining)})
      text = part.strip("\n") if k or len(parts) > 1 else part
      if text:
        content.append({"type": "text", "text": text})
    role = ROLES[turn["from"]]
    if role == "assistant" and all(item["type"] == "text" for item in content):
      messages.append({"role": role, "content": "".join(item["text"] for item in content)})
    else:
      messages.append({"role": role, "content": content})
  return messages


def _name(obj: dict) -> str:
  return f"{obj['colour']} {obj['shape']}"


def _vqa(scene: dict, rng: np.random.Generator) -> tuple[str, str]:
  objects = scene["objects"]
  kind = rng.integers(4)
  if kind == 0:
    answer = str(sum(o["shape"] == "bowl" for o in objects))
    return "How many bowls are on the table? Answer with a number.", answer
  if kind == 1:
    leftmost = min(objects, key=lambda o: o["xy"][0])
    return "What colour is the leftmost object? Answer with one word.", leftmost["colour"]
  a, b = rng.choice(3, 2, replace=False)
  if kind == 2:
    left = objects[a]["xy"][0] < objects[b]["xy"][0]
    return f"Is the {_name(objects[a])} to the left of the {_name(objects[b])}? Answer yes or no.", "yes" if left else "no"
  c = 3 - a - b
  closer = a if np.linalg.norm(objects[a]["xy"] - objects[c]["xy"]) < np.linalg.norm(objects[b]["xy"] - objects[c]["xy"]) else b
  return (f"Which is closer to the {_name(objects[c])}: the {_name(objects[a])} or the {_name(objects[b])}?",
          f"the {_name(objects[closer])}")


def _reasoning(scene: dict, rng: np.random.Generator) -> tuple[str, str, str]:
  """A spatial question answered with the positions spelled out in the thinking."""
  objects = scene["objects"]
  a, b = rng.choice(3, 2, replace=False)
  xa, xb = objects[a]["xy"][0], objects[b]["xy"][0]
  answer = "yes" if xa < xb else "no"
  think = (f"The {_name(objects[a])} is at about {xa:.2f} of the image width and the {_name(objects[b])} at "
           f"about {xb:.2f}. {xa:.2f} is {'less' if xa < xb else 'more'} than {xb:.2f}, so the "
           f"{_name(objects[a])} is {'' if xa < xb else 'not '}to the left.")
  question = (f"Is the {_name(objects[a])} to the left of the {_name(objects[b])}? Think step by step, then "
              "answer yes or no.")
  return question, f"<think>{think}</think><answer>{answer}</answer>", answer


def write_conversation_fixture(out_dir: str, num_vqa: int = 16, num_reasoning: int = 8, seed: int = 0,
                               image_size: int = 256) -> dict[str, str]:
  """Writes images/ and vqa.jsonl, reasoning.jsonl under `out_dir`; returns {"vqa": path, "reasoning": path}.

  Every fourth VQA record compares two scenes (two images) to cover multi-image records.
  """
  os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
  shape = (image_size, image_size, 3)

  def scene_image(key: str, rng) -> tuple[dict, str]:
    scene = fixtures.sample_scene(rng)
    image = fixtures.render(scene, fixtures.HOME, -1.0, shape)
    relative = os.path.join("images", f"{key}.png")
    Image.fromarray(image).save(os.path.join(out_dir, relative))
    return scene, relative

  paths = {}
  records = []
  for i in range(num_vqa):
    rng = np.random.default_rng([seed, 0, i])
    scene, image = scene_image(f"vqa_{i:05d}", rng)
    if i % 4 == 3:
      other, image_b = scene_image(f"vqa_{i:05d}_b", rng)
      colour = scene["objects"][0]["colour"]
      answer = "yes" if any(o["colour"] == colour for o in other["objects"]) else "no"
      records.append({"id": f"vqa_{i}", "image": [image, image_b], "answer": answer, "conversations": [
          {"from": "human", "value": f"{IMAGE_TOKEN}\n{IMAGE_TOKEN}\nIs there a {colour} object in the second "
                                     "image too? Answer yes or no."},
          {"from": "gpt", "value": answer}]})
      continue
    question, answer = _vqa(scene, rng)
    records.append({"id": f"vqa_{i}", "image": image, "answer": answer, "conversations": [
        {"from": "human", "value": f"{IMAGE_TOKEN}\n{question}"}, {"from": "gpt", "value": answer}]})
  paths["vqa"] = _write_jsonl(os.path.join(out_dir, "vqa.jsonl"), records)
  records = []
  for i in range(num_reasoning):
    rng = np.random.default_rng([seed, 1, i])
    scene, image = scene_image(f"reasoning_{i:05d}", rng)
    question, response, answer = _reasoning(scene, rng)
    records.append({"id": f"reasoning_{i}", "image": image, "answer": answer, "conversations": [
        {"from": "human", "value": f"{IMAGE_TOKEN}\n{question}"}, {"from": "gpt", "value": response}]})
  paths["reasoning"] = _write_jsonl(os.path.join(out_dir, "reasoning.jsonl"), records)
  return paths


def _write_jsonl(path: str, records: list[dict]) -> str:
  with open(path, "w") as f:
    for record in records:
      f.write(json.dumps(record) + "\n")
  return path
