"""Thin Flax NNX layers over `sbitnet.ops`."""

from sbitnet.nn.linear import SparseBitLinear
from sbitnet.nn.norm import RMSNorm

__all__ = ["RMSNorm", "SparseBitLinear"]
