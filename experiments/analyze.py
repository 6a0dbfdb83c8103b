"""Gathers the runs of a sweep root into a markdown table and PNG plots.

  python -m experiments.analyze --root=runs/nm [--out=runs/nm/analysis]

Reads every `ROOT/*/config.json` and `metrics.jsonl` (the workdirs `python -m launch.sweep`
makes; any training workdir works). Writes `OUT/results.md` (also printed) with, per finished
run: precision, N:M pattern, sparse share of training, final validation PPL, its change against
the dense run of the same precision and otherwise equal config (absolute and %), the zero
fraction of W_eff and the last mask flip rate; unfinished runs are listed apart. Plots:
`ppl_vs_sparsity.png` (PPL and % change vs sparsity 1 - N/M, BF16 and BitNet, runs sparse from
scratch), `flip_rate.png` (flip rate over training, every sparse run) and `dense_to_sparse.png`
(PPL vs the sparse share p of training).
"""

from __future__ import annotations

import dataclasses
import json
import os

from absl import app, flags

from experiments.runs import final_eval
from sbitnet.config import NON_RESULT_FIELDS, Config, SparsityConfig, field_paths
from sbitnet.metrics import read_metrics
from sbitnet.restore import read_config

ABLATION_FIELDS = ("grad", "mask_from", "order", "sr_ste")
PLOTS = ("ppl_vs_sparsity.png", "flip_rate.png", "dense_to_sparse.png")
COLLAPSE_PERCENT = 10.0


@dataclasses.dataclass
class RunResult:
  """What one workdir says: its config, how far it got, and its final numbers (None if unlogged)."""
  name: str
  cfg: Config
  step: int
  val_ppl: float | None = None         # None: not finished
  zero_fraction: float | None = None
  flip_rate: float | None = None
  flips: list[tuple[int, float]] = dataclasses.field(default_factory=list)
  dense: RunResult | None = None        # the matching dense run, for sparse runs

  @property
  def precision(self) -> str:
    return "BitNet" if self.cfg.quant.weights == "ternary" else "BF16"

  @property
  def sparse(self) -> bool:
    return self.cfg.sparsity.m > 0

  @property
  def pattern(self) -> str:
    return f"{self.cfg.sparsity.n}:{self.cfg.sparsity.m}" if self.sparse else "dense"

  @property
  def sparsity(self) -> float:
    return 1 - self.cfg.sparsity.n / self.cfg.sparsity.m if self.sparse else 0.0

  @property
  def sparse_share(self) -> float:
    """Percent of training steps run sparse (0 for dense runs)."""
    return 100 * (1 - self.cfg.sparsity.start_fraction) if self.sparse else 0.0

  @property
  def main_method(self) -> bool:
    """Not an ablation: gradient, mask source, order and SR-STE as in the paper's method."""
    default = SparsityConfig()
    return all(getattr(self.cfg.sparsity, f) == getattr(default, f) for f in ABLATION_FIELDS)

  @property
  def delta(self) -> tuple[float, float] | None:
    """(PPL - dense PPL, the same in % of dense PPL) against the matching dense run."""
    if self.val_ppl is None or self.dense is None:
      return None
    diff = self.val_ppl - self.dense.val_ppl
    return diff, 100 * diff / self.dense.val_ppl


def comparable_key(cfg: Config) -> str:
  """Everything that must match for a dense run to be a sparse run's baseline: the config less
  its name, its sparsity fields and the fields that change no result."""
  fields = {k: v for k, v in field_paths(cfg).items()
            if k != "name" and not k.startswith("sparsity.") and k not in NON_RESULT_FIELDS}
  return json.dumps(fields, sort_keys=True)


def _last(records: list[dict], key: str) -> float | None:
  values = [r[key] for r in records if isinstance(r.get(key), (int, float))]
  return values[-1] if values else None


