"""RLDS copies at image sizes other than the published ones (debug subsets, re-exports for speed,
regenerations) read like the published data: the size found is recorded in the step index and the
conversion report, differs from the published one only with a warning, and every frame comes out
of the pipeline at the model input size. Rank, channels and dtype stay strict."""

import io
import logging

import numpy as np
import pytest
from PIL import Image

from roboalign_jax import data
from roboalign_jax.data import convert, fixtures, pipeline
from roboalign_jax.data.errors import DataError
from roboalign_jax.data.specs import get_spec

LENGTH = (12, 16)
MODEL_SIZE = (48, 48)


def config(path, tmp_path, spec, **overrides):
  defaults = dict(cache_dir=str(tmp_path / "cache"), global_batch_size=4, progress=False, action_horizon=4,
                  image_size=MODEL_SIZE)
  return data.data_config(datasets=[data.dataset_entry(spec, path)], **{**defaults, **overrides})


def eval_example(handles, cfg, position=0):
  """The unaugmented example at `position` of the validation-style reader (flat step 0 of episode 0)."""
  reader = pipeline.StepReader(handles, cfg, train=False)
  return reader(0, position, position)


def test_bridge_at_64_converts_validates_and_batches(tmp_path, caplog):
  """A TFRecord download at 64x64 (like Octo's debug copy of Bridge) converts, validates with the size in
  its report, and yields normalised batches at the model size."""
  tfrecord = fixtures.write_fixture("bridge", str(tmp_path / "download"), 3, 0, file_format="tfrecord",
                                    episode_length=LENGTH, image_shapes={"primary": (64, 64, 3)})
  out = convert.convert_to_array_record(tfrecord, str(tmp_path / "rlds" / "bridge_dataset" / "1.0.0"),
                                        progress=False)
  with caplog.at_level(logging.WARNING):
    report = convert.validate(out, "bridge", progress=False)
  assert "steps/observation/image_0 (primary camera) is (64, 64, 3), not (256, 256, 3) as published" in caplog.text
  camera = report["cameras"]["primary"]
  assert camera["published"] == [256, 256, 3] and camera["declared"] == [64, 64, 3]
  assert camera["frames"] == [[64, 64, report["steps"]]] and report["usable_episodes"] == 3
  assert "primary camera steps/observation/image_0: 64x64" in convert.summary("train", report)

  cfg = config(out, tmp_path, "bridge", cameras=("primary",))
  handles = pipeline.open_datasets(cfg)
  assert handles[0].index.image_sizes == {"primary": [[64, 64, handles[0].index.num_steps]]}
  batch = next(iter(data.make_dataset(cfg, process_index=0, process_count=1)))
  assert batch["images"].shape == (4, 1, 1, *MODEL_SIZE, 3)
  assert np.abs(batch["actions"]).max() <= 1.0 and set(np.unique(batch["actions"][..., 6])) <= {-1.0, 1.0}
  # Unaugmented frames are the stored 64x64 frame resized to the model input.
  example = eval_example(handles, cfg)
  episode = handles[0].source.episode(0)
  stored = Image.open(io.BytesIO(episode.images["primary"][0])).convert("RGB")
  np.testing.assert_array_equal(example["images"][0, 0], np.asarray(stored.resize(MODEL_SIZE[::-1], Image.BILINEAR)))


def test_libero_at_128_with_a_raw_96_wrist_view(tmp_path):
  """Primary camera JPEG at 128x128, wrist camera stored raw (uint8 tensor) at 96x96."""
  path = fixtures.write_fixture("libero", str(tmp_path / "rlds"), 2, 1, episode_length=LENGTH,
                                image_shapes={"primary": (128, 128, 3), "wrist": (96, 96, 3)},
                                encodings={"wrist": "raw"})
  report = convert.validate(path, "libero", progress=False)
  steps = report["steps"]
  assert report["cameras"]["primary"]["frames"] == [[128, 128, steps]]
  assert report["cameras"]["wrist"]["frames"] == [[96, 96, steps]]
  cfg = config(path, tmp_path, "libero")
  handles = pipeline.open_datasets(cfg)
  assert handles[0].source.camera_shapes == {"primary": (128, 128, 3), "wrist": (96, 96, 3)}
  batch = next(iter(data.make_dataset(cfg, process_index=0, process_count=1)))
  assert batch["images"].shape == (4, 2, 1, *MODEL_SIZE, 3) and batch["image_mask"].all()
  # The raw wrist frame is lossless: the pipeline's view is exactly its resize.
  native = next(fixtures.episodes("libero", 1, 1, LENGTH, {"primary": (128, 128, 3), "wrist": (96, 96, 3)}))
  raw_wrist = native["steps"][0]["observation"]["wrist_image"]
  stored = handles[0].source.episode(0).images["wrist"][0]
  np.testing.assert_array_equal(stored, raw_wrist)
  expected = np.asarray(Image.fromarray(raw_wrist).resize(MODEL_SIZE[::-1], Image.BILINEAR))
  np.testing.assert_array_equal(eval_example(handles, cfg)["images"][1, 0], expected)


