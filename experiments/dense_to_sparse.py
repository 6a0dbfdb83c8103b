"""Dense-to-sparse: dense for the first (1 - p) of training, 6:8 sparse for the last p.

  python -m sbitnet.train --config=experiments/dense_to_sparse.py:p=50,scale=small
"""

from experiments.common import base_config, parse_arg
from sbitnet.config import Config

SPARSE_SHARES = (25, 50, 75, 100)


def get_config(arg: str | None = None) -> Config:
  a = parse_arg(arg, p="50", precision="bitnet", scale="cpu", model="")
  p = int(a["p"])
  if not 0 < p <= 100:
    raise ValueError(f"p={p} must be a sparse share of training in (0, 100] percent.")
  cfg = base_config(a["scale"], a["model"], f"dense_to_sparse-{a['precision']}-p{p}")
  cfg.quant.weights = "ternary" if a["precision"] == "bitnet" else "none"
  cfg.sparsity.start_fraction = 1 - p / 100
  return cfg


def sweep(scale: str = "small"):
  for p in SPARSE_SHARES:
    yield f"p={p},scale={scale}"
