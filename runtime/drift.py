"""Score drift: do recent image scores still look like the bundle's calibration scores?

Two statistics, both comparing recent scores with the calibration scores stored in the manifest:

* **PSI** (population stability index) over ``bins`` quantile bins of the calibration scores:
  ``PSI = sum_b (a_b - e_b) * ln(a_b / e_b)`` where ``e_b`` / ``a_b`` are the shares of calibration /
  recent scores in bin ``b``; a share of 0 is replaced by :data:`PSI_FLOOR` so the log stays finite.
  Rule of thumb: below 0.1 no shift, 0.1-0.25 a moderate shift, above 0.25 a shift worth acting on.
* **KS**: the two-sample Kolmogorov-Smirnov statistic ``D = max_x |F_recent(x) - F_calibration(x)|``,
  with its asymptotic p-value (Kolmogorov distribution, effective size ``n m / (n + m)``).

Calibration scores are good images only; recent scores include whatever the line sent, defects too,
so a burst of defective parts raises both statistics as well as a change of light or camera does.
"""
from __future__ import annotations

import math

import numpy as np

PSI_FLOOR = 1e-4          # share used for an empty bin
PSI_SHIFT = 0.25          # PSI above this: the score distribution has shifted
PSI_MODERATE = 0.10


def quantile_edges(reference: np.ndarray, bins: int = 10) -> np.ndarray:
    """The ``bins - 1`` interior bin edges ``float64``: the reference's ``1/bins, ..., (bins-1)/bins`` quantiles
    (numpy's default linear interpolation). Bin ``b`` holds ``edges[b-1] < x <= edges[b]``."""
    ref = np.asarray(reference, dtype=np.float64).ravel()
    return np.quantile(ref, np.arange(1, bins) / bins)


def bin_shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Share ``float64 (len(edges) + 1,)`` of ``values`` in each bin ``(-inf, e0], (e0, e1], ..., (e_last, inf)``."""
    v = np.asarray(values, dtype=np.float64).ravel()
    counts = np.bincount(np.searchsorted(edges, v, side="left"), minlength=len(edges) + 1)
    return counts / max(1, v.size)


def psi(reference: np.ndarray, recent: np.ndarray, bins: int = 10) -> float:
    """Population stability index of ``recent`` against ``reference`` over quantile bins of ``reference``."""
    edges = quantile_edges(reference, bins)
    e = np.maximum(bin_shares(reference, edges), PSI_FLOOR)
    a = np.maximum(bin_shares(recent, edges), PSI_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic ``max |F_a - F_b|`` over all observed values."""
    a = np.sort(np.asarray(a, dtype=np.float64).ravel())
    b = np.sort(np.asarray(b, dtype=np.float64).ravel())
    if a.size == 0 or b.size == 0:
        raise ValueError("KS needs two non-empty samples")
    x = np.concatenate([a, b])
    fa = np.searchsorted(a, x, side="right") / a.size
    fb = np.searchsorted(b, x, side="right") / b.size
    return float(np.max(np.abs(fa - fb)))


def ks_p_value(d: float, n: int, m: int) -> float:
    """Asymptotic p-value of a two-sample KS statistic ``d`` for sample sizes ``n``, ``m``:
    ``Q(lambda) = 2 sum_k (-1)^(k-1) exp(-2 k^2 lambda^2)``, ``lambda = (sqrt(ne) + 0.12 + 0.11 / sqrt(ne)) d``,
    ``ne = n m / (n + m)`` (the usual small-sample correction)."""
    ne = n * m / (n + m)
    lam = (math.sqrt(ne) + 0.12 + 0.11 / math.sqrt(ne)) * d
    if lam < 1e-3:
        return 1.0
    q = 2.0 * sum((-1) ** (k - 1) * math.exp(-2.0 * k * k * lam * lam) for k in range(1, 101))
    return float(min(1.0, max(0.0, q)))


def drift_report(calibration: np.ndarray, recent: np.ndarray, bins: int = 10, min_recent: int = 10) -> dict:
    """PSI and KS of ``recent`` scores against ``calibration`` scores, with the bins' shares and a verdict."""
    cal = np.asarray(calibration, dtype=np.float64).ravel()
    rec = np.asarray(recent, dtype=np.float64).ravel()
    out: dict = {"n_calibration": int(cal.size), "n_recent": int(rec.size), "bins": bins,
                 "psi_rule": f"PSI < {PSI_MODERATE}: no shift; {PSI_MODERATE}-{PSI_SHIFT}: moderate; "
                             f"> {PSI_SHIFT}: the scores have shifted"}
    if cal.size < 2 or rec.size < min_recent:
        out.update(psi=None, ks=None, ks_p_value=None, verdict="too few scores",
                   note=f"drift needs at least 2 calibration and {min_recent} recent scores")
        return out
    edges = quantile_edges(cal, bins)
    value = psi(cal, rec, bins)
    d = ks_statistic(rec, cal)
    out.update(psi=value, ks=d, ks_p_value=ks_p_value(d, rec.size, cal.size),
               edges=[float(x) for x in edges],
               calibration_shares=[float(x) for x in bin_shares(cal, edges)],
               recent_shares=[float(x) for x in bin_shares(rec, edges)],
               verdict="shift" if value > PSI_SHIFT else "moderate shift" if value > PSI_MODERATE else "no shift")
    return out
