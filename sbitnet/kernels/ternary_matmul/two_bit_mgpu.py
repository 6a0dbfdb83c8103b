"""Pallas Mosaic GPU (Hopper) 2-bit kernel: int8 activations × packed ternary codes by wgmma.

  y[m, n] = (sum_k xq[m, k] · t[n, k]) · x_scale[m] · col_scale[n]

xq int8 `[M, K]` (per-token absmax activations), codes uint8 `[N, Kp / 4]` (format v2, seen as
int8). Swap-AB: the weights are wgmma's M operand, so 16-64 activation rows per CTA fill its N
dimension instead of a 64-row tile of zeros. A pipeline step covers STEP_K = 512 K rows: 128 code
bytes per row. Each compute warpgroup loads its `[tile_n, 128]` block of them from shared memory
into registers in wgmma's 8-bit A-operand layout and takes plane q (the 2-bit field at bits
2q..2q+1 of every byte, format v2) by bitwise ops in place (`_plane`: Mosaic GPU has no 8-bit
shifts), so each plane is a register A operand of `wgmma.m64nMk32.s32.s8.s8` with no shared-memory
round trip. Plane q of byte `32t + j` holds K row `128t + 32q + j`, so x comes reordered per step
(plane order, `quantize_rows`, which also quantizes it) to make plane q's rows one contiguous
`[rows, 128]` block, the B operand (K-major, through a transposed view of x's tile). Planes keep
their place value (`4^q · c` with c = t + 1 for q < 3, `-64 · t` for q = 3), so each has its own
int32 accumulator and the epilogue combines them exactly; planes 0-2 multiply c rather than t, so
the sum exceeds x·t by `offset` (x summed over those planes' K rows), which the epilogue subtracts
before applying both scales and storing the `[M, N]` tile in the output dtype. With a K split the
kernel writes int32 sums `[split_k, Mp, N]` and XLA finishes. Bit-identical to
`reference.matmul_int8`. One warpgroup issues the TMA loads of code and x tiles into a ring of
`stages` shared-memory slots.

Interpret mode (CPU tests) reads neither a register A operand nor a transposed shared-memory
operand: there the planes go through shared memory and the kernel gets x transposed (`[Ks, Mp]`);
everything else is the same code.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from sbitnet.kernels.ternary_matmul.pack import TILE_K
from sbitnet.kernels.ternary_matmul.quantize_rows import STEP_BYTES, STEP_K, quantize_rows
from sbitnet.ops.prologue import Prologue

MEMORY_REGISTERS = 40
# Rows of x per CTA at most: four int32 accumulators of [tile_n, rows] per warpgroup (one per
# plane) take 2·rows registers per thread.
MAX_TILE_M = 64
# Rows of x per CTA at least (fewer rows are padded). With 8 rows the GPU run failed with a
# misaligned address (H200, jax 0.11.2; not investigated further).
MIN_TILE_M = 16
VECTOR_SLOT = 32  # 4-byte elements: 128 bytes


@dataclasses.dataclass(frozen=True)
class TwoBitMgpuConfig:
  """`tile_n` code rows per compute warpgroup (a multiple of 64: wgmma's M), `warpgroups` compute
  warpgroups per CTA (side by side along N: a CTA covers warpgroups·tile_n rows), `tile_m` rows of
  x per CTA at most (a multiple of MIN_TILE_M, <= MAX_TILE_M; fewer rows are padded to a multiple
  of MIN_TILE_M only), `stages` shared-memory slots in flight (each one step of STEP_K rows),
  `split_k` K ranges run by separate CTAs, and `prefetch_scales`: each compute warpgroup issues
  the TMA loads of its epilogue's vectors (offset, x_scale, col_scale; without a K split only)
  before its first step rather than after its last, taking one memory latency off the end of
  every CTA (not yet timed on a GPU, so the dispatcher leaves it off)."""
  tile_n: int = 64
  warpgroups: int = 2
  tile_m: int = 64
  stages: int = 4
  split_k: int = 1
  prefetch_scales: bool = False

  @property
  def cta_n(self) -> int:
    return self.warpgroups * self.tile_n

  def rows(self, m: int) -> tuple[int, int]:
    """(x rows per CTA, x rows padded) for m rows."""
    tm = min(self.tile_m, -(-m // MIN_TILE_M) * MIN_TILE_M)
    return tm, -(-m // tm) * tm


def _swizzled(minor_bytes: int) -> tuple:
  """Tiling + the widest swizzle dividing `minor_bytes` (TMA wants the array's minor size a
  multiple of the tile: code rows of K = 11008 are 2752 bytes, 64-byte tiles)."""
  swizzle = next(s for s in (128, 64, 32) if minor_bytes % s == 0)
  return (plgpu.TilingTransform((8, swizzle)), plgpu.SwizzleTransform(swizzle))


def _plane(codes: jax.Array, q: int) -> jax.Array:
  """Plane q of int8 code bytes by bitwise ops alone (Mosaic GPU has no 8-bit shifts): the
  2-bit field at bits 2q..2q+1 kept in place, i.e. `4**q · c` (c = t + 1) for q < 3; for q = 3
  the field with its low bit flipped, which as a signed byte is `-64 · t` (c = 0, 1, 2 ->
  64, 0, -64), since `64 · c` would overflow int8 at c = 2."""
  if q < 3:
    return codes & (3 << 2 * q)
  return (codes ^ 0x40) & -64  # 0xC0 as int8


def _kernel(codes_gmem, x_gmem, offset_gmem, x_scale_gmem, col_scale_gmem, out_gmem, *,
            config: TwoBitMgpuConfig, tile_m: int, interpret: bool):
  c = config
  fused = c.split_k == 1
  steps = -(-codes_gmem.shape[1] // STEP_BYTES) // c.split_k
  n_idx, m_idx, split_idx = (jax.lax.axis_index(a) for a in ("n", "m", "split"))
  first = split_idx * steps
  cta_rows = pl.ds(n_idx * c.cta_n, c.cta_n)
  x_rows = pl.ds(m_idx * tile_m, tile_m)
  if not interpret:
    x_spec = plgpu.BlockSpec((tile_m, STEP_K), lambda s: (0, first + s),
                             transforms=_swizzled(STEP_K), memory_space=plgpu.SMEM)
    x_cta = x_gmem.at[x_rows]
  else:
    x_spec = plgpu.BlockSpec((STEP_K, tile_m), lambda s: (first + s, 0),
                             memory_space=plgpu.SMEM)
    x_cta = x_gmem.at[:, x_rows]
  codes_spec = plgpu.BlockSpec((c.cta_n, STEP_BYTES), lambda s: (0, first + s),
                               transforms=_swizzled(codes_gmem.shape[1]),
                               memory_space=plgpu.SMEM)

  def pipeline(body, compute_context):
    return plgpu.emit_pipeline_warp_specialized(
        body, grid=(steps,), memory_registers=MEMORY_REGISTERS, in_specs=[codes_spec, x_spec],
        wg_axis="wg", num_compute_wgs=c.warpgroups, max_concurrent_steps=c.stages,
        compute_context=compute_context)

  unused = lambda *_, **__: None  # allocations do not depend on the bodies
  codes_cta = codes_gmem.at[cta_rows]

  @functools.partial(
      pl.run_scoped,
      allocations=pipeline(unused, unused).get_allocations(codes_cta, x_cta),
      out_smem=plgpu.SMEM((c.warpgroups, tile_m, c.tile_n), out_gmem.dtype),
      # The epilogue's vectors (without a K split only), one 128-byte aligned slot per
      # warpgroup: TMA's shared-memory destination alignment.
      offset_smem=(plgpu.SMEM((c.warpgroups, max(tile_m, VECTOR_SLOT)), jnp.int32) if fused
                   else None),
      x_scale_smem=(plgpu.SMEM((c.warpgroups, max(tile_m, VECTOR_SLOT)), jnp.float32) if fused
                    else None),
      col_scale_smem=plgpu.SMEM((c.warpgroups, c.tile_n), jnp.float32) if fused else None,
      vector_barriers=plgpu.Barrier(num_barriers=3 * c.warpgroups) if fused else None,
      # Interpret mode's wgmma takes A from shared memory only: there the planes go through this.
      plane_smem=(plgpu.SMEM((c.warpgroups, c.tile_n, STEP_BYTES), jnp.int8) if interpret
                  else None),
      collective_axes="wg")
  def _scope(allocations, out_smem, offset_smem, x_scale_smem, col_scale_smem, vector_barriers,
             plane_smem):
    wg = jax.lax.axis_index("wg")
    wg_rows = pl.ds(wg * c.tile_n, c.tile_n)

    def compute_context(run_pipeline):
      @functools.partial(pl.run_scoped,
                         accs=[plgpu.ACC((c.tile_n, tile_m), jnp.int32) for _ in range(4)])
      def _acc_scope(accs):
        slot = pl.ds(0, tile_m)

        def load_vectors():
          vectors = ((offset_gmem.at[x_rows], offset_smem.at[wg, slot]),
                     (x_scale_gmem.at[x_rows], x_scale_smem.at[wg, slot]),
                     (col_scale_gmem.at[cta_rows].at[wg_rows], col_scale_smem.at[wg]))
          for i, (src, dst) in enumerate(vectors):
            plgpu.copy_gmem_to_smem(src, dst, vector_barriers.at[3 * wg + i])

        if fused and c.prefetch_scales:
          load_vectors()
        run_pipeline(accs)
        # Undo the planes' place values (exact: plane q's sums are multiples of 4**q).
        a0, a1, a2, a3 = (acc[...] for acc in accs)
        y = a0 + (a1 >> 2) + (a2 >> 4) - (a3 >> 6)
        if fused:  # t @ xq.T, then the scales (as reference.matmul_int8), in the output dtype
          if not c.prefetch_scales:
            load_vectors()
          for i in range(3):
            plgpu.barrier_wait(vector_barriers.at[3 * wg + i])
          shape = (c.tile_n, tile_m)  # explicit broadcasts: layout inference needs them
          per_row = lambda v: jax.lax.broadcast_in_dim(v, shape, (1,))
          y = y - per_row(offset_smem[wg, slot])
          y = (y.astype(jnp.float32) * per_row(x_scale_smem[wg, slot])
               * jax.lax.broadcast_in_dim(col_scale_smem[wg], shape, (0,)))
        # The [n, m] accumulator stored as the [m, n] output tile: WGMMA_TRANSPOSED is the
        # register layout whose store to a transposed view is supported (one shuffle away).
        y = y.astype(out_smem.dtype)
        if interpret:  # no layout_cast there
          out_smem[wg] = y.T
        else:
          y = plgpu.layout_cast(y, plgpu.Layout.WGMMA_TRANSPOSED)
          plgpu.transpose_ref(out_smem.at[wg], (1, 0))[...] = y
        plgpu.commit_smem()  # also a warpgroup barrier: the vectors have been read
        plgpu.copy_smem_to_gmem(out_smem.at[wg],
                                out_gmem.at[split_idx, x_rows, cta_rows].at[:, wg_rows])

    def mma(_, codes_smem, x_smem, accs):
      codes = codes_smem[wg_rows]
      for q, acc in enumerate(accs):
        plane = _plane(codes, q)
        if plane_smem is not None:
          plane_smem[wg] = plane
          plane = plane_smem.at[wg]
        k_rows = pl.ds(q * STEP_BYTES, STEP_BYTES)
        if not interpret:
          x_operand = plgpu.transpose_ref(x_smem.at[:, k_rows], (1, 0))
        else:
          x_operand = x_smem.at[k_rows, :]
        plgpu.wgmma(acc, plane, x_operand)
      plgpu.wgmma_wait(0)
      return accs

    pipeline(mma, compute_context)(codes_cta, x_cta, allocations=allocations)

  plgpu.wait_smem_to_gmem(0, wait_read_only=True)


def check_tiles(m: int, n: int, kp: int, config: TwoBitMgpuConfig) -> None:
  c = config
  steps = -(-kp // STEP_K)
  if (n % c.cta_n or c.tile_n % 64 or c.warpgroups not in (1, 2) or c.tile_m % MIN_TILE_M
      or not MIN_TILE_M <= c.tile_m <= MAX_TILE_M or kp % TILE_K or c.split_k < 1
      or steps % c.split_k or c.stages < 2):
    raise ValueError(
        f"{c} does not tile M={m}, N={n}, Kp={kp}: N must be a multiple of "
        f"warpgroups·tile_n (warpgroups 1 or 2, tile_n of 64), tile_m a multiple of "
        f"{MIN_TILE_M} in [{MIN_TILE_M}, {MAX_TILE_M}], Kp of {TILE_K}, split_k must divide "
        f"its {steps} steps of {STEP_K}, and stages >= 2.")


@functools.partial(jax.jit, static_argnames=("config", "out_dtype", "interpret"))
def matmul_codes(x_planes: jax.Array, codes: jax.Array, offset: jax.Array, x_scale: jax.Array,
                 col_scale: jax.Array, *, config: TwoBitMgpuConfig, out_dtype,
                 interpret: bool = False) -> jax.Array:
  """The kernel. Without a K split: `((t @ xq.T) * x_scale * col_scale)` (exact int32 sums,
  then float32 products as `reference.matmul_int8`) as out_dtype `[1, Mp, N]`; with split_k
  splits the int32 sums `[split_k, Mp, N]` that add up to `t @ xq.T + offset` (the caller
  finishes).

  x_planes, x_scale, offset: `quantize_rows(x, rows=Mp, layout="step_planes")` (Mp from
  `config.rows`): int8 `[Mp, Ks]` (Ks: Kp padded to STEP_K), float32 `[Mp]`, int32 `[Mp]`;
  codes: uint8 `[N, Kp / 4]` (format v2; on the GPU the last step's bytes past Kp are TMA's zero
  fill); col_scale float32 `[N]`. N and Kp must tile by the config (`check_tiles`). `interpret` runs
  Mosaic GPU interpret mode (CPU).
  """
  (mp, ks), (n, nbytes) = x_planes.shape, codes.shape
  kp = nbytes * 4
  tile_m, rows = config.rows(mp)
  if (x_planes.dtype != jnp.int8 or codes.dtype != jnp.uint8 or rows != mp
      or ks != -(-kp // STEP_K) * STEP_K):
    raise ValueError(f"the Mosaic 2-bit kernel wants int8 x [Mp, Kp rounded up to {STEP_K}] "
                     f"(quantize_rows, Mp from config.rows) and uint8 codes [N, Kp / 4], got "
                     f"{x_planes.dtype} {tuple(x_planes.shape)} and {codes.dtype} "
                     f"{tuple(codes.shape)}.")
  check_tiles(mp, n, kp, config)
  codes = jax.lax.bitcast_convert_type(codes, jnp.int8)
  if interpret:  # no public export of the GPU interpret parameters (jax 0.10-0.11)
    from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams
    interpret_params = InterpretGPUParams()
    # Interpret mode clamps a block past the end instead of filling it with zeros as TMA does.
    codes = jnp.pad(codes, ((0, 0), (0, ks // 4 - nbytes)))
  else:
    interpret_params = None
  kernel = plgpu.kernel(
      functools.partial(_kernel, config=config, tile_m=tile_m, interpret=interpret),
      out_type=jax.ShapeDtypeStruct((config.split_k, mp, n),
                                    out_dtype if config.split_k == 1 else jnp.int32),
      grid=(n // config.cta_n, mp // tile_m, config.split_k), grid_names=("n", "m", "split"),
      num_threads=config.warpgroups + 1, thread_name="wg", interpret=interpret_params,
      compiler_params=plgpu.CompilerParams(
          lowering_semantics=plgpu.LoweringSemantics.Warpgroup))
  return kernel(codes, x_planes.T if interpret else x_planes, offset,
                x_scale.astype(jnp.float32), col_scale.astype(jnp.float32))


def matmul(x: jax.Array, codes: jax.Array, col_scale: jax.Array,
           prologue: Prologue | None = None, *, config: TwoBitMgpuConfig, out_dtype,
           interpret: bool = False) -> jax.Array:
  """`(xq @ t.T) * x_scale * col_scale` as out_dtype `[M, N]` for `xq, x_scale = absmax_int8(x)`
  (or of `prologue(x)`, computed by `quantize_rows`), bit-identical to `reference.matmul_int8`
  cast to out_dtype (exact int32 sums, the same float32 products).

  x: float `[M, K]` (with a prologue, its input); codes: uint8 `[N, Kp / 4]`; col_scale: float32
  `[N]`. N must be a multiple of the config's CTA rows.
  """
  m = x.shape[0]
  x_planes, x_scale, off = quantize_rows(x, prologue, rows=config.rows(m)[1],
                                        layout="step_planes", interpret=interpret)
  parts = matmul_codes(x_planes, codes, off, x_scale, col_scale, config=config,
                       out_dtype=out_dtype, interpret=interpret)
  if config.split_k == 1:
    return parts[0, :m]
  acc = parts.sum(0)[:m] - off[:m, None]
  return (acc.astype(jnp.float32) * x_scale[:m, None] * col_scale).astype(out_dtype)
