"""Where device time goes: trace a callable with `jax.profiler` and sum GPU time per kernel and
per HLO op (the benchmarks' `--profile` options)."""

from __future__ import annotations

import glob
import gzip
import json
import os
import tempfile
import time
from typing import Callable

import jax


def device_time_summary(run: Callable[[], object], calls: int, top: int = 60) -> dict:
  """Traces `calls` calls of `run` (each result is waited for) and returns, per call: the wall
  time, the summed kernel time on GPU 0, the number of kernels launched, the span from the first
  kernel's start to the last one's end (span - busy = GPU idle between kernels), and the `top`
  kernels and HLO ops by time (ms, launches per call)."""
  trace_dir = tempfile.mkdtemp()
  start = time.perf_counter()
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    for _ in range(calls):
      jax.block_until_ready(run())
  wall = time.perf_counter() - start
  [path] = glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True)
  with gzip.open(path) as f:
    events = json.load(f)["traceEvents"]
  names = {e["pid"]: str(e.get("args", {}).get("name", "")) for e in events
           if e.get("ph") == "M" and e.get("name") == "process_name"}
  gpu_pids = {pid for pid, name in names.items() if "GPU:0" in name}
  by_kernel: dict[str, list[float]] = {}
  by_op: dict[str, list[float]] = {}
  busy, launches, first, last = 0.0, 0, float("inf"), 0.0
  for e in events:
    if e.get("ph") != "X" or e.get("pid") not in gpu_pids:
      continue
    us = float(e.get("dur", 0))
    busy += us
    launches += 1
    first, last = min(first, float(e["ts"])), max(last, float(e["ts"]) + us)
    op = str(e.get("args", {}).get("hlo_op", e["name"]))
    for table, name in ((by_kernel, e["name"]), (by_op, op)):
      entry = table.setdefault(name, [0.0, 0])
      entry[0] += us
      entry[1] += 1

  def ranked(table: dict[str, list[float]]) -> list:
    return sorted(((round(us / calls / 1e3, 4), count / calls, name)
                   for name, (us, count) in table.items()), reverse=True)[:top]

  return {"calls": calls, "trace_processes": sorted(names.values()),
          "wall_ms_per_call": wall / calls * 1e3, "gpu0_busy_ms_per_call": busy / calls / 1e3,
          "gpu0_span_ms_per_call": (last - first) / calls / 1e3 if launches else 0.0,
          "kernels_per_call": launches / calls,
          "top_kernels_ms_per_call": ranked(by_kernel), "top_hlo_ops_ms_per_call": ranked(by_op)}
