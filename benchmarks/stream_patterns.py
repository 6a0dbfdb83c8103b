"""How fast Pallas (Triton) streams the packed codes of one layer, by access pattern, beside the
dp4a GEMV (kernel alone, one row of x quantized ahead) at the same tiles and XLA reading the same
bytes: the ceiling the GEMV's tiles could reach. (The whole op, with the activation quantization,
is `benchmarks/kernels.py --part decode` / `--part gemv`.)

  python benchmarks/stream_patterns.py [--shape 8k.up] [--out results.json]

Load-only kernels read the codes as int32 `[N, Kp / 16]` words: each program takes `rows` code
rows and walks them in steps of `words` words (XOR-accumulated, one int32 per row stored), with
the grid either one program per row block or `persistent` programs looping over row blocks.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import sys

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kernels import SWEEP_SHAPES, _ternary, copies, measure_read_bandwidth, timed  # noqa: E402
from sbitnet.kernels import pack  # noqa: E402
from sbitnet.kernels.ternary_matmul import gemv_dp4a  # noqa: E402
from sbitnet.kernels.ternary_matmul.api import off_gpu  # noqa: E402
from sbitnet.kernels.ternary_matmul.quantize_rows import quantize_rows  # noqa: E402


def _stream_kernel(w_ref, o_ref, *, rows, words, blocks_per_program, programs):
  n, w = w_ref.shape
  first = pl.program_id(0)

  def block(i, _):
    b = first + i * programs

    @pl.when(b * rows < n)
    def _():
      def step(s, acc):
        return acc ^ pltriton.load(w_ref.at[pl.ds(b * rows, rows), pl.ds(s * words, words)])
      acc = jax.lax.fori_loop(0, w // words, step, jnp.zeros((rows, words), jnp.int32))
      pltriton.store(o_ref.at[pl.ds(b * rows, rows)], jnp.sum(acc, axis=1))
    return 0

  jax.lax.fori_loop(0, blocks_per_program, block, 0)


def stream(codes_words, rows, words, warps, persistent=None):
  """Load-only pass over int32 `[N, W]` words; returns int32 `[N]`."""
  n, _ = codes_words.shape
  blocks = n // rows
  programs = persistent or blocks
  any_space = pl.BlockSpec(memory_space=pl.ANY)
  return pl.pallas_call(
      functools.partial(_stream_kernel, rows=rows, words=words,
                        blocks_per_program=-(-blocks // programs), programs=programs),
      out_shape=jax.ShapeDtypeStruct((n,), jnp.int32), grid=(programs,),
      in_specs=[any_space], out_specs=any_space,
      compiler_params=pltriton.CompilerParams(num_warps=warps, num_stages=1),
      interpret=off_gpu(),
  )(codes_words)


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--shape", default="8k.up")
  parser.add_argument("--out", default=None)
  args = parser.parse_args()
  k, n = SWEEP_SHAPES[args.shape]
  t, gamma = _ternary(jax.random.key(3), k, n)
  packed = [pack(t, gamma + i) for i in range(copies(k * n // 4))]
  words = [jax.lax.bitcast_convert_type(p.codes.reshape(n, -1, 4), jnp.int32) for p in packed]
  nbytes = words[0].nbytes
  read = measure_read_bandwidth()
  x = jax.random.normal(jax.random.key(1), (1, k), jnp.bfloat16)
  xq, scale, total = quantize_rows(x, rows=1, layout="planes")
  results = []

  def record(label, sec):
    tb = nbytes / sec / 1e12
    results.append(dict(shape=args.shape, pattern=label, us=sec * 1e6, tb_s=tb,
                        read_frac=tb / read))
    print(f"{label:44s} {sec * 1e6:7.2f} us  {tb:.2f} TB/s  {tb / read:.2f} of read", flush=True)

  print(f"{args.shape}: {nbytes / 1e6:.1f} MB of codes, read bandwidth {read:.2f} TB/s")
  record("xla sum", timed(lambda w: jnp.bitwise_xor.reduce(w, axis=1), [(w,) for w in words],
                          nbytes / 3e12))
  w_total = words[0].shape[1]
  for rows, step_words, warps, persistent in [
      (32, 64, 4, None), (32, 128, 8, None), (64, 64, 8, None), (16, 128, 4, None),
      (8, 256, 4, None), (8, 512, 8, None), (4, 512, 4, None), (16, 512, 8, None),
      (16, 512, 16, None), (32, 512, 16, None), (2, 512, 4, None), (1, 512, 4, None),
      (4, 512, 4, 132 * 8), (8, 512, 8, 132 * 4), (32, 64, 4, 132 * 8), (16, 512, 16, 132 * 2)]:
    step_words = min(step_words, w_total)
    label = f"rows {rows} words {step_words} warps {warps}" + (
        f" persistent {persistent}" if persistent else "")
    record("stream " + label, timed(lambda w, r=rows, s=step_words, wp=warps, p=persistent:
                                     stream(w, r, s, wp, p), [(w,) for w in words], nbytes / 3e12))
    if persistent is None:
      config = gemv_dp4a.GemvConfig(block_n=rows, block_w=step_words, num_warps=warps)
      record("gemv   " + label, timed(
          lambda p, c=config: gemv_dp4a.matmul(xq, scale, total, p.codes, p.scale, config=c,
                                               out_dtype=jnp.bfloat16),
          [(p,) for p in packed], nbytes / 3e12))
  if args.out:
    with open(args.out, "w") as f:
      json.dump(dict(device=jax.devices()[0].device_kind, date=datetime.date.today().isoformat(),
                     jax=jax.__version__, rows=results), f, indent=1)


if __name__ == "__main__":
  main()
