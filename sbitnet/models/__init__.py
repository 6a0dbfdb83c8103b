"""The decoder LM and its presets."""

from sbitnet.models.decoder import DecoderLM, parameter_counts, train_flops_per_token
from sbitnet.models.presets import PRESETS

__all__ = ["DecoderLM", "PRESETS", "parameter_counts", "train_flops_per_token"]
