"""Decoder-only LM (Qwen2.5 / LLaMA style): embeddings, scanned pre-norm blocks, final norm, head.

Every attention and MLP projection is a `SparseBitLinear`; embeddings and the LM head stay full
precision. Blocks are created with `nnx.vmap` and applied with `nnx.scan`, so parameters carry a
leading `layers` axis and compile time does not grow with depth. For inference, `unstacked()`
holds one block per layer and runs them unrolled, each with its own weight and KV-cache buffers.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from sbitnet.nn import DecoderBlock, KVCache, RMSNorm, SparseBitLinear
from sbitnet.ops import rope_tables
from sbitnet.sharding import constrain

if TYPE_CHECKING:
  from sbitnet.config import Config, ModelConfig

REMAT_POLICIES = {"full": None, "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


def attention_implementation(dtype: jnp.dtype) -> str | None:
  """cuDNN flash attention on GPU for 16-bit activations (never materialises [T, T] scores);
  JAX's choice elsewhere."""
  if jax.default_backend() == "gpu" and dtype in (jnp.bfloat16, jnp.float16):
    return "cudnn"
  return None


def linear_factory(cfg: Config, model: ModelConfig, sparse: bool = True):
  """A `SparseBitLinear` constructor carrying the config's arm, pattern and ablations."""
  sp = cfg.sparsity
  pattern = (sp.n, sp.m) if sparse and sp.m else (None, None)
  return functools.partial(
      SparseBitLinear, n=pattern[0], m=pattern[1], quant=cfg.quant.weights, grad=sp.grad,
      mask_from=sp.mask_from, order=sp.order, sr_ste=sp.sr_ste,
      act_bits=cfg.quant.activations or None, dtype=jnp.dtype(model.dtype))


