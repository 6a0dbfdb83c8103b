"""Pure-JAX Sparse-BitNet ops (no Flax): masks, quantizers, the effective weight and its matmuls.

Every function works under jit, grad, vmap, lax.scan, jax.checkpoint and shard_map, and keeps the
dtype of its input. Gradients are reverse mode: the effective weight's straight-through gradient
is a custom VJP, so `jax.jvp` / `jacfwd` with respect to a weight are not defined.
"""

from sbitnet.ops.kv_update import write_rows
from sbitnet.ops.nm_mask import nm_mask
from sbitnet.ops.prologue import Prologue, RMSNormPrologue, SwiGLUPrologue, rms_norm, swiglu
from sbitnet.ops.quantizers import (absmax_int8, absmax_multiplier, absmean_scale,
                                    absmean_ternary, fake_ternary, quantize_activations,
                                    scale_per_column, ternary_codes)
from sbitnet.ops.rope import apply_rope, rope_tables
from sbitnet.ops.sparse_ternary import (WeightSpec, apply_weight_spec, bitlinear,
                                        sparse_ternary_dot_general, sparse_ternary_weight,
                                        spec_dot_general)
from sbitnet.ops.stats import mask_flip_rate, ternary_histogram, weight_stats, zero_fraction

__all__ = [
    "Prologue", "RMSNormPrologue", "SwiGLUPrologue", "WeightSpec", "absmax_int8",
    "absmax_multiplier", "absmean_scale", "absmean_ternary", "apply_rope", "apply_weight_spec",
    "bitlinear", "fake_ternary", "mask_flip_rate", "nm_mask", "quantize_activations", "rms_norm",
    "rope_tables", "scale_per_column", "sparse_ternary_dot_general", "sparse_ternary_weight",
    "spec_dot_general", "swiglu", "ternary_codes", "ternary_histogram", "weight_stats",
    "write_rows", "zero_fraction",
]
