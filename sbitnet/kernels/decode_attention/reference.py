"""The XLA oracle of decode attention: RoPE, the cache write and attention as separate ops."""

from __future__ import annotations

import jax

from sbitnet.ops import apply_rope, write_rows


def split_heads(qkv: jax.Array, n_heads: int, n_kv_heads: int,
                head_dim: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """qkv `[..., (n_heads + 2 n_kv_heads) * head_dim]` (queries, keys, values) -> queries
  `[..., n_heads, head_dim]`, keys and values `[..., n_kv_heads, head_dim]`."""
  lead = qkv.shape[:-1]
  q, kv = n_heads * head_dim, n_kv_heads * head_dim
  return (qkv[..., :q].reshape(*lead, n_heads, head_dim),
          qkv[..., q:q + kv].reshape(*lead, n_kv_heads, head_dim),
          qkv[..., q + kv:].reshape(*lead, n_kv_heads, head_dim))


def decode_attention(qkv: jax.Array, keys: jax.Array, values: jax.Array, lengths: jax.Array,
                     cos: jax.Array, sin: jax.Array, *, n_heads: int,
                     attention: str) -> tuple[jax.Array, jax.Array, jax.Array]:
  """`api.decode_attention` composed of XLA ops, with `jax.nn.dot_product_attention`'s
  `implementation=attention` ("xla" or "cudnn")."""
  b, _, n_kv_heads, head_dim = keys.shape
  queries, new_keys, new_values = split_heads(qkv[:, None], n_heads, n_kv_heads, head_dim)
  cos, sin = cos[:, None], sin[:, None]
  queries, new_keys = apply_rope(queries, cos, sin), apply_rope(new_keys, cos, sin)
  keys, values = write_rows(keys, new_keys, lengths), write_rows(values, new_values, lengths)
  out = jax.nn.dot_product_attention(queries, keys, values, key_value_seq_lengths=lengths + 1,
                                     implementation=attention)
  return out.reshape(b, n_heads * head_dim), keys, values
