"""Trains one stage, chosen by `config.stage`, in a workdir it resumes from automatically.

  python launch/train.py --config=configs/debug.py:tiny --workdir=runs/debug
  python launch/train.py --config=configs/sft.py:7b --workdir=runs/sft --config.optim.lr=1e-5

Multi-process: pass --coordinator_address/--num_processes/--process_id, or set
JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID, or run under `srun` (SLURM).
"""

import json
import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

# Runnable as `python launch/train.py` from a checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from roboalign_jax.config import overrides  # noqa: E402
from roboalign_jax.parallel import distributed  # noqa: E402
from roboalign_jax.train import log_filters  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file and variant, e.g. configs/debug.py:tiny.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, TensorBoard.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (multi-process).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  log_filters.quiet_library_logs()
  # Before anything touches a JAX backend.
  distributed.maybe_initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  import jax  # pylint: disable=g-import-not-at-top
  from roboalign_jax.train import registry  # pylint: disable=g-import-not-at-top
  from roboalign_jax.train.checkpoint import CheckpointError, CheckpointSaveError  # pylint: disable=g-import-not-at-top

  config = _CONFIG.value
  workdir = os.path.abspath(_WORKDIR.value)
  trainer = registry.get_trainer(config.stage)
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  logging.info("stage %s, %d processes, %d devices, workdir %s", config.stage,
               jax.process_count(), jax.device_count(), workdir)
  try:
    summary = trainer(config, workdir)
  except (CheckpointError, CheckpointSaveError) as e:
    # The message names the step, its directory and what to do; Orbax's stack adds nothing to it.
    sys.exit(f"error: {e}")
  if jax.process_index() == 0:
    print(json.dumps({"workdir": workdir, **summary}, default=str))


if __name__ == "__main__":
  try:
    overrides.check_overrides(sys.argv)
  except (overrides.ConfigOverrideError, ValueError) as e:
    sys.exit(f"error: {e}")
  app.run(main)
