"""BitNet b1.58 quantizers: absmean ternary weights and per-token absmax activations."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from sbitnet.ops.validation import (check_act_bits, check_float, check_gamma, check_split,
                                    normalize_axis)

EPS = 1e-5


def _psum_mean(total: jax.Array, count: float, axis_name) -> jax.Array:
  if axis_name is None:
    return total / count
  return jax.lax.psum(total, axis_name) / jax.lax.psum(count, axis_name)


def absmean_scale(w: jax.Array, split: Sequence[int] | None = None, *,
                  axis_name: str | tuple[str, ...] | None = None) -> jax.Array:
  """gamma = mean(|w|), float32: shape `()`, or `[len(split)]` with one gamma per fused sub-matrix.

  `split` lists the sizes of fused outputs along the last axis (e.g. q, k, v widths). Under
  `shard_map`, `axis_name` names the mesh axes `w` is sharded over so gamma is the global mean.
  With `split`, those axes may shard only the leading (contraction) axes: each sub-matrix's sums
  are added across shards position by position, so a shard of the output axis (whose columns
  belong to other sub-matrices) would mix their gammas; shard the output axis with `jit`'s
  shardings instead, or gather it first.
  """
  check_float("w", w)
  split = check_split(split, w.shape)
  mag = jnp.abs(w.astype(jnp.float32))
  if split is None:
    return _psum_mean(jnp.sum(mag), float(mag.size), axis_name)
  per_column = jnp.sum(mag.reshape(-1, mag.shape[-1]), axis=0)
  bounds = [0]
  for size in split:
    bounds.append(bounds[-1] + size)
  sums = jnp.stack([jnp.sum(per_column[a:b]) for a, b in zip(bounds[:-1], bounds[1:])])
  counts = jnp.asarray(split, jnp.float32) * (mag.size // mag.shape[-1])
  if axis_name is None:
    return sums / counts
  return jax.lax.psum(sums, axis_name) / jax.lax.psum(counts, axis_name)


def scale_per_column(gamma: jax.Array, split: Sequence[int] | None) -> jax.Array:
  """Expands gamma `()` or `[len(split)]` to something that broadcasts against `[..., out]`."""
  split = None if split is None else tuple(int(s) for s in split)
  check_gamma(gamma, split)
  if split is None:
    return gamma
  return jnp.repeat(gamma, jnp.asarray(split), total_repeat_length=sum(split))


def ternary_codes(w: jax.Array, gamma: jax.Array, split: Sequence[int] | None = None) -> jax.Array:
  """t = clip(round(w / max(gamma, eps)), -1, 1) as int8 (round half to even)."""
  check_float("w", w)
  split = check_split(split, w.shape)
  scale = jnp.maximum(scale_per_column(gamma, split), EPS)
  return jnp.clip(jnp.round(w.astype(jnp.float32) / scale), -1, 1).astype(jnp.int8)


def absmean_ternary(w: jax.Array, split: Sequence[int] | None = None, *,
                    axis_name: str | tuple[str, ...] | None = None
                    ) -> tuple[jax.Array, jax.Array]:
  """Absmean ternary quantization (BitNet b1.58).

  Returns `(t, gamma)`: `t` int8 in {-1, 0, 1} shaped like `w`, `gamma` float32 `()` or
  `[len(split)]`, with `gamma = mean|w|` and `t = clip(round(w / max(gamma, eps)), -1, 1)`
  (eps = 1e-5: a weight with mean|w| below it quantizes to all zeros), so that `w ≈ t * gamma`
  (gamma broadcast per fused sub-matrix with `scale_per_column`).
  """
  gamma = absmean_scale(w, split, axis_name=axis_name)
  return ternary_codes(w, gamma, split), gamma


def fake_ternary(w: jax.Array, gamma: jax.Array, split: Sequence[int] | None = None) -> jax.Array:
  """gamma * clip(round(w / max(gamma, eps)), -1, 1) in the dtype of `w` (no gradient rule
  attached)."""
  split = check_split(split, w.shape)
  t = ternary_codes(w, gamma, split).astype(jnp.float32)
  return (t * scale_per_column(gamma, split)).astype(w.dtype)


def absmax_multiplier(amax: jax.Array, qmax: int = 127) -> jax.Array:
  """`s = qmax / max(amax, eps)`: the per-token multiplier of absmax quantization, float32."""
  return qmax / jnp.maximum(amax, EPS)


def _absmax(x: jax.Array, axis: int) -> jax.Array:
  """max |x| along `axis` (kept), float32."""
  return jnp.max(jnp.abs(x.astype(jnp.float32)), axis=axis, keepdims=True)


def absmax_int8(x: jax.Array, axis: int = -1) -> tuple[jax.Array, jax.Array]:
  """Per-token absmax int8 quantization.

  Returns `(q, scale)`: `q` int8 shaped like `x`, `scale` float32 with `axis` kept as size 1,
  `s = 127 / max(max|x|, eps)`, `q = clip(round(x * s), -128, 127)`, `scale = 1 / s`, so that
  `x ≈ q * scale`.

  Under jit XLA may rewrite `1 / (127 / a)` as `a * (1 / 127)` (on an H200 with jax 0.11.2 it did,
  for every row), so a jitted scale can differ from the eager one (and the kernels') by an ulp;
  `q` does not. An optimization barrier kept the two equal but added three kernels per layer to
  a batch-128 decode step (+2 %), so the rewrite is left alone.
  """
  check_float("x", x)
  axis = normalize_axis(axis, x.ndim, x.shape)
  s = absmax_multiplier(_absmax(x, axis))
  return jnp.clip(jnp.round(x.astype(jnp.float32) * s), -128, 127).astype(jnp.int8), 1.0 / s


def quantize_activations(x: jax.Array, bits: int = 8, axis: int = -1) -> jax.Array:
  """Fake-quantized activations with a straight-through gradient, in the dtype of `x`.

  `s = Qmax / max(max|x|, eps)` per token (Qmax = 127 for 8 bits, 7 for 4 bits),
  `x_q = clip(round(x * s), -Qmax - 1, Qmax) / s`; the gradient w.r.t. `x` is the identity.
  """
  check_float("x", x)
  qmax = check_act_bits(bits)
  axis = normalize_axis(axis, x.ndim, x.shape)
  s = absmax_multiplier(_absmax(x, axis), qmax)
  xq = (jnp.clip(jnp.round(x.astype(jnp.float32) * s), -qmax - 1, qmax) / s).astype(x.dtype)
  # sg(xq) + (x - sg(x)) is exactly xq in the forward pass and has an identity gradient.
  return jax.lax.stop_gradient(xq) + (x - jax.lax.stop_gradient(x))
