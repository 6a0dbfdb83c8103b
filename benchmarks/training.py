"""Training throughput of the four arms on one accelerator, with the real train step.

  python benchmarks/training.py [--preset=qwen2.5-0.5b] [--seq_len=2048] [--batch=8] [--steps=10]
      [--out=DIR]

For each arm (Dense BF16, Sparse BF16, Dense BitNet, Sparse BitNet 6:8) it builds the sharded train
state, compiles `train_step`, runs warm-up steps, then times `--steps` steps (median of per-step
device times, each step synchronised) on random tokens. It also times the effective-weight
computation of all SparseBitLinear layers (mask + quantize, forward and backward) on its own, to
say where the extra time of the BitNet arms goes. Prints a table; writes JSON and markdown to --out.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sbitnet.config import Config, ModelConfig, TrainConfig, resolved_model
from sbitnet.data.config import DataConfig
from sbitnet.metrics import peak_flops
from sbitnet.models import DecoderLM, parameter_counts, train_flops_per_token
from sbitnet.sharding import batch_sharding, make_mesh
from sbitnet.train import schedules
from sbitnet.train.optimizer import make_optimizer
from sbitnet.train.state import create_train_state
from sbitnet.train.step import make_train_step

ARMS = {"dense_bf16": ("none", 0, 0), "sparse_bf16": ("none", 6, 8),
        "dense_bitnet": ("ternary", 0, 0), "sparse_bitnet": ("ternary", 6, 8)}
VOCAB = 151936


def arm_config(arm: str, args) -> Config:
  weights, n, m = ARMS[arm]
  cfg = Config(name=arm, model=ModelConfig(preset=args.preset, dtype="bfloat16", remat=args.remat),
               data=DataConfig(seq_len=args.seq_len),
               train=TrainConfig(steps=1000, batch_size=args.batch, loss_chunk=args.loss_chunk))
  cfg.quant.weights = weights
  cfg.sparsity.n, cfg.sparsity.m = n, m
  return cfg


def time_steps(fn, state, batches, steps: int, warmup: int):
  for i in range(warmup):
    state, metrics = fn(state, batches[i % len(batches)])
  jax.block_until_ready(state)
  times = []
  for i in range(steps):
    start = time.perf_counter()
    state, metrics = fn(state, batches[i % len(batches)])
    jax.block_until_ready(metrics["loss"])
    times.append(time.perf_counter() - start)
  return state, times, float(metrics["loss"])


def weight_overhead(graphdef, params, steps: int) -> float:
  """Median seconds of mask + quantize of every SparseBitLinear, forward and backward."""

  def all_effective(params):
    model = nnx.merge(graphdef, params)
    return sum(jnp.sum(layer.effective_weight().astype(jnp.float32) * 1e-3)
               for layer in model.sparse_layers().values())

  fn = jax.jit(jax.grad(all_effective))
  jax.block_until_ready(fn(params))
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    jax.block_until_ready(fn(params))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def bench_arm(arm: str, args, mesh) -> dict:
  cfg = arm_config(arm, args)
  model_cfg = resolved_model(cfg.model, VOCAB)
  optimizer = make_optimizer(cfg.train)
  graphdef, state, shardings = create_train_state(
      lambda: DecoderLM(cfg, model_cfg, rngs=nnx.Rngs(0)), optimizer, mesh)
  step = make_train_step(graphdef, optimizer, schedules.learning_rate(cfg.train),
                         cfg.train.grad_accum, cfg.train.loss_chunk)
  sharding = batch_sharding(mesh)
  step = jax.jit(step, in_shardings=(shardings, sharding), out_shardings=(shardings, None),
                 donate_argnums=0)
  rng = np.random.default_rng(0)
  batches = []
  for _ in range(2):
    tokens = rng.integers(0, VOCAB, (args.batch, args.seq_len + 1), dtype=np.int32)
    batches.append(jax.device_put({"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}, sharding))
  compile_start = time.perf_counter()
  step = step.lower(state, batches[0]).compile()
  compile_s = time.perf_counter() - compile_start
  state, times, loss = time_steps(step, state, batches, args.steps, args.warmup)
  step_s = statistics.median(times)
  tokens_per_s = args.batch * args.seq_len / step_s
  flops = train_flops_per_token(model_cfg, args.seq_len)
  peak = peak_flops(jax.devices()[0])
  memory = jax.devices()[0].memory_stats() or {}
  result = {"arm": arm, "step_s": step_s, "step_s_all": times, "tokens_per_s": tokens_per_s,
            "mfu": tokens_per_s * flops / (peak * mesh.size) if peak else None,
            "compile_s": compile_s, "loss": loss, "flops_per_token": flops,
            "peak_bytes": memory.get("peak_bytes_in_use")}
  if ARMS[arm] != ("none", 0, 0):
    result["weight_transform_s"] = weight_overhead(graphdef, state.params, 5)
  del state
  return result


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--preset", default="qwen2.5-0.5b")
  parser.add_argument("--seq_len", type=int, default=2048)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--remat", default="none")
  parser.add_argument("--loss_chunk", type=int, default=2048)
  parser.add_argument("--arms", default=",".join(ARMS))
  parser.add_argument("--out", default=os.environ.get("OUT", "."))
  args = parser.parse_args()
  mesh = make_mesh()
  device = jax.devices()[0]
  header = {"device": device.device_kind, "devices": jax.device_count(),
            "date": datetime.date.today().isoformat(), "jax": jax.__version__,
            "jaxlib": jax.lib.__version__ if hasattr(jax.lib, "__version__") else None,
            "preset": args.preset, "seq_len": args.seq_len, "batch": args.batch,
            "remat": args.remat,
            "params": parameter_counts(resolved_model(ModelConfig(preset=args.preset), VOCAB))}
  print(json.dumps(header))
  results = []
  for arm in args.arms.split(","):
    results.append(bench_arm(arm, args, mesh))
    r = results[-1]
    print(f"{arm:14s} step {r['step_s'] * 1e3:8.1f} ms  {r['tokens_per_s']:10.0f} tok/s  "
          f"MFU {r['mfu'] or 0:.3f}  peak mem {(r['peak_bytes'] or 0) / 2**30:.1f} GiB  "
          f"weights {r.get('weight_transform_s', 0) * 1e3:.1f} ms  compile {r['compile_s']:.0f} s",
          flush=True)
  base = next((r["step_s"] for r in results if r["arm"] == "dense_bf16"), None)
  lines = ["| arm | step (ms) | tokens/s | MFU | vs Dense BF16 | mask+quant fwd+bwd (ms) |",
           "|---|---|---|---|---|---|"]
  for r in results:
    ratio = f"{r['step_s'] / base:.3f}x" if base else "-"
    lines.append(f"| {r['arm']} | {r['step_s'] * 1e3:.1f} | {r['tokens_per_s']:.0f} | "
                 f"{r['mfu'] or 0:.3f} | {ratio} | {r.get('weight_transform_s', 0) * 1e3:.1f} |")
  print("\n".join(lines))
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "training.json"), "w") as f:
    json.dump({**header, "results": results}, f, indent=1)
  with open(os.path.join(args.out, "training.md"), "w") as f:
    f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
  main()