class DecoderLM(nnx.Module):

  def __init__(self, cfg: Config, model: ModelConfig, *, rngs: nnx.Rngs, sparse: bool = True,
               linear: Callable[..., nnx.Module] | None = None):
    """`model` is the resolved ModelConfig; `sparse=False` builds it dense (dense-to-sparse).
    `linear` replaces the config's `SparseBitLinear` constructor (the packed inference layer)."""
    self.model_cfg = model
    self.dtype = jnp.dtype(model.dtype)
    head_dim = model.d_model // model.n_heads
    self.head_dim = head_dim
    self.embedding = nnx.Param(
        nnx.initializers.normal(0.02)(rngs.params(), (model.vocab_size, model.d_model)),
        out_sharding=("vocab", "embed"), eager_sharding=False)
    linear = linear or linear_factory(cfg, model, sparse)

    @nnx.split_rngs(splits=model.n_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def make_blocks(rngs: nnx.Rngs) -> DecoderBlock:
      return DecoderBlock(model.d_model, model.n_heads, model.n_kv_heads, head_dim, model.d_ff,
                          linear=linear, qkv_bias=model.qkv_bias, norm_eps=model.norm_eps,
                          attention=attention_implementation(self.dtype), rngs=rngs)

    self.blocks = make_blocks(rngs)
    self.final_norm = RMSNorm(model.d_model, eps=model.norm_eps)
    self.lm_head = None if model.tie_embeddings else nnx.Param(
        nnx.initializers.normal(0.02)(rngs.params(), (model.d_model, model.vocab_size)),
        out_sharding=("embed", "vocab"), eager_sharding=False)

  def hidden_states(self, tokens: jax.Array, positions: jax.Array | None = None,
                    cache: KVCache | None = None) -> jax.Array | tuple[jax.Array, KVCache]:
    """tokens int32 `[B, T]` -> final-normed hidden states `[B, T, d_model]` in the compute dtype.

    With a `cache` (inference, from `empty_cache`), the tokens continue each row at slot
    `cache.lengths[b]` (their default positions), and the result is `(hidden states, the cache
    holding their keys and values, lengths + T)`; see `Attention.with_cache` for T > 1.
    """
    if positions is None:
      positions = jnp.arange(tokens.shape[1])[None]
      if cache is not None:
        positions = positions + cache.lengths[:, None]
    cos, sin = rope_tables(positions, self.head_dim, self.model_cfg.rope_theta)
    activation = ("batch", "seq", None)
    x = constrain(jnp.take(self.embedding[...], tokens, axis=0).astype(self.dtype), activation)
    if cache is not None:
      return self._blocks_with_cache(x, cos, sin, cache)

    def apply_block(x, block):
      return constrain(block(x, cos, sin), activation)

    if self.model_cfg.remat != "none":
      apply_block = nnx.remat(apply_block, policy=REMAT_POLICIES[self.model_cfg.remat])
    if isinstance(self.blocks, nnx.List):
      for block in self.blocks:
        x = apply_block(x, block)
    else:
      x = nnx.scan(apply_block, in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)(x, self.blocks)
    return self.final_norm(x)

  def _blocks_with_cache(self, x: jax.Array, cos: jax.Array, sin: jax.Array,
                         cache: KVCache) -> tuple[jax.Array, KVCache]:
    """Layer by layer (unrolled), each reading and writing its own cache buffers in place."""
    keys, values = [], []
    for index, block in enumerate(self.layer_blocks()):
      x, layer = block.with_cache(x, cos, sin, cache.layer(index))
      keys.append(layer.keys)
      values.append(layer.values)
    return self.final_norm(x), KVCache(tuple(keys), tuple(values), cache.lengths + x.shape[1])

  def layer_blocks(self) -> list[DecoderBlock]:
    """One `DecoderBlock` per layer: the blocks of an `unstacked()` model, or else slices of the
    stacked parameters (a copy of each layer's weights on every call; fine for tests, slow for
    serving)."""
    if isinstance(self.blocks, nnx.List):
      return list(self.blocks)
    graphdef, state = nnx.split(self.blocks)
    return [nnx.merge(graphdef, jax.tree.map(lambda a, i=i: a[i], state))
            for i in range(self.model_cfg.n_layers)]

  def unstacked(self) -> DecoderLM:
    """This model with its blocks held as `n_layers` separate modules (an `nnx.List`), for
    inference: each layer's weights are then their own buffers, so no step slices or copies them
    out of the `[layers, ...]` stack. Shares the other parameters with this model; train the
    stacked form (the unrolled one compiles in time linear in depth)."""
    if isinstance(self.blocks, nnx.List):
      return self
    graphdef, state = nnx.split(self)
    model = nnx.merge(graphdef, state)
    model.blocks = nnx.List(self.layer_blocks())
    return model

  def empty_cache(self, batch: int, max_len: int) -> KVCache:
    """A KV cache of `max_len` slots for `batch` sequences, in the compute dtype."""
    cfg = self.model_cfg
    return KVCache.empty(cfg.n_layers, batch, max_len, cfg.n_kv_heads, self.head_dim, self.dtype)

  def head_weight(self) -> jax.Array:
    """The LM head `[d_model, vocab]` (the embedding table transposed when tied), float32."""
    return self.embedding[...].T if self.lm_head is None else self.lm_head[...]

  def __call__(self, tokens: jax.Array) -> jax.Array:
    """Logits `[B, T, vocab]` in float32. For training use `sbitnet.train.loss`, which never
    materialises all of them at once."""
    h = self.hidden_states(tokens)
    return jnp.einsum("btd,dv->btv", h, self.head_weight().astype(h.dtype),
                      preferred_element_type=jnp.float32)

  def sparse_layers(self) -> dict[str, SparseBitLinear]:
    """Every SparseBitLinear, by its path in the module tree."""
    return {"/".join(map(str, path)): module for path, module in nnx.iter_modules(self)
            if isinstance(module, SparseBitLinear)}


def parameter_counts(model: ModelConfig) -> dict[str, int]:
  """Parameters: linear (the SparseBitLinear kernels), embedding, head (0 when tied), total."""
  head_dim = model.d_model // model.n_heads
  q, kv = model.n_heads * head_dim, model.n_kv_heads * head_dim
  per_layer = model.d_model * (q + 2 * kv) + q * model.d_model + 3 * model.d_model * model.d_ff
  linear = model.n_layers * per_layer
  embedding = model.vocab_size * model.d_model
  head = 0 if model.tie_embeddings else embedding
  norms = (2 * model.n_layers + 1) * model.d_model
  bias = model.n_layers * (q + 2 * kv) if model.qkv_bias else 0
  return {"linear": linear, "embedding": embedding, "head": head,
          "total": linear + embedding + head + norms + bias}


def train_flops_per_token(model: ModelConfig, seq_len: int) -> float:
  """6·(linear + head matmul params) + 12·layers·seq_len·(n_heads·head_dim): forward + backward,
  attention counted without the causal halving (the PaLM convention)."""
  head_dim = model.d_model // model.n_heads
  matmul_params = parameter_counts(model)["linear"] + model.d_model * model.vocab_size
  return 6.0 * matmul_params + 12.0 * model.n_layers * seq_len * model.n_heads * head_dim
