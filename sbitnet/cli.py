"""Shared absl plumbing for the entry points: the config flag and clean one-paragraph errors."""

from __future__ import annotations

import logging as logging_std
import os
import sys
from absl import flags, logging
from ml_collections import config_flags

from sbitnet.checkpoint import CheckpointMismatch
from sbitnet.config import ConfigError, check_override_paths, load_python_file

DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "configs", "default.py")
USER_ERRORS = (ConfigError, CheckpointMismatch, ValueError, FileNotFoundError, ImportError)


def define_config_flag() -> flags.FlagHolder:
  """The --config flag. ml_collections reads `--config.<path>` overrides from sys.argv right here,
  so unknown fields are reported (cleanly, exit 2) before it sees them."""
  try:
    check_override_paths(sys.argv[1:])
    check_config_file(sys.argv[1:])
  except ConfigError as e:
    fail(str(e))
  return config_flags.DEFINE_config_file(
      "config", DEFAULT_CONFIG,
      "Experiment config file `path/to/file.py[:arg]` defining get_config(arg); fields are "
      "overridden with --config.<field>=<value>. Default: the embedded tiny 6:8 Sparse BitNet.",
      lock_config=False)


def check_config_file(argv: list[str], flag: str = "config") -> None:
  """Loads a `--config=path[:arg]` experiment file and calls its `get_config(arg)` once, so that a
  missing file or a bad argument is one ConfigError here rather than a traceback from inside the
  flag parser (which loads it again)."""
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith(f"--{flag}=")), None)
  if spec is None:
    return
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise ConfigError(f"--{flag}={spec}: no file {path!r}; pass an experiment file such as "
                      "experiments/four_arms.py[:arg].")
  try:
    load_python_file(path).get_config(arg or None)
  except (ValueError, KeyError, AttributeError) as e:
    raise ConfigError(f"--{flag}={spec}: {e}") from e


class _QuietLibraries(logging_std.Filter):
  """Drops INFO chatter of orbax and grain (each checkpoint logs dozens of lines) and JAX's
  backend probing; keeps warnings and errors."""

  def filter(self, record: logging_std.LogRecord) -> bool:
    noisy = (record.module == "xla_bridge" or
             any(f"{os.sep}{name}{os.sep}" in record.pathname for name in ("orbax", "grain")))
    return record.levelno >= logging_std.WARNING or not noisy


def quiet_library_logs() -> None:
  logging.get_absl_handler().addFilter(_QuietLibraries())


def fail(message: str) -> None:
  """Prints `error: message` and exits with status 2 at once: no training or saving is under way
  when it is called, and skipping interpreter shutdown keeps half-finished orbax/tensorstore reads
  from printing tracebacks after the message."""
  sys.stdout.flush()
  print(f"error: {message}", file=sys.stderr, flush=True)
  os._exit(2)

