"""Conformal calibration of anomaly scores: threshold for a target false-alarm rate and p-values.

Calibration scores are image scores of good images the density did not see (out-of-fold scores).
For a new image with score ``s`` and ``n`` calibration scores ``c``::

    p_value(s) = (1 + #{c_i >= s}) / (n + 1)

which is a valid conformal p-value when the new image is exchangeable with the calibration images.
The threshold for a target false-alarm rate ``alpha`` is the ``k``-th smallest calibration score with
``k = ceil((n + 1)(1 - alpha))``; flagging ``score > threshold`` then has false-alarm rate ``<= alpha``
on exchangeable good images. If ``k > n`` the target cannot be guaranteed with ``n`` images: the
largest calibration score is used and :attr:`ConformalCalibrator.target_reachable_` is ``False``.
"""
from __future__ import annotations

import math

import numpy as np


class ConformalCalibrator:
    """Split-conformal calibration of scalar anomaly scores (higher = more anomalous).

    Attributes (after :meth:`fit`):
        scores_: ``float64 (n,)`` sorted calibration scores.
        threshold_: score above which an image is flagged.
        target_reachable_: whether ``n`` is large enough for the requested ``alpha``.
        min_images_for_target_: the smallest ``n`` that reaches ``alpha``.
    """

    def __init__(self, alpha: float = 0.01):
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"target false-alarm rate must be in (0, 1), got {alpha}")
        self.alpha = float(alpha)

    def fit(self, calibration_scores: np.ndarray) -> "ConformalCalibrator":
        s = np.sort(np.asarray(calibration_scores, dtype=np.float64).ravel())
        if s.size == 0:
            raise ValueError("calibration needs at least one good image score")
        if not np.all(np.isfinite(s)):
            raise ValueError("calibration scores contain NaN or infinity")
        n = s.size
        k = math.ceil((n + 1) * (1.0 - self.alpha))
        self.scores_ = s
        self.target_reachable_ = k <= n
        self.min_images_for_target_ = math.ceil(1.0 / self.alpha) - 1
        self.threshold_ = float(s[min(k, n) - 1])
        return self

    @classmethod
    def from_scores(cls, scores, alpha: float, threshold: float) -> "ConformalCalibrator":
        """Rebuild a fitted calibrator from a manifest (scores and threshold as stored)."""
        c = cls(alpha).fit(np.asarray(scores, dtype=np.float64))
        c.threshold_ = float(threshold)
        return c

    def p_values(self, scores: np.ndarray) -> np.ndarray:
        """Conformal p-values ``float64`` of the same shape as ``scores`` (small = unusual)."""
        s = np.asarray(scores, dtype=np.float64)
        n = self.scores_.size
        at_least = n - np.searchsorted(self.scores_, s, side="left")
        return (1.0 + at_least) / (n + 1.0)

    def predict(self, scores: np.ndarray) -> np.ndarray:
        """``bool`` array: ``score > threshold_``."""
        return np.asarray(scores) > self.threshold_

    def false_alarm_rate(self, good_scores: np.ndarray) -> float:
        """Fraction of the given good-image scores that would be flagged."""
        g = np.asarray(good_scores)
        return float(np.mean(g > self.threshold_)) if g.size else float("nan")
