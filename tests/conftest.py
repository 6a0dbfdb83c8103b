"""Test setup: CPU only, 8 fake devices for the sharding tests (set before JAX initialises), one
XLA compilation cache per test session, and one trained run of the default arm per session
(`default_run`).

The cache (`JAX_COMPILATION_CACHE_DIR`, a fresh temporary directory unless the caller sets one)
holds compiled programs, not results: the pytest workers and the training runs the CLI tests
start inherit it, so the tiny model's train step is compiled once instead of in every run
(about a third off tests/train/test_resume.py on a 2-core machine). It starts empty every session
and is removed at exit."""

import atexit
import fcntl
import os
import shutil
import tempfile

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache = tempfile.mkdtemp(prefix="sbitnet-tests-xla-cache-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")


@pytest.fixture(scope="session")
def default_run(tmp_path_factory) -> tuple[str, str]:
  """(workdir, stdout) of `python -m sbitnet.train` on the shared tiny config, default arm (6:8
  Sparse BitNet), 4 steps: the trained run that the CLI and inference tests read and must not
  change (copy it to change it). The pytest-xdist workers of a session share it: the first to
  ask trains it in the session's temporary root while the others wait on a lock."""
  from tests.train.helpers import cli_flags, run_cli
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent  # the session's root, above the workers' own
  root = root / "default_run"
  with open(f"{root}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not (root / "stdout.txt").is_file():
      result = run_cli("sbitnet.train", f"--workdir={root / 'run'}",
                       *cli_flags(str(root / "cache")))
      assert result.returncode == 0, result.stderr[-3000:]
      (root / "stdout.txt").write_text(result.stdout)
  return str(root / "run"), (root / "stdout.txt").read_text()
