import grain
import numpy as np
import pytest

from sbitnet import data
from sbitnet.data.pipeline import num_windows

SEQ, BATCH = 16, 8


def _window_index(stream):
  """Maps each window's tokens to its index (windows of random text are unique)."""
  n = num_windows(stream, SEQ)
  index = {tuple(stream[i * SEQ:i * SEQ + SEQ + 1].tolist()): i for i in range(n)}
  assert len(index) == n
  return index


def _window_ids(batch, index):
  rows = np.concatenate([batch["inputs"], batch["targets"][:, -1:]], axis=1)
  return [index[tuple(row.tolist())] for row in rows]


def _equal(a, b):
  return all(np.array_equal(a[k], b[k]) for k in ("inputs", "targets"))


def test_shapes_dtypes_and_shift(text_splits):
  ds = data.train_dataset(text_splits, seq_len=SEQ, global_batch_size=BATCH, seed=0)
  assert isinstance(ds, grain.MapDataset)
  batch = ds[5]
  assert set(batch) == {"inputs", "targets"}
  for value in batch.values():
    assert value.shape == (BATCH, SEQ) and value.dtype == np.int32
  np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
  _window_ids(batch, _window_index(text_splits.train))  # every row is a window of the stream


def test_same_seed_same_batches_other_seed_different(text_splits):
  make = lambda seed: data.train_dataset(text_splits, seq_len=SEQ, global_batch_size=BATCH,
                                         seed=seed)
  a, b, c = make(3), make(3), make(4)
  steps = [0, 1, 7, 1000]
  assert all(_equal(a[s], b[s]) for s in steps)
  assert not any(_equal(a[s], c[s]) for s in steps)
  assert not _equal(a[0], a[1])


def test_epochs_cover_every_window_and_reshuffle(text_splits):
  index = _window_index(text_splits.train)
  n = len(index)
  ds = data.train_dataset(text_splits, seq_len=SEQ, global_batch_size=BATCH, seed=0)
  ids = [i for s in range(2 * n // BATCH + 1) for i in _window_ids(ds[s], index)]
  first, second = ids[:n], ids[n:2 * n]
  assert sorted(first) == list(range(n)) and sorted(second) == list(range(n))
  assert first != second and first != list(range(n))


def test_iterator_matches_random_access_and_state_round_trip(text_splits):
  make = lambda: data.train_dataset(text_splits, seq_len=SEQ, global_batch_size=BATCH, seed=1)
  it = iter(make().to_iter_dataset(data.READ_OPTIONS))
  consumed = [next(it) for _ in range(5)]
  direct = make()
  assert all(_equal(consumed[s], direct[s]) for s in range(5))
  state = it.get_state()
  expected = [next(it) for _ in range(3)]
  resumed = iter(make().to_iter_dataset(data.READ_OPTIONS))
  resumed.set_state(state)
  assert all(_equal(resumed_batch, want) for resumed_batch, want in
             zip([next(resumed) for _ in range(3)], expected))
  assert all(_equal(expected[k], direct[5 + k]) for k in range(3))


def test_grain_checkpoint_handler_round_trip(text_splits, tmp_path):
  make = lambda: iter(data.train_dataset(text_splits, seq_len=SEQ, global_batch_size=BATCH,
                                         seed=2).to_iter_dataset(data.READ_OPTIONS))
  it = make()
  for _ in range(4):
    next(it)
  handler = grain.checkpoint.CheckpointHandler()
  handler.save(tmp_path, item=it)
  expected = next(it)
  restored = handler.restore(tmp_path, item=make())
  assert _equal(next(restored), expected)


@pytest.mark.parametrize("process_count", [1, 2, 4])
def test_host_slices_concatenate_to_global_batch(text_splits, process_count):
  full = data.train_dataset(text_splits, seq_len=SEQ, global_batch_size=BATCH, seed=0)
  hosts = [data.train_dataset(text_splits, seq_len=SEQ, global_batch_size=BATCH, seed=0,
                              process_index=p, process_count=process_count)
           for p in range(process_count)]
  for step in (0, 3, 50):
    parts = [host[step] for host in hosts]
    assert parts[0]["inputs"].shape == (BATCH // process_count, SEQ)
    for key in ("inputs", "targets"):
      np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), full[step][key])


def test_eval_batches_fixed_in_order_and_sliced(text_splits):
  index = _window_index(text_splits.val)
  batches = data.eval_batches(text_splits, seq_len=SEQ, batch_size=4, max_batches=None)
  assert len(batches) == len(index) // 4
  assert [i for b in batches for i in _window_ids(b, index)] == list(range(4 * len(batches)))
  assert len(data.eval_batches(text_splits, seq_len=SEQ, batch_size=4, max_batches=2)) == 2
  halves = [data.eval_batches(text_splits, seq_len=SEQ, batch_size=4, max_batches=3,
                              process_index=p, process_count=2) for p in range(2)]
  for b in range(3):
    np.testing.assert_array_equal(
        np.concatenate([halves[0][b]["inputs"], halves[1][b]["inputs"]]), batches[b]["inputs"])
    assert halves[0][b]["targets"].shape == (2, SEQ) and halves[0][b]["targets"].dtype == np.int32


def test_pipeline_errors(text_splits):
  with pytest.raises(ValueError, match="multiple of the number of processes"):
    data.train_dataset(text_splits, seq_len=SEQ, global_batch_size=6, seed=0, process_count=4)
  with pytest.raises(ValueError, match="process_index 2"):
    data.train_dataset(text_splits, seq_len=SEQ, global_batch_size=8, seed=0, process_index=2,
                       process_count=2)
  with pytest.raises(ValueError, match="fewer than one sequence"):
    data.train_dataset(text_splits, seq_len=10**6, global_batch_size=8, seed=0)
  with pytest.raises(ValueError, match="fewer than one batch"):
    data.eval_batches(text_splits, seq_len=SEQ, batch_size=10**6, max_batches=None)


def test_orbax_checkpoint_manager_round_trip(text_splits, tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  make = lambda: iter(data.train_dataset(text_splits, seq_len=SEQ, global_batch_size=BATCH,
                                         seed=5).to_iter_dataset(data.READ_OPTIONS))
  it = make()
  for _ in range(3):
    next(it)
  manager = ocp.CheckpointManager(tmp_path, item_handlers={
      "data": grain.checkpoint.CheckpointHandler()})
  manager.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
  manager.wait_until_finished()
  expected = [next(it) for _ in range(2)]
  restored = manager.restore(3, args=ocp.args.Composite(
      data=grain.checkpoint.CheckpointRestore(make())))["data"]
  assert all(_equal(next(restored), want) for want in expected)
  manager.close()
