"""experiments.analyze on workdirs written without training: Δ against the matching dense run,
ablations and dense-to-sparse runs, partial and unstarted runs, the plots and the CLI."""

import os

import pytest

from experiments import ablations, dense_to_sparse, nm_sweep
from experiments.analyze import analyze, collect
from tests.experiments.helpers import run_module, write_run

STEPS = 300


def _records(ppl: float, zeros: float, flips: list[float]) -> list[dict]:
  stats = [{"step": 100 * (i + 1), "flip_rate": f, "zero_fraction": zeros}
           for i, f in enumerate(flips)]
  return [{"step": STEPS, "loss": 3.0}, *stats, {"step": STEPS, "zero_fraction": zeros},
          {"step": STEPS, "val_loss": 3.0, "val_ppl": ppl}]


@pytest.fixture
def root(tmp_path):
  runs = {
      "bitnet-dense": (nm_sweep.get_config("precision=bitnet,n=0,m=0"), _records(20.0, 0.3, [])),
      "bitnet-6of8": (nm_sweep.get_config("precision=bitnet,n=6,m=8"),
                      _records(21.0, 0.5, [0.02, 0.01])),
      "bitnet-p50": (dense_to_sparse.get_config("p=50"), _records(20.5, 0.5, [0.03])),
      "bitnet-mask-from-q": (ablations.get_config("variant=mask_from_quantized"),
                             _records(25.0, 0.5, [0.2])),
      "bf16-6of8": (nm_sweep.get_config("precision=bf16,n=6,m=8"), _records(30.0, 0.25, [0.05])),
      "bitnet-4of8": (nm_sweep.get_config("precision=bitnet,n=4,m=8"),
                      [{"step": 100, "loss": 4.0}, {"step": 100, "flip_rate": 0.1}]),
  }
  other = nm_sweep.get_config("precision=bf16,n=0,m=0")
  other.train.lr = 1e-4  # a dense BF16 run, but no baseline for bf16-6of8: another learning rate
  runs["bf16-dense-lr"] = (other, _records(10.0, 0.0, []))
  for name, (cfg, records) in runs.items():
    write_run(str(tmp_path / name), cfg, records)
  os.makedirs(tmp_path / "crashed")
  (tmp_path / "crashed" / "train.log").write_text("error: ...\n")
  os.makedirs(tmp_path / "slurm")
  return str(tmp_path)


def _rows(report: str) -> dict[str, list[str]]:
  return {cells[1].strip(): [c.strip() for c in cells[2:-1]]
          for cells in (line.split("|") for line in report.splitlines())
          if len(cells) > 2 and not cells[1].strip() in ("run", "---")}


def test_table(root):
  rows = _rows(analyze(root))
  assert rows == {
      "bf16-dense-lr": ["BF16", "dense", "—", "10.000", "—", "—", "0.0000", "—"],
      "bf16-6of8": ["BF16", "6:8", "100 %", "30.000", "—", "—", "0.2500", "5.00e-02"],
      "bitnet-dense": ["BitNet", "dense", "—", "20.000", "—", "—", "0.3000", "—"],
      "bitnet-6of8": ["BitNet", "6:8", "100 %", "21.000", "+1.000", "+5.00", "0.5000", "1.00e-02"],
      "bitnet-mask-from-q": ["BitNet", "6:8", "100 %", "25.000", "+5.000", "+25.00", "0.5000",
                             "2.00e-01"],
      "bitnet-p50": ["BitNet", "6:8", "50 %", "20.500", "+0.500", "+2.50", "0.5000", "3.00e-02"],
  }
  report = open(os.path.join(root, "analysis", "results.md")).read()
  assert "- bitnet-4of8: partial, step 100 of 300" in report
  assert "- crashed: not started (no config.json; see its train.log)" in report
  assert "slurm" not in report


def test_collect_links_dense_runs_and_orders_rows(root):
  runs, unstarted = collect(root)
  by_name = {r.name: r for r in runs}
  assert by_name["bitnet-p50"].dense is by_name["bitnet-dense"]
  assert by_name["bf16-6of8"].dense is None and unstarted == ["crashed"]
  assert not by_name["bitnet-mask-from-q"].main_method and by_name["bitnet-p50"].main_method
  assert by_name["bitnet-4of8"].val_ppl is None and by_name["bitnet-4of8"].flips == [(100, 0.1)]
  assert [r.name for r in runs][:3] == ["bf16-dense-lr", "bf16-6of8", "bitnet-dense"]


def test_cli_writes_plots(root, tmp_path):
  out = str(tmp_path / "out")
  result = run_module("experiments.analyze", f"--root={root}", f"--out={out}")
  assert result.returncode == 0, result.stderr
  assert "| bitnet-6of8 | BitNet | 6:8 |" in result.stdout
  assert sorted(os.listdir(out)) == ["dense_to_sparse.png", "flip_rate.png", "ppl_vs_sparsity.png",
                                     "results.md"]
  missing = run_module("experiments.analyze", f"--root={tmp_path / 'nothing'}")
  assert missing.returncode != 0 and "is not a directory" in missing.stderr


def test_empty_root_still_writes_plots(tmp_path):
  report = analyze(str(tmp_path))
  assert "Unfinished" not in report
  assert len(os.listdir(tmp_path / "analysis")) == 4
