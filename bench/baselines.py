"""Baseline detectors for the accuracy benchmark (bench/accuracy.py), written here, not in linewatch.

Two families, each with ``fit(X)`` on good data and ``score(X) -> (image_scores (N,), maps)``, where a
higher score means more anomalous and ``maps`` is ``(N, h, w)`` float32 (or ``None`` for a detector
that scores whole images only):

- on linewatch's own level-1 patch features ``X = (N, D, h, w)`` (Lite0 stride 16, 3 x 3 pooled), so
  that the representation is held fixed and only the density differs:
  :class:`KnnPatchDistance` (PatchCore-like: distance to the nearest training patch, image = max) and
  :class:`PositionGaussian` (PaDiM-like: one Gaussian per map position, Mahalanobis distance);
- on pixels ``X = (N, H, W)`` float32 grey images, downsampled by the caller:
  :class:`PixelParzen`, :class:`PixelPCA`, :class:`PixelOCSVM`, :class:`PixelIsolationForest`.
"""
from __future__ import annotations

import numpy as np
import torch

from linewatch.training.parzen import log_density_grid, sq_dists


class KnnPatchDistance:
    """Euclidean distance of each patch to its nearest training patch (all training patches kept)."""

    def fit(self, maps: np.ndarray) -> "KnnPatchDistance":
        n, d, h, w = maps.shape
        self.bank_ = torch.from_numpy(np.ascontiguousarray(maps.transpose(0, 2, 3, 1).reshape(-1, d)))
        self.bank_sq_ = (self.bank_ * self.bank_).sum(dim=1)
        return self

    @torch.no_grad()
    def score(self, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n, d, h, w = maps.shape
        z = torch.from_numpy(np.ascontiguousarray(maps.transpose(0, 2, 3, 1).reshape(-1, d)))
        best = torch.empty(z.shape[0])
        for i in range(0, z.shape[0], 2048):          # blocks of 2048 x 8192 distances (64 MB)
            q = z[i:i + 2048]
            best[i:i + 2048] = torch.stack([sq_dists(q, self.bank_[j:j + 8192], self.bank_sq_[j:j + 8192]).amin(dim=1)
                                            for j in range(0, self.bank_.shape[0], 8192)]).amin(dim=0)
        patch = best.sqrt().numpy().reshape(n, h, w)
        return patch.reshape(n, -1).max(axis=1), patch


class PositionGaussian:
    """A Gaussian per map position (mean, covariance + ``ridge`` I); patch score = Mahalanobis distance."""

    def __init__(self, ridge: float = 0.01):
        self.ridge = ridge

    def fit(self, maps: np.ndarray) -> "PositionGaussian":
        n, d, h, w = maps.shape
        x = torch.from_numpy(maps).double().permute(2, 3, 0, 1).reshape(h * w, n, d)   # (P, N, D)
        self.mean_ = x.mean(dim=1)                                                      # (P, D)
        c = x - self.mean_[:, None]
        cov = c.transpose(1, 2) @ c / max(n - 1, 1) + self.ridge * torch.eye(d, dtype=torch.float64)
        self.precision_ = torch.linalg.inv(cov)                                         # (P, D, D)
        return self

    @torch.no_grad()
    def score(self, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n, d, h, w = maps.shape
        x = torch.from_numpy(maps).double().permute(2, 3, 0, 1).reshape(h * w, n, d) - self.mean_[:, None]
        m2 = torch.einsum("pnd,pde,pne->pn", x, self.precision_, x)
        patch = m2.clamp_min(0).sqrt().T.reshape(n, h, w).numpy().astype(np.float32)
        return patch.reshape(n, -1).max(axis=1), patch


class _PixelStandardiser:
    """Flatten ``(N, H, W)`` images and standardise each pixel with the training mean and std."""

    def _fit_scale(self, images: np.ndarray) -> np.ndarray:
        x = images.reshape(images.shape[0], -1).astype(np.float64)
        self.mean_, self.std_ = x.mean(axis=0), x.std(axis=0) + 1e-6
        return (x - self.mean_) / self.std_

    def _scale(self, images: np.ndarray) -> np.ndarray:
        return (images.reshape(images.shape[0], -1).astype(np.float64) - self.mean_) / self.std_


class PixelParzen(_PixelStandardiser):
    """Gaussian Parzen density on standardised pixels; the bandwidth maximises held-out log-likelihood
    (a random quarter of the training images held out once); score = negative log-density."""

    def __init__(self, seed: int = 0):
        self.seed = seed

    def fit(self, images: np.ndarray) -> "PixelParzen":
        x = self._fit_scale(images).astype(np.float32)
        rng = np.random.default_rng(self.seed)
        held = rng.permutation(len(x))[: max(1, len(x) // 4)]
        keep = np.setdiff1d(np.arange(len(x)), held)
        bank = torch.from_numpy(x[keep])
        d2 = sq_dists(torch.from_numpy(x[held]), bank, (bank * bank).sum(dim=1)).amin(dim=1)
        grid = np.sqrt(float(d2.median())) * np.array([0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0])
        ll = log_density_grid(x[held], x[keep], None, grid).mean(axis=0)
        self.bandwidth_ = float(grid[int(np.argmax(ll))])
        self.centres_ = x
        return self

    def score(self, images: np.ndarray) -> tuple[np.ndarray, None]:
        ll = log_density_grid(self._scale(images).astype(np.float32), self.centres_, None, [self.bandwidth_])
        return -ll[:, 0], None


class PixelPCA(_PixelStandardiser):
    """PCA keeping ``variance`` of the training variance; score = squared reconstruction error (per
    pixel for the map, summed for the image)."""

    def __init__(self, variance: float = 0.95):
        self.variance = variance

    def fit(self, images: np.ndarray) -> "PixelPCA":
        from sklearn.decomposition import PCA

        self.shape_ = images.shape[1:]
        self.pca_ = PCA(n_components=self.variance, svd_solver="full").fit(self._fit_scale(images))
        return self

    def score(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = self._scale(images)
        err = (x - self.pca_.inverse_transform(self.pca_.transform(x))) ** 2
        return err.sum(axis=1), err.reshape((-1,) + self.shape_).astype(np.float32)


class PixelOCSVM(_PixelStandardiser):
    """scikit-learn ``OneClassSVM`` (RBF, ``gamma="scale"``, ``nu``); score = minus the decision function."""

    def __init__(self, nu: float = 0.1):
        self.nu = nu

    def fit(self, images: np.ndarray) -> "PixelOCSVM":
        from sklearn.svm import OneClassSVM

        self.svm_ = OneClassSVM(kernel="rbf", gamma="scale", nu=self.nu).fit(self._fit_scale(images))
        return self

    def score(self, images: np.ndarray) -> tuple[np.ndarray, None]:
        return -self.svm_.decision_function(self._scale(images)), None


class PixelIsolationForest(_PixelStandardiser):
    """scikit-learn ``IsolationForest`` (200 trees); score = minus ``score_samples``."""

    def __init__(self, seed: int = 0):
        self.seed = seed

    def fit(self, images: np.ndarray) -> "PixelIsolationForest":
        from sklearn.ensemble import IsolationForest

        self.forest_ = IsolationForest(n_estimators=200, random_state=self.seed).fit(self._fit_scale(images))
        return self

    def score(self, images: np.ndarray) -> tuple[np.ndarray, None]:
        return -self.forest_.score_samples(self._scale(images)), None
