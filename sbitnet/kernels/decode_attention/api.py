"""`decode_attention`: one decode step of grouped-query attention against a KV cache, with RoPE and
the cache write, for one new token per sequence."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sbitnet.kernels.decode_attention import pallas_triton, reference

IMPLEMENTATIONS = ("xla", "cudnn", "pallas")


def choose_config(batch: int, n_kv_heads: int, slots: int) -> pallas_triton.Config:
  """Steps of 128 slots (the default); parts of the cache per (row, kv head) up to 256 programs
  in all, each part at least one step of the longest cache, at most 64 parts (H200 sweep,
  docs/kernels.md: 4 parts at 512 slots and 32 at 4096 for one sequence, 8 at 4096 and 32768
  for 16, 1 for 128)."""
  block_s = pallas_triton.Config.block_s
  splits = min(256 // (batch * n_kv_heads), -(-slots // block_s), 64)
  return pallas_triton.Config(block_s=block_s, splits=max(1, splits))


def _check(qkv: jax.Array, keys: jax.Array, values: jax.Array, lengths: jax.Array,
           cos: jax.Array, sin: jax.Array, n_heads: int) -> None:
  if keys.ndim != 4 or values.shape != keys.shape or values.dtype != keys.dtype:
    raise ValueError(f"keys and values must be [B, S, kv_heads, head_dim] of one shape and dtype, "
                     f"got keys {keys.dtype} {tuple(keys.shape)} and values {values.dtype} "
                     f"{tuple(values.shape)}.")
  batch, _, n_kv_heads, head_dim = keys.shape
  if n_heads % n_kv_heads:
    raise ValueError(f"n_heads={n_heads} must be a multiple of the cache's kv_heads={n_kv_heads}.")
  width = (n_heads + 2 * n_kv_heads) * head_dim
  if qkv.shape != (batch, width):
    raise ValueError(f"qkv must be [B, (n_heads + 2 kv_heads) head_dim] = [{batch}, {width}] for "
                     f"n_heads={n_heads} and a cache of shape {tuple(keys.shape)}, got "
                     f"{tuple(qkv.shape)}.")
  if lengths.shape != (batch,) or not jnp.issubdtype(lengths.dtype, jnp.integer):
    raise ValueError(f"lengths must be integer [B] = [{batch}], got {lengths.dtype} "
                     f"{tuple(lengths.shape)}.")
  for name, table in (("cos", cos), ("sin", sin)):
    if table.shape not in ((batch, head_dim), (1, head_dim)):
      raise ValueError(f"{name} must be [B or 1, head_dim] = [{batch}, {head_dim}], got "
                       f"{tuple(table.shape)}.")


def pallas_fits(qkv: jax.Array, keys: jax.Array) -> bool:
  """Whether the Pallas kernel takes these inputs: a 16-bit cache and qkv of its dtype, head_dim a
  power of two >= 16 (its tiles), and fewer than 2^31 cache elements (its int32 offsets)."""
  head_dim = keys.shape[-1]
  return (keys.dtype in (jnp.bfloat16, jnp.float16) and qkv.dtype == keys.dtype
          and head_dim >= 16 and not head_dim & (head_dim - 1) and keys.size < 2**31)


def decode_attention(qkv: jax.Array, keys: jax.Array, values: jax.Array, lengths: jax.Array,
                     cos: jax.Array, sin: jax.Array, *, n_heads: int,
                     implementation: str | None = None,
                     config: pallas_triton.Config | None = None
                     ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Attention of each sequence's new token to its cache and itself, storing the token's key and
  value in the cache.

  Args:
    qkv: `[B, (n_heads + 2 G) D]`: the fused q/k/v projection of the new tokens (queries, then
      keys, then values; heads contiguous), before RoPE.
    keys, values: the cache, `[B, S, G, D]`; slots `0 .. lengths[b] - 1` of row b are valid.
    lengths: int `[B]`; the new token goes to slot `lengths[b]` (clamped to S - 1: leave room).
    cos, sin: `[B or 1, D]` float32, RoPE tables at each new token's position (`rope_tables`).
    n_heads: query heads H (a multiple of G; query head h uses kv head `h // (H / G)`).
    implementation: "xla" (the oracle: RoPE, the cache write and `jax.nn.dot_product_attention`
      as separate ops), "cudnn" (the same with cuDNN's attention; GPU, 16-bit), "pallas" (one
      kernel; interpret mode off GPU), or None: Pallas on GPU where it applies, else XLA.
    config: the Pallas kernel's tiles (default: `choose_config`).

  Returns:
    (out `[B, H D]` in qkv's dtype: `softmax(q k^T / sqrt(D)) v` over slots `0 .. lengths[b]` with
    RoPE on q and k, the keys and the values with the new token stored).
  """
  if implementation not in (None,) + IMPLEMENTATIONS:
    raise ValueError(f"implementation={implementation!r} is not valid; choose one of "
                     f"{IMPLEMENTATIONS} or None.")
  _check(qkv, keys, values, lengths, cos, sin, n_heads)
  gpu = jax.default_backend() == "gpu"
  if implementation is None:
    implementation = "pallas" if gpu and pallas_fits(qkv, keys) else "xla"
  batch = keys.shape[0]
  cos = jnp.broadcast_to(cos, (batch, cos.shape[1]))
  sin = jnp.broadcast_to(sin, (batch, sin.shape[1]))
  if implementation != "pallas":
    return reference.decode_attention(qkv, keys, values, lengths, cos, sin, n_heads=n_heads,
                                      attention=implementation)
  if not pallas_fits(qkv, keys):
    raise ValueError(f"the Pallas decode attention takes a bfloat16 or float16 cache with qkv of "
                     f"its dtype, head_dim a power of two >= 16 and fewer than 2^31 elements, got "
                     f"qkv {qkv.dtype}, cache {keys.dtype} {tuple(keys.shape)}; use "
                     "implementation='xla' or 'cudnn'.")
  config = config or choose_config(batch, keys.shape[2], keys.shape[1])
  c = config
  if c.block_s < 16 or c.splits < 1 or c.num_warps not in (1, 2, 4, 8, 16) or c.num_stages < 1:
    raise ValueError(f"{c} is not a valid decode-attention config: block_s must be >= 16, "
                     "splits >= 1, num_warps a power of two up to 16 and num_stages >= 1.")
  return pallas_triton.decode_attention(qkv, keys, values, lengths, cos, sin, n_heads=n_heads,
                                        config=config, interpret=not gpu)
