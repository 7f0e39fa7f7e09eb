"""Published RLDS layouts by name: "bridge", "bridge_oxe", "libero", "calvin", and "metaworld" (our
recording of Meta-World's scripted experts)."""

from roboalign_jax.data.specs import bridge, calvin, libero, metaworld
from roboalign_jax.data.specs.common import (ACTION_DIM, CAMERAS, GRIPPER_CLOSE, GRIPPER_DIM, GRIPPER_OPEN,
                                             DatasetSpec, RawEpisode, StandardEpisode)

SPECS = {spec.name: spec for spec in (bridge.SPEC, bridge.OXE_SPEC, libero.SPEC, calvin.SPEC, metaworld.SPEC)}


def get_spec(name: str) -> DatasetSpec:
  if name not in SPECS:
    raise ValueError(f"unknown dataset spec {name!r}; known: {sorted(SPECS)}")
  return SPECS[name]


__all__ = ["ACTION_DIM", "CAMERAS", "GRIPPER_CLOSE", "GRIPPER_DIM", "GRIPPER_OPEN", "DatasetSpec", "RawEpisode",
           "SPECS", "StandardEpisode", "get_spec"]
