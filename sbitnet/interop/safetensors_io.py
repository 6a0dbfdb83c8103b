"""Reading and writing the tensors of a local Hugging Face checkpoint (`*.safetensors`).

A checkpoint directory holds `model.safetensors`, or shards listed by `model.safetensors.index.json`
(`{"weight_map": {tensor name: file name}}`). Tensors are read one at a time (memory-mapped by the
`safetensors` package), as NumPy arrays; bfloat16 comes back as `ml_dtypes.bfloat16`.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Mapping

import ml_dtypes  # noqa: F401  (registers bfloat16 with NumPy, which safetensors' NumPy API needs)
import numpy as np

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


def _safetensors(purpose: str):
  """The `safetensors` package (with its NumPy API), or ImportError naming the `[hf]` extra."""
  try:
    import safetensors
    import safetensors.numpy
  except ImportError as e:
    raise ImportError(f"{purpose} needs the Python package 'safetensors', which is not installed. "
                      "Install it with `pip install sbitnet[hf]` (or `pip install safetensors`).") from e
  return safetensors


class HFTensors:
  """The tensors of a checkpoint directory, by name: `names`, `shape(name)`, `get(name)`."""

  def __init__(self, directory: str):
    safetensors = _safetensors(f"Reading the Hugging Face checkpoint {directory!r}")
    index = os.path.join(directory, INDEX_FILE)
    if os.path.isfile(index):
      with open(index) as f:
        weight_map = json.load(f)["weight_map"]
      files = sorted(set(weight_map.values()))
    else:
      files = sorted(os.path.basename(p) for p in glob.glob(os.path.join(directory, "*.safetensors")))
      weight_map = None
    if not files:
      raise FileNotFoundError(f"No *.safetensors file in {directory!r}: a Hugging Face checkpoint "
                              f"directory holds {SINGLE_FILE} or the shards listed in {INDEX_FILE} "
                              "(PyTorch .bin checkpoints are not read; re-save with safetensors).")
    self._handles = {}
    for name in files:
      path = os.path.join(directory, name)
      if not os.path.isfile(path):
        raise FileNotFoundError(f"{INDEX_FILE} in {directory!r} lists the shard {name!r}, which "
                                "does not exist.")
      self._handles[name] = safetensors.safe_open(path, framework="np")
    if weight_map is None:
      weight_map = {key: name for name, handle in self._handles.items() for key in handle.keys()}
    self._file_of = weight_map

  @property
  def names(self) -> list[str]:
    return sorted(self._file_of)

  def __contains__(self, name: str) -> bool:
    return name in self._file_of

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._handles[self._file_of[name]].get_slice(name).get_shape())

  def get(self, name: str) -> np.ndarray:
    """The tensor `name` in its stored dtype."""
    return self._handles[self._file_of[name]].get_tensor(name)


def write_safetensors(path: str, tensors: Mapping[str, np.ndarray]) -> None:
  """Writes one `.safetensors` file with the `{"format": "pt"}` metadata transformers expects."""
  numpy_api = _safetensors(f"Writing {path!r}").numpy
  numpy_api.save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, path,
                      metadata={"format": "pt"})
  umask = os.umask(0)  # safetensors writes 0600; give it the mode any other new file gets
  os.umask(umask)
  os.chmod(path, 0o666 & ~umask)
