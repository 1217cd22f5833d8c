"""The Parzen density, the image score and the bank's coreset: THE definition (numpy only).

Everything that scores, fits or adapts a bank follows this module. The exported scoring graph and
the training code compute the density and the image score in torch too (``linewatch.training.parzen``,
``.scorer``); ``tests/test_density_forms.py`` checks that both forms agree. The coreset has no torch
form: ``linewatch.training.coreset`` calls the functions here.

**Log-density.** For a row ``z`` ``(d,)`` in the density's space, bank centres ``mu_i`` ``(M, d)``
with weights ``w_i`` (non-negative, normalised to sum to 1) and kernel std ``s`` (the bandwidth, in
feature units), with ``c = 1 / (2 s^2)``::

    log p(z) = logsumexp_i( log w_i - c ||z - mu_i||^2 ) - (d / 2) log(2 pi s^2)          [nats]

It is computed the way the graph computes it: ``log w_i - c ||z - mu_i||^2 = a_i - c ||z||^2``
with ``a_i = z . kernel_i + bias_i``, ``kernel = 2 c mu^T`` ``(d, M)`` and
``bias = log w - c ||mu||^2`` ``(M,)`` (:class:`~.density_params.DensityParams`, the tensors of
``density.bin``). A patch score is ``-log p`` of the patch's row.

**Exponent floor.** The logsumexp subtracts the largest ``a_i`` and clamps every ``a_i - max`` at
``EXP_FLOOR = -80`` before the exponential. Without it, far-away rows make terms below ``e^-87``,
which are subnormal float32 numbers (roughly 100 times slower on x86). The clamp raises ``log p``
by at most ``log(1 + M e^-80) < M * 1.9e-35`` nats, which is below float64 resolution for any bank
that fits in memory. So the value is the formula's, and both forms stay off subnormals. Both forms
apply the clamp the same way, so they agree term by term.

**Image score.** The mean of the ``min(top_k, P)`` largest of an image's ``P`` patch scores. With
``top_k = 1`` it is the largest.

**Coreset** (:func:`weighted_kcenter`; training's is the same with every row of mass 1). Rows
``x`` ``(N, D)`` carry masses (how many training patches each stands for). Distances are taken in
a Gaussian random projection to ``projection_dim`` dims (``P = G / sqrt(projection_dim)``, with
``G`` drawn by ``np.random.default_rng(seed).standard_normal((D, projection_dim))``, used only
when ``0 < projection_dim < D``). The first centre is the heaviest row (ties: the lowest index, so
row 0 with uniform mass). Each next centre is the row farthest from those kept (ties: the lowest
index).

**Mass hand-off** (:func:`hand_off_mass`). Each centre first takes the row nearest to it: the row
itself, when the centre was drawn from the rows, so rounding never gives a kept row's own mass to a
near-duplicate. Every other row hands its mass to its nearest centre (full-dimensional distances).
The centres' masses sum to the rows' total. Normalised, they are the bank's weights.
"""
from __future__ import annotations

import math

import numpy as np

from .density_params import DensityParams

EXP_FLOOR = -80.0
PROJECTION_DIM = 32      # random-projection dims the coreset's distances are taken in


def kernel_c(bandwidth: float) -> float:
    """``c = 1 / (2 s^2)`` for the kernel std ``s`` (feature units)."""
    return 0.5 / float(bandwidth) ** 2


def log_norm(dim: int, c: float) -> float:
    """The kernel's normalising constant ``-(d / 2) log(2 pi s^2) = -(d / 2) log(pi / c)``, nats."""
    return -0.5 * int(dim) * math.log(math.pi / float(c))


def normalised_weights(weights: np.ndarray | None, m: int) -> np.ndarray:
    """``float64 (M,)`` bank weights summing to 1; ``None`` = uniform."""
    if weights is None:
        return np.full(m, 1.0 / m)
    w = np.asarray(weights, dtype=np.float64)
    return w / w.sum()


def parzen_params(bank: np.ndarray, bandwidth: float, weights: np.ndarray | None = None) -> DensityParams:
    """Centres ``(M, d)``, kernel std ``bandwidth`` and weights ``(M,)`` (``None`` = uniform) -> the
    graph's parameters (``kernel``, ``bias``, ``c``)."""
    bank = np.asarray(bank)
    return DensityParams.from_bank(bank, normalised_weights(weights, bank.shape[0]), kernel_c(bandwidth))


def log_density(z: np.ndarray, params: DensityParams, block: int = 4096,
                exclude: np.ndarray | None = None) -> np.ndarray:
    """Rows ``z`` ``(P, d)`` in the density's space -> ``float64 (P,)`` log-density, nats (module docstring).

    ``exclude`` ``int (P,)``: for each row, a centre left out of its sum (``-1`` = none), e.g. the row's
    own centre, to score a bank centre as if it were a held-out patch. The floor leaves it ``e^-80``
    relative to the largest term, which float64 cannot resolve.
    """
    z = np.ascontiguousarray(z, dtype=np.float32)
    norm = log_norm(z.shape[1], params.c)
    out = np.empty(z.shape[0], dtype=np.float64)
    for i in range(0, z.shape[0], block):
        zb = z[i:i + block]
        a = (zb @ params.kernel).astype(np.float64) + params.bias          # (B, M), one sgemm
        if exclude is not None:
            rows = np.flatnonzero(exclude[i:i + block] >= 0)
            a[rows, exclude[i:i + block][rows]] = -np.inf
        top = a.max(axis=1, keepdims=True)
        np.exp(np.maximum(a - top, EXP_FLOOR, out=a), out=a)
        lse = top[:, 0] + np.log(a.sum(axis=1))
        out[i:i + block] = lse - params.c * np.einsum("ij,ij->i", zb, zb, dtype=np.float64) + norm
    return out


