"""The embedded default: a tiny 6:8 Sparse BitNet on the Python standard library's source code.

python -m sbitnet.train            # runs this on a 2-core CPU in a few minutes
"""

from sbitnet.config import Config


def get_config(arg: str | None = None) -> Config:
  """The name is derived from the preset and the arm (`config.run_name`), so that overriding the
  arm (`--config.sparsity.n=2 --config.sparsity.m=4`) also gives the run its own directory."""
  del arg
  return Config(name="")
