"""Pallas (Triton backend) int8 GEMM with the dequantization fused into its epilogue: the large-M
path of `ternary_matmul` for an unpacked int8 weight.

  out[s] = (xq @ t[:, K-split s].T) * row_scale[:, None] * col_scale[None, :]

xq int8 `[M, K]` (per-token absmax activations), t int8 `[N, K]` (K-major, `unpack_int8`), exact
int32 accumulation on the int8 tensor cores. XLA's path computes the same with an int32 `[M, N]`
written by the GEMM and read back by a separate scale pass; here the scales are applied to the
accumulator in registers and only the output dtype is written. Split-K (partial sums in float32,
summed by the caller) fills the GPU when M and N give few tiles (large-batch decode).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from sbitnet.kernels.ternary_matmul.pallas_triton import call


@dataclasses.dataclass(frozen=True)
class GemmConfig:
  """Tile sizes and launch parameters; split-K programs get `K / block_k / split_k` steps each."""
  block_m: int = 128
  block_n: int = 128
  block_k: int = 128
  split_k: int = 1
  num_warps: int = 8
  num_stages: int = 3


_NT = (((1,), (1,)), ((), ()))  # contract the last axis of both: x [M, K] · t [N, K]


def _kernel(x_ref, w_ref, rs_ref, cs_ref, o_ref, *, steps: int, block_k: int):
  split = pl.program_id(2)

  def step(i, acc):
    k = pl.ds((split * steps + i) * block_k, block_k)
    return acc + jax.lax.dot_general(x_ref[:, k], w_ref[:, k], _NT,
                                     preferred_element_type=jnp.int32)

  acc = jax.lax.fori_loop(0, steps, step,
                          jnp.zeros((x_ref.shape[0], w_ref.shape[0]), jnp.int32))
  y = acc.astype(jnp.float32) * rs_ref[...][:, None] * cs_ref[...][None, :]
  o_ref[...] = y.astype(o_ref.dtype)


@functools.partial(jax.jit, static_argnames=("config", "out_dtype", "interpret"))
def matmul(xq: jax.Array, t: jax.Array, row_scale: jax.Array, col_scale: jax.Array, *,
           config: GemmConfig, out_dtype, interpret: bool = False,
           out_init: jax.Array | None = None) -> jax.Array:
  """Partial products `[split_k, M, N]` of `out_dtype` (sum over axis 0 for the product).

  xq: int8 `[M, K]`; t: int8 `[N, K]`; row_scale float32 `[M]`; col_scale float32 `[N]`. M, N
  and K must be multiples of block_m, block_n and block_k·split_k (the caller pads). `out_init`,
  if given, is the output buffer (aliased), so tiles the kernel fails to write keep its contents.
  """
  (m, k), n, c = xq.shape, t.shape[0], config
  if xq.dtype != jnp.int8 or t.dtype != jnp.int8 or t.shape[1] != k:
    raise ValueError(f"int8 GEMM wants int8 x [M, K] and t [N, K], got {xq.dtype} "
                     f"{tuple(xq.shape)} and {t.dtype} {tuple(t.shape)}.")
  if m % c.block_m or n % c.block_n or k % (c.block_k * c.split_k):
    raise ValueError(f"{c} does not tile M={m}, N={n}, K={k}: pad M to block_m, N to block_n "
                     "and K to block_k * split_k.")
  kernel = functools.partial(_kernel, steps=k // c.block_k // c.split_k, block_k=c.block_k)
  in_specs = [pl.BlockSpec((c.block_m, k), lambda j, i, s: (i, 0)),
              pl.BlockSpec((c.block_n, k), lambda j, i, s: (j, 0)),
              pl.BlockSpec((c.block_m,), lambda j, i, s: (i,)),
              pl.BlockSpec((c.block_n,), lambda j, i, s: (j,))]
  out_spec = pl.BlockSpec((None, c.block_m, c.block_n), lambda j, i, s: (s, i, j))
  return call(kernel, [xq, t, row_scale, col_scale], in_specs, out_spec,
              jax.ShapeDtypeStruct((c.split_k, m, n), out_dtype),
              grid=(n // c.block_n, m // c.block_m, c.split_k), config=c, interpret=interpret,
              out_init=out_init)
