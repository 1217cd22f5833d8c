"""Whole-image ("global") baseline detectors for the broad benchmark (bench/suite.py).

Each has ``fit(images)`` on good images and ``score(images) -> (scores (N,), None)`` (higher = more
anomalous; no map), where ``images`` is a list of decoded images as stored (``(H, W)`` grey,
``(H, W, 3)`` BGR or ``(H, W, 4)`` BGRA, uint8 or uint16) at their own size:

- :class:`ColourHistogramECOD`: per-channel 16-bin histograms (HSV by default) concatenated into one
  vector, scored with :class:`ECOD`;
- :class:`ImageStatsIsolationForest`: per-channel mean, std and percentiles 5/50/95, grey
  gradient-magnitude mean and std, Laplacian variance and colourfulness, scored with scikit-learn's
  ``IsolationForest`` (``random_state`` 0).

ECOD is implemented here rather than taken from PyOD: PyOD 3.6 pulls numba, llvmlite and matplotlib
(about 250 MB) for a few lines of numpy. It also differs from PyOD in two ways on purpose:

- the tail probabilities come from the *training* sample only (PyOD recomputes them on training +
  scored data together), so a score does not depend on which other images were scored with it, which
  the conformal thresholds need;
- the outlier score is the paper's ``max(O_left, O_right, O_auto)`` of the summed per-dimension tail
  scores (Li et al. 2022, Algorithm 1); PyOD takes the maximum per dimension before summing.
"""
from __future__ import annotations

import cv2
import numpy as np

HIST_BINS = 16


def as_bgr8(image: np.ndarray) -> np.ndarray:
    """A decoded image -> ``uint8 (H, W, 3)`` BGR (grey replicated, alpha dropped, 16 bit scaled)."""
    img = np.asarray(image)
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise ValueError(f"images must be uint8 or uint16, got {img.dtype}; decode them with read_image")
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.ndim == 3 and img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    if img.ndim == 3 and img.shape[2] == 3:
        return img
    raise ValueError(f"images must be (H, W), (H, W, 3) or (H, W, 4), got shape {img.shape}")


# --------------------------------------------------------------------------------------------------
# ECOD on feature vectors


