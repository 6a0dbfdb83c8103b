"""Pallas (Triton backend) decode attention: RoPE, the KV-cache write and attention of one new token
per sequence in one kernel.

Program (b, g, s) takes row b's kv head g and the s-th of `splits` equal parts of its cached
slots `0 .. n - 1` (n = lengths[b], parts rounded up to `block_s`). It loads the
`R = n_heads / n_kv_heads` queries of the group from the fused q/k/v projection row (repeated to
`P >= 16` rows, the MMA's smallest M), applies RoPE in float32 and rounds to the cache dtype as
`apply_rope` does, then streams its slots in steps of `block_s` with the online softmax

  m' = max(m, max_j s_j),  l' = l e^(m - m') + sum_j e^(s_j - m'),
  acc' = acc e^(m - m') + e^(s - m') V,   s_j = q . k_j / sqrt(head_dim)

(scores and sums in float32; probabilities rounded to the value dtype for the P V dot, as XLA's
attention does). The last part also scores the new token from registers and stores its rotated
key and its value in slot n (in place: the cache buffers are aliased to the outputs), so no program
reads a slot another writes. One part writes the normalized output; several write (acc, m, l) per
part, which `combine` merges in XLA.

Triton rather than Mosaic GPU: the kernel is a few microseconds of gathers (a group's queries,
one kv head's strided cache rows) and 16-row dots, where wgmma wants 64-row tiles and TMA-shaped
blocks; interpret mode runs the same code on the CPU.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

MIN_ROWS = 16  # the smallest M of a tensor-core dot


@dataclasses.dataclass(frozen=True)
class Config:
  """Cache slots per step, parts of the cache per (row, kv head), warps and pipeline stages."""
  block_s: int = 128
  splits: int = 1
  num_warps: int = 4
  num_stages: int = 2


def query_rows(group: int) -> int:
  """Rows of the query tile: the group's R queries repeated to a power of two >= 16."""
  return max(MIN_ROWS, 1 << (group - 1).bit_length())


