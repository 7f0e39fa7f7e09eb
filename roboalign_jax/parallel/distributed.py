"""Multi-process (multi-host) JAX initialisation.

`jax.distributed.initialize` must run before any other JAX call. It is triggered by explicit
arguments, by `JAX_COORDINATOR_ADDRESS` (+ `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`), or by a
SLURM allocation with more than one task (JAX reads the rest from SLURM's variables).
"""

from __future__ import annotations

import os

import jax


def maybe_initialize(coordinator_address: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None) -> bool:
  """Initialises the distributed runtime when the environment asks for it. Returns whether it did."""
  coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
  if num_processes is None and "JAX_NUM_PROCESSES" in os.environ:
    num_processes = int(os.environ["JAX_NUM_PROCESSES"])
  if process_id is None and "JAX_PROCESS_ID" in os.environ:
    process_id = int(os.environ["JAX_PROCESS_ID"])
  slurm = int(os.environ.get("SLURM_NTASKS", "1")) > 1
  if not coordinator_address and not slurm:
    return False
  # CPU processes need an explicit cross-process collectives backend; GPUs use NCCL regardless.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if coordinator_address:
    if num_processes is None or process_id is None:
      raise ValueError(
          "a coordinator address was given but not the number of processes and this process's id "
          "(--num_processes/--process_id or JAX_NUM_PROCESSES/JAX_PROCESS_ID)")
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  else:
    jax.distributed.initialize()
  return True
