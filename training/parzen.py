"""Gaussian-kernel Parzen density over a bank of feature vectors (optionally weighted).

For a feature ``z`` in ``d`` dims, bank points ``mu_i`` with weights ``w_i`` (summing to 1) and
bandwidth ``s``::

    log p(z) = logsumexp_i( log w_i - ||z - mu_i||^2 / (2 s^2) ) - (d / 2) log(2 pi s^2)      [nats]

Squared distances come from one matrix product (``||z||^2 - 2 z.mu + ||mu||^2``); the logsumexp
subtracts its maximum, so far-away features give finite (very negative) log-densities.

:meth:`ParzenDensity.forward` (the exported scoring graph) moves everything it can out of the
``(P, M)`` matrix: with ``c = 1 / (2 s^2)``,
``log w_i - c ||z - mu_i||^2 = [z . (2c mu_i) + (log w_i - c ||mu_i||^2)] - c ||z||^2``; the bracket
is one matrix product plus a per-centre bias (both constants fold into the graph's initialisers, and
onnxruntime runs them as one Gemm), and ``c ||z||^2`` is the same for every centre, so it is
subtracted after the logsumexp. That leaves four passes over the ``(P, M)`` matrix (Gemm, max,
subtract-and-clamp, exp-and-sum) instead of nine; same value up to float32 rounding
(``bench/results/latency.md``).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn


def sq_dists(z: torch.Tensor, bank: torch.Tensor, bank_sq: torch.Tensor) -> torch.Tensor:
    """``(P, d)``, ``(M, d)``, ``(M,)`` -> ``(P, M)`` squared Euclidean distances (clamped at 0)."""
    return torch.clamp(torch.sum(z * z, dim=1, keepdim=True) - 2.0 * z @ bank.T + bank_sq, min=0.0)


# Terms below exp(-80) relative to the largest are dropped (clamped): they change the sum by less than
# 1e-34 relative, and computing them would produce subnormal floats, which are ~100x slower on x86.
_EXP_FLOOR = -80.0


def _logsumexp_rows(a: torch.Tensor) -> torch.Tensor:
    m = torch.max(a, dim=1, keepdim=True).values
    return (m + torch.log(torch.sum(torch.exp(torch.clamp(a - m, min=_EXP_FLOOR)), dim=1, keepdim=True))).squeeze(1)


class ParzenDensity(nn.Module):
    """``forward(z)``: ``float32 (P, d)`` features -> ``float32 (P,)`` log-density in nats.

    Attributes:
        bank: ``(M, d)`` kernel centres; log_weights: ``(M,)``; bandwidth: kernel std ``s``;
        kernel ``(d, M)`` and bias ``(M,)``: what the graph multiplies by (see the module docstring).
    """

    def __init__(self, bank: np.ndarray, bandwidth: float, weights: np.ndarray | None = None):
        super().__init__()
        bank_t = torch.as_tensor(np.ascontiguousarray(bank, dtype=np.float32))
        m, d = bank_t.shape
        w = np.full(m, 1.0 / m) if weights is None else np.asarray(weights, dtype=np.float64) / np.sum(weights)
        self.register_buffer("bank", bank_t)
        self.register_buffer("bank_sq", torch.sum(bank_t * bank_t, dim=1))
        self.register_buffer("log_weights", torch.as_tensor(np.log(w), dtype=torch.float32))
        self.bandwidth = float(bandwidth)
        self.dim = int(d)
        self.log_norm = float(-0.5 * d * math.log(2.0 * math.pi * bandwidth ** 2))
        self._set_graph_parameters()

    def _set_graph_parameters(self) -> None:
        """The graph's two density parameters (named initialisers ``density.kernel`` / ``density.bias``,
        which the exporter moves to the bundle's ``density.bin`` so the runtime can swap the bank)."""
        c = 0.5 / self.bandwidth ** 2
        self.register_buffer("kernel", (self.bank * (2.0 * c)).T.contiguous())      # (d, M) = 2c mu^T
        self.register_buffer("bias", self.log_weights - self.bank_sq * c)             # (M,) = log w - c |mu|^2

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        if "kernel" not in self._buffers:      # unpickled from a checkpoint written before these existed
            self._set_graph_parameters()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        c = 0.5 / self.bandwidth ** 2
        a = z @ self.kernel + self.bias                                               # (P, M), one Gemm
        return _logsumexp_rows(a) - torch.sum(z * z, dim=1) * c + self.log_norm


@torch.no_grad()
def log_density(density: ParzenDensity, z: np.ndarray, block: int = 8192) -> np.ndarray:
    """``density`` over the rows of ``z`` ``(P, d)`` in blocks (bounded memory): ``float32 (P,)`` nats."""
    zt = torch.from_numpy(np.ascontiguousarray(z, dtype=np.float32))
    return torch.cat([density(zt[i:i + block]) for i in range(0, zt.shape[0], block)]).numpy()


@torch.no_grad()
def log_density_grid(z: np.ndarray, bank: np.ndarray, weights: np.ndarray | None, bandwidths: np.ndarray,
                     block: int = 4096) -> np.ndarray:
    """Log-density of every row of ``z`` ``(P, d)`` for every bandwidth: ``float64 (P, G)``, nats.

    The distances are computed once per block and reused across the ``G`` bandwidths.
    """
    bt = torch.from_numpy(np.ascontiguousarray(bank, dtype=np.float32))
    bsq = torch.sum(bt * bt, dim=1)
    m, d = bt.shape
    w = np.full(m, 1.0 / m) if weights is None else np.asarray(weights, dtype=np.float64) / np.sum(weights)
    logw = torch.as_tensor(np.log(w), dtype=torch.float32)
    zt = torch.from_numpy(np.ascontiguousarray(z, dtype=np.float32))
    out = np.empty((z.shape[0], len(bandwidths)), dtype=np.float64)
    for i in range(0, zt.shape[0], block):
        d2 = sq_dists(zt[i:i + block], bt, bsq)
        for g, s in enumerate(bandwidths):
            lse = _logsumexp_rows(logw - d2 * float(0.5 / s ** 2)).double()
            out[i:i + block, g] = (lse - 0.5 * d * math.log(2.0 * math.pi * s ** 2)).numpy()
    return out