def _rotated(row_ref, b, base, d: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """`apply_rope` of the vectors at columns `base + d` of row b (`d = 0 .. head_dim - 1`; base a
  column or a column per vector, `[P, 1]`): `x cos + rotate_half(x) sin` in float32, with
  `rotate_half([a, c]) = [-c, a]`."""
  half = d.shape[-1] // 2
  x = pltriton.load(row_ref.at[b, base + d]).astype(jnp.float32)
  swapped = pltriton.load(row_ref.at[b, base + (d + half) % (2 * half)]).astype(jnp.float32)
  return x * cos + jnp.where(d < half, -swapped, swapped) * sin


def _kernel(qkv_ref, cos_ref, sin_ref, len_ref, k_ref, v_ref, *refs, n_heads: int,
            n_kv_heads: int, block_s: int, splits: int):
  """Refs: qkv `[B, (H + 2G) D]`, cos and sin `[B, D]` float32, lengths `[B]`, keys and values
  `[B, S G D]` (aliased with the first two outputs), then the outputs: keys, values, and either
  out `[B, H D]` (one part) or acc `[B G splits P, D]`, m and l `[B G splits P]` float32."""
  k_out, v_out, *results = refs
  b, g, s = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  head_dim = cos_ref.shape[1]
  slots = k_ref.shape[1] // (n_kv_heads * head_dim)
  group = n_heads // n_kv_heads
  rows = query_rows(group)
  d = jax.lax.broadcasted_iota(jnp.int32, (head_dim,), 0)
  r = jax.lax.broadcasted_iota(jnp.int32, (rows,), 0)
  heads = g * group + r % group
  cos, sin = pltriton.load(cos_ref.at[b, d]), pltriton.load(sin_ref.at[b, d])
  dtype = k_ref.dtype
  q = _rotated(qkv_ref, b, heads[:, None] * head_dim, d[None, :], cos[None, :],
               sin[None, :]).astype(dtype)
  new_k = _rotated(qkv_ref, b, (n_heads + g) * head_dim, d, cos, sin).astype(dtype)
  new_v = pltriton.load(qkv_ref.at[b, (n_heads + n_kv_heads + g) * head_dim + d])
  scale = 1.0 / math.sqrt(head_dim)

  slot = jnp.minimum(pltriton.load(len_ref.at[b]), slots - 1)  # the new token's slot
  chunk = pl.cdiv(pl.cdiv(slot, splits), block_s) * block_s
  start = s * chunk
  end = jnp.minimum(start + chunk, slot)
  step_slots = jax.lax.broadcasted_iota(jnp.int32, (block_s,), 0)
  row_stride = n_kv_heads * head_dim

  def update(carry, scores, probs_times_v):
    """One online-softmax step; `probs_times_v(p)` is `p @ V` for the step's probabilities."""
    m, l, acc = carry
    m_new = jnp.maximum(m, jnp.max(scores, axis=1))
    # A part without slots has m = -inf; keep exp's argument finite there.
    shift = jnp.where(m_new == -jnp.inf, 0.0, m_new)
    alpha = jnp.exp(m - shift)
    p = jnp.exp(scores - shift[:, None])
    return m_new, l * alpha + jnp.sum(p, axis=1), acc * alpha[:, None] + probs_times_v(p)

  def step(i, carry):
    at = start + i * block_s + step_slots
    ok = at < end
    index = at[:, None] * row_stride + g * head_dim + d[None, :]
    mask = jnp.broadcast_to(ok[:, None], (block_s, head_dim))
    keys = pltriton.load(k_ref.at[b, index], mask=mask, other=0)
    values = pltriton.load(v_ref.at[b, index], mask=mask, other=0)
    scores = jax.lax.dot_general(q, keys, (((1,), (1,)), ((), ())),
                                 preferred_element_type=jnp.float32) * scale
    scores = jnp.where(ok[None, :], scores, -jnp.inf)
    return update(carry, scores, lambda p: jax.lax.dot_general(
        p.astype(values.dtype), values, (((1,), (0,)), ((), ())),
        preferred_element_type=jnp.float32))

  carry = (jnp.full((rows,), -jnp.inf, jnp.float32), jnp.zeros((rows,), jnp.float32),
           jnp.zeros((rows, head_dim), jnp.float32))
  carry = jax.lax.fori_loop(0, pl.cdiv(jnp.maximum(end - start, 0), block_s), step, carry)

  last = s == splits - 1
  new_score = jnp.sum(q.astype(jnp.float32) * new_k.astype(jnp.float32)[None, :], axis=1) * scale
  new_score = jnp.where(last, new_score, -jnp.inf)[:, None]
  m, l, acc = update(carry, new_score, lambda p: (
      p.astype(new_v.dtype).astype(jnp.float32) * new_v.astype(jnp.float32)[None, :]))

  @pl.when(last)
  def _():
    at = slot * row_stride + g * head_dim + d
    pltriton.store(k_out.at[b, at], new_k)
    pltriton.store(v_out.at[b, at], new_v.astype(dtype))

  if splits == 1:
    [o_ref] = results
    # Repeated query rows hold the same values and store them to the same place.
    pltriton.store(o_ref.at[b, heads[:, None] * head_dim + d[None, :]],
                   (acc / l[:, None]).astype(o_ref.dtype))
  else:
    acc_ref, m_ref, l_ref = results
    part = ((b * n_kv_heads + g) * splits + s) * rows
    pltriton.store(acc_ref.at[pl.ds(part, rows), :], acc)
    pltriton.store(m_ref.at[pl.ds(part, rows)], m)
    pltriton.store(l_ref.at[pl.ds(part, rows)], l)


def combine(acc: jax.Array, m: jax.Array, l: jax.Array, group: int) -> jax.Array:
  """Merges the parts: acc `[B, G, splits, P, D]`, m and l `[B, G, splits, P]` float32 ->
  `sum_s e^(m_s - M) acc_s / sum_s e^(m_s - M) l_s`, `[B, G, R, D]` float32 (M = max_s m_s,
  finite: the last part holds the new token)."""
  acc, m, l = acc[:, :, :, :group], m[:, :, :, :group], l[:, :, :, :group]
  weight = jnp.exp(m - jnp.max(m, axis=2, keepdims=True))
  return (jnp.sum(weight[..., None] * acc, axis=2)
          / jnp.sum(weight * l, axis=2)[..., None])


@functools.partial(jax.jit, static_argnames=("n_heads", "config", "interpret"))
def decode_attention(qkv: jax.Array, keys: jax.Array, values: jax.Array, lengths: jax.Array,
                     cos: jax.Array, sin: jax.Array, *, n_heads: int, config: Config,
                     interpret: bool = False) -> tuple[jax.Array, jax.Array, jax.Array]:
  """`api.decode_attention` in one kernel (plus the XLA merge of parts when config.splits > 1).
  Shapes are checked by the api."""
  batch, slots, n_kv_heads, head_dim = keys.shape
  group, rows, splits = n_heads // n_kv_heads, query_rows(n_heads // n_kv_heads), config.splits
  flat = (batch, slots * n_kv_heads * head_dim)
  if splits == 1:
    results = [jax.ShapeDtypeStruct((batch, n_heads * head_dim), qkv.dtype)]
  else:
    parts = batch * n_kv_heads * splits * rows
    results = [jax.ShapeDtypeStruct((parts, head_dim), jnp.float32),
               jax.ShapeDtypeStruct((parts,), jnp.float32),
               jax.ShapeDtypeStruct((parts,), jnp.float32)]
  whole = pl.BlockSpec(memory_space=pl.ANY)
  kernel = functools.partial(_kernel, n_heads=n_heads, n_kv_heads=n_kv_heads,
                             block_s=config.block_s, splits=splits)
  new_keys, new_values, *out = pl.pallas_call(
      kernel,
      out_shape=[jax.ShapeDtypeStruct(flat, keys.dtype)] * 2 + results,
      grid=(batch, n_kv_heads, splits),
      in_specs=[whole] * 6,
      out_specs=[whole] * (2 + len(results)),
      input_output_aliases={4: 0, 5: 1},
      compiler_params=pltriton.CompilerParams(num_warps=config.num_warps,
                                              num_stages=config.num_stages),
      interpret=interpret,
  )(qkv, cos.astype(jnp.float32), sin.astype(jnp.float32), lengths.astype(jnp.int32),
    keys.reshape(flat), values.reshape(flat))
  if splits == 1:
    [o] = out
  else:
    acc, m, l = out
    shape = (batch, n_kv_heads, splits, rows)
    o = combine(acc.reshape(*shape, head_dim), m.reshape(shape), l.reshape(shape), group)
    o = o.reshape(batch, n_heads * head_dim).astype(qkv.dtype)
  return o, new_keys.reshape(keys.shape), new_values.reshape(values.shape)
