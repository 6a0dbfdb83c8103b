"""Thin Flax NNX layers over `sbitnet.ops`."""

from sbitnet.nn.attention import Attention
from sbitnet.nn.block import DecoderBlock
from sbitnet.nn.kv_cache import KVCache
from sbitnet.nn.linear import SparseBitLinear
from sbitnet.nn.mlp import SwiGLU
from sbitnet.nn.norm import RMSNorm

__all__ = ["Attention", "DecoderBlock", "KVCache", "RMSNorm", "SparseBitLinear", "SwiGLU"]
