"""N:M structured-sparsity masks."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sbitnet.ops.validation import check_pattern, normalize_axis


def nm_mask(w: jax.Array, n: int, m: int, axis: int = 0) -> jax.Array:
  """Keeps the `n` largest-magnitude entries in every group of `m` consecutive entries.

  Args:
    w: weight of any shape and float (or int) dtype; for a Flax kernel `[in, out]` the groups
      run along axis 0, the contraction axis, which is what sparse hardware needs.
    n, m: the pattern, `1 <= n < m`, with `m` dividing `w.shape[axis]`.
    axis: the axis the groups run along.

  Returns:
    bool array shaped like `w`, exactly `n` True per group. An entry i of a group is kept when
    `#{j : |w_j| > |w_i|  or  (|w_j| == |w_i| and j < i)} < n`, so ties go to the lower index.
    NaN ranks as +inf (larger than every finite number, tied with inf). Signed integers rank by
    their exact magnitude (int8 -128 above 127).
  """
  check_pattern(n, m, w.shape, normalize_axis(axis, w.ndim, w.shape))
  axis = normalize_axis(axis, w.ndim, w.shape)
  mag = _magnitude(w)
  moved = jnp.moveaxis(mag, axis, 0)
  groups = moved.reshape((moved.shape[0] // m, m) + moved.shape[1:])
  a_i = groups[:, :, None]  # [G, m(i), 1, ...]
  a_j = groups[:, None, :]  # [G, 1, m(j), ...]
  index = jnp.arange(m)
  lower = (index[None, :] < index[:, None]).reshape((1, m, m) + (1,) * (groups.ndim - 2))
  beats = (a_j > a_i) | ((a_j == a_i) & lower)
  rank = jnp.sum(beats, axis=2, dtype=jnp.int32)
  keep = (rank < n).reshape(moved.shape)
  return jnp.moveaxis(keep, 0, axis)


def _magnitude(w: jax.Array) -> jax.Array:
  """|w| with NaN as inf; for signed integers as the unsigned type of the same width, which
  holds every magnitude (`abs` would overflow at the most negative value)."""
  if jnp.issubdtype(w.dtype, jnp.floating):
    mag = jnp.abs(w)
    return jnp.where(jnp.isnan(mag), jnp.inf, mag)
  if jnp.issubdtype(w.dtype, jnp.signedinteger):
    u = jax.lax.bitcast_convert_type(w, jnp.dtype(f"uint{8 * w.dtype.itemsize}"))
    return jnp.where(w < 0, ~u + 1, u)
  return w
