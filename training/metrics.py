"""Detection metrics (numpy only)."""
from __future__ import annotations

import numpy as np


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)
    return (last - 0.5 * (counts - 1))[inverse].astype(np.float64)


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U; ties count one half). ``labels`` 1 = anomalous."""
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = _average_ranks(s)
    return float((r[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two score vectors ``(N,)``: Pearson correlation of their average
    ranks (ties share their mean rank). ``nan`` with fewer than 2 values or when either is constant."""
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"spearman needs two vectors of the same length, got {x.size} and {y.size}")
    if x.size < 2:
        return float("nan")
    rx, ry = _average_ranks(x), _average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = float(np.sqrt(np.sum(rx * rx) * np.sum(ry * ry)))
    return float(np.sum(rx * ry) / den) if den > 0 else float("nan")


def pixel_auroc(masks: np.ndarray, maps: np.ndarray) -> float:
    """AUROC over all pixels: ``masks`` bool/0-1 ``(N, H, W)``, ``maps`` anomaly scores of the same shape."""
    return auroc(np.asarray(masks).ravel() > 0, np.asarray(maps).ravel())


def aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3) -> float:
    """Area under the per-region-overlap curve up to ``fpr_limit``, normalised to [0, 1] (Bergmann et al.).

    For a threshold ``t``: PRO(t) = mean over connected defect regions (8-connected, per image) of the
    fraction of the region's pixels with score >= t; FPR(t) = fraction of defect-free pixels with
    score >= t. The curve is swept exactly (every distinct score is a threshold; equal scores move
    together), integrated by the trapezoid rule over FPR in [0, fpr_limit] (linear interpolation at the
    limit), and divided by ``fpr_limit``.
    """
    import cv2

    masks = np.asarray(masks) > 0
    maps = np.asarray(maps, dtype=np.float64)
    if masks.shape != maps.shape or masks.ndim != 3:
        raise ValueError(f"masks and maps must both be (N, H, W); got {masks.shape} and {maps.shape}")
    pro_gain = np.zeros(maps.shape, dtype=np.float64)
    n_regions = 0
    for i in range(masks.shape[0]):
        count, labels = cv2.connectedComponents(masks[i].astype(np.uint8), connectivity=8)
        for r in range(1, count):
            region = labels == r
            pro_gain[i][region] = 1.0 / region.sum()
        n_regions += count - 1
    n_normal = int((~masks).sum())
    if n_regions == 0 or n_normal == 0:
        return float("nan")
    scores = maps.ravel()
    order = np.argsort(-scores, kind="mergesort")
    s = scores[order]
    pro = np.cumsum(pro_gain.ravel()[order]) / n_regions
    fpr = np.cumsum((~masks).ravel()[order]) / n_normal
    last = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]      # end of each group of equal scores
    fpr, pro = np.r_[0.0, fpr[last]], np.r_[0.0, pro[last]]
    keep = fpr <= fpr_limit
    x, y = fpr[keep], pro[keep]
    if x[-1] < fpr_limit:
        j = np.searchsorted(fpr, fpr_limit)
        y_lim = pro[j - 1] + (pro[j] - pro[j - 1]) * (fpr_limit - fpr[j - 1]) / (fpr[j] - fpr[j - 1])
        x, y = np.r_[x, fpr_limit], np.r_[y, y_lim]
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0) / fpr_limit)
