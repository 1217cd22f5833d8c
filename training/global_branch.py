"""The global branch: image-level statistics of the patch features, fused into the image score.

A defect that changes a whole image a little (a colour cast, a wrong material, a faded print) moves
every patch a small distance, and a patch density may score none of them as unusual. The mean and the
spread over all patches of each feature channel are sensitive to exactly that. The branch scores them
with a Gaussian fitted to good images and adds the excess to the image score::

    g(x)  = [mean_p z_pc, std_p z_pc]_c                    (2 d,) over the density's patch rows z (P, d)
    s(x)  = 0.5 | (g(x) - mu) A |^2                        A: shrunk inverse square root of the covariance
    score = patch image score + weight * relu((s(x) - offset) / scale)

``offset`` and ``scale`` are the median and the (99th percentile - median) of out-of-fold global scores of
good training images, and ``weight`` the same spread of their patch image scores: an image whose global
statistics are as unusual as the 1 % most unusual good image gains as much as the spread of patch
scores between a typical and a 1 %-tail good image. Below the median nothing is added. The threshold is
calibrated on the fused scores, so the target false-alarm rate holds for the sum.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

SHRINKAGE = 0.5       # towards the diagonal: 2 d dims from a few hundred images is a rank-poor covariance
TAIL_Q = 0.99


def descriptors(rows: np.ndarray) -> np.ndarray:
    """Patch rows ``(N, P, d)`` -> global descriptors ``float64 (N, 2 d)``: per-channel mean and std over patches."""
    r = np.asarray(rows, dtype=np.float64)
    return np.concatenate([r.mean(axis=1), r.std(axis=1)], axis=1)


@dataclass
class GlobalGaussian:
    """A shrunk Gaussian over descriptors ``(N, G)``; ``score_samples`` gives 0.5 x squared Mahalanobis distance."""

    mean_: np.ndarray | None = None
    matrix_: np.ndarray | None = None

    def fit(self, g: np.ndarray) -> "GlobalGaussian":
        g = np.asarray(g, dtype=np.float64)
        self.mean_ = g.mean(axis=0)
        std = g.std(axis=0) + 1e-6
        corr = np.corrcoef((g - self.mean_) / std, rowvar=False) if g.shape[0] > 2 else np.eye(g.shape[1])
        corr = np.nan_to_num(corr, nan=0.0)
        corr = (1.0 - SHRINKAGE) * corr + SHRINKAGE * np.eye(g.shape[1])
        values, vectors = np.linalg.eigh(corr)
        inv_sqrt = (vectors * np.maximum(values, 1e-6) ** -0.5) @ vectors.T
        self.matrix_ = inv_sqrt / std[:, None]          # (g - mean) @ matrix = whitened standardised descriptor
        return self

    def score_samples(self, g: np.ndarray) -> np.ndarray:
        z = (np.asarray(g, dtype=np.float64) - self.mean_) @ self.matrix_
        return 0.5 * np.sum(z * z, axis=1)


@dataclass
class Fusion:
    """``weight * relu((s - offset) / scale)``: what the global score adds to the image score (nats)."""

    offset: float
    scale: float
    weight: float

    @classmethod
    def from_good(cls, global_scores: np.ndarray, image_scores: np.ndarray) -> "Fusion":
        """From out-of-fold scores of good images: global ``(N,)`` and patch image scores ``(N,)``."""
        g50, g99 = np.quantile(global_scores, [0.5, TAIL_Q])
        p50, p99 = np.quantile(image_scores, [0.5, TAIL_Q])
        return cls(float(g50), float(max(g99 - g50, 1e-6)), float(max(p99 - p50, 1e-6)))

    def added(self, global_scores: np.ndarray) -> np.ndarray:
        return self.weight * np.maximum(0.0, (np.asarray(global_scores) - self.offset) / self.scale)


def out_of_fold_global(rows: np.ndarray, fold_of: np.ndarray, extra: np.ndarray | None = None,
                       extra_fold: np.ndarray | None = None) -> np.ndarray:
    """Global scores ``(N,)`` of each image of ``rows`` ``(N, P, d)`` under a Gaussian fitted on the other
    folds' images and their ``extra`` rows ``(B, P, d)`` (benign copies; fold of each in ``extra_fold``)."""
    g = descriptors(rows)
    ge = descriptors(extra) if extra is not None and len(extra) else g[:0]
    fe = extra_fold if extra_fold is not None and len(ge) else np.zeros(0, np.int64)
    out = np.empty(g.shape[0])
    for k in np.unique(fold_of):
        held = fold_of == k
        out[held] = GlobalGaussian().fit(np.concatenate([g[~held], ge[fe != k]])).score_samples(g[held])
    return out


class GlobalBranch(nn.Module):
    """The exported form: patch rows ``(N, P, d)`` -> the amount added to the image score ``(N,)``."""

    def __init__(self, gaussian: GlobalGaussian, fusion: Fusion):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(gaussian.mean_, dtype=torch.float32))
        self.register_buffer("matrix", torch.as_tensor(gaussian.matrix_, dtype=torch.float32))
        self.offset, self.scale, self.weight = fusion.offset, fusion.scale, fusion.weight

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        mean = rows.mean(dim=1)
        std = torch.sqrt(torch.clamp((rows * rows).mean(dim=1) - mean * mean, min=0.0))
        z = (torch.cat([mean, std], dim=1) - self.mean) @ self.matrix
        s = 0.5 * torch.sum(z * z, dim=1)
        return self.weight * torch.relu((s - self.offset) / self.scale)
