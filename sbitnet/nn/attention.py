"""Causal grouped-query self-attention with a fused q/k/v SparseBitLinear (one gamma each)."""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
from flax import nnx

from sbitnet.kernels.decode_attention.api import decode_attention
from sbitnet.kernels.decode_attention.reference import split_heads
from sbitnet.nn.kv_cache import KVCache
from sbitnet.nn.linear import SparseBitLinear
from sbitnet.ops import Prologue, apply_rope


class Attention(nnx.Module):
  """`o_proj(softmax(q kᵀ / sqrt(d_head) + causal) v)` with RoPE on q, k and GQA.

  `linear(in, out, *, split=..., kernel_axes=..., rngs=...)` builds each projection.
  """

  def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, head_dim: int, *,
               linear: Callable[..., SparseBitLinear], qkv_bias: bool,
               implementation: str | None = None, decode_implementation: str | None = None,
               rngs: nnx.Rngs):
    """`implementation` is passed to `jax.nn.dot_product_attention` ("cudnn" for the fused
    flash-attention kernel on GPU, "xla", or None to let JAX choose) for whole sequences and
    prefill; `decode_implementation` to `sbitnet.kernels.decode_attention` for decode steps
    against the cache ("pallas": RoPE, the cache write and attention in one kernel; "cudnn";
    "xla"; None: Pallas on GPU where it applies)."""
    if n_heads % n_kv_heads:
      raise ValueError(f"n_heads={n_heads} must be a multiple of n_kv_heads={n_kv_heads}.")
    self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
    self.implementation, self.decode_implementation = implementation, decode_implementation
    q, kv = n_heads * head_dim, n_kv_heads * head_dim
    self.qkv = linear(d_model, q + 2 * kv, split=(q, kv, kv), use_bias=qkv_bias,
                      kernel_axes=("embed", "heads"), rngs=rngs)
    self.o = linear(q, d_model, kernel_axes=("heads", "embed"), rngs=rngs)

  def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array,
               prologue: Prologue | None = None) -> jax.Array:
    """x `[B, T, d_model]`, cos/sin `[B or 1, T, head_dim]` -> `[B, T, d_model]`; `prologue`
    (e.g. the pre-norm) is applied to x by the q/k/v projection."""
    queries, keys, values = self._project(x, cos, sin, prologue)
    out = jax.nn.dot_product_attention(queries, keys, values, is_causal=True,
                                       implementation=self.implementation)
    return self.o(out.reshape(*x.shape[:2], -1))

  def with_cache(self, x: jax.Array, cos: jax.Array, sin: jax.Array, cache: KVCache,
                 prologue: Prologue | None = None) -> tuple[jax.Array, KVCache]:
    """Attention of `x` `[B, T, d_model]` that also stores its keys and values in this layer's
    `cache` (at slots `cache.lengths[b] + t`; lengths are left to the caller).

    T == 1 (decode): each row's query attends to its slots `0 .. lengths[b]`. T > 1 (prefill):
    the cache must be empty (lengths 0) and the tokens attend causally among themselves, as in
    `__call__`. Returns (`[B, T, d_model]`, the updated cache).
    """
    if x.shape[1] == 1:
      qkv = self.qkv(x, prologue)[:, 0]
      out, keys, values = decode_attention(
          qkv, cache.keys, cache.values, cache.lengths, cos[:, 0], sin[:, 0],
          n_heads=self.n_heads, implementation=self.decode_implementation)
      return self.o(out[:, None]), dataclasses.replace(cache, keys=keys, values=values)
    queries, keys, values = self._project(x, cos, sin, prologue)
    out = jax.nn.dot_product_attention(queries, keys, values, is_causal=True,
                                       implementation=self.implementation)
    return self.o(out.reshape(*x.shape[:2], -1)), cache.write(keys, values)

  def _project(self, x: jax.Array, cos: jax.Array, sin: jax.Array,
               prologue: Prologue | None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Queries `[B, T, n_heads, head_dim]` and keys, values `[B, T, n_kv_heads, head_dim]`, with
    RoPE applied to queries and keys."""
    queries, keys, values = split_heads(self.qkv(x, prologue), self.n_heads, self.n_kv_heads,
                                        self.head_dim)
    return apply_rope(queries, cos, sin), apply_rope(keys, cos, sin), values
