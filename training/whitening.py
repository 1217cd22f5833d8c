"""Sphering of level-1 patch features before the Parzen density.

An isotropic Gaussian kernel on raw backbone features lets the few high-variance channels decide every
distance. Sphering the features with their training covariance first is the same as a Parzen density
whose kernel covariance is ``h^2 * C`` (the data's own shape, Fukunaga's "sphering" for kernel density
estimates), with ``h`` still chosen by held-out likelihood. The covariance is shrunk towards a multiple
of the identity so that rare directions are not blown up::

    C_s = (1 - s) C + s (tr C / D) I,        z' = (z - mu) C_s^(-1/2)

``bench/results/accuracy.md`` measures it against the raw features.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


class Whitening(nn.Module):
    """``forward(z)``: ``float32 (P, D)`` features -> ``float32 (P, D)`` sphered features.

    Attributes:
        mean: ``(D,)`` training mean; matrix: ``(D, D)`` symmetric ``C_s^(-1/2)``.
    """

    def __init__(self, mean: np.ndarray, matrix: np.ndarray):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(np.asarray(mean, dtype=np.float32)))
        self.register_buffer("matrix", torch.as_tensor(np.asarray(matrix, dtype=np.float32)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.mean) @ self.matrix

    @torch.no_grad()
    def transform(self, z: np.ndarray) -> np.ndarray:
        """The same on a numpy array ``(..., D)``."""
        shape = z.shape
        out = self(torch.from_numpy(np.ascontiguousarray(z, dtype=np.float32).reshape(-1, shape[-1])))
        return out.numpy().reshape(shape)


def fit_whitening(patches: np.ndarray, shrinkage: float, max_rows: int = 200000, seed: int = 0) -> Whitening:
    """Mean and shrunk inverse square-root covariance of ``patches`` ``(P, D)`` (at most ``max_rows``
    random rows are used); ``shrinkage`` in [0, 1] (1 = divide by the average variance only)."""
    if not 0.0 <= shrinkage <= 1.0:
        raise ValueError(f"density.whiten_shrinkage must be in [0, 1], got {shrinkage}")
    x = np.asarray(patches, dtype=np.float64)
    if x.shape[0] > max_rows:
        x = x[np.random.default_rng(seed).choice(x.shape[0], max_rows, replace=False)]
    mean = x.mean(axis=0)
    cov = np.cov(x - mean, rowvar=False).reshape(x.shape[1], x.shape[1])
    scale = np.trace(cov) / cov.shape[0] or 1.0
    cov = (1.0 - shrinkage) * cov + shrinkage * scale * np.eye(cov.shape[0])
    values, vectors = np.linalg.eigh(cov)
    values = np.maximum(values, 1e-12 * scale)
    return Whitening(mean, (vectors * values ** -0.5) @ vectors.T)
