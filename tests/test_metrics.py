import glob
import json
import os

import numpy as np
import pytest

from sbitnet.metrics import MetricsWriter, peak_flops, read_metrics


class FakeDevice:
  def __init__(self, kind):
    self.device_kind = kind


def test_jsonl_and_tensorboard(tmp_path):
  writer = MetricsWriter(str(tmp_path), tensorboard=True)
  writer.write(1, {"loss": np.float32(2.5), "hist": np.array([0.25, 0.5, 0.25])})
  writer.write(2, {"val_ppl": 7.0})
  writer.close()
  records = read_metrics(str(tmp_path))
  assert records == [{"step": 1, "loss": 2.5, "hist": [0.25, 0.5, 0.25]},
                     {"step": 2, "val_ppl": 7.0}]
  assert json.loads(open(tmp_path / "metrics.jsonl").readline())["step"] == 1
  assert glob.glob(os.path.join(tmp_path, "tensorboard", "events.out.tfevents.*"))


def test_a_resumed_run_drops_the_records_after_its_checkpoint(tmp_path):
  """A run killed after step 6 with its last checkpoint at 4 logged 5 and 6 (and cut a line
  short); resuming at 4 keeps steps <= 4 and appends cleanly; a fresh start keeps none."""
  writer = MetricsWriter(str(tmp_path))
  for step in range(1, 7):
    writer.write(step, {"loss": float(step)})
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 7, "lo')
  assert [r["step"] for r in read_metrics(str(tmp_path))] == [1, 2, 3, 4, 5, 6]
  resumed = MetricsWriter(str(tmp_path), start_step=4)
  resumed.write(5, {"loss": 5.5})
  assert [(r["step"], r["loss"]) for r in read_metrics(str(tmp_path))][-2:] == [(4, 4.0), (5, 5.5)]
  MetricsWriter(str(tmp_path), start_step=0)
  assert read_metrics(str(tmp_path)) == []


def test_read_metrics_names_a_missing_run(tmp_path):
  with pytest.raises(FileNotFoundError, match="is .* a training workdir"):
    read_metrics(str(tmp_path / "nope"))


def test_peak_table():
  assert peak_flops(FakeDevice("NVIDIA H100 80GB HBM3")) == 989e12
  assert peak_flops(FakeDevice("cpu")) is None
