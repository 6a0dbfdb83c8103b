"""A real two-run sweep of tiny trainings through the local backend: one run interrupted first
(--stop_at) is resumed, the other trained; a second sweep skips both; the analysis of the root
shows exactly what their metrics.jsonl say. One test, so the trainings run once; the listing and
the second sweep run in this process (the CLI's dry run is tested in test_sweep.py)."""

import os

from experiments.analyze import analyze
from launch import sweep
from sbitnet.metrics import read_metrics
from tests.experiments.helpers import TWO_RUNS, run_module, tiny_sets
from tests.train.helpers import TINY

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_sweep_resumes_skips_and_analyzes(tmp_path, capsys):
  root = str(tmp_path / "root")
  # stats every step: the resumed run logs a flip rate (the first snapshot after a resume has none)
  sets = tiny_sets(str(tmp_path / "cache")) + ["--set=train.stats_every=1"]
  flags = [f"--experiment={TWO_RUNS}", "--scale=cpu", f"--root={root}", "--gpus=0", *sets]
  overrides = sweep.parse_overrides([s.removeprefix("--set=") for s in sets])
  dense, sparse = sweep.expand(TWO_RUNS, "cpu", root, overrides)
  steps = TINY["train.steps"]

  # An interrupted run: the sweep's own command, stopped after step 2.
  os.makedirs(sparse.workdir)
  first = run_module(*sparse.command[2:], "--stop_at=2")
  assert first.returncode == 0, first.stderr[-3000:]
  listed = sweep.listing(sweep.expand(TWO_RUNS, "cpu", root, overrides))  # what --dry-run prints
  assert "nm_sweep-bf16-0of0: new" in listed
  assert f"nm_sweep-bf16-6of8: partial at step 2/{steps}" in listed

  out = run_module("launch.sweep", *flags)
  assert out.returncode == 0, out.stdout + out.stderr
  assert f"start nm_sweep-bf16-0of0 on the CPU ({dense.workdir})" in out.stdout
  assert f"resume from step 2 nm_sweep-bf16-6of8 on the CPU ({sparse.workdir})" in out.stdout
  with open(os.path.join(sparse.workdir, "train.log")) as f:
    assert "Resumed from" in f.read()
  for run in (dense, sparse):
    records = read_metrics(run.workdir)
    assert [r["step"] for r in records if "loss" in r] == [2, 4]  # resumed, not restarted
    assert any(r["step"] == steps and "val_ppl" in r for r in records)
  logged = {r.workdir: open(os.path.join(r.workdir, "metrics.jsonl")).read()
            for r in (dense, sparse)}

  assert sweep.run_local(sweep.expand(TWO_RUNS, "cpu", root, overrides), [], 1) == 0  # run again
  assert capsys.readouterr().out.splitlines() == [
      f"skip nm_sweep-bf16-0of0: done ({dense.workdir})",
      f"skip nm_sweep-bf16-6of8: done ({sparse.workdir})"]
  assert {w: open(os.path.join(w, "metrics.jsonl")).read() for w in logged} == logged

  report = analyze(root)
  rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in report.splitlines()
          if line.startswith("| nm_sweep")}
  final = {}
  for run in (dense, sparse):
    records = read_metrics(run.workdir)
    final[run.workdir] = {"ppl": [r["val_ppl"] for r in records if "val_ppl" in r][-1],
                          "zeros": [r["zero_fraction"] for r in records
                                    if "zero_fraction" in r][-1],
                          "flips": [r["flip_rate"] for r in records if "flip_rate" in r]}
  d, s = final[dense.workdir], final[sparse.workdir]
  assert rows[os.path.basename(dense.workdir)][1:] == [
      "BF16", "dense", "—", f"{d['ppl']:.3f}", "—", "—", f"{d['zeros']:.4f}", "— |"]
  assert not d["flips"] and s["flips"]
  assert rows[os.path.basename(sparse.workdir)][1:] == [
      "BF16", "6:8", "100 %", f"{s['ppl']:.3f}", f"{s['ppl'] - d['ppl']:+.3f}",
      f"{100 * (s['ppl'] - d['ppl']) / d['ppl']:+.2f}", f"{s['zeros']:.4f}",
      f"{s['flips'][-1]:.2e} |"]
  assert s["zeros"] >= 0.25
  analysis = os.path.join(root, "analysis")
  assert open(os.path.join(analysis, "results.md")).read() == report
  for name in ("ppl_vs_sparsity.png", "flip_rate.png", "dense_to_sparse.png"):
    with open(os.path.join(analysis, name), "rb") as f:
      assert f.read(8) == PNG_MAGIC
