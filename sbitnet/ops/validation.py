"""Trace-time checks shared by the ops: they name the bad value and say what would be valid."""

from __future__ import annotations

import numbers
from typing import Sequence

import jax.numpy as jnp

QUANT_MODES = ("ternary", "none")
GRAD_MODES = ("dense", "masked")
MASK_SOURCES = ("latent", "quantized")
ORDERS = ("quant_then_mask", "mask_then_quant")
ACT_BITS = (8, 4)


def normalize_axis(axis: int, ndim: int, shape: Sequence[int]) -> int:
  if not -ndim <= axis < ndim:
    raise ValueError(f"axis={axis} is out of range for an array of shape {tuple(shape)}; "
                     f"valid axes are {-ndim}..{ndim - 1}.")
  return axis % ndim


def divisors(size: int, limit: int = 16) -> list[int]:
  return [d for d in range(2, min(size, limit) + 1) if size % d == 0]


def check_pattern(n: int | None, m: int | None, shape: Sequence[int] | None = None,
                  axis: int = 0) -> None:
  """Checks an N:M pattern (both None means dense) against a weight shape and group axis."""
  if n is None and m is None:
    return
  if n is None or m is None:
    raise ValueError(f"N:M sparsity needs both n and m (got n={n}, m={m}); "
                     "set both (e.g. n=6, m=8) or neither for a dense weight.")
  if (isinstance(n, bool) or isinstance(m, bool) or not isinstance(n, numbers.Integral)
      or not isinstance(m, numbers.Integral)):
    raise ValueError(f"n and m must be integers, got n={n!r}, m={m!r}.")
  if not 1 <= n < m:
    raise ValueError(f"Invalid N:M pattern {n}:{m}: need 1 <= n < m (e.g. 6:8, 2:4, 4:8), or "
                     "n=None and m=None for a dense weight.")
  if shape is not None:
    size = shape[axis]
    if size % m:
      valid = divisors(size) or ["none up to 16"]
      raise ValueError(
          f"N:M pattern {n}:{m} does not fit a weight of shape {tuple(shape)}: the group axis "
          f"{axis} has size {size}, which is not divisible by m={m}. Valid m for this axis: "
          f"{', '.join(map(str, valid))}.")


def check_float(name: str, x: jnp.ndarray) -> None:
  """Raises unless x is floating point; `name` "w" (a latent weight) or "x" (activations)."""
  if not jnp.issubdtype(x.dtype, jnp.floating):
    hint = ("pass the latent (float32/bfloat16) weight, not a quantized one" if name == "w" else
            "pass the float activations (they are quantized here)")
    raise ValueError(f"{name} must be a floating-point array, got dtype {x.dtype} with shape "
                     f"{tuple(x.shape)}; {hint}.")


def check_choice(name: str, value: object, choices: Sequence[object],
                 error: type[ValueError] = ValueError) -> None:
  if value not in choices:
    raise error(f"{name}={value!r} is not valid; choose one of {', '.join(map(repr, choices))}.")


def check_split(split: Sequence[int] | None, shape: Sequence[int]) -> tuple[int, ...] | None:
  if split is None:
    return None
  split = tuple(int(s) for s in split)
  if not split or any(s < 1 for s in split) or sum(split) != shape[-1]:
    raise ValueError(f"split={split} must be positive sizes that add up to the last axis of the "
                     f"weight (shape {tuple(shape)}, last axis {shape[-1]}).")
  return split


def check_gamma(gamma: jnp.ndarray, split: tuple[int, ...] | None) -> None:
  """gamma must be `()` (one scale) or `[len(split)]` (one per fused sub-matrix)."""
  want = () if split is None else (len(split),)
  if tuple(jnp.shape(gamma)) != want:
    raise ValueError(f"gamma has shape {tuple(jnp.shape(gamma))}; split={split} needs {want} "
                     "(one gamma per fused sub-matrix, or a scalar without split).")


def check_act_bits(bits: int) -> int:
  """Returns Qmax = 2**(bits-1) - 1 for a supported activation width."""
  if bits not in ACT_BITS:
    raise ValueError(f"act_bits={bits!r} is not supported; choose one of {ACT_BITS} (or None to "
                     "keep activations in full precision).")
  return 2 ** (bits - 1) - 1
