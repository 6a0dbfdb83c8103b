"""Lazy imports of the optional `[data]` extras."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType


def require(module: str, needed_for: str) -> ModuleType:
  """Imports `module` (e.g. "pyarrow.parquet"), or raises ImportError naming the extra."""
  check_available(module, needed_for)
  return importlib.import_module(module)


def check_available(module: str, needed_for: str) -> None:
  """Raises ImportError naming the `[data]` extra when `module`'s package is not installed;
  cheap (does not import it)."""
  package = module.split(".")[0]
  if importlib.util.find_spec(package) is None:
    raise ImportError(
        f"{needed_for} needs the Python package '{package}', which is not installed. Install the "
        f"data extras with `pip install sbitnet[data]` (pyarrow, sentencepiece, tokenizers), or "
        f"`pip install {package}`.")
