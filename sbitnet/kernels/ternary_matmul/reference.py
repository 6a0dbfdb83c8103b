"""XLA implementations of the packed ternary matmul: the oracle for the kernels, and the large-M
path (unpack to int8, then XLA's int8 × int8 → int32 dot, i.e. cuBLASLt on int8 tensor cores)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sbitnet.kernels.ternary_matmul.pack import PackedTernary, unpack_codes

_CONTRACT = (((1,), (1,)), ((), ()))  # x [M, K] with t [N, K]


def matmul_float(x: jax.Array, codes: jax.Array, scale: jax.Array) -> jax.Array:
  """`y = (x @ t) * scale` with float32 accumulation.

  x: float `[M, K]`; codes: uint8 `[N, Kp / 4]` with `Kp >= K`; scale: float32 `[N]`.
  Returns float32 `[M, N]`. Products x·t are exact, so only the summation order differs from an
  exact result.
  """
  t = unpack_codes(codes)[:, :x.shape[1]].astype(x.dtype)
  acc = jax.lax.dot_general(x, t, _CONTRACT, precision=jax.lax.Precision.HIGHEST,
                            preferred_element_type=jnp.float32)
  return acc * scale


def unpack_int8(p: PackedTernary) -> jax.Array:
  """The ternary weight of `p` as int8 `[N, K]`: K-major, the operand layout of int8 tensor-core
  GEMMs. Callers that multiply the same weight by many rows keep it (`ternary_matmul`'s
  `int8_weight`) instead of unpacking the codes on every call."""
  return unpack_codes(p.codes)[:, :p.in_features]


def matmul_int8(xq: jax.Array, x_scale: jax.Array, t: jax.Array, scale: jax.Array) -> jax.Array:
  """`y = (xq @ t.T) * x_scale * scale`: int8 × int8 → exact int32 accumulation, scales after.

  xq: int8 `[M, K]`; x_scale: float32 `[M, 1]`; t: int8 `[N, K]` (`unpack_int8`); scale: float32
  `[N]`. Returns float32 `[M, N]`.
  """
  acc = jax.lax.dot_general(xq, t, _CONTRACT, preferred_element_type=jnp.int32)
  return acc.astype(jnp.float32) * x_scale * scale
