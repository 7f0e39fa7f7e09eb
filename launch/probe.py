"""The KNN representation probe (RoboAlign B.1 / Table 9) of one or more backbones.

  python launch/probe.py --backbone=base=ckpt/qwen,sft=runs/sft/hf,grpo=runs/grpo/hf \
      --data=/data/libero_10_no_noops/1.0.0 --spec=libero \
      --instruction="put the white mug on the left plate and put the yellow and white mug on the right plate" \
      --num_trajectories=20 --layer=0 --pooling=image_instruction --k=5 --out=runs/probe.json

Reads the first --num_trajectories episodes whose instruction matches, labels their timesteps
with --num_classes DTW phases, and prints the k-NN accuracy of each backbone's features (the
defaults and what the paper leaves open: `roboalign_jax/eval/knn_probe.py`). --backbone entries
are NAME=DIR or DIR (named by the directory), comma-separated or repeated. --out writes JSON:
{"config": ..., "results": {name: {accuracy, num_test, per_class_correct, ...}}}.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from roboalign_jax.eval import knn_probe  # noqa: E402
from roboalign_jax.models import backbone as backbone_lib  # noqa: E402
from roboalign_jax.train import log_filters  # noqa: E402

_DEFAULTS = knn_probe.ProbeConfig()
_BACKBONE = flags.DEFINE_multi_string("backbone", [], "NAME=DIR or DIR of an HF checkpoint (comma-separated or "
                                      "repeated), e.g. base=ckpt/qwen,sft=runs/sft/hf.")
_FAMILY = flags.DEFINE_string("family", "qwen2_5_vl", "Backbone family of every --backbone.")
_DATA = flags.DEFINE_string("data", None, "RLDS dataset version directory (with dataset_info.json).")
_SPEC = flags.DEFINE_string("spec", "libero", "Dataset layout (libero, bridge, calvin).")
_DATA_SPLIT = flags.DEFINE_string("data_split", "train", "Dataset split to read the demonstrations from.")
_INSTRUCTION = flags.DEFINE_string("instruction", _DEFAULTS.instruction, "Task instruction to select episodes by.")
_MATCH = flags.DEFINE_enum("match", _DEFAULTS.match, list(knn_probe.MATCHES), "Instruction match rule.")
_NUM_TRAJECTORIES = flags.DEFINE_integer("num_trajectories", _DEFAULTS.num_trajectories, "Demonstrations read.")
_NUM_CLASSES = flags.DEFINE_integer("num_classes", _DEFAULTS.num_classes, "DTW phase classes.")
_REFERENCE = flags.DEFINE_enum("reference", _DEFAULTS.reference, list(knn_probe.REFERENCES),
                               "Demonstration whose equal-duration phases define the classes.")
_LAYER = flags.DEFINE_integer("layer", _DEFAULTS.layer, "Decoder layer (0 = the Stage 3 feature layer).")
_POOLING = flags.DEFINE_enum("pooling", _DEFAULTS.pooling, list(knn_probe.POOLINGS), "Token pooling.")
_CAMERAS = flags.DEFINE_list("cameras", list(_DEFAULTS.cameras), "Cameras in the prompt, in order.")
_K = flags.DEFINE_integer("k", _DEFAULTS.k, "Neighbours in the vote.")
_DISTANCE = flags.DEFINE_enum("distance", _DEFAULTS.distance, list(knn_probe.DISTANCES), "Feature distance.")
_SPLIT = flags.DEFINE_enum("split", _DEFAULTS.split, list(knn_probe.SPLITS), "Train/test split of the timesteps.")
_TEST_TRAJECTORIES = flags.DEFINE_integer("test_trajectories", _DEFAULTS.test_trajectories,
                                          "Demonstrations held out (split=heldout_trajectories).")
_TEST_PER_CLASS = flags.DEFINE_integer("test_per_class", _DEFAULTS.test_per_class,
                                       "Test timesteps drawn per class (0 = all held-out timesteps).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", _DEFAULTS.batch_size, "Prompts per forward pass.")
_SEED = flags.DEFINE_integer("seed", _DEFAULTS.seed, "Seed of the test-timestep draw.")
_OUT = flags.DEFINE_string("out", "", "JSON file to write the results to.")


def parse_backbones(values: list[str]) -> list[tuple[str, str]]:
  """[(name, dir)] from NAME=DIR / DIR entries; raises UsageError for a missing directory."""
  entries = []
  for value in values:
    for item in filter(None, (v.strip() for v in value.split(","))):
      name, _, path = item.rpartition("=")
      name = name or os.path.basename(os.path.normpath(path))
      if not os.path.isdir(path):
        raise app.UsageError(f"--backbone {item!r}: directory {path!r} not found; expected an HF checkpoint directory")
      entries.append((name, path))
  if not entries:
    raise app.UsageError("--backbone is required: NAME=DIR or DIR of an HF checkpoint (several: comma-separated)")
  return entries


def main(argv):
  del argv
  log_filters.quiet_library_logs()
  if not _DATA.value:
    raise app.UsageError("--data is required: an RLDS dataset version directory")
  backbones = parse_backbones(_BACKBONE.value)
  config = knn_probe.ProbeConfig(
      instruction=_INSTRUCTION.value, match=_MATCH.value, num_trajectories=_NUM_TRAJECTORIES.value,
      num_classes=_NUM_CLASSES.value, reference=_REFERENCE.value, layer=_LAYER.value, pooling=_POOLING.value,
      cameras=tuple(_CAMERAS.value), k=_K.value, distance=_DISTANCE.value, split=_SPLIT.value,
      test_trajectories=_TEST_TRAJECTORIES.value, test_per_class=_TEST_PER_CLASS.value,
      batch_size=_BATCH_SIZE.value, seed=_SEED.value)
  started = time.time()
  data = knn_probe.load_trajectories(_DATA.value, _SPEC.value, config, split=_DATA_SPLIT.value)
  print(f"{len(data.trajectories)} demonstrations ({sum(len(t) for t in data.trajectories)} timesteps) of "
        f"{data.trajectories[0].instruction!r}, labelled in {config.num_classes} DTW phases "
        f"({time.time() - started:.1f} s)")
  results = {}
  for name, path in backbones:
    backbone = backbone_lib.load_dir(path, family_name=_FAMILY.value)
    results[name] = knn_probe.run(backbone, backbone.params, data, config).as_dict()
    print(f"{name}: accuracy {100 * results[name]['accuracy']:.2f} ({results[name]['num_test']} test timesteps, "
          f"layer {results[name]['layer']}; {time.time() - started:.1f} s)")
  width = max([len("backbone")] + [len(n) for n, _ in backbones])
  print(f"\n{'backbone':<{width}}  accuracy  correct/tested")
  for name, r in results.items():
    correct = sum(r["per_class_correct"])
    print(f"{name:<{width}}  {100 * r['accuracy']:8.2f}  {correct}/{r['num_test']}")
  if _OUT.value:
    os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
    with open(_OUT.value, "w") as f:
      json.dump({"config": dataclasses.asdict(config), "data": _DATA.value, "spec": _SPEC.value,
                 "backbones": dict(backbones), "results": results}, f, indent=2)
    print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  app.run(main)
