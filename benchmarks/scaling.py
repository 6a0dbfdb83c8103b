"""Multi-GPU scaling of Sparse BitNet (6:8) training on Qwen2.5-0.5B shapes, with the real train step.

  python benchmarks/scaling.py [--meshes=1x1x1,4x1x1,2x2x1,1x4x1] [--per_device_batch=8]
      [--seq_len=2048] [--steps=8] [--fit_demo] [--platform=gpu|cpu] [--preset=qwen2.5-0.5b]
      [--profile=STEPS] [--out=DIR]

Each mesh `DATAxFSDPxTENSOR` runs in its own process that sees only the first D·F·T GPUs (on CPU:
that many host devices), with `per_device_batch` sequences per data/fsdp shard (weak scaling):
parameters and Adam moments created sharded, `train_step` jitted with in/out shardings and donated
state under the mesh (`sbitnet.sharding.with_mesh`), random tokens. Reported per mesh: median step
time after warm-up, tokens/s in all and per GPU, MFU (6·N + attention FLOPs per token over the bf16
peak of every GPU), the peak bytes in use on the fullest device, and XLA's compiled memory estimate
per device. `--fit_demo` adds one run on a single GPU with the global batch of the widest mesh, to
show what fits on several GPUs and not on one. Prints a table; writes scaling.json and scaling.md
to --out (default $OUT or .), rewritten after every run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import subprocess
import sys

RESULT = "RESULT "
VOCAB = 151936


def mesh_shape(text: str) -> tuple[int, int, int]:
  parts = tuple(int(p) for p in text.split("x"))
  if len(parts) != 3 or min(parts) < 1:
    raise argparse.ArgumentTypeError(f"mesh {text!r}: want DATAxFSDPxTENSOR, e.g. 2x2x1.")
  return parts


def bench_one(shape: tuple[int, int, int], batch: int, args) -> dict:
  """Runs in the child process: builds, compiles and times one mesh."""
  import statistics
  import time

  import jax
  import numpy as np
  from flax import nnx

  from sbitnet.config import Config, ModelConfig, TrainConfig, resolved_model
  from sbitnet.data.config import DataConfig
  from sbitnet.metrics import peak_flops
  from sbitnet.models import DecoderLM, parameter_counts, train_flops_per_token
  from sbitnet.sharding import batch_sharding, check_nm_shards, make_mesh, with_mesh
  from sbitnet.train import schedules
  from sbitnet.train.optimizer import make_optimizer
  from sbitnet.train.state import create_train_state
  from sbitnet.train.step import make_train_step

  cfg = Config(name="scaling", model=ModelConfig(preset=args.preset, remat=args.remat),
               data=DataConfig(seq_len=args.seq_len),
               train=TrainConfig(steps=1000, batch_size=batch, loss_chunk=args.loss_chunk))
  model_cfg = resolved_model(cfg.model, args.vocab)
  mesh = make_mesh(*shape)
  make_model = lambda: DecoderLM(cfg, model_cfg, rngs=nnx.Rngs(0))
  check_nm_shards(nnx.eval_shape(make_model).sparse_layers(), mesh)
  optimizer = make_optimizer(cfg.train)
  graphdef, state, shardings = create_train_state(make_model, optimizer, mesh)
  sharding = batch_sharding(mesh)
  jitted = jax.jit(make_train_step(graphdef, optimizer, schedules.learning_rate(cfg.train), 1,
                                   cfg.train.loss_chunk),
                   in_shardings=(shardings, sharding), out_shardings=(shardings, None),
                   donate_argnums=0)
  rng = np.random.default_rng(0)
  batches = []
  for _ in range(2):
    tokens = rng.integers(0, model_cfg.vocab_size, (batch, args.seq_len + 1), dtype=np.int32)
    batches.append(jax.device_put({"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}, sharding))
  start = time.perf_counter()
  compiled = with_mesh(lambda: jitted.lower(state, batches[0]).compile(), mesh)()
  compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()
  estimate = (memory.argument_size_in_bytes + memory.output_size_in_bytes
              - memory.alias_size_in_bytes + memory.temp_size_in_bytes) if memory else None
  result = {"mesh": "x".join(map(str, shape)), "devices": mesh.size, "batch": batch,
            "device": jax.devices()[0].device_kind,
            "seq_len": args.seq_len, "compile_s": compile_s, "estimate_bytes": estimate,
            "params": parameter_counts(model_cfg)["total"]}
  try:
    for i in range(args.warmup):
      state, metrics = compiled(state, batches[i % 2])
    jax.block_until_ready(state)
    times = []
    for i in range(args.steps):
      start = time.perf_counter()
      state, metrics = compiled(state, batches[i % 2])
      jax.block_until_ready(metrics["loss"])
      times.append(time.perf_counter() - start)
  except jax.errors.JaxRuntimeError as e:
    if "RESOURCE_EXHAUSTED" not in str(e) and "out of memory" not in str(e).lower():
      raise
    return {**result, "oom": True, "error": str(e).splitlines()[0][:300]}
  if args.profile:
    profile(compiled, state, batches[0], mesh, args, result["mesh"])
  step_s = statistics.median(times)
  tokens_per_s = batch * args.seq_len / step_s
  peak = peak_flops(jax.devices()[0])
  flops = train_flops_per_token(model_cfg, args.seq_len)
  stats = [d.memory_stats() or {} for d in jax.local_devices()]
  return {**result, "oom": False, "step_s": step_s, "step_s_all": times,
          "tokens_per_s": tokens_per_s, "tokens_per_s_per_device": tokens_per_s / mesh.size,
          "mfu": tokens_per_s * flops / (peak * mesh.size) if peak else None,
          "peak_bytes": max((s.get("peak_bytes_in_use", 0) for s in stats), default=None),
          "loss": float(metrics["loss"])}


def profile(compiled, state, batch, mesh, args, name: str) -> None:
  """Writes `hlo_<mesh>.txt` (the optimized HLO) and `profile_<mesh>.json`: device time per
  kernel and per HLO op over `args.profile` traced steps, and the all-reduce bus bandwidth of the
  mesh's devices (so collective time can be read against what NCCL reaches here)."""
  import time

  import jax
  import jax.numpy as jnp
  from jax.sharding import NamedSharding, PartitionSpec as P

  from profiling import device_time_summary  # benchmarks/profiling.py, beside this script

  with open(os.path.join(args.out, f"hlo_{name}.txt"), "w") as f:
    f.write(compiled.as_text())
  carry = [state]

  def step():
    carry[0], metrics = compiled(carry[0], batch)
    return metrics["loss"]

  summary = {"mesh": name, **device_time_summary(step, args.profile)}
  devices = mesh.devices.reshape(-1)
  flat = jax.sharding.Mesh(devices, ("d",))
  x = jax.device_put(jnp.ones((len(devices), 64 * 2**20), jnp.float32),
                     NamedSharding(flat, P("d")))
  reduce = jax.jit(jax.shard_map(lambda a: jax.lax.psum(a, "d"), mesh=flat, in_specs=P("d"),
                                 out_specs=P("d")))
  jax.block_until_ready(reduce(x))
  start = time.perf_counter()
  for _ in range(5):
    y = reduce(x)
  jax.block_until_ready(y)
  seconds = (time.perf_counter() - start) / 5
  n = len(devices)
  summary["allreduce_256MiB_f32_ms"] = seconds * 1e3
  summary["allreduce_busbw_GBps"] = 2 * (n - 1) / n * 256 * 2**20 / seconds / 1e9 if n > 1 else None
  with open(os.path.join(args.out, f"profile_{name}.json"), "w") as f:
    json.dump(summary, f, indent=1)