def read_run(workdir: str) -> RunResult:
  cfg, _ = read_config(workdir)
  try:
    records = read_metrics(workdir)
  except FileNotFoundError:
    records = []
  final = final_eval(records, cfg.train.steps)
  return RunResult(
      name=os.path.basename(os.path.normpath(workdir)), cfg=cfg,
      step=max((r["step"] for r in records), default=0),
      val_ppl=final["val_ppl"] if final else None, zero_fraction=_last(records, "zero_fraction"),
      flip_rate=_last(records, "flip_rate"),
      flips=[(r["step"], r["flip_rate"]) for r in records if "flip_rate" in r])


def collect(root: str) -> tuple[list[RunResult], list[str]]:
  """(runs: every subdirectory with a config.json, finished ones linked to their dense run;
  workdirs that never got as far as writing config.json, i.e. hold only a train.log)."""
  if not os.path.isdir(root):
    raise FileNotFoundError(f"--root={root!r} is not a directory.")
  dirs = sorted(os.path.join(root, d) for d in os.listdir(root))
  runs = [read_run(d) for d in dirs if os.path.isfile(os.path.join(d, "config.json"))]
  unstarted = [os.path.basename(d) for d in dirs if os.path.isfile(os.path.join(d, "train.log"))
               and not os.path.isfile(os.path.join(d, "config.json"))]
  dense = {}
  for run in runs:
    if not run.sparse and run.val_ppl is not None:
      dense.setdefault(comparable_key(run.cfg), run)
  for run in runs:
    if run.sparse:
      run.dense = dense.get(comparable_key(run.cfg))
  runs.sort(key=lambda r: (r.precision, r.cfg.model.preset, r.sparse, r.sparse_share < 100,
                           r.sparsity, -r.cfg.sparsity.m, -r.sparse_share, r.name))
  return runs, unstarted


def _num(value: float | None, fmt: str) -> str:
  return "—" if value is None else format(value, fmt)


def table(runs: list[RunResult], unstarted: list[str]) -> str:
  """The markdown report: finished runs, then unfinished ones."""
  lines = ["| run | precision | pattern | sparse share | val PPL | Δ PPL | Δ % | zero fraction | "
           "flip rate |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
  for r in (r for r in runs if r.val_ppl is not None):
    delta = r.delta
    lines.append(
        f"| {r.name} | {r.precision} | {r.pattern} | "
        f"{f'{r.sparse_share:.0f} %' if r.sparse else '—'} | {r.val_ppl:.3f} | "
        f"{_num(delta and delta[0], '+.3f')} | {_num(delta and delta[1], '+.2f')} | "
        f"{_num(r.zero_fraction, '.4f')} | {_num(r.flip_rate, '.2e')} |")
  unfinished = [f"- {r.name}: partial, step {r.step} of {r.cfg.train.steps}"
                for r in runs if r.val_ppl is None]
  unfinished += [f"- {name}: not started (no config.json; see its train.log)" for name in unstarted]
  if unfinished:
    lines += ["", "Unfinished runs (not in the table):", *unfinished]
  lines += ["", "Δ: against the dense run of the same precision and otherwise equal config "
            "(— where there is none)."]
  return "\n".join(lines)


def _empty(ax, text: str) -> None:
  ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)


def _series_label(run: RunResult, presets: set[str]) -> str:
  return run.precision if len(presets) == 1 else f"{run.precision} {run.cfg.model.preset}"


def _label(ax, xlabel: str, ylabel: str) -> None:
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.grid(alpha=0.3)


