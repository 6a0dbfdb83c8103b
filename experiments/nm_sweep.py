"""N:M sweep for BF16 and BitNet: N:8 for N = 7..2 and 2:4, against the dense run.

  python -m sbitnet.train --config=experiments/nm_sweep.py:precision=bitnet,n=4,m=8,scale=small
"""

from experiments.common import base_config, parse_arg
from sbitnet.config import Config

PATTERNS = [(0, 0)] + [(n, 8) for n in range(7, 1, -1)] + [(2, 4)]


def get_config(arg: str | None = None) -> Config:
  a = parse_arg(arg, precision="bitnet", n="6", m="8", scale="cpu", model="")
  if a["precision"] not in ("bitnet", "bf16"):
    raise ValueError(f"precision={a['precision']!r} is not one of 'bitnet', 'bf16'.")
  n, m = int(a["n"]), int(a["m"])
  cfg = base_config(a["scale"], a["model"], f"nm_sweep-{a['precision']}-{n}of{m}")
  cfg.quant.weights = "ternary" if a["precision"] == "bitnet" else "none"
  cfg.sparsity.n, cfg.sparsity.m = n, m
  return cfg


def sweep(scale: str = "small"):
  for precision in ("bf16", "bitnet"):
    for n, m in PATTERNS:
      yield f"precision={precision},n={n},m={m},scale={scale}"
