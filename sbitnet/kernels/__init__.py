"""Pallas kernels with their XLA oracles (depend on `sbitnet.ops` only).

`pack` / `unpack` convert int8 ternary codes and gamma to and from the versioned 2-bit
`PackedTernary` format; `ternary_matmul` multiplies activations by a packed weight (XLA oracle or
Pallas kernels); `sparse_quantize_pack` turns a latent weight into a packed N:M-sparse ternary
weight in one fused pass; `decode_attention` is one decode step of grouped-query attention
against a KV cache (RoPE, the cache write and attention in one kernel).
"""

from sbitnet.kernels.decode_attention.api import decode_attention
from sbitnet.kernels.sparse_quantize.api import sparse_quantize_pack
from sbitnet.kernels.ternary_matmul.api import ternary_matmul
from sbitnet.kernels.ternary_matmul.pack import (FORMAT_VERSION, PackedTernary, bits_per_weight,
                                                 pack, unpack)
from sbitnet.kernels.ternary_matmul.reference import unpack_int8

__all__ = ["FORMAT_VERSION", "PackedTernary", "bits_per_weight", "decode_attention", "pack",
           "sparse_quantize_pack", "ternary_matmul", "unpack", "unpack_int8"]
