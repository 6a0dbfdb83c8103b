"""Test setup: CPU only, 8 fake devices for the sharding tests (set before JAX initialises), and
one XLA compilation cache per test session.

The cache (`JAX_COMPILATION_CACHE_DIR`, a fresh temporary directory unless the caller sets one)
holds compiled programs, not results: the pytest workers and the training runs the CLI tests
start inherit it, so the tiny model's train step is compiled once instead of in every run
(about a third off tests/train/test_resume.py on a 2-core machine). It starts empty every session
and is removed at exit."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache = tempfile.mkdtemp(prefix="sbitnet-tests-xla-cache-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
