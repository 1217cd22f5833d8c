"""A rolling drift warning: has the share of flagged images left the bundle's target false-alarm rate?

The threshold is set so that about ``target`` of good images like the calibration images are flagged.
When production changes (a new lamp, batch, camera, JPEG setting), far more images are flagged and
the verdicts stop meaning "defect". :class:`DriftWatch` keeps the verdicts of the last ``window``
scored images and warns when, with at least ``min_images`` of them, both

* the flagged share ``k / n`` is at least ``factor * target``, and
* a one-sided binomial test rejects "flagged share <= target": ``P(X >= k | n, target) < alpha``,

and clears only once the share is back below ``clear_factor * target`` (hysteresis, so it does not
flap). Defective parts are flagged too, so a burst of real defects can warn as well; either way the
flagged images need a look.

The state also reports the PSI and KS of the window's scores against the calibration scores
(:mod:`drift`), for the operator; they do not decide the warning. Standard library and numpy only.
"""
from __future__ import annotations

import functools
import math
import threading
from collections import deque
from dataclasses import asdict, dataclass

import numpy as np

from .drift import drift_report

# The audit's --recent default, so the warning and the audit report look at the same images. At a 1 %
# target it expects 2 false alarms, and 10 (the 5x share) are then already a 5e-5 binomial tail.
DRIFT_WINDOW = 200
# At a 1 % target the binomial test alone would warn on 3 flagged of the first 20 images, which a short
# run of real defects at start-up gives; from 50 images on it takes at least 5 flagged (10 %).
MIN_IMAGES = 50
# Real defects are flagged too: a line with a few % defective parts stays below 5x a 1 % target, while a
# change of light or camera flags most images (every brightened image in tests/test_drift_watch.py).
WARN_FACTOR = 5.0
# The test is repeated after every image, so its level must be far below 1/window: with this level and
# the factor, i.i.d. streams at a 1 % target warned twice in 200 x 10000 images (a stream at 10 % warned
# after a median of 50 images, at most 139).
WARN_ALPHA = 1e-3
# The warning clears below 2x the target, not at 5x: a share hovering at the warning level does not flap.
CLEAR_FACTOR = 2.0
# PSI and KS over fewer recent scores than this are noise (the audit's drift_report default).
MIN_SCORES_FOR_PSI = 10


@functools.lru_cache(maxsize=8192)
def binomial_tail(k: int, n: int, p: float) -> float:
    """``P(X >= k)`` for ``X ~ Binomial(n, p)``: the pmf summed in log space (no scipy).

    Terms more than ``e^-40`` below the largest one past the mean are dropped (relative error < 1e-15)."""
    if k <= 0:
        return 1.0
    if k > n or p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    lp, lq, base = math.log(p), math.log1p(-p), math.lgamma(n + 1)
    logs: list[float] = []
    top = -math.inf
    for j in range(k, n + 1):
        t = base - math.lgamma(j + 1) - math.lgamma(n - j + 1) + j * lp + (n - j) * lq
        top = max(top, t)
        logs.append(t)
        if j > n * p and t < top - 40.0:       # past the mode the terms only fall
            break
    return min(1.0, math.exp(top) * math.fsum(math.exp(t - top) for t in logs))


def expected_false_alarm_rate(target: float, calibration_scores, threshold: float) -> float:
    """The flagged share to expect on good images like the calibration images, ``float`` in (0, 1).

    A good image exceeds the threshold with probability ``(1 + #{calibration scores > threshold}) / (n + 1)``
    (conformal). That is at most ``target`` when ``n`` reaches it; with too few calibration images
    (fewer than 99 for 1 %) the threshold is the largest score and good images are flagged ``1 / (n + 1)``
    of the time, which the watch must not call drift."""
    cal = np.asarray(calibration_scores, dtype=np.float64).ravel()
    if cal.size == 0:
        return float(target)
    return max(float(target), (1.0 + float(np.sum(cal > threshold))) / (cal.size + 1.0))


@dataclass(frozen=True)
class DriftState:
    """The watch after some image. ``window``: scored images in the window (``n``); ``flagged``: how many of
    them were flagged (``k``); ``binomial_p``: ``P(X >= k | n, target)``; ``psi``, ``ks``: the window's scores
    against the calibration scores (None with fewer than :data:`MIN_SCORES_FOR_PSI` or no calibration)."""

    drift: bool
    flagged: int
    window: int
    flagged_share: float | None
    target: float
    binomial_p: float | None
    psi: float | None
    ks: float | None

    def to_dict(self) -> dict:
        return asdict(self)


