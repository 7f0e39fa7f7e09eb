"""Demo stage `sft`: fixtures -> FAST fit -> tiny SFT run on CPU -> exported HF directory.

Puts into the context what later stages need:
  fixtures     {"bridge": TFDS version dir of the training fixture, "bridge_heldout": held-out one}
  conversations {"vqa": JSONL, "reasoning": JSONL}
  fast_dir     the fitted FAST tokenizer
  data_config  the ml_collections data config the SFT run trained on
  sft_config   the whole SFT config (the probe stage rebuilds the run's random init from it)
  sft_hf_dir   the trained model as an HF directory (tokenizer with the action tokens inside)
"""

from __future__ import annotations

import os
from typing import Any

import flax.linen as nn
import jax

from roboalign_jax import data
from roboalign_jax.config.overrides import load_config_file
from roboalign_jax.data.conversations import write_conversation_fixture
from roboalign_jax.data.pipeline import action_chunks
from roboalign_jax.eval import report
from roboalign_jax.fast import FASTTokenizer
from roboalign_jax.models import backbone as backbone_lib
from roboalign_jax.train import sft
from roboalign_jax.train.metrics import latest_per_step, read_metrics

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# 112x112 images -> 8x8 patches -> 16 image tokens; the VQA images resize to the same grid.
IMAGE_PIXELS = 112 * 112
FAST_VOCAB = 256  # the fixtures' few hundred chunks cannot fill the paper's 2048


def prepare(root: str, *, episodes: int = 24, heldout_episodes: int = 4) -> dict[str, Any]:
  """Writes the tiny processor, robot and conversation fixtures and fits FAST; returns the paths."""
  processor_dir = backbone_lib.family("qwen2_5_vl").write_tiny(os.path.join(root, "qwen_tiny"), max_pixels=IMAGE_PIXELS)
  fixtures = {"bridge": data.write_fixture("bridge", os.path.join(root, "fixtures"), episodes, seed=0),
              "bridge_heldout": data.write_fixture("bridge", os.path.join(root, "fixtures_heldout"),
                                                   heldout_episodes, seed=1)}
  conversations = write_conversation_fixture(os.path.join(root, "conversations"), num_vqa=48, num_reasoning=16,
                                             image_size=112)
  config = load_config_file(os.path.join(REPO_ROOT, "configs", "sft.py") + ":tiny")
  fit_data = data.data_config(datasets=[data.dataset_entry("bridge", fixtures["bridge"])],
                              cache_dir=os.path.join(root, "cache"), progress=False)
  handles = data.open_datasets(fit_data)
  fast_dir = os.path.join(root, "fast")
  FASTTokenizer.fit(action_chunks(handles, config.data.action_horizon), vocab_size=FAST_VOCAB).save(fast_dir)
  return {"processor_dir": processor_dir, "fixtures": fixtures, "conversations": conversations, "fast_dir": fast_dir,
          "cache_dir": os.path.join(root, "cache")}


def base_backbone(config) -> tuple[backbone_lib.Backbone, Any]:
  """The SFT run's starting model: its checkpoint, or its random init rebuilt from the same
  variant and seed (the "base" backbone of the probe and Stage 3 comparisons)."""
  backbone = backbone_lib.load(config.model, processor_dir=config.data.processor_dir)
  if backbone.params is not None:
    return backbone, backbone.params
  variables = backbone.model.init(jax.random.PRNGKey(config.seed), *backbone.dummy_inputs())
  return backbone, nn.unbox(variables)["params"]


def sft_config(paths: dict[str, Any], steps: int = 0):
  arg = (f":tiny,processor={paths['processor_dir']},fast={paths['fast_dir']},data={paths['fixtures']['bridge']},"
         f"vqa={paths['conversations']['vqa']},reasoning={paths['conversations']['reasoning']},"
         f"eval_data={paths['fixtures']['bridge_heldout']}" + (f",steps={steps}" if steps else ""))
  config = load_config_file(os.path.join(REPO_ROOT, "configs", "sft.py") + arg)
  config.data.cache_dir = paths["cache_dir"]
  config.data.progress = False
  return config


def run(context: dict[str, Any]):
  workdir = context["workdir"]
  paths = prepare(os.path.join(workdir, "sft_data"))
  config = sft_config(paths)
  stage_dir = os.path.join(workdir, "sft")
  summary = sft.train(config, stage_dir)
  records = read_metrics(stage_dir)
  loss = latest_per_step(records, "loss")
  steps = sorted(loss)
  evals = {k: latest_per_step(records, f"eval/{k}") for k in
           ("loss", "fast_token_accuracy", "action_l1", "decode_failure", "format_valid")}
  last_eval = max(evals["loss"])
  image = report.plot_curves(os.path.join(workdir, "sft_loss.png"),
                             {"train loss": (steps, [loss[s] for s in steps]),
                              "held-out loss": (sorted(evals["loss"]), [evals["loss"][s] for s in sorted(evals["loss"])])},
                             title="SFT stage: loss on assistant tokens", ylabel="cross-entropy", logy=True)
  metrics = {"sft.initial_loss": loss[steps[0]], "sft.final_loss": loss[steps[-1]],
             "sft.token_accuracy": evals["fast_token_accuracy"][last_eval],
             "sft.train_fast_token_accuracy": latest_per_step(records, "fast_token_accuracy")[steps[-1]],
             "sft.action_l1": evals["action_l1"][last_eval],
             "sft.decode_failure_rate": evals["decode_failure"][last_eval],
             "sft.format_validity": evals["format_valid"][last_eval],
             "sft.padding_fraction": latest_per_step(records, "padding_fraction")[steps[-1]],
             "sft.steps": steps[-1]}
  context.update(sft_hf_dir=summary["hf_dir"], fast_dir=paths["fast_dir"], fixtures=paths["fixtures"],
                 conversations=paths["conversations"], data_config=config.data, sft_config=config)
  chance = 1 / FAST_VOCAB
  text = (f"The tiny Qwen2.5-VL (random init, vocabulary extended with the action tokens) is fine-tuned for "
          f"{steps[-1]} steps on a mixture of Bridge-layout fixture FAST samples and VQA / reasoning conversations "
          f"(loss on assistant tokens only). `sft.token_accuracy` is the teacher-forced accuracy on the FAST tokens "
          f"of held-out episodes (chance about {chance:.3f} over the {FAST_VOCAB}-token FAST vocabulary); "
          f"`sft.action_l1` is the greedy-decoded action chunk's mean absolute error after unnormalisation. "
          f"The exported HF directory (`{os.path.relpath(summary['hf_dir'], workdir)}`) is what GRPO starts from.")
  return metrics, ("SFT stage (Stage 1)", text, [os.path.basename(image)])
