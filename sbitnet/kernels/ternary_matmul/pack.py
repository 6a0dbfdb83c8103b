"""The packed 2-bit ternary weight format (version 2), independent of any kernel.

Layout. A ternary weight `t` int8 `[K, N]` (Flax `[in, out]`, values in {-1, 0, 1}) is stored as
codes `c = t + 1` in {0, 1, 2}, four per byte, in `codes` uint8 `[N, Kp / 4]` (one row of bytes per
output column, K contiguous: the K-major operand layout of tensor-core MMAs) where
`Kp = ceil(K / TILE_K) * TILE_K` (padding holds code 1, i.e. weight 0). K goes in tiles of
`TILE_K = 4 * PLANE_ROWS` weights; inside tile `i`, byte `i * PLANE_ROWS + j` of column n holds the
codes of rows `i * TILE_K + q * PLANE_ROWS + j` at bits `2q .. 2q + 1`, for planes q = 0..3. So a
kernel that loads `PLANE_ROWS` bytes per column gets plane q as `(bytes >> 2q) & 3`: four
`[N, PLANE_ROWS]` blocks of weights, each K-contiguous, no shuffles.

Version 1 stored the same bytes transposed (`[Kp / 4, N]`); reading K-major bytes made the 2-bit
kernel 2-3x faster at M = 64-128 and 11-14 % faster with bf16 activations (docs/kernels.md).

Scales. `scale` float32 `[N]` holds gamma per output column (gamma repeated over each fused
sub-matrix of `split`), so shards along the output axis carry their own scales. Cost: 2 bits per
weight plus 32 / K bits (2.008 bits/weight at K = 4096).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sbitnet.ops import scale_per_column
from sbitnet.ops.validation import check_split

FORMAT_VERSION = 2
PLANE_ROWS = 32
TILE_K = 4 * PLANE_ROWS


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PackedTernary:
  """A packed ternary weight: a pytree with array leaves `codes`, `scale` and static metadata.

  codes: uint8 `[N, Kp / 4]` (see the module docstring for the bit layout).
  scale: float32 `[N]`, gamma per output column.
  in_features: K, the logical number of rows (Kp - K padding rows are zero weights).
  split: sizes of fused sub-matrices along N (one gamma each), or None for one gamma.
  version: the format version; kernels refuse any other than `FORMAT_VERSION`.
  """
  codes: jax.Array
  scale: jax.Array
  in_features: int = dataclasses.field(metadata=dict(static=True))
  split: tuple[int, ...] | None = dataclasses.field(default=None, metadata=dict(static=True))
  version: int = dataclasses.field(default=FORMAT_VERSION, metadata=dict(static=True))

  @property
  def shape(self) -> tuple[int, int]:
    """The logical `[K, N]` shape of the ternary weight."""
    return (self.in_features, self.codes.shape[0])


def padded_rows(k: int) -> int:
  return -(-k // TILE_K) * TILE_K


def check_packed(p: PackedTernary) -> None:
  """Raises a ValueError naming what is wrong with `p` (version, dtypes, shapes)."""
  if not isinstance(p, PackedTernary):
    raise ValueError(f"expected a PackedTernary, got {type(p).__name__}; build one with pack().")
  if p.version != FORMAT_VERSION:
    raise ValueError(f"PackedTernary format version {p.version} is not supported by this build "
                     f"(it reads version {FORMAT_VERSION}); re-pack the weight with pack().")
  if p.codes.dtype != jnp.uint8 or p.codes.ndim != 2:
    raise ValueError(f"PackedTernary.codes must be uint8 [N, Kp/4], got {p.codes.dtype} "
                     f"{tuple(p.codes.shape)}.")
  if p.codes.shape[1] % PLANE_ROWS or p.codes.shape[1] * 4 < p.in_features:
    raise ValueError(f"PackedTernary.codes has {p.codes.shape[1]} bytes per column; version "
                     f"{p.version} needs a multiple of {PLANE_ROWS} (whole tiles of {TILE_K} "
                     f"weights) covering in_features={p.in_features}.")
  if p.scale.dtype != jnp.float32 or p.scale.shape != (p.codes.shape[0],):
    raise ValueError(f"PackedTernary.scale must be float32 [{p.codes.shape[0]}], got "
                     f"{p.scale.dtype} {tuple(p.scale.shape)}.")
  if p.split is not None and sum(p.split) != p.codes.shape[0]:
    raise ValueError(f"PackedTernary.split={p.split} adds up to {sum(p.split)}, but the weight "
                     f"has {p.codes.shape[0]} output columns.")


def pack(t: jax.Array, gamma: jax.Array, split: Sequence[int] | None = None) -> PackedTernary:
  """Packs ternary codes and their scale(s).

  Args:
    t: int8 `[K, N]` with values in {-1, 0, 1} (any N:M pattern). A concrete `t` with other
      values raises; under `jit` they are clipped to {-1, 0, 1}.
    gamma: float `()` or `[len(split)]`, as returned by `sbitnet.ops.absmean_ternary`.
    split: sizes of fused sub-matrices along N, one gamma each.

  Returns:
    A `PackedTernary` with `unpack(pack(t, gamma, split)) == (t, gamma)` bit for bit.
  """
  if t.ndim != 2 or t.dtype != jnp.int8:
    raise ValueError(f"pack expects t int8 [in, out], got {t.dtype} {tuple(t.shape)}.")
  split = check_split(split, t.shape)
  want = () if split is None else (len(split),)
  if jnp.shape(gamma) != want:
    raise ValueError(f"gamma must have shape {want} for split={split}, got {jnp.shape(gamma)}.")
  _check_ternary(t)
  k, n = t.shape
  kp = padded_rows(k)
  codes = (jnp.clip(t.T, -1, 1) + 1).astype(jnp.uint8)
  codes = jnp.pad(codes, ((0, 0), (0, kp - k)), constant_values=1)
  planes = codes.reshape(n, kp // TILE_K, 4, PLANE_ROWS)
  packed = sum(planes[:, :, q] << (2 * q) for q in range(4)).astype(jnp.uint8)
  scale = jnp.broadcast_to(scale_per_column(jnp.asarray(gamma, jnp.float32), split), (n,))
  return PackedTernary(packed.reshape(n, kp // 4), scale, in_features=k, split=split)


def _check_ternary(t: jax.Array) -> None:
  """Raises naming the first value of a concrete `t` outside {-1, 0, 1} (a traced one passes)."""
  bad = (t < -1) | (t > 1)
  try:
    found = bool(jnp.any(bad))
  except jax.errors.ConcretizationTypeError:
    return
  if found:
    row, col = np.argwhere(np.asarray(bad))[0]
    raise ValueError(f"pack takes ternary codes in {{-1, 0, 1}}; t[{row}, {col}] = "
                     f"{int(t[row, col])}.")


def unpack_codes(codes: jax.Array) -> jax.Array:
  """uint8 `[N, Kp / 4]` → int8 `[N, Kp]` ternary weights, K-major (padding included)."""
  n, nbytes = codes.shape
  tiles = codes.reshape(n, nbytes // PLANE_ROWS, 1, PLANE_ROWS)
  shifts = (2 * jnp.arange(4, dtype=jnp.uint8)).reshape(1, 1, 4, 1)
  planes = (tiles >> shifts) & 3
  return (planes.astype(jnp.int8) - 1).reshape(n, nbytes * 4)


def unpack(p: PackedTernary) -> tuple[jax.Array, jax.Array]:
  """Inverse of `pack`: returns `(t int8 [K, N], gamma float32 () or [len(split)])`."""
  check_packed(p)
  t = unpack_codes(p.codes)[:, :p.in_features].T
  if p.split is None:
    return t, p.scale[0]
  starts = np.cumsum((0,) + p.split[:-1])
  return t, p.scale[starts]


def bits_per_weight(p: PackedTernary) -> float:
  """Storage of `p` (codes and scales) in bits per logical weight."""
  k, n = p.shape
  return 8.0 * (p.codes.size * p.codes.dtype.itemsize + p.scale.size * 4) / (k * n)
