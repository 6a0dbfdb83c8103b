"""Decode attention on one GPU: the Pallas kernel (RoPE, cache write and attention in one launch)
against the oracle's ops with cuDNN's and XLA's attention, at Qwen-3B heads (16 queries, 2 kv heads,
head_dim 128).

  python benchmarks/decode_attention.py [--batches 1,16,128] [--lengths 512,4096,32768]
      [--max_elements 2e9] [--sweep] [--sweep_block_s 64,128] [--sweep_splits 1,2,4,8,16,32,64]
      [--sweep_warps 4] [--sweep_stages 2] [--profile] [--out DIR]

Each (batch, length) case: a cache of length + 16 slots holding `length` tokens per row (random,
never zero), one new token per row; "read" is the bandwidth baseline, XLA summing the whole cache
(keys and values), and every row reports the cache's bytes per second of its time. Checks first:
the kernel (the dispatcher's config, and every swept one) against implementation="xla": outputs
within bf16 rounding, the cache bit for bit.
Times: the op runs `reps` times inside one jitted fori_loop that carries the cache (updated in
place, as a decode step does; an optimization barrier per call keeps XLA from hoisting the
queries' RoPE), each output summed into the carry; median of 5 loops / reps. --profile also traces
20 calls of each implementation alone (the cache donated) and reports GPU busy time and kernels
per call. Appends every row to --out/decode_attention.jsonl (default $OUT) as it is measured.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import jaxlib

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from profiling import device_time_summary  # noqa: E402  (benchmarks/profiling.py, beside this)
from sbitnet.kernels import decode_attention  # noqa: E402
from sbitnet.kernels.decode_attention.api import choose_config  # noqa: E402
from sbitnet.kernels.decode_attention.pallas_triton import Config  # noqa: E402
from sbitnet.ops import rope_tables  # noqa: E402

HEADS, KV_HEADS, HEAD_DIM = 16, 2, 128


def inputs(batch: int, length: int):
  keys = jax.random.split(jax.random.key(batch + length), 3)

  def normal(key, shape):
    x = jax.random.normal(key, shape, jnp.float32)
    return jnp.where(jnp.abs(x) < 0.1, 0.1, x).astype(jnp.bfloat16)

  shape = (batch, length + 16, KV_HEADS, HEAD_DIM)
  lengths = jnp.full((batch,), length, jnp.int32)
  cos, sin = rope_tables(lengths, HEAD_DIM, 1e6)
  return (normal(keys[0], (batch, (HEADS + 2 * KV_HEADS) * HEAD_DIM)), normal(keys[1], shape),
          normal(keys[2], shape), lengths, cos, sin)


def read_cache(qkv, keys, values, lengths, cos, sin):
  """The bandwidth baseline: XLA reading the whole cache once (a sum of keys and values)."""
  del lengths, cos, sin
  total = jnp.sum(keys, dtype=jnp.float32) + jnp.sum(values, dtype=jnp.float32)
  return jnp.broadcast_to(total, qkv.shape), keys, values


def op(implementation: str, config: Config | None):
  if implementation == "read":
    return read_cache
  return functools.partial(decode_attention, n_heads=HEADS, implementation=implementation,
                           config=config)


def check(fn, args) -> dict:
  want = op("xla", None)(*args)
  got = jax.jit(fn)(*args)
  err = float(jnp.max(jnp.abs(got[0].astype(jnp.float32) - want[0].astype(jnp.float32))))
  cache_equal = all(bool(jnp.array_equal(a, b)) for a, b in zip(got[1:], want[1:]))
  return {"max_abs_err": err, "cache_equal": cache_equal,
          "ok": err < 2e-2 * float(jnp.max(jnp.abs(want[0].astype(jnp.float32)))) + 1e-2
          and cache_equal}


def timed(fn, args, est_s: float = 2e-5) -> float:
  """Seconds per call of fn inside one jitted loop carrying the cache (see the module doc)."""
  qkv, keys, values, lengths, cos, sin = args
  reps = max(10, min(2000, int(0.05 / est_s)))

  @functools.partial(jax.jit, donate_argnums=(1, 2))
  def loop(qkv, keys, values):
    def body(_, carry):
      keys, values, acc = carry
      q, keys, values, acc = jax.lax.optimization_barrier((qkv, keys, values, acc))
      out, keys, values = fn(q, keys, values, lengths, cos, sin)
      return keys, values, acc + jnp.sum(out, dtype=jnp.float32)
    return jax.lax.fori_loop(0, reps, body, (keys, values, jnp.float32(0)))

  keys, values, _ = jax.block_until_ready(loop(qkv, jnp.copy(keys), jnp.copy(values)))
  runs = []
  for _ in range(5):
    t0 = time.perf_counter()
    keys, values, _ = jax.block_until_ready(loop(qkv, keys, values))
    runs.append(time.perf_counter() - t0)
  return statistics.median(runs) / reps


def profile(fn, args) -> dict:
  """GPU time of 20 calls, the cache donated and passed on as in a decode step."""
  qkv, keys, values, lengths, cos, sin = args
  f = jax.jit(lambda k, v: fn(qkv, k, v, lengths, cos, sin), donate_argnums=(0, 1))
  cache = jax.block_until_ready(f(jnp.copy(keys), jnp.copy(values))[1:])

  def run():
    nonlocal cache
    out, *cache = f(*cache)
    return out

  trace = device_time_summary(run, calls=20, top=8)
  return {k: trace[k] for k in ("gpu0_busy_ms_per_call", "kernels_per_call",
                                "top_kernels_ms_per_call")}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batches", default="1,16,128")
  parser.add_argument("--lengths", default="512,4096,32768")
  parser.add_argument("--max_elements", type=float, default=2e9,
                      help="skip cases whose cache holds more bf16 elements than this")
  parser.add_argument("--sweep", action="store_true",
                      help="also time every config of the --sweep_* lists")
  for name, default in (("block_s", "64,128"), ("splits", "1,2,4,8,16,32,64"), ("warps", "4"),
                        ("stages", "2")):
    parser.add_argument(f"--sweep_{name}", default=default)
  parser.add_argument("--profile", action="store_true")
  parser.add_argument("--out", default=os.environ.get("OUT", "out"))
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  meta = {"date": datetime.date.today().isoformat(), "device": jax.devices()[0].device_kind,
          "jax": jax.__version__, "jaxlib": jaxlib.__version__,
          "heads": [HEADS, KV_HEADS, HEAD_DIM]}
  log = os.path.join(args.out, "decode_attention.jsonl")
  with open(log, "w") as f:
    f.write(json.dumps(meta) + "\n")
  print(json.dumps(meta))
  def ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]

  sweep = [Config(block_s=bs, splits=sp, num_warps=w, num_stages=st)
           for bs in ints(args.sweep_block_s) for sp in ints(args.sweep_splits)
           for w in ints(args.sweep_warps) for st in ints(args.sweep_stages)]
  rows = []
  for batch in map(int, args.batches.split(",")):
    for length in map(int, args.lengths.split(",")):
      if 2 * batch * (length + 16) * KV_HEADS * HEAD_DIM > args.max_elements:
        continue
      data = inputs(batch, length)
      chosen = choose_config(batch, KV_HEADS, length + 16)
      cases = [("read", None), ("xla", None), ("cudnn", None), ("pallas", chosen)]
      cache_bytes = data[1].nbytes + data[2].nbytes  # keys and values
      if args.sweep:
        cases += [("pallas", c) for c in sweep if c != chosen and c.splits <= max(1, length // 32)]
      for implementation, config in cases:
        fn = op(implementation, config)
        row = {"batch": batch, "length": length, "impl": implementation,
               "config": None if config is None else vars(config),
               "dispatcher": implementation == "pallas" and config == chosen,
               "cache_bytes": cache_bytes}
        try:
          if implementation not in ("xla", "read"):
            row["check"] = check(fn, data)
          row["us"] = timed(fn, data) * 1e6
          row["cache_tb_s"] = cache_bytes / row["us"] / 1e6
          if args.profile and (implementation != "pallas" or row["dispatcher"]):
            row["profile"] = profile(fn, data)
            row["busy_cache_tb_s"] = (cache_bytes / row["profile"]["gpu0_busy_ms_per_call"]
                                      / 1e9)
        except Exception as e:  # a config the kernel cannot compile is reported, not fatal
          row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        rows.append(row)
        print(json.dumps(row), flush=True)
        with open(log, "a") as f:
          f.write(json.dumps(row) + "\n")
      case = [r for r in rows if r["batch"] == batch and r["length"] == length and "us" in r]
      best = min((r for r in case if r["impl"] == "pallas" and r["check"]["ok"]),
                 key=lambda r: r["us"], default=None)
      summary = {r["impl"] + (" (dispatcher)" if r["dispatcher"] else ""): round(r["us"], 2)
                 for r in case if r["impl"] != "pallas" or r["dispatcher"]}
      if best:
        summary[f"best pallas {best['config']}"] = round(best["us"], 2)
      print(f"B={batch} length={length} (us): {summary}", flush=True)


if __name__ == "__main__":
  main()
