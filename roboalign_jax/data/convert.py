"""Converting a downloaded TFRecord RLDS dataset to ArrayRecord, and validating it against a spec.

The serialized episodes are the same bytes in both containers, so conversion copies records
shard by shard (the layout TFDS's own `convert_format` produces: same shard names with the
`array_record` suffix, `group_size:1` for random access) and rewrites `dataset_info.json`'s file
format. Validation then opens the result the way training does and reads every episode
(spec fields, uint8 [H, W, 3] cameras of any size, finite actions, non-empty instructions).

TensorFlow is used here only to read TFRecord files.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

from tqdm.auto import tqdm

from roboalign_jax.data.errors import SkipCounter
from roboalign_jax.data.rlds_source import RLDSSource
from roboalign_jax.data.specs import get_spec
from roboalign_jax.data.step_index import build_step_index

_COPY = ("features.json", "image.image.json")


def _tfrecord_shards(in_dir: str, info: dict) -> list[tuple[str, str, int]]:
  """(split, shard path, number of records) of every TFRecord shard named in dataset_info.json."""
  name = info["name"]
  shards = []
  for split in info.get("splits", []):
    lengths = [int(n) for n in split.get("shardLengths", [])]
    for i, n in enumerate(lengths):
      filename = f"{name}-{split['name']}.tfrecord-{i:05d}-of-{len(lengths):05d}"
      path = os.path.join(in_dir, filename)
      if not os.path.isfile(path):
        raise FileNotFoundError(f"dataset_info.json lists shard {filename} of split {split['name']!r}, "
                                f"but {path} does not exist")
      shards.append((split["name"], path, n))
  return shards


def convert_to_array_record(in_dir: str, out_dir: str, *, overwrite: bool = False,
                            progress: bool = True) -> str:
  """Copies the TFRecord dataset version directory `in_dir` to ArrayRecord shards in `out_dir`."""
  import tensorflow as tf  # reading TFRecord files only
  from array_record.python import array_record_module  # lazy: only conversion writes ArrayRecord
  info_path = os.path.join(in_dir, "dataset_info.json")
  if not os.path.isfile(info_path):
    raise FileNotFoundError(f"no dataset_info.json in {in_dir}; expected a TFDS dataset version directory")
  with open(info_path) as f:
    info = json.load(f)
  file_format = info.get("fileFormat", "tfrecord")
  if file_format != "tfrecord":
    raise ValueError(f"{in_dir} is already in {file_format!r} format; expected tfrecord")
  if os.path.exists(out_dir) and os.listdir(out_dir):
    if not overwrite:
      raise FileExistsError(f"{out_dir} exists and is not empty; pass overwrite=True to replace it")
    shutil.rmtree(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  shards = _tfrecord_shards(in_dir, info)
  bar = tqdm(total=sum(n for _, _, n in shards), desc=f"converting {info['name']}", unit="episode",
             disable=not progress)
  for split, path, expected in shards:
    out_path = os.path.join(out_dir, os.path.basename(path).replace(".tfrecord-", ".array_record-"))
    writer = array_record_module.ArrayRecordWriter(out_path, "group_size:1")
    count = 0
    for record in tf.data.TFRecordDataset(path):
      writer.write(record.numpy())
      count += 1
      bar.update(1)
    writer.close()
    if count != expected:
      raise ValueError(f"shard {path} of split {split!r} has {count} records; dataset_info.json says {expected}")
  bar.close()
  for filename in _COPY:
    if os.path.isfile(os.path.join(in_dir, filename)):
      shutil.copy(os.path.join(in_dir, filename), out_dir)
  info["fileFormat"] = "array_record"
  with open(os.path.join(out_dir, "dataset_info.json"), "w") as f:
    json.dump(info, f, indent=2)
  return out_dir


def validate(path: str, spec_name: str, *, split: str = "train", skip_bad: bool = False,
             progress: bool = True) -> dict[str, Any]:
  """Reads every episode of `split` through the training reader; returns counts, skips and, per
  camera, the image size published, the size the dataset declares and the frame sizes found
  ([H, W, number of frames] each).

  Raises DataError at the first bad episode unless `skip_bad`.
  """
  source = RLDSSource(path, get_spec(spec_name), split=split, cache_episodes=1)
  counter = SkipCounter()
  index = build_step_index(source, skip_bad=skip_bad, counter=counter, progress=progress)
  cameras = {camera: {"path": f"steps/{path}", "published": list(published),
                      "declared": list(source.camera_shapes[camera]), "frames": index.image_sizes.get(camera, [])}
             for camera, (path, published) in source.spec.cameras.items() if camera in source.camera_shapes}
  return {"episodes": len(source), "usable_episodes": len(index.episodes), "steps": index.num_steps,
          "cameras": cameras, "skipped": index.skipped}


def summary(split: str, report: dict[str, Any]) -> str:
  """One line per split and camera of a `validate` report, for people."""
  lines = [f"{split}: {report['usable_episodes']}/{report['episodes']} episodes usable, {report['steps']} steps"]
  for camera, info in report["cameras"].items():
    sizes = ", ".join(f"{h}x{w} ({n} frames)" for h, w, n in info["frames"])
    published = "x".join(str(d) for d in info["published"][:2])
    note = "as published" if [list(s[:2]) for s in info["frames"]] == [info["published"][:2]] else f"published {published}"
    lines.append(f"  {camera} camera {info['path']}: {sizes}; {note}")
  return "\n".join(lines)
