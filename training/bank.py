"""The Parzen bank: a weighted greedy k-centre coreset of good-patch rows, and a bandwidth chosen by
held-out log-likelihood. Cross-fitting (``training/fit.py``) and the self-configuration's candidate
fits (``training/autoconfig.py``) both build their densities here."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import TrainConfig
from .coreset import coverage_weights, greedy_coreset, nearest_index
from .parzen import ParzenDensity, log_density_grid


@dataclass
class PatchBank:
    """Kernel centres ``(M, D)`` and their weights ``(M,)`` (``None`` = uniform)."""

    centres: np.ndarray
    weights: np.ndarray | None


def build_bank(patches: np.ndarray, config: TrainConfig, seed: int) -> PatchBank:
    """``patches`` ``(P, D)`` -> a coreset bank of at most ``density.bank_size`` centres."""
    d = config.density
    rng = np.random.default_rng(seed)
    cand = patches if patches.shape[0] <= d.max_candidates else \
        patches[rng.choice(patches.shape[0], d.max_candidates, replace=False)]
    idx = greedy_coreset(cand, d.bank_size, d.coreset_projection, seed)
    centres = np.ascontiguousarray(cand[idx])
    return PatchBank(centres, coverage_weights(cand, centres) if d.weighted else None)


def bandwidth_grid(heldout: np.ndarray, bank: PatchBank, config: TrainConfig) -> np.ndarray:
    """Candidate bandwidths ``float64 (G,)``: ``density.bandwidth_factors`` x the median distance from a
    held-out row ``(P, D)`` to its nearest bank centre (the typical scale of a new good patch)."""
    _, d2 = nearest_index(heldout, bank.centres)
    return np.asarray(config.density.bandwidth_factors, dtype=np.float64) * (float(np.sqrt(np.median(d2))) or 1.0)


def fit_parzen(rows: np.ndarray, heldout: np.ndarray, config: TrainConfig, seed: int,
               max_heldout: int = 5000) -> ParzenDensity:
    """A density on ``rows`` ``(P, D)`` whose bandwidth maximises the mean log-likelihood of (at most
    ``max_heldout`` random) ``heldout`` rows ``(Q, D)`` of good patches the bank did not see."""
    bank = build_bank(rows, config, seed)
    rng = np.random.default_rng(seed)
    z = heldout[rng.choice(heldout.shape[0], min(max_heldout, heldout.shape[0]), replace=False)]
    grid = bandwidth_grid(z, bank, config)
    best = int(np.argmax(log_density_grid(z, bank.centres, bank.weights, grid).mean(axis=0)))
    return ParzenDensity(bank.centres, float(grid[best]), bank.weights)