def _save(fig, path: str) -> None:
  import matplotlib.pyplot as plt
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def plot_ppl_vs_sparsity(runs: list[RunResult], path: str) -> None:
  import matplotlib.pyplot as plt
  done = [r for r in runs if r.val_ppl is not None and r.main_method and r.sparse_share in (0, 100)]
  presets = {r.cfg.model.preset for r in done}
  fig, (ax_ppl, ax_delta) = plt.subplots(1, 2, figsize=(12, 4.5))
  for label in sorted({_series_label(r, presets) for r in done}):
    group = [r for r in done if _series_label(r, presets) == label]
    dense = [r for r in group if not r.sparse]
    for m in sorted({r.cfg.sparsity.m for r in group if r.sparse}, reverse=True):
      points = dense[:1] + sorted((r for r in group if r.cfg.sparsity.m == m),
                                  key=lambda r: r.sparsity)
      style = "-o" if m == 8 else "--s"
      ax_ppl.plot([r.sparsity for r in points], [r.val_ppl for r in points], style,
                  label=f"{label}, N:{m}")
      with_delta = [r for r in points if r.delta]
      if with_delta:
        ax_delta.plot([r.sparsity for r in with_delta], [r.delta[1] for r in with_delta], style,
                      label=f"{label}, N:{m}")
      for r in points:
        ax_ppl.annotate(r.pattern, (r.sparsity, r.val_ppl), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
  ax_delta.axhline(COLLAPSE_PERCENT, color="grey", ls=":", label=f"+{COLLAPSE_PERCENT:.0f} %")
  for ax, ylabel in ((ax_ppl, "validation PPL"), (ax_delta, "Δ PPL vs dense (%)")):
    _label(ax, "sparsity (1 - N/M)", ylabel)
    if ax.lines:
      ax.legend(fontsize=8)
  if not done:
    _empty(ax_ppl, "no finished runs sparse from scratch")
  fig.suptitle("Validation PPL vs sparsity (sparse from scratch)")
  _save(fig, path)


def plot_flip_rate(runs: list[RunResult], path: str) -> None:
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(8, 4.5))
  for r in (r for r in runs if r.flips):
    ax.plot(*zip(*r.flips), label=f"{r.precision} {r.pattern} p={r.sparse_share:.0f}% ({r.name})")
  if ax.lines:
    ax.legend(fontsize=7)
  else:
    _empty(ax, "no run logged a flip rate")
  _label(ax, "step", "mask flip rate since the last snapshot")
  _save(fig, path)


def plot_dense_to_sparse(runs: list[RunResult], path: str) -> None:
  import matplotlib.pyplot as plt
  done = [r for r in runs if r.val_ppl is not None and r.main_method]
  fig, ax = plt.subplots(figsize=(8, 4.5))
  groups = {(r.precision, r.cfg.model.preset, r.pattern) for r in done if 0 < r.sparse_share < 100}
  for precision, preset, pattern in sorted(groups):
    points = sorted((r for r in done if (r.precision, r.cfg.model.preset, r.pattern) ==
                     (precision, preset, pattern)), key=lambda r: r.sparse_share)
    line, = ax.plot([r.sparse_share for r in points], [r.val_ppl for r in points], "-o",
                    label=f"{precision} {pattern} ({preset})")
    dense = next((r.dense for r in points if r.dense), None)
    if dense:
      ax.axhline(dense.val_ppl, color=line.get_color(), ls=":", label=f"{precision} dense")
  if groups:
    ax.legend(fontsize=8)
  else:
    _empty(ax, "no finished dense-to-sparse runs")
  _label(ax, "sparse share of training p (%)", "validation PPL")
  _save(fig, path)


def analyze(root: str, out: str | None = None) -> str:
  """Writes OUT/results.md and the PNGs (OUT defaults to ROOT/analysis); returns the markdown."""
  import matplotlib
  matplotlib.use("Agg")
  out = out or os.path.join(root, "analysis")
  runs, unstarted = collect(root)
  os.makedirs(out, exist_ok=True)
  for plot, name in zip((plot_ppl_vs_sparsity, plot_flip_rate, plot_dense_to_sparse), PLOTS):
    plot(runs, os.path.join(out, name))
  report = (f"# Sweep results: {root}\n\n{table(runs, unstarted)}\n\n"
            + "\n".join(f"![{name}]({name})" for name in PLOTS) + "\n")
  with open(os.path.join(out, "results.md"), "w") as f:
    f.write(report)
  return report


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; use --flag=value.")
  root, out = flags.FLAGS.root, flags.FLAGS.out or os.path.join(flags.FLAGS.root, "analysis")
  try:
    print(analyze(root, out))
  except FileNotFoundError as e:
    raise SystemExit(f"error: {e}")
  print(f"Written to {out}.")


if __name__ == "__main__":
  flags.DEFINE_string("root", None, "Sweep root: one workdir per run.", required=True)
  flags.DEFINE_string("out", "", "Output directory (default: ROOT/analysis).")
  app.run(main)
