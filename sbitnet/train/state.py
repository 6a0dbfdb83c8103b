"""The training state pytree and its creation, already sharded."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct
from jax.sharding import Mesh

from sbitnet.sharding import replicated, state_shardings


class TrainState(struct.PyTreeNode):
  step: jax.Array            # int32 scalar: optimizer steps taken
  params: Any                # nnx.State of float32 master parameters
  opt_state: Any             # optax state


def create_train_state(make_model: Callable[[], nnx.Module], optimizer: optax.GradientTransformation,
                       mesh: Mesh) -> tuple[nnx.GraphDef, TrainState, TrainState]:
  """Builds the model inside `jax.jit` with output shardings, so parameters are created sharded
  and the full model never sits on one device; optimizer moments inherit the parameters'
  shardings. Returns (graphdef, state, state shardings)."""
  graphdef, abstract_params = nnx.split(nnx.eval_shape(make_model), nnx.Param)
  param_shardings = state_shardings(abstract_params, mesh)
  params = jax.jit(lambda: nnx.state(make_model(), nnx.Param), out_shardings=param_shardings)()
  opt_shardings = state_shardings(jax.eval_shape(optimizer.init, params), mesh)
  opt_state = jax.jit(optimizer.init, out_shardings=opt_shardings)(params)
  state = TrainState(jax.device_put(jnp.zeros((), jnp.int32), replicated(mesh)), params, opt_state)
  return graphdef, state, jax.tree.map(lambda x: x.sharding, state)
