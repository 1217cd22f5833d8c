"""Torch forms of the Gaussian-kernel Parzen density that ``linewatch.runtime.density`` defines
(formula, weights, exponent floor): the exported graph's module and the bandwidth-grid evaluation
used while fitting.

:meth:`ParzenDensity.forward` (the exported scoring graph) moves everything it can out of the
``(P, M)`` matrix: with ``c = 1 / (2 s^2)``,
``log w_i - c ||z - mu_i||^2 = [z . (2c mu_i) + (log w_i - c ||mu_i||^2)] - c ||z||^2``; the bracket
is one matrix product plus a per-centre bias (both constants fold into the graph's initialisers, and
onnxruntime runs them as one Gemm), and ``c ||z||^2`` is the same for every centre, so it is
subtracted after the logsumexp. That leaves four passes over the ``(P, M)`` matrix (Gemm, max,
subtract-and-clamp, exp-and-sum) instead of nine; same value up to float32 rounding
(``bench/results/latency.md``). The kernel and bias themselves are made by
:func:`~linewatch.runtime.density.parzen_params`, the runtime's definition.

:func:`log_density_grid` evaluates many bandwidths from one set of squared distances (training's
bandwidth search); the runtime has no use for it.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..runtime.density import EXP_FLOOR, kernel_c, log_norm, normalised_weights, parzen_params


def sq_dists(z: torch.Tensor, bank: torch.Tensor, bank_sq: torch.Tensor) -> torch.Tensor:
    """``(P, d)``, ``(M, d)``, ``(M,)`` -> ``(P, M)`` squared Euclidean distances (clamped at 0)."""
    return torch.clamp(torch.sum(z * z, dim=1, keepdim=True) - 2.0 * z @ bank.T + bank_sq, min=0.0)


def _logsumexp_rows(a: torch.Tensor) -> torch.Tensor:
    """``(P, M)`` -> ``(P,)``: logsumexp over each row with the definition's exponent floor."""
    m = torch.max(a, dim=1, keepdim=True).values
    return (m + torch.log(torch.sum(torch.exp(torch.clamp(a - m, min=EXP_FLOOR)), dim=1, keepdim=True))).squeeze(1)


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
        self.register_buffer("bank", bank_t)
        self.register_buffer("bank_sq", torch.sum(bank_t * bank_t, dim=1))
        w = normalised_weights(weights, m)
        self.register_buffer("log_weights", torch.as_tensor(np.log(w), dtype=torch.float32))
        self.bandwidth = float(bandwidth)
        self.dim = int(d)
        self.log_norm = log_norm(d, kernel_c(bandwidth))
        self._set_graph_parameters(w)

    def _set_graph_parameters(self, weights: np.ndarray | None = None) -> None:
        """The graph's two density parameters (named initialisers ``density.kernel`` / ``density.bias``,
        which the exporter moves to the bundle's ``density.bin`` so the runtime can swap the bank), from the
        bank and ``weights`` ``(M,)`` (by default the ones ``log_weights`` holds)."""
        if weights is None:
            weights = np.exp(self.log_weights.numpy().astype(np.float64))
        p = parzen_params(self.bank.numpy(), self.bandwidth, weights)
        self.register_buffer("kernel", torch.from_numpy(p.kernel.copy()))      # (d, M) = 2c mu^T
        self.register_buffer("bias", torch.from_numpy(p.bias.copy()))          # (M,) = log w - c |mu|^2

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        if "kernel" not in self._buffers:      # unpickled from a checkpoint written before these existed
            self._set_graph_parameters()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        a = z @ self.kernel + self.bias                                               # (P, M), one Gemm
        return _logsumexp_rows(a) - torch.sum(z * z, dim=1) * kernel_c(self.bandwidth) + self.log_norm


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
    logw = torch.as_tensor(np.log(normalised_weights(weights, m)), dtype=torch.float32)
    zt = torch.from_numpy(np.ascontiguousarray(z, dtype=np.float32))
    out = np.empty((z.shape[0], len(bandwidths)), dtype=np.float64)
    for i in range(0, zt.shape[0], block):
        d2 = sq_dists(zt[i:i + block], bt, bsq)
        for g, s in enumerate(bandwidths):
            lse = _logsumexp_rows(logw - d2 * kernel_c(s)).double()
            out[i:i + block, g] = (lse + log_norm(d, kernel_c(s))).numpy()
    return out
