"""Greedy k-center coreset of patch features, with the mass each kept point stands for."""
from __future__ import annotations

import numpy as np
import torch

from .parzen import sq_dists


def greedy_coreset(x: np.ndarray, m: int, projection_dim: int = 64, seed: int = 0) -> np.ndarray:
    """Pick ``m`` rows of ``x`` ``(N, D)`` that cover it: each new row is the one farthest from those kept.

    Distances are taken in a Gaussian random projection to ``projection_dim`` dims (to keep the loop
    cheap), which preserves them approximately. Each step is one matrix-vector product over ``N``
    rows. Returns ``int64 (min(m, N),)`` row indices.
    """
    n = x.shape[0]
    if m >= n:
        return np.arange(n, dtype=np.int64)
    g = torch.Generator().manual_seed(seed)
    xp = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    if 0 < projection_dim < x.shape[1]:
        xp = xp @ (torch.randn(x.shape[1], projection_dim, generator=g) / projection_dim ** 0.5)
    sq = torch.sum(xp * xp, dim=1)
    chosen = np.empty(m, dtype=np.int64)
    chosen[0] = j = int(torch.randint(n, (1,), generator=g))
    dist = sq - 2.0 * torch.mv(xp, xp[j]) + sq[j]
    for i in range(1, m):
        j = int(torch.argmax(dist))
        chosen[i] = j
        torch.minimum(dist, sq - 2.0 * torch.mv(xp, xp[j]) + sq[j], out=dist)
    return chosen


def nearest_index(x: np.ndarray, bank: np.ndarray, block: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``x`` ``(N, D)``: index of and squared distance to its nearest ``bank`` row ``(M, D)``."""
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    bt = torch.from_numpy(np.ascontiguousarray(bank, dtype=np.float32))
    bsq = torch.sum(bt * bt, dim=1)
    idx, d2 = [], []
    for i in range(0, xt.shape[0], block):
        v, k = torch.min(sq_dists(xt[i:i + block], bt, bsq), dim=1)
        idx.append(k)
        d2.append(v)
    return torch.cat(idx).numpy(), torch.cat(d2).numpy()


def coverage_weights(x: np.ndarray, bank: np.ndarray) -> np.ndarray:
    """Fraction of the rows of ``x`` whose nearest bank row is each bank row: ``float64 (M,)``, sums to 1.

    Every bank row gets at least one count (it covers itself when it was drawn from ``x``).
    """
    idx, _ = nearest_index(x, bank)
    counts = np.bincount(idx, minlength=bank.shape[0]).astype(np.float64)
    counts = np.maximum(counts, 1.0)
    return counts / counts.sum()
