"""The embedded default: a tiny 6:8 Sparse BitNet on the Python standard library's source code.

python -m sbitnet.train            # runs this on a 2-core CPU in a few minutes
"""

from sbitnet.config import Config


def get_config(arg: str | None = None) -> Config:
  del arg
  return Config(name="tiny-sparse-bitnet-6of8")