class DriftWatch:
    """The drift warning over a rolling window of verdicts (see the module docstring). Thread-safe.

    Args:
        target_rate: the flagged share expected without drift (see :func:`expected_false_alarm_rate`).
        calibration_scores: the bundle's calibration scores (nats), for PSI and KS; None = not reported.
        window: verdicts kept (only scored images count; errors are not verdicts).
        min_images: no warning before the window holds this many (capped at ``window``).
        factor, alpha, clear_factor: warn at share ``>= factor * target`` with binomial tail ``< alpha``;
            clear at share ``< clear_factor * target``. A target of ``1 / factor`` or more never warns.

    Attributes:
        drift_: whether the warning is on.
        warnings_: how many times it turned on.
    """

    def __init__(self, target_rate: float, calibration_scores=None, window: int = DRIFT_WINDOW,
                 min_images: int = MIN_IMAGES, factor: float = WARN_FACTOR, alpha: float = WARN_ALPHA,
                 clear_factor: float = CLEAR_FACTOR):
        if not 0.0 < float(target_rate) < 1.0:
            raise ValueError(f"drift watch: target rate must be in (0, 1), got {target_rate}")
        if int(window) < 1 or int(min_images) < 1:
            raise ValueError(f"drift watch: window and min_images must be >= 1, got {window} and {min_images}")
        if not 1.0 <= clear_factor < factor:
            raise ValueError(f"drift watch: need 1 <= clear_factor < factor, got {clear_factor} and {factor}")
        self.target = float(target_rate)
        self.window = int(window)
        self.min_images = min(int(min_images), self.window)
        self.factor, self.alpha, self.clear_factor = float(factor), float(alpha), float(clear_factor)
        cal = None if calibration_scores is None else np.asarray(calibration_scores, dtype=np.float64).ravel()
        self.calibration_scores = cal
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Forget every verdict (a new calibration: another bundle)."""
        with self._lock:
            self._verdicts: deque[tuple[float, bool]] = deque(maxlen=self.window)
            self._flagged = 0
            self.drift_ = False
            self.warnings_ = 0

    @property
    def drift(self) -> bool:
        return self.drift_

    def observe(self, score: float | None, anomalous: bool | None) -> DriftState | None:
        """Add one verdict -> the new state if the warning turned on or off with it, else None.

        An error (``score`` or ``anomalous`` None) is not a verdict and changes nothing."""
        if score is None or anomalous is None:
            return None
        with self._lock:
            if len(self._verdicts) == self.window:
                self._flagged -= self._verdicts[0][1]
            self._verdicts.append((float(score), bool(anomalous)))
            self._flagged += bool(anomalous)
            was = self.drift_
            self.drift_ = self._decide(self._flagged, len(self._verdicts))
            self.warnings_ += self.drift_ and not was
            changed = self.drift_ != was
        return self.state() if changed else None

    def _decide(self, k: int, n: int) -> bool:
        """The warning after a window of ``n`` verdicts with ``k`` flagged, given the warning before."""
        share = k / n
        if self.drift_:
            return share >= self.clear_factor * self.target
        return (n >= self.min_images and share >= self.factor * self.target
                and binomial_tail(k, n, self.target) < self.alpha)

    def state(self) -> DriftState:
        """The current state (computes PSI and KS of the window: ~0.1 ms for 200 scores)."""
        with self._lock:
            k, n, drift = self._flagged, len(self._verdicts), self.drift_
            scores = np.fromiter((s for s, _ in self._verdicts), dtype=np.float64, count=n)
        psi = ks = None
        scores = scores[np.isfinite(scores)]
        cal = self.calibration_scores
        if cal is not None and cal.size >= 2 and scores.size >= MIN_SCORES_FOR_PSI:
            report = drift_report(cal, scores, min_recent=MIN_SCORES_FOR_PSI)
            psi, ks = report["psi"], report["ks"]
        return DriftState(drift=drift, flagged=k, window=n, flagged_share=k / n if n else None,
                          target=self.target, binomial_p=binomial_tail(k, n, self.target) if n else None,
                          psi=psi, ks=ks)


def checked_window(window: int) -> int:
    """``--drift-window`` as an ``int``; ``ValueError`` when it is negative (0 = off)."""
    if int(window) < 0:
        raise ValueError(f"--drift-window must be >= 0 (0 = no drift warning), got {window}")
    return int(window)


def watch_bundle(manifest, window: int = DRIFT_WINDOW, **kwargs) -> DriftWatch | None:
    """A :class:`DriftWatch` for a bundle's manifest (target: :func:`expected_false_alarm_rate` of its
    decision and calibration), or None for ``window == 0`` (off). Raises ``ValueError`` for ``window < 0``."""
    window = checked_window(window)
    if window == 0:
        return None
    cal = manifest.calibration.scores
    target = expected_false_alarm_rate(manifest.decision.target_false_alarm_rate, cal, manifest.decision.threshold)
    return DriftWatch(target, cal, window=window, **kwargs)


def warning_message(state: DriftState) -> str:
    """The one line said when the warning turns on."""
    return (f"warning: drift: {state.flagged} of the last {state.window} images flagged "
            f"({100 * (state.flagged_share or 0):.1f} %, target {100 * state.target:.1f} %): production no longer "
            "looks like the calibration images (light, camera, batch?); review flagged images (linewatch audit) "
            "and recalibrate (linewatch adapt --calibration DIR) or retrain")


def cleared_message(state: DriftState) -> str:
    """The one line said when the warning clears."""
    return (f"drift cleared: {state.flagged} of the last {state.window} images flagged "
            f"({100 * (state.flagged_share or 0):.1f} %, target {100 * state.target:.1f} %)")


def change_message(state: DriftState) -> str:
    return warning_message(state) if state.drift else cleared_message(state)
