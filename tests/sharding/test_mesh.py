"""Meshes from config, parameter shardings as declared, and the N:M-groups-per-shard check."""

import jax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from sbitnet.config import ConfigError
from sbitnet.models import DecoderLM
from sbitnet.sharding import check_nm_shards, logical_to_mesh, make_mesh
from sbitnet.train.run import prepare
from tests.sharding.helpers import mesh_of, tiny_config, train_state


def test_make_mesh_fills_and_rejects():
  assert dict(make_mesh(-1, 2, 2).shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  assert dict(make_mesh(1, -1, 1).shape) == {"data": 1, "fsdp": 8, "tensor": 1}
  with pytest.raises(ValueError, match="cannot fill 8 devices"):
    make_mesh(-1, 3, 1)
  with pytest.raises(ValueError, match="has 4 devices but 8"):
    make_mesh(2, 2, 1)


def test_parameter_shardings_are_as_declared():
  cfg, model_cfg = tiny_config()
  mesh = mesh_of((2, 2, 2))
  _, state, _, _ = train_state(cfg, model_cfg, mesh)
  blocks = state.params["blocks"]
  expected = {
      ("embedding",): P("tensor", "fsdp"),                           # (vocab, embed)
      ("blocks", "attn", "qkv", "kernel"): P(None, "fsdp", "tensor"),   # (layers, embed, heads)
      ("blocks", "attn", "o", "kernel"): P(None, "tensor", "fsdp"),     # (layers, heads, embed)
      ("blocks", "mlp", "gate_up", "kernel"): P(None, "fsdp", "tensor"),  # (layers, embed, mlp)
      ("blocks", "mlp", "down", "kernel"): P(None, "tensor", "fsdp"),   # (layers, mlp, embed)
      ("blocks", "attn_norm", "scale"): P(None, None),
      ("final_norm", "scale"): P(None),
  }
  for path, spec in expected.items():
    value = state.params
    for key in path:
      value = value[key]
    assert value[...].sharding.spec == spec, path
    assert value[...].sharding.mesh == mesh
  shard = blocks["mlp"]["down"]["kernel"][...].addressable_shards[0].data
  assert shard.shape == (2, 128 // 2, 64 // 2)  # never the whole kernel on one device
  moments = [x for x in jax.tree.leaves(state.opt_state) if x.shape == (2, 128, 64)]
  assert len(moments) == 2 and all(x.sharding.spec == P(None, "tensor", "fsdp") for x in moments)


def test_undividable_axis_is_replicated():
  mesh = mesh_of((1, 1, 8))
  assert logical_to_mesh(("vocab", "embed"), (260, 64), mesh) == P(None, None)
  assert logical_to_mesh(("vocab", "embed"), (256, 64), mesh) == P("tensor", None)


def sparse_layers(**model):
  cfg, model_cfg = tiny_config(**model)
  return nnx.eval_shape(lambda: DecoderLM(cfg, model_cfg, rngs=nnx.Rngs(0))).sparse_layers()


def test_whole_nm_groups_per_shard():
  check_nm_shards(sparse_layers(), mesh_of((2, 2, 2)))          # 64/2, 128/2, 64/2: multiples of 8
  check_nm_shards(sparse_layers(), mesh_of((1, 1, 8)))          # d_ff 128/8 = 16
  with pytest.raises(ConfigError, match=r"'blocks/mlp/down'.*'mlp', size 80.*'tensor' of size 8"
                                        r".*hold 10 inputs.*mesh.tensor in \[1, 2, 5, 10\]"):
    check_nm_shards(sparse_layers(d_ff=80), mesh_of((1, 1, 8)))
  with pytest.raises(ConfigError, match=r"'blocks/(attn/qkv|mlp/gate_up)'.*'embed', size 32.*"
                                        r"'fsdp' of size 8.*mesh.fsdp in \[1, 2, 4\]"):
    check_nm_shards(sparse_layers(d_model=32), mesh_of((1, 8, 1)))
  check_nm_shards(sparse_layers(d_ff=80), mesh_of((1, 1, 1)))   # unsplit: any size m divides


def test_prepare_rejects_split_groups_before_any_work(tmp_path):
  cfg, _ = tiny_config(d_ff=96)
  cfg.mesh.tensor = 8
  cfg.data.cache_dir = str(tmp_path / "cache")
  with pytest.raises(ConfigError, match=r"'blocks/mlp/down'.*size 96.*mesh.tensor in \[1, 2, 3, "
                                        r"4, 6, 12\]"):
    prepare(cfg, str(tmp_path / "run"))
  assert not (tmp_path / "cache").exists()
