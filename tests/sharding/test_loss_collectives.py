"""The chunked loss keeps its chunk loops free of collectives when the batch is sharded: the head
is gathered once before the loop and its gradient reduced once after it (each inside the loop
moved the whole head per chunk: ~200 ms of a 550 ms step on 4 H200s)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from sbitnet.sharding import with_mesh
from sbitnet.train.loss import chunked_cross_entropy
from tests.sharding.helpers import mesh_of

COLLECTIVE = re.compile(r"\b(all-gather|reduce-scatter|all-reduce|all-to-all|collective-permute)"
                        r"(-start)?\(")


def computations(hlo: str) -> dict[str, str]:
  """HLO module text -> {computation name: its text}."""
  parts = re.split(r"\n(?=\S)", hlo)
  return {m.group(1): part for part in parts
          if (m := re.match(r"(?:ENTRY )?%?([\w.-]+) ", part))}


def loop_bodies(comps: dict[str, str]) -> set[str]:
  """Names of every while-loop body and condition and of what they call, transitively."""
  found = set()
  todo = [name for text in comps.values()
          for name in re.findall(r"(?:body|condition)=%?([\w.-]+)", text)]
  while todo:
    name = todo.pop()
    if name in found or name not in comps:
      continue
    found.add(name)
    todo += re.findall(r"(?:body|condition|calls|to_apply)=%?([\w.-]+)", comps[name])
  return found


@pytest.mark.parametrize("shape", [(1, 8, 1), (4, 2, 1)], ids=lambda s: "x".join(map(str, s)))
def test_no_collectives_inside_the_chunk_loops(shape):
  mesh = mesh_of(shape)
  key = jax.random.split(jax.random.key(0), 3)
  hidden = jax.random.normal(key[0], (16, 32, 64)).astype(jnp.bfloat16)
  head = jax.random.normal(key[1], (64, 96))
  targets = jax.random.randint(key[2], (16, 32), 0, 96)

  def loss(h, w):
    total, count = chunked_cross_entropy(h, w, targets, 16)
    return total / count

  jitted = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)),
                   in_shardings=(NamedSharding(mesh, P(("data", "fsdp"))),
                                 NamedSharding(mesh, P("fsdp", None))))
  with jax.set_mesh(mesh):
    hlo = jitted.lower(hidden, head).compile().as_text()
  grad = with_mesh(jitted, mesh)
  comps = computations(hlo)
  bodies = loop_bodies(comps)
  assert bodies, "the loss should loop over chunks"
  inside = {name: COLLECTIVE.findall(comps[name]) for name in bodies}
  assert not any(inside.values()), {k: v for k, v in inside.items() if v}
  assert COLLECTIVE.search(hlo), "the head is gathered and its gradient reduced outside the loops"

  (value, (d_hidden, d_head)) = grad(hidden, head)
  ref_value, (ref_hidden, ref_head) = jax.value_and_grad(loss, argnums=(0, 1))(hidden, head)
  np.testing.assert_allclose(value, ref_value, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(d_hidden, np.float32), np.asarray(ref_hidden, np.float32),
                             rtol=0.02, atol=1e-4)
  np.testing.assert_allclose(d_head, ref_head, rtol=1e-4, atol=1e-6)
