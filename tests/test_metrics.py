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


def test_read_metrics_names_a_missing_run(tmp_path):
  with pytest.raises(FileNotFoundError, match="is .* a training workdir"):
    read_metrics(str(tmp_path / "nope"))


def test_peak_table():
  assert peak_flops(FakeDevice("NVIDIA H100 80GB HBM3")) == 989e12
  assert peak_flops(FakeDevice("cpu")) is None
