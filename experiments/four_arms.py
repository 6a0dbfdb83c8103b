"""The paper's main comparison: Dense BF16, Sparse BF16, Dense BitNet, Sparse BitNet at 6:8.

  python -m sbitnet.train --config=experiments/four_arms.py:arm=sparse_bitnet,scale=cpu
  python -m sbitnet.train --config=experiments/four_arms.py:arm=dense_bf16,scale=small
  python -m sbitnet.train --config=experiments/four_arms.py:arm=sparse_bitnet,scale=paper,model=qwen2.5-1.5b \
      --config.data.path=DIR
"""

from experiments.common import ARMS, base_config, parse_arg, with_arm
from sbitnet.config import Config


def get_config(arg: str | None = None) -> Config:
  a = parse_arg(arg, arm="sparse_bitnet", scale="cpu", model="")
  return with_arm(base_config(a["scale"], a["model"], f"four_arms-{a['arm']}"), a["arm"])


def sweep(scale: str = "small"):
  """Config arguments: the four arms (and, at paper scale, the three model sizes)."""
  models = (",model=qwen2.5-0.5b", ",model=qwen2.5-1.5b", ",model=qwen2.5-3b") if scale == "paper" \
      else ("",)
  for model in models:
    for arm in ARMS:
      yield f"arm={arm},scale={scale}{model}"