class ECOD:
    """Empirical-CDF outlier detection (Li et al. 2022) fitted on a good sample ``X (n, d)``.

    For a row ``x``, per dimension ``j``: left tail ``F_l = (1 + #{X_ij <= x_j}) / (n + 1)``, right
    tail ``F_r = (1 + #{X_ij >= x_j}) / (n + 1)`` (the +1 keeps values outside the training range
    finite), and the tail chosen by the sign of the training skewness of dimension ``j`` (both tails
    summed for a symmetric one, as PyOD). Score = ``max(-sum log F_l, -sum log F_r, -sum log F_auto)``.

    Attributes: ``sorted_`` float64 ``(n, d)`` (each column sorted), ``skew_sign_`` ``(d,)`` in {-1, 0, 1}.
    """

    def fit(self, X: np.ndarray) -> "ECOD":
        x = np.asarray(X, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] < 2:
            raise ValueError(f"ECOD needs a (n >= 2, d) training matrix, got shape {x.shape}")
        self.sorted_ = np.sort(x, axis=0)
        c = x - x.mean(axis=0)
        m2, m3 = (c ** 2).mean(axis=0), (c ** 3).mean(axis=0)
        skew = np.divide(m3, m2 ** 1.5, out=np.zeros_like(m3), where=m2 > 1e-24)
        self.skew_sign_ = np.sign(skew)
        return self

    def tail_scores(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``-log F_l`` and ``-log F_r``, each float64 ``(N, d)``."""
        x = np.asarray(X, dtype=np.float64)
        n, d = self.sorted_.shape
        if x.ndim != 2 or x.shape[1] != d:
            raise ValueError(f"ECOD was fitted on {d} dimensions; got shape {x.shape}")
        le = np.empty(x.shape)
        ge = np.empty(x.shape)
        for j in range(d):
            col = self.sorted_[:, j]
            le[:, j] = np.searchsorted(col, x[:, j], side="right")
            ge[:, j] = n - np.searchsorted(col, x[:, j], side="left")
        return -np.log((1.0 + le) / (n + 1.0)), -np.log((1.0 + ge) / (n + 1.0))

    def score_samples(self, X: np.ndarray) -> np.ndarray:
        """Outlier scores float64 ``(N,)`` (higher = more anomalous; opposite of scikit-learn's sign)."""
        u_l, u_r = self.tail_scores(X)
        s = self.skew_sign_
        u_auto = u_l * (s < 0) + u_r * (s > 0) + (u_l + u_r) * (s == 0)
        return np.maximum(np.maximum(u_l.sum(axis=1), u_r.sum(axis=1)), u_auto.sum(axis=1))


# --------------------------------------------------------------------------------------------------
# Image descriptors


def colour_histograms(images: list[np.ndarray], space: str = "hsv", bins: int = HIST_BINS) -> np.ndarray:
    """Per-channel ``bins``-bin histograms (fractions of the pixels), concatenated -> ``float64 (N, 3 * bins)``.

    ``space``: ``"hsv"`` (OpenCV's 8-bit HSV: hue 0..179) or ``"rgb"``.
    """
    if space not in ("hsv", "rgb"):
        raise ValueError(f"space must be 'hsv' or 'rgb', got {space!r}")
    ranges = [180, 256, 256] if space == "hsv" else [256, 256, 256]
    out = np.empty((len(images), 3 * bins))
    for i, image in enumerate(images):
        img = as_bgr8(image)
        img = cv2.cvtColor(img, cv2.COLOR_BGR2HSV) if space == "hsv" else img[:, :, ::-1]
        img = np.ascontiguousarray(img)
        for c in range(3):
            h = cv2.calcHist([img], [c], None, [bins], [0, ranges[c]]).ravel()
            out[i, c * bins:(c + 1) * bins] = h / max(h.sum(), 1.0)
    return out


STAT_NAMES = tuple(f"{c}_{s}" for c in "bgr" for s in ("mean", "std", "p5", "p50", "p95")) + (
    "grad_mean", "grad_std", "laplacian_var", "colourfulness")


def image_statistics(images: list[np.ndarray]) -> np.ndarray:
    """Per image the :data:`STAT_NAMES` statistics -> ``float64 (N, 19)`` (intensities in 0..255).

    Gradients: Sobel 3 x 3 on the grey image; colourfulness: Hasler and Suesstrunk (2003),
    ``sqrt(std(rg)^2 + std(yb)^2) + 0.3 sqrt(mean(rg)^2 + mean(yb)^2)`` with ``rg = R - G``,
    ``yb = (R + G) / 2 - B``.
    """
    out = np.empty((len(images), len(STAT_NAMES)))
    for i, image in enumerate(images):
        img = as_bgr8(image)
        px = img.reshape(-1, 3).astype(np.float64)
        per = [np.concatenate([[c.mean(), c.std()], np.percentile(c, [5, 50, 95])]) for c in px.T]
        grey = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(np.float32)
        mag = cv2.magnitude(cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3))
        lap = cv2.Laplacian(grey, cv2.CV_32F)
        b, g, r = px.T
        rg, yb = r - g, 0.5 * (r + g) - b
        colourful = np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean())
        out[i] = np.concatenate(per + [[mag.mean(), mag.std(), lap.var(), colourful]])
    return out


# --------------------------------------------------------------------------------------------------
# The two detectors


class ColourHistogramECOD:
    """:func:`colour_histograms` (``space``, 16 bins) scored by :class:`ECOD`."""

    def __init__(self, space: str = "hsv"):
        self.space = space

    def fit(self, images: list[np.ndarray]) -> "ColourHistogramECOD":
        self.ecod_ = ECOD().fit(colour_histograms(images, self.space))
        return self

    def score(self, images: list[np.ndarray]) -> tuple[np.ndarray, None]:
        return self.ecod_.score_samples(colour_histograms(images, self.space)), None


class ImageStatsIsolationForest:
    """:func:`image_statistics` scored by ``IsolationForest(random_state=seed)`` (score = minus
    scikit-learn's ``score_samples``)."""

    def __init__(self, seed: int = 0):
        self.seed = seed

    def fit(self, images: list[np.ndarray]) -> "ImageStatsIsolationForest":
        from sklearn.ensemble import IsolationForest

        self.forest_ = IsolationForest(random_state=self.seed).fit(image_statistics(images))
        return self

    def score(self, images: list[np.ndarray]) -> tuple[np.ndarray, None]:
        return -self.forest_.score_samples(image_statistics(images)), None