def test_size_varying_within_a_dataset_is_recorded_and_resized_per_frame(tmp_path, caplog):
  """A camera declared (None, None, 3) may change size between episodes: each frame is resized on its
  own (batches are never ragged) and every size is recorded with its frame count."""
  import tensorflow_datasets as tfds
  items = [next(fixtures.episodes("libero", 1, seed, LENGTH, {"primary": shape}))
           for seed, shape in ((0, (128, 128, 3)), (1, (96, 128, 3)))]
  features = get_spec("libero").features(replace={"image": tfds.features.Image(shape=(None, None, 3))})
  path = fixtures.write_episodes("libero", str(tmp_path / "rlds"), items, features=features)
  with caplog.at_level(logging.WARNING):
    handles = pipeline.open_datasets(config(path, tmp_path, "libero"))
  lengths = handles[0].index.lengths.tolist()
  assert handles[0].index.image_sizes["primary"] == [[96, 128, lengths[1]], [128, 128, lengths[0]]]
  assert "steps/observation/image (primary camera) is (None, None, 3) (any size), not (256, 256, 3)" in caplog.text
  assert "primary camera frames come in 2 sizes (96x128" in caplog.text
  batches = data.make_dataset(config(path, tmp_path, "libero", global_batch_size=8), process_index=0,
                              process_count=1)
  batch = next(iter(batches))
  assert batch["images"].shape == (8, 2, 1, *MODEL_SIZE, 3) and len(set(batch["episode"].tolist())) == 2


@pytest.mark.parametrize("feature, found", [
    (lambda tfds: tfds.features.Image(shape=(256, 256, 1)), r"Image of uint8 \(256, 256, 1\)"),
    (lambda tfds: tfds.features.Tensor(shape=(256, 256, 3), dtype=np.float32), r"Tensor of float32 \(256, 256, 3\)"),
    (lambda tfds: tfds.features.Tensor(shape=(256, 256), dtype=np.uint8), r"Tensor of uint8 \(256, 256\)"),
])
def test_cameras_must_be_uint8_with_three_channels(tmp_path, feature, found):
  import tensorflow_datasets as tfds
  wrist = feature(tfds)
  items = list(fixtures.episodes("libero", 1, 0, LENGTH))
  for step in items[0]["steps"]:
    image = step["observation"]["wrist_image"]
    shape = wrist.shape
    if wrist.np_dtype == np.float32:
      step["observation"]["wrist_image"] = image.astype(np.float32) / 255
    elif len(shape) == 2:
      step["observation"]["wrist_image"] = image[..., 0]
    else:
      step["observation"]["wrist_image"] = image[..., :1]
  features = get_spec("libero").features(replace={"wrist_image": wrist})
  path = fixtures.write_episodes("libero", str(tmp_path / "rlds"), items, features=features)
  with pytest.raises(DataError, match=r"dataset 'libero': steps/observation/wrist_image \(wrist camera\) is a "
                                      + found + r"; expected uint8 \[H, W, 3\] images \(encoded or raw\), "
                                      r"published as \(256, 256, 3\)"):
    pipeline.open_datasets(config(path, tmp_path, "libero"))


def test_unknown_camera_or_feature_is_refused():
  with pytest.raises(ValueError, match=r"cameras \['left'\] are not in 'libero'"):
    fixtures.camera_features("libero", {"left": (64, 64, 3)})
  with pytest.raises(ValueError, match=r"observation has no features \['left_image'\] to replace"):
    get_spec("libero").features(replace={"left_image": None})
  with pytest.raises(ValueError, match="image encoding 'webp'"):
    fixtures.camera_features("libero", encodings={"wrist": "webp"})
