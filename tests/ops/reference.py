"""NumPy transcriptions of the numerics contract, used as test oracles."""

import numpy as np


def nm_mask(w, n, m, axis=0):
  w = np.moveaxis(np.abs(np.asarray(w, np.float64)), axis, 0)
  keep = np.zeros(w.shape, bool)
  flat = w.reshape(w.shape[0] // m, m, -1)
  out = keep.reshape(flat.shape)
  for g in range(flat.shape[0]):
    for c in range(flat.shape[2]):
      order = sorted(range(m), key=lambda i: (-flat[g, i, c], i))
      out[g, order[:n], c] = True
  return np.moveaxis(out.reshape(w.shape), 0, axis)


def absmean_ternary(w, split=None):
  w = np.asarray(w, np.float64)
  sizes = [w.shape[-1]] if split is None else list(split)
  t, gammas, start = np.zeros(w.shape, np.int8), [], 0
  for size in sizes:
    part = w[..., start:start + size]
    gamma = np.abs(part).mean()
    t[..., start:start + size] = np.clip(np.round(part / max(gamma, 1e-5)), -1, 1)
    gammas.append(gamma)
    start += size
  return t, (np.float64(gammas[0]) if split is None else np.array(gammas))


def absmax_quant(x, bits=8):
  x = np.asarray(x, np.float64)
  qmax = 2 ** (bits - 1) - 1
  s = qmax / np.maximum(np.abs(x).max(-1, keepdims=True), 1e-5)
  q = np.clip(np.round(x * s), -qmax - 1, qmax)
  return q, s
