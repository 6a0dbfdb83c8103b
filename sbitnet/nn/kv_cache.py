"""The key/value cache of incremental decoding: a pytree of per-sequence keys, values and lengths."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from sbitnet.ops.kv_update import write_rows


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
  """Keys and values of the tokens seen so far, one row per sequence.

  keys, values: `[B, S, kv_heads, head_dim]` for one attention layer, or a tuple of those, one
    per layer, for a whole model (separate buffers, so a donated cache is updated in place layer
    by layer).
  lengths: int32 `[B]`, tokens held per sequence: slots `0 .. lengths[b] - 1` are valid, and the
    token in slot s has position s (sequences are right-padded).
  """
  keys: jax.Array | tuple[jax.Array, ...]
  values: jax.Array | tuple[jax.Array, ...]
  lengths: jax.Array

  @classmethod
  def empty(cls, layers: int, batch: int, max_len: int, kv_heads: int, head_dim: int,
            dtype: jnp.dtype) -> KVCache:
    """A whole model's all-zero cache of `max_len` slots per sequence, lengths 0."""
    shape = (batch, max_len, kv_heads, head_dim)
    return cls(tuple(jnp.zeros(shape, dtype) for _ in range(layers)),
               tuple(jnp.zeros(shape, dtype) for _ in range(layers)),
               jnp.zeros((batch,), jnp.int32))

  def layer(self, index: int) -> KVCache:
    """Layer `index` of a whole model's cache."""
    return KVCache(self.keys[index], self.values[index], self.lengths)

  def write(self, keys: jax.Array, values: jax.Array) -> KVCache:
    """One layer's cache with `keys`/`values` `[B, T, kv_heads, head_dim]` stored at slots
    `lengths[b] .. lengths[b] + T - 1` of each row (lengths unchanged; the caller must leave room:
    a write past the last slot is clamped by `dynamic_update_slice`)."""
    return dataclasses.replace(self, keys=write_rows(self.keys, keys, self.lengths),
                               values=write_rows(self.values, values, self.lengths))
