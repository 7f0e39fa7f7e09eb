"""The named device mesh `('data', 'fsdp', 'tensor')` built from a config.

`config.mesh` is a ConfigDict `{data: -1, fsdp: 1, tensor: 1}`: each value is the axis size,
and at most one may be -1, meaning "all remaining devices". Axis order is fixed so that the
fastest-varying axis (`tensor`) sits on devices that are adjacent (same host / NVLink island).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh

MESH_AXES = ("data", "fsdp", "tensor")


def resolve_mesh_shape(sizes: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
  """Turns `{data: -1, fsdp: 4, tensor: 1}` into concrete sizes whose product is `num_devices`."""
  unknown = set(sizes) - set(MESH_AXES)
  if unknown:
    raise ValueError(f"unknown mesh axes {sorted(unknown)} in config.mesh; allowed: {list(MESH_AXES)}")
  shape = [int(sizes.get(axis, 1)) for axis in MESH_AXES]
  free = [i for i, size in enumerate(shape) if size == -1]
  if len(free) > 1:
    raise ValueError(f"config.mesh {dict(sizes)}: at most one axis may be -1")
  if any(size == 0 or size < -1 for size in shape):
    raise ValueError(f"config.mesh {dict(sizes)}: sizes must be positive or -1")
  fixed = math.prod(size for size in shape if size != -1)
  if free:
    if num_devices % fixed:
      raise ValueError(
          f"config.mesh {dict(sizes)}: {num_devices} devices are not divisible by the fixed axes' product {fixed}")
    shape[free[0]] = num_devices // fixed
  if math.prod(shape) != num_devices:
    raise ValueError(
        f"config.mesh {dict(sizes)} needs {math.prod(shape)} devices, but {num_devices} are available")
  return tuple(shape)


def create_mesh(sizes: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Creates the `('data', 'fsdp', 'tensor')` mesh over `devices` (default: all devices)."""
  devices = list(jax.devices() if devices is None else devices)
  shape = resolve_mesh_shape(sizes, len(devices))
  try:
    # Topology-aware placement on GPUs/TPUs; on CPU it is a plain reshape.
    device_array = mesh_utils.create_device_mesh(shape, devices=devices, allow_split_physical_axes=True)
  except (ValueError, NotImplementedError, AssertionError):
    device_array = np.asarray(devices).reshape(shape)
  return Mesh(device_array, MESH_AXES)
