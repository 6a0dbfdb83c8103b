"""python -m sbitnet.plot --workdir=DIR: a run's curves (loss, validation PPL, LR, flip rate,
zero fraction) as one PNG, `DIR/curves.png`."""

from __future__ import annotations

import os

from sbitnet.metrics import read_metrics

PANELS = (("loss", "training loss"), ("val_ppl", "validation PPL"), ("lr", "learning rate"),
          ("flip_rate", "mask flip rate"), ("zero_fraction", "zero fraction of W_eff"),
          ("grad_norm", "gradient norm"))


def plot_run(workdir: str, out: str | None = None) -> str:
  """Writes the PNG and returns its path."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  records = read_metrics(workdir)
  fig, axes = plt.subplots(2, 3, figsize=(13, 7))
  for ax, (key, title) in zip(axes.flat, PANELS):
    points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    if points:
      ax.plot(*zip(*points), marker="." if len(points) < 30 else None)
    else:
      ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
  fig.suptitle(os.path.basename(os.path.abspath(workdir)))
  fig.tight_layout()
  out = out or os.path.join(workdir, "curves.png")
  fig.savefig(out, dpi=100)
  plt.close(fig)
  return out


def main(argv: list[str]) -> None:
  del argv
  from absl import flags

  from sbitnet.cli import USER_ERRORS, fail
  try:
    print(plot_run(flags.FLAGS.workdir, flags.FLAGS.out or None))
  except USER_ERRORS as e:
    fail(str(e))


if __name__ == "__main__":
  from absl import app, flags
  flags.DEFINE_string("workdir", None, "Run directory holding metrics.jsonl.", required=True)
  flags.DEFINE_string("out", "", "PNG path (default: DIR/curves.png).")
  app.run(main)
