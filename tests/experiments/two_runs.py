"""A two-run sweep for the sweep tests: BF16 dense and 6:8, the configs of experiments/nm_sweep.py.

  python -m launch.sweep --experiment=tests/experiments/two_runs.py --scale=cpu --root=DIR --dry-run
"""

from experiments.nm_sweep import get_config  # noqa: F401  (the sweep's get_config)


def sweep(scale: str = "cpu"):
  for n, m in ((0, 0), (6, 8)):
    yield f"precision=bf16,n={n},m={m},scale={scale}"
