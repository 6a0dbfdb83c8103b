"""Device mesh from config and logical-axis rules mapping parameter/activation axes onto it."""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import jax
import numpy as np
from absl import logging
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# logical axis -> mesh axis or axes (None: replicated)
LOGICAL_RULES: dict[str, str | tuple[str, ...] | None] = {
    "batch": BATCH_AXES,
    "seq": None,
    "embed": "fsdp",
    "heads": "tensor",
    "mlp": "tensor",
    "vocab": "tensor",
    "layers": None,
    "norm": None,
}


def mesh_shape(data: int, fsdp: int, tensor: int, num_devices: int) -> tuple[int, int, int]:
  """The `(data, fsdp, tensor)` sizes on `num_devices` devices, a -1 filled in; ValueError naming
  the sizes when they cannot cover exactly that many."""
  sizes = [data, fsdp, tensor]
  if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"mesh (data={data}, fsdp={fsdp}, tensor={tensor}): each size must be >= 1, "
                     "and at most one may be -1 (fill).")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise ValueError(f"mesh (data={data}, fsdp={fsdp}, tensor={tensor}) cannot fill "
                       f"{num_devices} devices: {num_devices} is not divisible by {known}.")
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ValueError(f"mesh (data={sizes[0]}, fsdp={sizes[1]}, tensor={sizes[2]}) has "
                     f"{math.prod(sizes)} devices but {num_devices} are available; make the product "
                     "equal the device count (use -1 for one axis to fill).")
  return sizes[0], sizes[1], sizes[2]


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1,
              devices: list | None = None) -> Mesh:
  """A `(data, fsdp, tensor)` mesh; one size may be -1 to take the remaining devices."""
  devices = jax.devices() if devices is None else devices
  sizes = mesh_shape(data, fsdp, tensor, len(devices))
  if jax.process_count() > 1 and jax.local_device_count() % sizes[2]:
    raise ValueError(f"mesh.tensor={sizes[2]} must divide the {jax.local_device_count()} devices "
                     "of each process: a tensor-parallel group must stay inside one host, whose "
                     "process feeds it its own batch rows.")
  return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


def logical_to_mesh(spec: tuple | None, shape: tuple[int, ...], mesh: Mesh) -> P:
  """Maps a tuple of logical names to a PartitionSpec. A dim its mesh axis can't split evenly is
  replicated, with a warning (N:M contraction axes are checked by `check_nm_shards` instead)."""
  if spec is None:
    return P()
  axes = []
  for name, size in zip(spec, shape):
    axis = LOGICAL_RULES[name] if name is not None else None
    if axis is not None and size % mesh.shape[axis]:
      logging.warning("Logical axis %r of size %d does not divide over mesh axis %r of size %d "
                      "(shape %s): replicated instead.", name, size, axis, mesh.shape[axis], shape)
    axes.append(None if axis is None or mesh.shape[axis] == 1 or size % mesh.shape[axis]
                else axis)
  return P(*axes)


def check_nm_shards(layers: dict[str, Any], mesh: Mesh) -> None:
  """Raises ConfigError unless every shard of each N:M layer's contraction axis holds whole groups.

  `layers`: name -> a layer with `spec.m` (None/0 when dense) and a `kernel` Variable shaped
  `[..., in, out]` whose `out_sharding` names its logical axes; `in` is the contraction axis.
  """
  from sbitnet.config import ConfigError  # here: sbitnet.config imports the models, which use us
  for name, layer in layers.items():
    m = layer.spec.m
    names = layer.kernel.get_metadata().get("out_sharding")
    if not m or not names or names[-2] is None:
      continue
    axis = LOGICAL_RULES[names[-2]]
    shards, size = (mesh.shape[axis] if axis else 1), layer.kernel.shape[-2]
    if shards > 1 and size % (shards * m):
      valid = [k for k in range(1, size // m + 1) if (size // m) % k == 0]
      raise ConfigError(
          f"Layer {name!r}: its contraction axis ({names[-2]!r}, size {size}) is split over mesh "
          f"axis {axis!r} of size {shards} (mesh {dict(mesh.shape)}), so a shard would hold "
          f"{size / shards:g} inputs, not a whole number of {m}-wide N:M groups. Use "
          f"mesh.{axis} in {valid} (sizes k with {size} / k a multiple of m={m}), or another "
          "pattern or model size.")


def state_shardings(abstract_state: Any, mesh: Mesh) -> Any:
  """The state with each Variable's value replaced by its NamedSharding, from the Variable's
  logical `out_sharding` names, and any other leaf (a step count) replicated; same tree structure.
  Optimizer states built from nnx.State parameters keep their Variables, so moments shard alike."""

  def one(leaf):
    if not isinstance(leaf, nnx.Variable):
      return replicated(mesh)
    names = leaf.get_metadata().get("out_sharding")
    return leaf.replace(NamedSharding(mesh, logical_to_mesh(names, leaf.shape, mesh)))

  return jax.tree.map(one, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def constrain(x: jax.Array, logical: tuple[str | None, ...]) -> jax.Array:
  """Pins an activation's sharding by logical axis names under a mesh set with `jax.set_mesh`;
  the identity when no mesh is set."""
  if jax.sharding.get_abstract_mesh().empty:
    return x
  return jax.lax.with_sharding_constraint(x, P(*(LOGICAL_RULES[n] if n else None for n in logical)))


def with_mesh(fn: Callable, mesh: Mesh) -> Callable:
  """`fn` called under `jax.set_mesh(mesh)`, so the `constrain` calls it traces see the mesh."""

  @functools.wraps(fn)
  def call(*args, **kwargs):
    with jax.set_mesh(mesh):
      return fn(*args, **kwargs)

  return call


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Sequences split over data and fsdp; the sequence axis whole."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())
