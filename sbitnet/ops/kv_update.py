"""Writing new positions into per-sequence buffers (a KV cache) at per-row offsets."""

from __future__ import annotations

import jax


def write_rows(buffer: jax.Array, new: jax.Array, starts: jax.Array) -> jax.Array:
  """`buffer` `[B, S, ...]` with `new` `[B, T, ...]` (cast to buffer's dtype) stored at positions
  `starts[b] .. starts[b] + T - 1` of row b; `starts` int32 `[B]`. A write past position S - 1 is
  clamped by `dynamic_update_slice` (the caller must leave room)."""
  new = new.astype(buffer.dtype)
  if buffer.shape[0] == 1:
    # One row: a plain in-place update. The vmapped one is a scatter, which XLA turns back into an
    # update for one row, but as three kernels (a read of the old slots, a select, the write).
    return jax.lax.dynamic_update_slice_in_dim(buffer, new, starts[0], axis=1)
  return jax.vmap(lambda row, values, start: jax.lax.dynamic_update_slice_in_dim(
      row, values, start, axis=0))(buffer, new, starts)
