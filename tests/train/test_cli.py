"""The training, eval and sample entry points as a user runs them, and their bad-input errors."""

import json
import os
import pathlib
import shutil

import pytest

from tests.train.helpers import cli_flags, run_cli

ARMS = {"dense_bf16": ("none", 0, 0), "sparse_bf16": ("none", 6, 8),
        "dense_bitnet": ("ternary", 0, 0), "sparse_bitnet": ("ternary", 6, 8)}


def read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def check_run(workdir, stdout, weights, n, m):
  """What a finished training run of an arm leaves: its summary, metrics, config and plot."""
  assert "validation PPL" in stdout and "curves.png" in stdout
  records = read_metrics(workdir)
  losses = [r["loss"] for r in records if "loss" in r]
  assert len(losses) == 2 and all(l > 0 for l in losses)
  assert any("val_ppl" in r for r in records)
  zero = [r["zero_fraction"] for r in records if "zero_fraction" in r][-1]
  if n:
    assert zero >= 1 - n / m
    assert any("flip_rate" in r for r in records)
  elif weights == "none":
    assert zero < 0.01
  saved = json.load(open(workdir / "config.json"))
  assert saved["config"]["sparsity"]["n"] == n and "sbitnet_version" in saved
  assert (workdir / "curves.png").stat().st_size > 0


def test_default_arm_trains_evaluates_and_samples(default_run):
  """The default arm (sparse_bitnet: the shared run of tests/conftest.py), then eval and sample
  on its workdir."""
  workdir, stdout = default_run
  check_run(pathlib.Path(workdir), stdout, *ARMS["sparse_bitnet"])
  evaluated = run_cli("sbitnet.eval", f"--workdir={workdir}")
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  assert "step 4: val_loss" in evaluated.stdout
  sampled = run_cli("sbitnet.sample", f"--workdir={workdir}", "--max_new_tokens=8",
                    "--prompt=import ")
  assert sampled.returncode == 0 and sampled.stdout.startswith("import "), sampled.stderr[-3000:]


# The other arms: by default the dense baseline; the two in between under -m slow.
@pytest.mark.parametrize("arm", [pytest.param(arm, marks=pytest.mark.slow)
                                 if arm in ("sparse_bf16", "dense_bitnet") else arm
                                 for arm in ARMS if arm != "sparse_bitnet"])
def test_pulse_each_arm(arm, tmp_path):
  weights, n, m = ARMS[arm]
  workdir = tmp_path / arm
  result = run_cli("sbitnet.train", f"--workdir={workdir}", *cli_flags(
      str(tmp_path / "cache"), **{"quant.weights": weights, "sparsity.n": n, "sparsity.m": m}))
  assert result.returncode == 0, result.stderr[-3000:]
  check_run(workdir, result.stdout, weights, n, m)


def test_dense_to_sparse_switches_half_way(tmp_path):
  workdir = tmp_path / "d2s"
  result = run_cli("sbitnet.train", f"--workdir={workdir}", *cli_flags(
      str(tmp_path / "cache"), **{"sparsity.start_fraction": 0.5, "quant.weights": "none"}))
  assert result.returncode == 0, result.stderr[-3000:]
  records = read_metrics(workdir)
  assert [r["sparse"] for r in records if "sparse" in r] == [False, True]
  zeros = [r["zero_fraction"] for r in records if "zero_fraction" in r]
  assert zeros[0] < 0.25 <= zeros[-1]


def test_a_bad_experiment_file_or_argument_is_one_config_error():
  from sbitnet.cli import check_config_file
  from sbitnet.config import ConfigError
  with pytest.raises(ConfigError, match="no file 'experiments/nonexistent.py'"):
    check_config_file(["--config=experiments/nonexistent.py"])
  with pytest.raises(ConfigError, match="arm='sparse_bitnett' is not one of"):
    check_config_file(["--config=experiments/four_arms.py:arm=sparse_bitnett"])
  with pytest.raises(ConfigError, match="model='qwen2.5-3b' applies to scale=paper only"):
    check_config_file(["--config=experiments/four_arms.py:scale=small,model=qwen2.5-3b"])
  check_config_file(["--config=experiments/four_arms.py:arm=dense_bf16"])


@pytest.mark.parametrize("flags,message", [
    (["--config.sparsity.q=3"], "Unknown config field 'sparsity.q'"),
    (["--config.sparsity.n=5", "--config.sparsity.m=7"], "does not divide the model"),
    (["--config.sparsity.n=9", "--config.sparsity.m=8"], "need 1 <= n < m"),
    (["--config.data.source=text", "--config.data.path=/nonexistent/corpus"], "/nonexistent/corpus"),
    (["--config.quant.weights=int2"], "quant.weights='int2' is not valid"),
    (["--config.data.seq_len=4096"], "exceeds model.max_positions"),
    (["--config.train.batch_size=6", "--config.train.grad_accum=4"], "not divisible"),
    (["--config.train.eval_batches=0"], "train.eval_batches=0 must be >= 1"),
    (["--config.train.batch_size=4096"], "lower train.batch_size (evaluation batches have its size)"),
])
def test_bad_input_is_one_clear_error(flags, message, tmp_path):
  workdir = tmp_path / "run"
  result = run_cli("sbitnet.train", f"--workdir={workdir}", *cli_flags(str(tmp_path / "c")), *flags)
  assert result.returncode != 0
  assert message in result.stderr
  assert "Traceback" not in result.stderr
  assert not workdir.exists()


def trained_copy(default_run, tmp_path):
  """A copy of the shared default-arm run (tests/conftest.py), to be changed by the test."""
  workdir = tmp_path / "run"
  shutil.copytree(default_run[0], workdir)
  return workdir


def test_incompatible_checkpoint_is_refused_and_workdir_untouched(default_run, tmp_path):
  workdir = trained_copy(default_run, tmp_path)
  cache = str(tmp_path / "cache")
  before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
  result = run_cli("sbitnet.train", f"--workdir={workdir}",
                   *cli_flags(cache, **{"model.d_model": 128, "train.steps": 8}))
  assert result.returncode != 0
  assert "different model" in result.stderr and "d_model: checkpoint 64 vs config 128" in result.stderr
  assert {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()} == before


def test_corrupt_checkpoint_is_one_clear_error_and_workdir_untouched(default_run, tmp_path):
  workdir = trained_copy(default_run, tmp_path)
  cache = str(tmp_path / "cache")
  data_file = sorted((workdir / "checkpoints" / "4" / "params" / "d").iterdir())[0]
  data_file.write_bytes(b"not a checkpoint")
  before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
  for module, flags in (("sbitnet.train", [*cli_flags(cache, **{"train.steps": 8}),
                                           "--force_resume"]),
                        ("sbitnet.eval", [])):
    result = run_cli(module, f"--workdir={workdir}", *flags)
    assert result.returncode != 0
    assert "checkpoint at step 4" in result.stderr and "could not be read" in result.stderr
    assert "Traceback" not in result.stderr
  assert {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()} == before