def image_scores(patch_scores: np.ndarray, top_k: int) -> np.ndarray:
    """Patch scores ``(n, P)`` (or ``(n, h, w)``) -> image scores ``float64 (n,)``: the mean of each image's
    ``min(top_k, P)`` largest patch scores."""
    s = np.asarray(patch_scores, dtype=np.float64).reshape(len(patch_scores), -1)
    k = min(int(top_k), s.shape[1])
    if k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    return np.partition(s, s.shape[1] - k, axis=1)[:, s.shape[1] - k:].mean(axis=1)


def nearest_rows(x: np.ndarray, centres: np.ndarray, block: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``x`` ``(N, D)``: the index ``int64 (N,)`` of its nearest ``centres`` row ``(M, D)``
    and the squared Euclidean distance to it ``float32 (N,)`` (clamped at 0; ties: the lowest index).

    One sgemm per block of rows (``block`` rows; by default about 2M distances at a time).
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    c = np.ascontiguousarray(centres, dtype=np.float32)
    block = block or max(64, (1 << 21) // max(1, c.shape[0]))
    csq = np.einsum("ij,ij->i", c, c)
    idx, d2 = np.empty(x.shape[0], dtype=np.int64), np.empty(x.shape[0], dtype=np.float32)
    for i in range(0, x.shape[0], block):
        xb = x[i:i + block]
        a = xb @ c.T
        a *= -2.0
        a += csq                                       # |c|^2 - 2 x.c: |x|^2 is the same for every centre
        k = np.argmin(a, axis=1)
        idx[i:i + block] = k
        d2[i:i + block] = np.maximum(a[np.arange(len(k)), k] + np.einsum("ij,ij->i", xb, xb), 0.0)
    return idx, d2


def coreset_projection(dim: int, projection_dim: int, seed: int) -> np.ndarray | None:
    """The coreset's random projection ``float32 (dim, projection_dim)``, or ``None`` when it would not
    reduce the dimension (``projection_dim <= 0`` or ``>= dim``)."""
    if not 0 < projection_dim < dim:
        return None
    g = np.random.default_rng(seed).standard_normal((dim, projection_dim)).astype(np.float32)
    return g / np.float32(math.sqrt(projection_dim))


def kcenter_order(x: np.ndarray, mass: np.ndarray, m: int, projection_dim: int = PROJECTION_DIM,
                  seed: int = 0) -> np.ndarray:
    """The coreset's centres: ``int64 (min(m, N),)`` row indices of ``x`` ``(N, D)`` in the order picked
    (module docstring; ``mass`` ``(N,)`` only chooses the first)."""
    n = x.shape[0]
    if m >= n:
        return np.arange(n, dtype=np.int64)
    xp = np.ascontiguousarray(x, dtype=np.float32)
    proj = coreset_projection(xp.shape[1], projection_dim, seed)
    if proj is not None:
        xp = np.ascontiguousarray(xp @ proj)
    sq = np.einsum("ij,ij->i", xp, xp)
    chosen = np.empty(m, dtype=np.int64)
    chosen[0] = j = int(np.argmax(np.asarray(mass, dtype=np.float64)))
    dist = sq - 2.0 * (xp @ xp[j]) + sq[j]
    for i in range(1, m):                      # one float32 matrix-vector product over the N rows a step
        j = int(np.argmax(dist))
        chosen[i] = j
        np.minimum(dist, sq - 2.0 * (xp @ xp[j]) + sq[j], out=dist)
    return chosen


def hand_off_mass(x: np.ndarray, mass: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """The mass ``float64 (M,)`` each of ``centres`` ``(M, D)`` ends up with when the rows ``x`` ``(N, D)``
    of ``mass`` ``(N,)`` hand theirs over (module docstring); it sums to ``mass.sum()``."""
    owner, _ = nearest_rows(x, centres)
    own_row, _ = nearest_rows(centres, x)
    owner[own_row] = np.arange(centres.shape[0])
    return np.bincount(owner, weights=np.asarray(mass, dtype=np.float64), minlength=centres.shape[0])


def weighted_kcenter(x: np.ndarray, mass: np.ndarray, m: int, projection_dim: int = PROJECTION_DIM,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Greedy k-centre coreset of ``m`` rows of ``x`` ``(N, d)`` whose rows carry ``mass`` ``(N,)``.

    Returns the kept row indices ``int64 (min(m, N),)`` and their masses after the hand-off
    ``float64`` (summing to ``mass.sum()``); see the module docstring for both rules.
    """
    mass = np.asarray(mass, dtype=np.float64)
    if m >= x.shape[0]:
        return np.arange(x.shape[0], dtype=np.int64), mass.copy()
    chosen = kcenter_order(x, mass, m, projection_dim, seed)
    return chosen, hand_off_mass(x, mass, np.asarray(x, dtype=np.float32)[chosen])
