"""Batches for training and evaluation: windows of `seq_len + 1` tokens over a packed stream.

Window i of a stream is `stream[i * seq_len : i * seq_len + seq_len + 1]`; consecutive windows
share one token, so every token but the first is a target exactly once per epoch.
"""

from __future__ import annotations

import grain
import numpy as np

from sbitnet.data.splits import Splits


def num_windows(stream: np.ndarray, seq_len: int) -> int:
  """How many windows of `seq_len + 1` tokens `stream` holds."""
  return max(0, (len(stream) - 1) // seq_len)


def read_windows(stream: np.ndarray, window_ids: np.ndarray, seq_len: int) -> dict[str, np.ndarray]:
  """{"inputs", "targets"}: int32 [len(window_ids), seq_len]; targets are inputs shifted by one."""
  rows = np.stack([stream[i * seq_len:i * seq_len + seq_len + 1] for i in window_ids.tolist()])
  rows = rows.astype(np.int32)
  return {"inputs": rows[:, :-1], "targets": rows[:, 1:]}


class _ReadHostRows(grain.transforms.Map):
  """Global batch of window ids -> this host's rows of the batch, read from the stream."""

  def __init__(self, stream: np.ndarray, seq_len: int, start: int, stop: int):
    self._stream, self._seq_len, self._start, self._stop = stream, seq_len, start, stop

  def map(self, window_ids: np.ndarray) -> dict[str, np.ndarray]:
    return read_windows(self._stream, window_ids[self._start:self._stop], self._seq_len)


# How the training iterator reads ahead: grain's default (16 threads, 500 batches) would hold
# hundreds of global batches in host memory; reading windows from memory-mapped tokens is cheap,
# so a few threads and batches keep the device fed.
READ_OPTIONS = grain.ReadOptions(num_threads=2, prefetch_buffer_size=8)


def train_dataset(splits: Splits, *, seq_len: int, global_batch_size: int, seed: int,
                  process_index: int = 0, process_count: int = 1) -> grain.MapDataset:
  """The infinite training batches; `ds[s]` is the batch of step `s`, a function of (seed, s).

  The windows of `splits.train` are shuffled with `seed`, reshuffled every epoch (grain's
  `repeat` reseeds), and cut into global batches of `global_batch_size` consecutive shuffled
  windows (a batch may straddle two epochs). Host `process_index` of `process_count` reads only
  rows `[process_index * local, (process_index + 1) * local)` of each, `local =
  global_batch_size // process_count`, so the hosts' items concatenate to the global batch.

  Returns:
    MapDataset of {"inputs": int32 [local, seq_len], "targets": int32 [local, seq_len]}; iterate
    it with `.to_iter_dataset(READ_OPTIONS)`.
  """
  _check_hosts(global_batch_size, process_index, process_count)
  windows = num_windows(splits.train, seq_len)
  if windows < 1:
    raise ValueError(f"The training stream has {len(splits.train)} tokens, fewer than one "
                     f"sequence of seq_len + 1 = {seq_len + 1}; use a shorter seq_len or more data.")
  local = global_batch_size // process_count
  return (grain.MapDataset.range(windows)
          .shuffle(seed=seed)
          .repeat()
          .batch(global_batch_size, drop_remainder=True)
          .map(_ReadHostRows(splits.train, seq_len, process_index * local,
                             (process_index + 1) * local)))


def validation_batch_count(splits: Splits, *, seq_len: int, batch_size: int) -> int:
  """How many whole batches of `batch_size` windows `splits.val` holds; ValueError when none."""
  count = num_windows(splits.val, seq_len) // batch_size
  if count < 1:
    raise ValueError(f"The validation stream has {len(splits.val)} tokens, fewer than one batch "
                     f"of {batch_size} sequences of seq_len + 1 = {seq_len + 1}; lower "
                     f"train.batch_size (evaluation batches have its size) or data.seq_len, or "
                     f"raise data.val_fraction.")
  return count


def eval_batches(splits: Splits, *, seq_len: int, batch_size: int, max_batches: int | None,
                 process_index: int = 0, process_count: int = 1) -> list[dict[str, np.ndarray]]:
  """Validation batches: consecutive windows of `splits.val` in order, no shuffling.

  Batch b holds windows `[b * batch_size, (b + 1) * batch_size)` (the last partial batch is
  dropped), this host's rows of them as in `train_dataset`; at most `max_batches` batches.

  Returns:
    list of {"inputs": int32 [batch_size // process_count, seq_len], "targets": same}.
  """
  _check_hosts(batch_size, process_index, process_count)
  count = validation_batch_count(splits, seq_len=seq_len, batch_size=batch_size)
  if max_batches is not None:
    count = min(count, max_batches)
  local = batch_size // process_count
  start = process_index * local
  return [read_windows(splits.val, np.arange(b * batch_size + start, b * batch_size + start + local),
                       seq_len) for b in range(count)]


def _check_hosts(batch_size: int, process_index: int, process_count: int) -> None:
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is not in [0, process_count = "
                     f"{process_count}).")
  if batch_size < 1 or batch_size % process_count:
    raise ValueError(f"The batch size {batch_size} must be a positive multiple of the number of "
                     f"processes ({process_count}), each of which reads an equal share.")
