"""Metrics sinks (JSONL always, TensorBoard optionally; host 0 only) and the device peak table."""

from __future__ import annotations

import json
import math
import os
from typing import Any

import jax
import numpy as np

# Dense bf16 tensor-core peak, FLOP/s, by substring of `device_kind`.
PEAK_BF16_FLOPS = {
    "H200": 989e12, "H100": 989e12, "H800": 989e12, "A100": 312e12, "A800": 312e12,
    "L40S": 362e12, "B200": 2250e12, "GB200": 2500e12, "TPU v5p": 459e12, "TPU v5 lite": 197e12,
    "TPU v4": 275e12, "TPU v6": 918e12,
}


def peak_flops(device: Any) -> float | None:
  kind = getattr(device, "device_kind", "")
  for name, flops in PEAK_BF16_FLOPS.items():
    if name.lower() in kind.lower():
      return flops
  return None


def _plain(value: Any) -> Any:
  if isinstance(value, (jax.Array, np.ndarray, np.generic)):
    value = np.asarray(value)
    return value.item() if value.ndim == 0 else value.tolist()
  return value


class MetricsWriter:
  """Appends one JSON object per call to `workdir/metrics.jsonl` (and TensorBoard scalars).

  A run that starts at `start_step` (0 fresh, else the restored checkpoint's step) first drops
  the records of later steps, which a run stopped between two checkpoints wrote and its
  resumption writes again (a fresh start drops all of them, so nothing of an earlier run in the
  same directory stays mixed in); TensorBoard purges them likewise."""

  def __init__(self, workdir: str, *, tensorboard: bool = False, start_step: int = 0):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.tb = None
    if self.enabled and os.path.exists(self.path):
      kept = [r for r in _records(self.path) if r["step"] <= start_step]
      tmp = self.path + ".tmp"
      with open(tmp, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in kept)
      os.replace(tmp, self.path)
    if self.enabled and tensorboard:
      try:
        from tensorboardX import SummaryWriter
      except ImportError as e:
        raise ImportError("train.tensorboard=True needs tensorboardX: pip install "
                          "'sbitnet[tensorboard]'.") from e
      self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=start_step + 1)

  def write(self, step: int, values: dict[str, Any]) -> None:
    if not self.enabled:
      return
    record = {"step": step, **{k: _plain(v) for k, v in values.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    if self.tb is not None:
      for k, v in record.items():
        if isinstance(v, (int, float)) and k != "step" and math.isfinite(v):
          self.tb.add_scalar(k, v, step)

  def close(self) -> None:
    if self.tb is not None:
      self.tb.close()


def _records(path: str) -> list[dict]:
  """The records of a metrics.jsonl; a last line cut short by a killed run is skipped."""
  with open(path) as f:
    lines = [line for line in f if line.strip()]
  records = []
  for i, line in enumerate(lines):
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      if i < len(lines) - 1:
        raise ValueError(f"{path} line {i + 1} is not JSON: {line[:80]!r}") from None
  return records


def read_metrics(workdir: str) -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    raise FileNotFoundError(f"No metrics at {path}: is {workdir!r} a training workdir?")
  return _records(path)
