"""Pallas (Triton backend) kernel: packed 2-bit ternary weights × bf16 or int8 activations.

One kernel serves decode (block_m = 16, split-K over the contraction so that narrow layers still
fill the GPU) and large M (block_m = 64..128, no split). Each program streams its `[Kp/4, block_n]`
column of packed bytes once, `PLANE_ROWS` byte rows per step; each step unpacks four planes in
registers as codes `t + 1 = (bytes >> 2q) & 3` and feeds four `[block_m, 32] × [32, block_n]`
tensor-core dots (bf16 → f32, or int8 → int32); the epilogue subtracts `sum_k x` (which turns
`x @ (t + 1)` into `x @ t`) and applies the scales.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from sbitnet.kernels.ternary_matmul.pack import PLANE_ROWS, TILE_K


@dataclasses.dataclass(frozen=True)
class Config:
  """Tile sizes and launch parameters (split-K programs get `ceil(K tiles / split_k)` tiles)."""
  block_m: int = 16
  block_n: int = 128
  split_k: int = 1
  num_warps: int = 4
  num_stages: int = 3


def _kernel(x_ref, w_ref, rs_ref, cs_ref, o_ref, *, tiles: int, acc_dtype):
  split = pl.program_id(2)
  last_tile = w_ref.shape[0] // PLANE_ROWS - 1

  def step(i, carry):
    acc, x_sum = carry
    tile = split * tiles + i
    # Tiles past the end (uneven split-K) re-read the last tile against zero-padded x.
    packed = w_ref[pl.ds(jnp.minimum(tile, last_tile) * PLANE_ROWS, PLANE_ROWS), :]
    for q in range(4):
      code = ((packed >> (2 * q)) & 3).astype(x_ref.dtype)  # t + 1, in {0, 1, 2}
      x = x_ref[:, pl.ds(tile * TILE_K + q * PLANE_ROWS, PLANE_ROWS)]
      acc += jnp.dot(x, code, preferred_element_type=acc_dtype)
      x_sum += jnp.sum(x.astype(acc_dtype), axis=1)
    return acc, x_sum

  acc = jnp.zeros((x_ref.shape[0], w_ref.shape[1]), acc_dtype)
  x_sum = jnp.zeros((x_ref.shape[0],), acc_dtype)
  acc, x_sum = jax.lax.fori_loop(0, tiles, step, (acc, x_sum))
  acc = acc - x_sum[:, None]  # x @ (t + 1) - sum(x) = x @ t
  y = acc.astype(jnp.float32) * rs_ref[...][:, None] * cs_ref[...][None, :]
  o_ref[...] = y.astype(o_ref.dtype)


@functools.partial(jax.jit, static_argnames=("config", "out_dtype", "interpret"))
def matmul(x: jax.Array, codes: jax.Array, row_scale: jax.Array, col_scale: jax.Array, *,
           config: Config, out_dtype, interpret: bool = False,
           out_init: jax.Array | None = None) -> jax.Array:
  """Partial products `out[s] = (x @ t[K-split s]) * row_scale[:, None] * col_scale[None, :]`.

  x: bf16/f16 or int8 `[M, Kx]`, M a multiple of `block_m`, zero-padded along K to
  `Kx = split_k * ceil(Kp / TILE_K / split_k) * TILE_K`; codes: uint8 `[Kp / 4, N]`, N a
  multiple of `block_n`; row_scale: float32 `[M]`; col_scale: float32 `[N]`.
  Returns `[split_k, M, N]` of `out_dtype` (sum over axis 0 for the product). `out_init`, if given,
  is the output buffer (aliased), so tiles the kernel fails to write keep its contents.
  """
  m, kx = x.shape
  kp, n = codes.shape[0] * 4, codes.shape[1]
  c = config
  tiles = kx // TILE_K // c.split_k
  acc_dtype = jnp.int32 if x.dtype == jnp.int8 else jnp.float32
  kernel = functools.partial(_kernel, tiles=tiles, acc_dtype=acc_dtype)
  out_shape = jax.ShapeDtypeStruct((c.split_k, m, n), out_dtype)
  args = (x, codes, row_scale, col_scale)
  in_specs = [
      pl.BlockSpec((c.block_m, kx), lambda j, i, s: (i, 0)),
      pl.BlockSpec((kp // 4, c.block_n), lambda j, i, s: (0, j)),
      pl.BlockSpec((c.block_m,), lambda j, i, s: (i,)),
      pl.BlockSpec((c.block_n,), lambda j, i, s: (j,)),
  ]
  aliases = {}
  if out_init is not None:
    args += (out_init,)
    in_specs.append(pl.BlockSpec(memory_space=pl.ANY))
    aliases = {4: 0}
    kernel = _ignore_last_input(kernel)
  return pl.pallas_call(
      kernel,
      out_shape=out_shape,
      grid=(n // c.block_n, m // c.block_m, c.split_k),
      in_specs=in_specs,
      out_specs=pl.BlockSpec((None, c.block_m, c.block_n), lambda j, i, s: (s, i, j)),
      input_output_aliases=aliases,
      compiler_params=pltriton.CompilerParams(num_warps=c.num_warps, num_stages=c.num_stages),
      interpret=interpret,
  )(*args)


def _ignore_last_input(kernel):
  def wrapped(x_ref, w_ref, rs_ref, cs_ref, _init_ref, o_ref):
    kernel(x_ref, w_ref, rs_ref, cs_ref, o_ref)
  return wrapped
