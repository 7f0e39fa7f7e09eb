"""Robot and conversation data: RLDS datasets (TFDS ArrayRecord) -> Grain pipelines.

    path = data.write_fixture("libero", "/tmp/fx", num_episodes=4, seed=0)
    config = data.data_config(datasets=[data.dataset_entry("libero", path)], sample="vla")
    batches = iter(data.make_dataset(config, split="train"))

The package never imports TensorFlow on the reading path; only the fixture writer and the
conversion CLI use it (through TFDS).
"""

from roboalign_jax.data.config import data_config, dataset_entry
from roboalign_jax.data.errors import DataError, SkipCounter
from roboalign_jax.data.fixtures import write_fixture
from roboalign_jax.data.pipeline import make_dataset, make_examples, open_datasets, open_heldout_datasets
from roboalign_jax.data.specs import SPECS, get_spec

__all__ = ["DataError", "SPECS", "SkipCounter", "data_config", "dataset_entry", "get_spec", "make_dataset",
           "make_examples", "open_datasets", "open_heldout_datasets", "write_fixture"]
