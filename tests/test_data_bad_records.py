"""Bad RLDS data: every problem is an error naming dataset / episode / step and what was
expected -- or, when the config allows skipping, a counted skip with a warning."""

import io
import logging
import os

import numpy as np
import pytest
from PIL import Image

from roboalign_jax import data
from roboalign_jax.data import fixtures, pipeline, step_index
from roboalign_jax.data.errors import DataError, SkipCounter
from roboalign_jax.data.rlds_source import RLDSSource
from roboalign_jax.data.specs import get_spec

LENGTH = (20, 24)


def episodes(n=3):
  return list(fixtures.episodes("libero", n, 0, LENGTH))


def write(tmp_path, items, name="bad", features=None):
  return fixtures.write_episodes("libero", str(tmp_path / name), items, features=features)


def config(path, tmp_path, **overrides):
  return data.data_config(datasets=[data.dataset_entry("libero", path)], cache_dir=str(tmp_path / "cache"),
                          global_batch_size=2, progress=False, **overrides)


def test_nan_action_names_episode_and_step_or_is_counted(tmp_path, caplog):
  items = episodes()
  items[1]["steps"][4]["action"] = np.array([0, np.nan, 0, 0, 0, 0, 1], np.float32)
  items[2]["steps"][7]["action"] = np.array([np.inf, 0, 0, 0, 0, 0, 1], np.float32)
  path = write(tmp_path, items)
  with pytest.raises(DataError, match=r"dataset 'libero', episode 1, step 4: action has a non-finite value"):
    pipeline.open_datasets(config(path, tmp_path))
  counter = SkipCounter()
  with caplog.at_level(logging.WARNING):
    handles = pipeline.open_datasets(config(path, tmp_path / "skip", skip_bad_records=True), counter=counter)
  assert counter.total == 2 and counter.counts["libero"] == 2
  assert [s["episode"] for s in handles[0].index.skipped] == [1, 2]
  assert "episode 2, step 7" in handles[0].index.skipped[1]["reason"]
  assert "skipping bad record" in caplog.text
  np.testing.assert_array_equal(handles[0].index.episodes, [0])
  batch = next(iter(data.make_dataset(config(path, tmp_path / "skip", skip_bad_records=True), process_index=0,
                                      process_count=1)))
  assert set(batch["episode"].tolist()) == {0}
  # A cached index with skipped episodes is refused when skipping is not allowed.
  with pytest.raises(DataError, match="2 bad episodes"):
    pipeline.open_datasets(config(path, tmp_path / "skip"))


def test_empty_instruction(tmp_path):
  items = episodes()
  for step in items[2]["steps"]:
    step["language_instruction"] = "  "
  path = write(tmp_path, items)
  with pytest.raises(DataError, match=r"episode 2, step 0: language_instruction is empty; expected a non-empty"):
    pipeline.open_datasets(config(path, tmp_path))
  handles = pipeline.open_datasets(config(path, tmp_path / "s", skip_bad_records=True))
  np.testing.assert_array_equal(handles[0].index.episodes, [0, 1])


def test_missing_key(tmp_path):
  import tensorflow_datasets as tfds
  items = episodes(1)
  for step in items[0]["steps"]:
    del step["observation"]["state"]
  features = get_spec("libero").features()
  step_features = dict(features["steps"].feature)
  step_features["observation"] = tfds.features.FeaturesDict(
      {k: v for k, v in step_features["observation"].items() if k != "state"})
  features = tfds.features.FeaturesDict({"steps": tfds.features.Dataset(step_features),
                                         "episode_metadata": features["episode_metadata"]})
  path = write(tmp_path, items, features=features)
  with pytest.raises(DataError, match=r"dataset 'libero': features lack \['steps/observation/state'\]"):
    pipeline.open_datasets(config(path, tmp_path))


def test_wrong_frame_size_inside_an_episode(tmp_path):
  """A frame whose header disagrees with the shape its dataset declares is caught with its step
  (other image sizes and channels: test_data_image_sizes.py)."""
  path = write(tmp_path, episodes(1))
  source = RLDSSource(path, get_spec("libero"))
  episode = source.episode(0)
  small = io.BytesIO()
  Image.fromarray(np.zeros((100, 120, 3), np.uint8)).save(small, format="JPEG")
  episode.images["wrist"] = list(episode.images["wrist"])
  episode.images["wrist"][5] = small.getvalue()
  with pytest.raises(DataError, match=r"episode 0, step 5: steps/observation/wrist_image has shape \(100, 120, 3\); "
                                      r"expected \(256, 256, 3\) as the dataset declares"):
    step_index.check_frames(episode, source)
  episode.images["wrist"][6] = b"not an image"
  episode.images["wrist"][5] = episode.images["wrist"][4]
  with pytest.raises(DataError, match=r"episode 0, step 6: steps/observation/wrist_image is not a readable image"):
    step_index.check_frames(episode, source)


def test_corrupt_record(tmp_path):
  """Episode 1's serialized bytes are truncated inside an otherwise valid ArrayRecord file."""
  from array_record.python import array_record_module
  import tensorflow_datasets as tfds
  path = write(tmp_path, episodes())
  raw = tfds.builder_from_directory(path).as_data_source(
      "train", deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
  records = [raw[i] for i in range(len(raw))]
  records[1] = records[1][: len(records[1]) // 3]
  shard = next(os.path.join(path, f) for f in os.listdir(path) if ".array_record-" in f)
  writer = array_record_module.ArrayRecordWriter(shard, "group_size:1")
  for record in records:
    writer.write(record)
  writer.close()
  with pytest.raises(DataError, match=r"dataset 'libero', episode 1: record could not be read or parsed"):
    pipeline.open_datasets(config(path, tmp_path))
  counter = SkipCounter()
  handles = pipeline.open_datasets(config(path, tmp_path / "s", skip_bad_records=True), counter=counter)
  assert counter.total == 1
  np.testing.assert_array_equal(handles[0].index.episodes, [0, 2])


def test_not_a_dataset_directory(tmp_path):
  with pytest.raises(DataError, match="no dataset_info.json"):
    pipeline.open_datasets(config(str(tmp_path), tmp_path))
  with pytest.raises(ValueError, match="unknown dataset spec 'droid'"):
    data.get_spec("droid")