def child_env(devices: int, platform: str) -> dict[str, str]:
  env = dict(os.environ)
  if platform == "cpu":
    env["JAX_PLATFORMS"] = "cpu"
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  else:
    env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, range(devices)))
  return env


def run_child(shape, batch: int, args) -> dict:
  command = [sys.executable, __file__, f"--child={'x'.join(map(str, shape))}", f"--batch={batch}",
             f"--preset={args.preset}", f"--vocab={args.vocab}", f"--seq_len={args.seq_len}",
             f"--steps={args.steps}", f"--warmup={args.warmup}", f"--remat={args.remat}",
             f"--loss_chunk={args.loss_chunk}", f"--profile={args.profile}", f"--out={args.out}"]
  try:
    proc = subprocess.run(command, env=child_env(math.prod(shape), args.platform),
                          capture_output=True, text=True, timeout=args.timeout)
  except subprocess.TimeoutExpired:
    return {"mesh": "x".join(map(str, shape)), "batch": batch, "error": "timeout"}
  for line in proc.stdout.splitlines():
    if line.startswith(RESULT):
      return json.loads(line[len(RESULT):])
  return {"mesh": "x".join(map(str, shape)), "batch": batch,
          "error": (proc.stderr or proc.stdout)[-1500:]}


def markdown(header: dict, results: list[dict]) -> str:
  base = next((r for r in results if r.get("devices") == 1 and not r.get("oom") and "step_s" in r),
              None)
  lines = [f"{header['device']}, {header['date']}, jax {header['jax']}, {header['preset']} "
           f"Sparse BitNet 6:8, seq {header['seq_len']}, remat {header['remat']}.", "",
           "| mesh (data x fsdp x tensor) | GPUs | global batch | step (ms) | tokens/s | "
           "tokens/s per GPU | vs 1 GPU | MFU | peak mem / GPU (GiB) | XLA estimate (GiB) |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for r in results:
    est = f"{r['estimate_bytes'] / 2**30:.1f}" if r.get("estimate_bytes") else "-"
    if "step_s" not in r:
      what = "out of memory" if r.get("oom") else f"failed: {r.get('error', '')[:60]!r}"
      lines.append(f"| {r['mesh']} | {r.get('devices', '-')} | {r['batch']} | {what} | | | | | | "
                   f"{est} |")
      continue
    ratio = (f"{r['tokens_per_s_per_device'] / base['tokens_per_s_per_device']:.1%}"
             if base else "-")
    lines.append(f"| {r['mesh']} | {r['devices']} | {r['batch']} | {r['step_s'] * 1e3:.1f} | "
                 f"{r['tokens_per_s']:,.0f} | {r['tokens_per_s_per_device']:,.0f} | {ratio} | "
                 f"{r['mfu'] or 0:.3f} | {(r['peak_bytes'] or 0) / 2**30:.1f} | {est} |")
  return "\n".join(lines) + "\n"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--meshes", default="1x1x1,4x1x1,2x2x1,1x4x1,2x1x1,1x2x1")
  parser.add_argument("--per_device_batch", type=int, default=8)
  parser.add_argument("--fit_demo", action="store_true")
  parser.add_argument("--preset", default="qwen2.5-0.5b")
  parser.add_argument("--vocab", type=int, default=VOCAB)
  parser.add_argument("--seq_len", type=int, default=2048)
  parser.add_argument("--steps", type=int, default=8)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--remat", default="none")
  parser.add_argument("--loss_chunk", type=int, default=2048)
  parser.add_argument("--platform", choices=("gpu", "cpu"), default="gpu")
  parser.add_argument("--timeout", type=int, default=300, help="seconds per mesh")
  parser.add_argument("--profile", type=int, default=0,
                      help="trace this many extra steps per mesh; write hlo_/profile_<mesh> files")
  parser.add_argument("--out", default=os.environ.get("OUT", "."))
  parser.add_argument("--child", type=mesh_shape, help=argparse.SUPPRESS)
  parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    print(RESULT + json.dumps(bench_one(args.child, args.batch, args)), flush=True)
    return

  import jax  # the parent only reads versions; the children own the devices
  shapes = [mesh_shape(m) for m in args.meshes.split(",")]
  runs = [(s, args.per_device_batch * s[0] * s[1]) for s in shapes]
  if args.fit_demo:
    runs.append(((1, 1, 1), max(batch for _, batch in runs)))
  header = {"device": args.platform, "jax": jax.__version__,
            "date": datetime.date.today().isoformat(), "preset": args.preset,
            "seq_len": args.seq_len, "remat": args.remat, "steps": args.steps}
  results = []
  os.makedirs(args.out, exist_ok=True)
  for shape, batch in runs:
    results.append(run_child(shape, batch, args))
    r = results[-1]
    header["device"] = r.get("device", header["device"])
    print(json.dumps({k: v for k, v in r.items() if k != "step_s_all"}), flush=True)
    with open(os.path.join(args.out, "scaling.json"), "w") as f:
      json.dump({"header": header, "results": results}, f, indent=1)
    with open(os.path.join(args.out, "scaling.md"), "w") as f:
      f.write(markdown(header, results))
  print(markdown(header, results))


if __name__ == "__main__":
  main()
