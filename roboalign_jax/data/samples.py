"""Model samples built from common-format examples: FAST SFT, GRPO prompts and VLA samples.

Prompts (the RoboAlign ones):
  system   SYSTEM_PROMPT (GRPO: GRPO_SYSTEM_PROMPT, which adds the think/answer format)
  user     the primary camera image, then USER_TEMPLATE with the instruction
  assistant (SFT only) "<action_start><action_k>...<action_end>" -- the FAST tokens of the
           normalised action chunk

The system turn is `config.data.system_prompt` when set. GRPO prompts carry their target as a
payload the configured reward reads (`{"fast_ids": [...]}` for RoboAlign's reward; see
`rl/rewards.py`).

Without a processor a sample is the conversation (`messages`, images inside as uint8 arrays)
plus targets; with one (`config.data.processor_dir`, a checkpoint directory of the backbone
family `config.data.model_family`) it is also tokenised by the backbone's processor (chat
template, image preprocessing, image-pad expansion) into model inputs. The tokenizer gets the
action tokens appended if it lacks them, in the order `roboalign_jax.fast.vocab` defines, which
is the order the model's vocabulary is extended in.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from roboalign_jax.data.collate import collate as collate_examples
from roboalign_jax.fast import FASTTokenizer
from roboalign_jax.fast.vocab import fast_ids_to_text
from roboalign_jax.models import backbone as backbone_lib

SYSTEM_PROMPT = "You are an embodied vision-language robotic assistant for multi-object manipulation."
GRPO_SYSTEM_PROMPT = SYSTEM_PROMPT + (
    " The assistant first thinks about the reasoning process in the mind and then provides the user with the"
    " answer. The reasoning process and answer are enclosed within <think> </think> and <answer> </answer>"
    " tags, respectively.")
USER_TEMPLATE = "Your current task is {instruction}. Output the robot's actions to perform this task through Fast tokens."
IGNORE = 0  # loss_mask value of prompt and padding tokens


def user_text(instruction: str) -> str:
  # A trailing period in the dataset's instruction would double the template's own.
  return USER_TEMPLATE.format(instruction=instruction.strip().rstrip("."))


def fast_messages(image: np.ndarray, instruction: str, fast_ids: Sequence[int] | None, *,
                  system: str = SYSTEM_PROMPT) -> list[dict]:
  """The conversation; the assistant turn only when `fast_ids` is given. image: uint8 [H, W, 3]."""
  messages = [{"role": "system", "content": system},
              {"role": "user", "content": [{"type": "image", "image": image},
                                           {"type": "text", "text": user_text(instruction)}]}]
  if fast_ids is not None:
    messages.append({"role": "assistant", "content": fast_ids_to_text(fast_ids)})
  return messages


def vla_messages(images: Sequence[np.ndarray], instruction: str, *, system: str = SYSTEM_PROMPT) -> list[dict]:
  """The Stage 3 backbone prompt: every camera image, then the SFT user text (no answer)."""
  return [{"role": "system", "content": system},
          {"role": "user", "content": [*({"type": "image", "image": im} for im in images),
                                       {"type": "text", "text": user_text(instruction)}]}]


def primary_image(example: dict) -> np.ndarray:
  """The current frame of the first camera: uint8 [H, W, 3]."""
  return example["images"][0, -1]


def pad_to(rows: Sequence[np.ndarray], length: int, value: int, *, left: bool) -> np.ndarray:
  """int [n_i] rows -> int32 [B, length]; raises when a row is longer than `length`."""
  out = np.full((len(rows), length), value, np.int32)
  for b, row in enumerate(rows):
    if len(row) > length:
      raise ValueError(f"token sequence of length {len(row)} exceeds config.data.max_seq_len={length}")
    if left:
      out[b, length - len(row):] = row
    else:
      out[b, :len(row)] = row
  return out


class Tokenizing:
  """Tokenises conversations with the backbone processor (shared by the builders)."""

  def __init__(self, processor_dir: str = "", max_seq_len: int = 0, family: str = "qwen2_5_vl", *,
               processor: Any = None, action_vocab: Any = None):
    if processor is None:
      processor, action_vocab = backbone_lib.load_processor(family, processor_dir)
    self.processor, self.action_vocab = processor, action_vocab
    self.max_seq_len = max_seq_len

  def prompt(self, messages: list[dict], images: list) -> dict:
    """Prompt (generation prompt appended) -> input_ids int32 [T], pixel_values, image_grid_thw."""
    text = self.processor.render(messages, add_generation_prompt=True)
    out = self.processor(text, images)
    return {"input_ids": out["input_ids"][0], "pixel_values": out["pixel_values"],
            "image_grid_thw": out["image_grid_thw"]}

  def conversation(self, messages: list[dict], images: list) -> dict:
    """A conversation ending in an assistant turn -> input_ids int32 [T], loss_mask int32 [T]
    (1 on every assistant turn's tokens, its end-of-turn included), vision inputs.

    The chat template is rendered for growing prefixes of the conversation; each prompt prefix
    and each assistant turn is tokenised separately (images expanded by the processor), so the
    mask follows the template exactly without character-offset bookkeeping.
    """
    image_pad = self.processor.image_placeholder
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not turns or turns[-1] != len(messages) - 1:
      raise ValueError("conversation must end with an assistant turn to be supervised")
    pieces, rendered = [], ""
    for i in turns:
      prompt = self.processor.render(messages[:i], add_generation_prompt=True)
      full = self.processor.render(messages[:i + 1], add_generation_prompt=False)
      if not (prompt.startswith(rendered) and full.startswith(prompt)):
        raise ValueError("chat template renders a conversation prefix differently from the whole; "
                         "cannot separate the assistant turns")
      pieces += [(prompt[len(rendered):], 0), (full[len(prompt):], 1)]
      rendered = full
    ids, mask, vision, remaining = [], [], [], list(images)
    for text, supervised in pieces:
      n_images = text.count(image_pad)
      if n_images:
        out = self.processor(text, remaining[:n_images])
        remaining = remaining[n_images:]
        vision.append(out)
        piece = out["input_ids"][0]
      else:
        piece = np.asarray(self.processor.tokenizer(text, add_special_tokens=False)["input_ids"], np.int32)
      ids.append(piece)
      mask.append(np.full(len(piece), supervised, np.int32))
    if remaining:
      raise ValueError(f"{len(images)} images given but the conversation has {len(images) - len(remaining)} "
                       "image placeholders")
    return {"input_ids": np.concatenate(ids).astype(np.int32), "loss_mask": np.concatenate(mask),
            "pixel_values": np.concatenate([v["pixel_values"] for v in vision]) if vision else None,
            "image_grid_thw": np.concatenate([v["image_grid_thw"] for v in vision]) if vision else None}

  def collate_tokens(self, samples: list[dict], *, left: bool) -> dict:
    """Pads input_ids (+ attention_mask, loss_mask) and concatenates the vision inputs."""
    length = self.max_seq_len or max(len(s["input_ids"]) for s in samples)
    pad_id = self.processor.pad_token_id
    out = {"input_ids": pad_to([s["input_ids"] for s in samples], length, pad_id, left=left),
           "attention_mask": pad_to([np.ones(len(s["input_ids"]), np.int32) for s in samples], length, 0, left=left)}
    if "loss_mask" in samples[0]:
      out["loss_mask"] = pad_to([s["loss_mask"] for s in samples], length, IGNORE, left=left)
    with_images = [s for s in samples if s.get("pixel_values") is not None]
    if with_images:  # text-only samples contribute no patches
      out["pixel_values"] = np.concatenate([s["pixel_values"] for s in with_images])
      out["image_grid_thw"] = np.concatenate([s["image_grid_thw"] for s in with_images])
    return out


def _split(samples: list[dict], token_keys: Sequence[str]) -> tuple[list[dict], list[dict]]:
  return ([{k: s[k] for k in token_keys if k in s} for s in samples],
          [{k: v for k, v in s.items() if k not in token_keys} for s in samples])


TOKEN_KEYS = ("input_ids", "loss_mask", "pixel_values", "image_grid_thw")


def collate_samples(samples: list[dict], tokenizing: Tokenizing | None, *, left: bool) -> dict:
  """Stacks samples; with a processor the token fields are padded (on the left for prompts) and
  the vision inputs concatenated."""
  if tokenizing is None:
    return collate_examples(samples)
  tokens, rest = _split(samples, TOKEN_KEYS)
  return {**collate_examples(rest), **tokenizing.collate_tokens(tokens, left=left)}


class FastSFTBuilder:
  """Example -> FAST SFT sample: messages, fast_ids, and (with a processor) input_ids [T],
  loss_mask [T] (1 on the assistant turn: the action tokens, <action_end>'s turn end), vision inputs."""

  default_system = SYSTEM_PROMPT

  def __init__(self, fast_tokenizer, tokenizing: Tokenizing | None = None, system: str = ""):
    self.fast = fast_tokenizer
    self.tokenizing = tokenizing
    self.system = system or self.default_system

  def fast_ids(self, example: dict) -> list[int]:
    return self.fast.encode(example["actions"][None].astype(np.float32))[0]

  def __call__(self, example: dict) -> dict:
    image = primary_image(example)
    fast_ids = self.fast_ids(example)
    messages = fast_messages(image, example["instruction"], fast_ids, system=self.system)
    sample = {"messages": messages, "fast_ids": fast_ids, "actions": example["actions"],
              "action_mask": example["action_mask"], "instruction": example["instruction"]}
    if self.tokenizing is not None:
      sample.update(self.tokenizing.conversation(messages, [image]))
    return sample

  def collate(self, samples: list[dict]) -> dict:
    return collate_samples(samples, self.tokenizing, left=False)


class GRPOPromptBuilder(FastSFTBuilder):
  """Example -> GRPO prompt: messages (no answer) and `target`, the payload the reward reads
  (`{"fast_ids": [int, ...]}`: the FAST ids of the normalised chunk); with a processor, prompt
  input_ids (left-padded in batches, for generation) and vision inputs. Batched: `target` is a
  list of B payloads."""

  default_system = GRPO_SYSTEM_PROMPT

  def __call__(self, example: dict) -> dict:
    image = primary_image(example)
    messages = fast_messages(image, example["instruction"], None, system=self.system)
    sample = {"messages": messages, "target": {"fast_ids": [int(i) for i in self.fast_ids(example)]},
              "instruction": example["instruction"]}
    if self.tokenizing is not None:
      sample.update(self.tokenizing.prompt(messages, [image]))
    return sample

  def collate(self, samples: list[dict]) -> dict:
    return collate_samples(samples, self.tokenizing, left=True)  # prompts: generation continues at the right


class VLABuilder:
  """Example -> VLA sample (flow-matching head inputs):
    images        uint8 [V*h, H, W, 3]  every camera and history frame;  image_mask bool [V*h]
    state         float32 [max_state_dim]   current normalised state, zero-padded;  state_mask bool
    actions       float32 [horizon, max_action_dim]  normalised chunk, zero-padded
    action_mask   bool [horizon, max_action_dim]  real step and real dimension
    instruction   str; with a processor also the backbone prompt (SFT prompt without the answer).
  """

  def __init__(self, max_state_dim: int = 64, max_action_dim: int = 32, tokenizing: Tokenizing | None = None,
               system: str = ""):
    self.max_state_dim, self.max_action_dim = max_state_dim, max_action_dim
    self.tokenizing = tokenizing
    self.system = system or SYSTEM_PROMPT

  def __call__(self, example: dict) -> dict:
    images = example["images"]
    v, h = images.shape[:2]
    state = example["state"][-1]
    if state.shape[0] > self.max_state_dim or example["actions"].shape[1] > self.max_action_dim:
      raise ValueError(f"state width {state.shape[0]} / action width {example['actions'].shape[1]} exceed "
                       f"max_state_dim={self.max_state_dim} / max_action_dim={self.max_action_dim}")
    padded_state = np.zeros(self.max_state_dim, np.float32)
    padded_state[:state.shape[0]] = state
    state_mask = np.zeros(self.max_state_dim, bool)
    state_mask[:state.shape[0]] = example["state_mask"]
    horizon, dim = example["actions"].shape
    actions = np.zeros((horizon, self.max_action_dim), np.float32)
    actions[:, :dim] = example["actions"]
    action_mask = np.zeros((horizon, self.max_action_dim), bool)
    action_mask[:, :dim] = example["action_mask"][:, None]
    image_mask = np.repeat(example["image_mask"], h) & np.tile(example["observation_mask"], v)
    sample = {"images": images.reshape(v * h, *images.shape[2:]), "image_mask": image_mask,
              "state": padded_state, "state_mask": state_mask, "actions": actions, "action_mask": action_mask,
              "instruction": example["instruction"]}
    if self.tokenizing is not None:
      present = [im for im, ok in zip(sample["images"], image_mask) if ok]
      sample.update(self.tokenizing.prompt(vla_messages(present, example["instruction"], system=self.system),
                                           present))
    return sample

  def collate(self, samples: list[dict]) -> dict:
    return collate_samples(samples, self.tokenizing, left=True)  # prompts: generation continues at the right


class StandardBuilder:
  """The common-format example as is (see `pipeline.StepReader`)."""

  def __call__(self, example: dict) -> dict:
    return example

  def collate(self, samples: list[dict]) -> dict:
    return collate_examples(samples)


def make_builder(data) -> Any:
  """The builder named by `data.sample`."""
  tokenizing = (Tokenizing(data.processor_dir, data.max_seq_len, data.get("model_family", "qwen2_5_vl"))
                if data.processor_dir else None)
  system = data.get("system_prompt", "")
  if data.sample == "standard":
    return StandardBuilder()
  if data.sample == "vla":
    return VLABuilder(data.max_state_dim, data.max_action_dim, tokenizing, system)
  if data.sample in ("fast_sft", "grpo"):
    if not data.fast_tokenizer_dir:
      raise ValueError(f"config.data.sample={data.sample!r} needs config.data.fast_tokenizer_dir "
                       "(a FAST tokenizer saved by FASTTokenizer.save)")
    fast = FASTTokenizer.load(data.fast_tokenizer_dir)
    cls = FastSFTBuilder if data.sample == "fast_sft" else GRPOPromptBuilder
    return cls(fast, tokenizing, system)
  raise ValueError(f"unknown config.data.sample {data.sample!r}; expected standard, vla, fast_sft or grpo")
