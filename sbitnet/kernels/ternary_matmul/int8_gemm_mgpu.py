"""Pallas Mosaic GPU (Hopper) int8 GEMM with the dequantization fused into its epilogue.

  out = (xq @ t.T) * row_scale[:, None] * col_scale[None, :]

xq int8 `[M, K]` (per-token absmax activations), t int8 `[N, K]` (K-major, `unpack_int8`): exact
int32 accumulation by `wgmma.m64nNk32.s32.s8.s8`, then float32 scales on the accumulator in
registers and only the output dtype written. The kernel is persistent (one CTA per SM walking the
output tiles in a planar snake for L2 reuse) and warp-specialized: one warpgroup issues TMA loads
of K tiles into a ring of `stages` shared-memory slots (and can run ahead into the next output
tile while the compute warpgroups finish the last one), two compute warpgroups each own a
`tile_m × tile_n` accumulator (side by side along N), run the wgmmas, then copy their slices of
the scales in by TMA and store the scaled tile through shared memory by TMA. Both operands are
K-major in shared memory (int8 wgmma takes no transposes): the B operand is the `[tile_n, tile_k]`
tile of t read through a transposed view.

Interpret mode (CPU tests) cannot read a transposed shared-memory operand, so there the kernel
gets t transposed (`[K, N]`, `w_k_major=False`) and multiplies its tiles as they are; everything
else is the same code. The scales are copied after the main loop because issuing those copies
before it deadlocked interpret mode.

Used from 512 rows on Hopper (prefill, large-batch decode with kept int8 weights; see
`config.int8_gemm_wins`); the Triton-backend kernels cover the rest.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

# Compute warpgroups per CTA (side by side along N), plus one that issues the loads.
COMPUTE_WARPGROUPS = 2
EPILOGUE_TILE = 64
# Registers kept by the load-issuing warpgroup; the compute warpgroups get the rest.
MEMORY_REGISTERS = 40


@dataclasses.dataclass(frozen=True)
class MgpuGemmConfig:
  """Per-warpgroup tile `tile_m × tile_n` (a CTA covers `tile_m × 2·tile_n`), K step `tile_k`,
  `stages` shared-memory slots in flight, and the width (in CTA rows) of the planar snake that
  orders the output tiles."""
  tile_m: int = 128
  tile_n: int = 128
  tile_k: int = 128
  stages: int = 3
  snake_width: int = 8

  @property
  def cta_n(self) -> int:
    return COMPUTE_WARPGROUPS * self.tile_n


def _smem_transforms(minor_elems: int, itemsize: int) -> tuple:
  swizzle = plgpu.find_swizzle(minor_elems * itemsize * 8)
  return (plgpu.TilingTransform((8, swizzle // itemsize)), plgpu.SwizzleTransform(swizzle))


def _kernel(x_gmem, w_gmem, rs_gmem, cs_gmem, out_gmem, *, config: MgpuGemmConfig,
            w_k_major: bool):
  c = config
  (m, k), n = x_gmem.shape, out_gmem.shape[1]
  m_tiles, n_tiles, k_steps = m // c.tile_m, n // c.cta_n, k // c.tile_k
  out_dtype = out_gmem.dtype
  x_transforms = _smem_transforms(c.tile_k, 1)
  w_block, w_index = ((c.cta_n, c.tile_k), lambda s: (0, s)) if w_k_major else (
      (c.tile_k, c.cta_n), lambda s: (s, 0))
  w_transforms = _smem_transforms(w_block[1], 1)
  out_transforms = _smem_transforms(EPILOGUE_TILE, jnp.dtype(out_dtype).itemsize)

  def pipeline(body, compute_context):
    return plgpu.emit_pipeline_warp_specialized(
        body, grid=(k_steps,), memory_registers=MEMORY_REGISTERS,
        in_specs=[plgpu.BlockSpec((c.tile_m, c.tile_k), lambda s: (0, s),
                                  transforms=x_transforms, memory_space=plgpu.SMEM),
                  plgpu.BlockSpec(w_block, w_index, transforms=w_transforms,
                                  memory_space=plgpu.SMEM)],
        wg_axis="wg", num_compute_wgs=COMPUTE_WARPGROUPS, max_concurrent_steps=c.stages,
        compute_context=compute_context)

  unused = lambda *_, **__: None  # allocations do not depend on the bodies

  @functools.partial(
      pl.run_scoped,
      allocations=pipeline(unused, unused).get_allocations(x_gmem, w_gmem),
      out_smem=plgpu.SMEM((COMPUTE_WARPGROUPS, 2, EPILOGUE_TILE, EPILOGUE_TILE), out_dtype,
                          transforms=out_transforms),
      row_scale_smem=plgpu.SMEM((COMPUTE_WARPGROUPS, c.tile_m), jnp.float32),
      col_scale_smem=plgpu.SMEM((COMPUTE_WARPGROUPS, c.tile_n), jnp.float32),
      scale_barriers=plgpu.Barrier(num_barriers=2 * COMPUTE_WARPGROUPS),
      collective_axes="wg")
  def _scope(allocations, out_smem, row_scale_smem, col_scale_smem, scale_barriers):
    wg = jax.lax.axis_index("wg")

    @plgpu.nd_loop((m_tiles * n_tiles,), collective_axes="sm")
    def _tile_loop(loop_info):
      (tile,) = loop_info.index
      mi, ni = plgpu.planar_snake(tile, (m_tiles, n_tiles), 0, c.snake_width)
      rows = pl.ds(mi * c.tile_m, c.tile_m)
      cta_cols = pl.ds(ni * c.cta_n, c.cta_n)
      wg_cols = pl.ds(wg * c.tile_n, c.tile_n)

      def compute_context(run_pipeline):
        @functools.partial(pl.run_scoped, acc=plgpu.ACC((c.tile_m, c.tile_n), jnp.int32))
        def _acc_scope(acc):
          run_pipeline(acc)
          row_barrier, col_barrier = scale_barriers.at[2 * wg], scale_barriers.at[2 * wg + 1]
          plgpu.copy_gmem_to_smem(rs_gmem.at[rows], row_scale_smem.at[wg], row_barrier)
          plgpu.copy_gmem_to_smem(cs_gmem.at[cta_cols].at[wg_cols], col_scale_smem.at[wg],
                                  col_barrier)
          plgpu.barrier_wait(row_barrier)
          plgpu.barrier_wait(col_barrier)
          shape = (c.tile_m, c.tile_n)  # explicit broadcasts: layout inference needs them
          y = (acc[...].astype(jnp.float32)
               * jax.lax.broadcast_in_dim(row_scale_smem[wg], shape, (0,))
               * jax.lax.broadcast_in_dim(col_scale_smem[wg], shape, (1,))).astype(out_dtype)
          out_tile = out_gmem.at[rows, cta_cols].at[:, wg_cols]
          for i in range(c.tile_m // EPILOGUE_TILE):
            for j in range(c.tile_n // EPILOGUE_TILE):
              slot = (i * (c.tile_n // EPILOGUE_TILE) + j) % 2
              er, ec = (slice(i * EPILOGUE_TILE, (i + 1) * EPILOGUE_TILE),
                        slice(j * EPILOGUE_TILE, (j + 1) * EPILOGUE_TILE))
              plgpu.wait_smem_to_gmem(1, wait_read_only=True)
              out_smem[wg, slot] = y[er, ec]
              plgpu.commit_smem()  # also a warpgroup barrier: the scales have been read
              plgpu.copy_smem_to_gmem(out_smem.at[wg, slot], out_tile.at[er, ec])

      def mma(_, x_smem, w_smem, acc):
        if w_k_major:  # the [tile_n, tile_k] tile seen as the [tile_k, tile_n] operand
          w_operand = plgpu.transpose_ref(w_smem.at[wg_cols], (1, 0))
        else:
          w_operand = w_smem.at[:, wg_cols]
        plgpu.wgmma(acc, x_smem, w_operand)
        plgpu.wgmma_wait(0)
        return acc

      w_cta = w_gmem.at[cta_cols, :] if w_k_major else w_gmem.at[:, cta_cols]
      pipeline(mma, compute_context)(x_gmem.at[rows, :], w_cta, allocations=allocations)

  plgpu.wait_smem_to_gmem(0, wait_read_only=True)


def check_tiles(m: int, n: int, k: int, config: MgpuGemmConfig) -> None:
  c = config
  if (m % c.tile_m or n % c.cta_n or k % c.tile_k or c.tile_m % 64
      or c.tile_n % EPILOGUE_TILE or c.tile_k % 32 or c.stages < 2):
    raise ValueError(f"{c} does not tile M={m}, N={n}, K={k}: M must be a multiple of tile_m "
                     f"(itself of 64), N of {COMPUTE_WARPGROUPS}·tile_n (tile_n of "
                     f"{EPILOGUE_TILE}), K of tile_k (itself of 32), and stages >= 2.")


@functools.partial(jax.jit, static_argnames=("config", "out_dtype", "num_sms", "interpret"))
def matmul(xq: jax.Array, t: jax.Array, row_scale: jax.Array, col_scale: jax.Array, *,
           config: MgpuGemmConfig, out_dtype, num_sms: int, interpret: bool = False
           ) -> jax.Array:
  """`(xq @ t.T) * row_scale[:, None] * col_scale[None, :]` as `out_dtype` `[M, N]`.

  xq: int8 `[M, K]`; t: int8 `[N, K]`; row_scale float32 `[M]`; col_scale float32 `[N]`. M, N
  and K must be multiples of tile_m, 2·tile_n and tile_k (the caller pads). `num_sms`: the
  persistent grid (CTAs); `interpret` runs Mosaic GPU interpret mode (CPU).
  """
  (m, k), n = xq.shape, t.shape[0]
  if xq.dtype != jnp.int8 or t.dtype != jnp.int8 or t.shape[1] != k:
    raise ValueError(f"int8 GEMM wants int8 x [M, K] and t [N, K], got {xq.dtype} "
                     f"{tuple(xq.shape)} and {t.dtype} {tuple(t.shape)}.")
  check_tiles(m, n, k, config)
  if interpret:  # no public export of the GPU interpret parameters (jax 0.10-0.11)
    from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams
    interpret_params = InterpretGPUParams()
  else:
    interpret_params = None
  kernel = plgpu.kernel(
      functools.partial(_kernel, config=config, w_k_major=not interpret),
      out_type=jax.ShapeDtypeStruct((m, n), out_dtype),
      grid=(num_sms,), grid_names=("sm",), num_threads=COMPUTE_WARPGROUPS + 1,
      thread_name="wg", interpret=interpret_params,
      compiler_params=plgpu.CompilerParams(
          lowering_semantics=plgpu.LoweringSemantics.Warpgroup))
  return kernel(xq, t.T if interpret else t, row_scale.astype(jnp.float32),
                col_scale.astype(jnp.float32))
