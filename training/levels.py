"""The representation stack above level-1 patch features, and top-layer chain samples.

Levels as linewatch numbers them (the paper's "depth" + 1):

* level 1: the backbone's patch features ``(P, D)``;
* level 2, 3, ...: codes of contractive autoencoders stacked greedily on the *standardised* level-1
  features (per channel mean 0, std 1), applied per patch (a 1x1 convolution).

In :class:`~linewatch.training.cae.CAEStack` terms, stack level ``k`` is linewatch level ``k + 1``.
The chain used for level ``l >= 2`` runs with the encoder/decoder of stack layer ``l - 1``: its state
lives at level ``l - 1`` and each recorded state is encoded once more to give a level-``l`` sample.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from .cae import CAEStack, ContractiveAutoencoder
from .config import SamplingConfig, StackConfig
from .sampler import TopLayerSampler


class LevelEncoder(nn.Module):
    """Exported part of the graph: level-1 features ``(P, D)`` -> level-``l`` codes ``(P, D_l)``.

    ``layers`` empty gives the standardised features (level 1 in standard units).
    """

    def __init__(self, mean: np.ndarray, std: np.ndarray, layers: list[ContractiveAutoencoder]):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("inv_std", torch.as_tensor(1.0 / std, dtype=torch.float32))
        self.layers = nn.ModuleList(layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = (z - self.mean) * self.inv_std
        for layer in self.layers:
            h = layer.encode(h)
        return h


@dataclass
class RepresentationStack:
    """Fitted standardisation and CAE stack. ``mean_``, ``std_``: ``(D,)``; ``stack_``: the layers."""

    mean_: np.ndarray
    std_: np.ndarray
    stack_: CAEStack

    def encoder(self, level: int) -> LevelEncoder:
        """The encoder to linewatch level ``level`` (1 .. number of layers + 1)."""
        if not 1 <= level <= self.stack_.n_levels + 1:
            raise ValueError(f"level must be in 1..{self.stack_.n_levels + 1}, got {level}")
        return LevelEncoder(self.mean_, self.std_, list(self.stack_.layers[: level - 1])).eval()

    @torch.no_grad()
    def encode(self, patches: np.ndarray, level: int, block: int = 65536) -> np.ndarray:
        """``(P, D)`` level-1 features -> ``float32 (P, D_level)``."""
        enc = self.encoder(level)
        z = torch.from_numpy(np.ascontiguousarray(patches, dtype=np.float32))
        return torch.cat([enc(z[i:i + block]) for i in range(0, z.shape[0], block)]).numpy()


def fit_stack(patches: np.ndarray, cfg: StackConfig, seed: int,
              progress: Callable[[str], None] | None = None) -> RepresentationStack:
    """Fit the standardisation and ``len(cfg.widths)`` CAE layers on up to ``cfg.max_patches`` rows of
    ``patches`` ``(P, D)`` (level-1 features of good images)."""
    rng = np.random.default_rng(seed)
    x = patches if patches.shape[0] <= cfg.max_patches else \
        patches[rng.choice(patches.shape[0], cfg.max_patches, replace=False)]
    mean = x.mean(axis=0)
    std = x.std(axis=0) + 1e-6
    xs = (x - mean) / std
    report = None
    if progress:
        def report(layer: int, epoch: int, loss: float) -> None:
            if epoch + 1 == cfg.epochs:
                progress(f"representation level {layer + 1}: CAE trained on {x.shape[0]} patches, loss {loss:.4g}")
    stack = CAEStack().fit_greedy(xs.astype(np.float32), cfg.widths, epochs=cfg.epochs, lr=cfg.learning_rate,
                                  batch_size=cfg.batch_size, contraction=cfg.contraction, decoder="linear",
                                  seed=seed, callback=report)
    return RepresentationStack(mean.astype(np.float32), std.astype(np.float32), stack)


def chain_samples(rep: RepresentationStack, level: int, patches: np.ndarray, cfg: SamplingConfig,
                  seed: int) -> np.ndarray:
    """Top-layer chain samples at linewatch ``level`` (>= 2), started from random rows of ``patches``.

    Runs ``cfg.n_chains`` chains of the CAE of stack layer ``level - 1`` for ``burn_in`` steps, then
    records every ``thin``-th state until ``cfg.chain_samples`` samples exist; each recorded state is
    encoded to ``level``. Returns ``float32 (cfg.chain_samples, D_level)``.
    """
    rng = np.random.default_rng(seed)
    n_chains = min(cfg.n_chains, cfg.chain_samples)
    start = rep.encode(patches[rng.choice(patches.shape[0], n_chains, replace=patches.shape[0] < n_chains)],
                       level - 1)
    n_steps = -(-cfg.chain_samples // n_chains)
    sampler = TopLayerSampler(rep.stack_, level=level - 1, sigma=cfg.sigma, n_steps=n_steps,
                              burn_in=cfg.burn_in, thin=cfg.thin, seed=seed)
    states = sampler.sample(torch.from_numpy(start)).reshape(-1, start.shape[1])[: cfg.chain_samples]
    with torch.no_grad():
        return rep.stack_.layers[level - 2].encode(states).numpy()
