"""Data: the embedded stdlib corpus and local text/JSONL/Parquet/prepared-token sources,
tokenizers, and deterministic grain pipelines (the batch of step s is a function of (seed, s))."""

from sbitnet.data.config import SOURCES, DataConfig
from sbitnet.data.pipeline import (READ_OPTIONS, eval_batches, train_dataset,
                                   validation_batch_count)
from sbitnet.data.splits import Splits, load_splits, validate
from sbitnet.data.tokenizers import Tokenizer, get_tokenizer

__all__ = ["READ_OPTIONS", "SOURCES", "DataConfig", "Splits", "Tokenizer", "eval_batches", "get_tokenizer",
           "load_splits", "train_dataset", "validate", "validation_batch_count"]
