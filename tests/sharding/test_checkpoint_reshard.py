"""A checkpoint written on one mesh restores exactly onto one device and onto another mesh."""

import jax
import numpy as np
import pytest

from sbitnet.checkpoint import Checkpointer
from tests.sharding.helpers import mesh_of, tiny_config, train_state


@pytest.mark.parametrize("target", [(1, 1, 1), (1, 8, 1), (4, 1, 2)],
                         ids=lambda s: "x".join(map(str, s)))
def test_restore_onto_another_mesh(tmp_path, target):
  cfg, model_cfg = tiny_config()
  _, saved, _, _ = train_state(cfg, model_cfg, mesh_of((2, 2, 2)))
  saved = saved.replace(step=saved.step + 7, params=jax.tree.map(  # not the init a restore starts from
      lambda x: x + np.float32(0.5), saved.params))
  checkpointer = Checkpointer(str(tmp_path / "checkpoints"), async_save=False)
  checkpointer.save(saved, {"position": 3}, {"model": {}})

  _, fresh, shardings, _ = train_state(cfg, model_cfg, mesh_of(target))
  restored, data_state = checkpointer.restore(fresh, shardings)
  assert data_state == {"position": 3} and int(restored.step) == 7
  assert jax.tree.map(lambda x: x.sharding, restored) == shardings
  for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(saved)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
