"""The paper's ablations of Sparse BitNet 6:8: the baseline (quant-then-mask, dense gradient), mask
without gradient, mask from quantized weights, sparsify before quantizing; SR-STE as an extra.

  python -m sbitnet.train --config=experiments/ablations.py:variant=mask_from_quantized,scale=small
"""

from experiments.common import base_config, parse_arg
from sbitnet.config import Config

VARIANTS = {
    "baseline": {},
    "mask_without_grad": {"grad": "masked"},
    "mask_from_quantized": {"mask_from": "quantized"},
    "sparse_before_quant": {"order": "mask_then_quant"},
    "sr_ste": {"sr_ste": 2e-4},
}


def get_config(arg: str | None = None) -> Config:
  a = parse_arg(arg, variant="baseline", scale="cpu", model="")
  if a["variant"] not in VARIANTS:
    raise ValueError(f"variant={a['variant']!r} is not one of {', '.join(VARIANTS)}.")
  cfg = base_config(a["scale"], a["model"], f"ablation-{a['variant']}")
  for field, value in VARIANTS[a["variant"]].items():
    setattr(cfg.sparsity, field, value)
  return cfg


def sweep(scale: str = "small"):
  for variant in VARIANTS:
    yield f"variant={variant},scale={scale}"
