"""Device mesh from config and logical-axis rules mapping parameter/activation axes onto it."""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# logical axis -> mesh axis (None: replicated)
LOGICAL_RULES: dict[str, str | None] = {
    "embed": "fsdp",
    "heads": "tensor",
    "mlp": "tensor",
    "vocab": "tensor",
    "layers": None,
    "norm": None,
}


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1,
              devices: list | None = None) -> Mesh:
  """A `(data, fsdp, tensor)` mesh; one size may be -1 to take the remaining devices."""
  devices = jax.devices() if devices is None else devices
  sizes = [data, fsdp, tensor]
  if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"mesh (data={data}, fsdp={fsdp}, tensor={tensor}): each size must be >= 1, "
                     "and at most one may be -1 (fill).")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"mesh (data={data}, fsdp={fsdp}, tensor={tensor}) cannot fill "
                       f"{len(devices)} devices: {len(devices)} is not divisible by {known}.")
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise ValueError(f"mesh (data={sizes[0]}, fsdp={sizes[1]}, tensor={sizes[2]}) has "
                     f"{math.prod(sizes)} devices but {len(devices)} are available; make the product "
                     "equal the device count (use -1 for one axis to fill).")
  return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


def logical_to_mesh(spec: tuple | None, shape: tuple[int, ...], mesh: Mesh) -> P:
  """Maps a tuple of logical names to a PartitionSpec, replicating dims the mesh axis can't split."""
  if spec is None:
    return P()
  axes = []
  for name, size in zip(spec, shape):
    axis = LOGICAL_RULES.get(name) if name is not None else None
    if axis is not None and (mesh.shape[axis] == 1 or size % mesh.shape[axis]):
      axis = None
    axes.append(axis)
  return P(*axes)


def state_shardings(abstract_state: Any, mesh: Mesh) -> Any:
  """The state with each Variable's value replaced by its NamedSharding, from the Variable's
  logical `out_sharding` names (same tree structure as the state)."""

  def one(variable):
    names = variable.get_metadata().get("out_sharding")
    return variable.replace(NamedSharding(mesh, logical_to_mesh(names, variable.shape, mesh)))

  return jax.tree.map(one, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Sequences split over data and fsdp; the sequence axis whole."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())
