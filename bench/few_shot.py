"""Does top-layer sampling help detection? Few-shot image AUROC on the demo textures.

For K good training images (K = 2, 5, 10, 25, all; K = 1 cannot be cross-fitted and is not run),
image AUROC on each texture's test split of:

  (a) the level-1 density (Parzen over backbone patch features);
  (b) the top-layer density on training codes only (CAE levels above the features);
  (c) the same plus top-layer chain samples in the bank.

Every variant runs the real fitting pipeline (``fit_on_maps``) on the same cached level-1 maps.
Also reported per (c) fit: how far chain samples lie from the nearest training code, against how
far held-out good codes lie (sample quality). Writes ``bench/results/few_shot.md``.

    python bench/few_shot.py [--quick]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from linewatch.training.config import config_from_dict
from linewatch.training.coreset import nearest_index
from linewatch.training.data import discover, load_images
from linewatch.training.demo_data import TEXTURES, DemoSpec, build_demo_dataset
from linewatch.training.features import to_patches
from linewatch.training.fit import extract_maps, fit_on_maps, input_spec_for
from linewatch.training.levels import chain_samples, fit_stack
from linewatch.training.metrics import auroc
from linewatch.training.parzen import log_density
from linewatch.training.scorer import image_score

RESULTS = Path(__file__).resolve().parent / "results"
STACK = {"widths": [64, 32], "epochs": 15}
VARIANTS = {
    "(a) level 1": {},
    "(b) level 3, codes": {"stack": STACK, "density": {"level": 3}},
    "(c) level 3, codes + chain": {"stack": STACK, "density": {"level": 3},
                                   "sampling": {"chain_samples": 2048, "sigma": 0.2}},
    "(b') level 2, codes": {"stack": STACK, "density": {"level": 2}},
    "(c') level 2, codes + chain": {"stack": STACK, "density": {"level": 2},
                                    "sampling": {"chain_samples": 2048, "sigma": 0.2}},
}


def pick(groups: list[str], k: int) -> np.ndarray:
    """``k`` training images alternating between the groups (so cross-fitting has two folds)."""
    by = {}
    for i, g in enumerate(groups):
        by.setdefault(g, []).append(i)
    lists = list(by.values())
    out = [lists[j % len(lists)][j // len(lists)] for j in range(k)]
    return np.array(out)


@torch.no_grad()
def test_scores(det, maps: np.ndarray) -> np.ndarray:
    """Image scores of cached level-1 test maps ``(N, D, h, w)`` with a fitted detector's graph parts."""
    n, d, h, w = maps.shape
    z = det.scorer.encoder(torch.from_numpy(to_patches(maps).reshape(-1, d))).numpy()
    lp = log_density(det.scorer.density, z)
    return image_score(torch.from_numpy(-lp.reshape(n, h, w)), det.scorer.top_k).numpy()


def sample_quality(maps_train: np.ndarray, cfg, seed: int) -> tuple[float, float]:
    """Mean nearest-training-code distance of chain samples and of held-out training codes (top level)."""
    d = maps_train.shape[1]
    p = to_patches(maps_train).reshape(-1, d)
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(p))
    a, b = p[idx[: len(p) // 2]], p[idx[len(p) // 2:]]
    rep = fit_stack(a, cfg.stack, seed)
    level = cfg.density.level
    ca, cb = rep.encode(a, level), rep.encode(b, level)
    s = chain_samples(rep, level, a, cfg.sampling, seed)
    _, d_held = nearest_index(cb[:4000], ca)
    _, d_samp = nearest_index(s, ca)
    return float(np.sqrt(d_samp).mean()), float(np.sqrt(d_held).mean())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small data smoke run; results not written")
    ap.add_argument("--textures", nargs="+", default=list(TEXTURES))
    ap.add_argument("--data", default="/tmp/linewatch-bench-data")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    spec = DemoSpec(size=64, n_train=24, n_test_good=8, n_test_per_defect=3) if args.quick else DemoSpec()
    ks = [2, 5, 10] if args.quick else [2, 5, 10, 25, spec.n_train]
    folders = build_demo_dataset(Path(args.data) / ("quick" if args.quick else "full"), args.textures, spec)
    base = {"threads": args.threads, **({"model": {"image_size": 64, "feature_strides": [8]}} if args.quick else {})}
    rows, quality = [], []
    t_start = time.perf_counter()
    for tex in args.textures:
        cfg0 = config_from_dict(base)
        ds = discover(folders[tex])
        input_spec = input_spec_for(cfg0)
        train, used, _ = load_images(ds.train, input_spec)
        test, _, _ = load_images([t.path for t in ds.test], input_spec)
        features, maps_tr = extract_maps(train, cfg0)
        _, maps_te = extract_maps(test, cfg0)
        y = np.array([t.label for t in ds.test])
        groups = ds.groups(used)
        for k in ks:
            sel = pick(groups, k)
            for name, variant in VARIANTS.items():
                cfg = config_from_dict({**base, **variant})
                t0 = time.perf_counter()
                det = fit_on_maps(features, maps_tr[sel], cfg, groups=[groups[i] for i in sel])
                a = auroc(y, test_scores(det, maps_te))
                rows.append((tex, k, name, a, time.perf_counter() - t0))
                print(f"{tex:<7} K={k:<4} {name:<30} AUROC {a:.3f}", flush=True)
                if "chain" in name and k == ks[-1]:
                    quality.append((tex, name, *sample_quality(maps_tr[sel], cfg, 0)))
    if args.quick:
        return 0
    names = list(VARIANTS)
    lines = ["# Few-shot: does top-layer sampling help detection?", "",
             f"Produced by `python bench/few_shot.py` ({args.threads} threads, {time.strftime('%Y-%m-%d')}, "
             f"{time.perf_counter() - t_start:.0f} s). Demo textures, 224 px crops, test split: "
             f"{spec.n_test_good} good + {spec.n_test_per_defect} x 6 defect types. Stack widths {STACK['widths']} "
             f"({STACK['epochs']} epochs per level) on standardised Lite0 stride-16 features; chain: 2048 samples, "
             f"sigma 0.2, burn-in 10, thin 2. Image score: mean of the top {cfg0.scoring.top_k} patch scores. K images "
             "alternate between the two training groups. Image AUROC:", "",
             "| texture | K | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for tex in args.textures:
        for k in ks:
            vals = {n: a for t, kk, n, a, _ in rows if t == tex and kk == k}
            best = max(vals.values())
            lines.append(f"| {tex} | {k} | " + " | ".join(
                (f"**{vals[n]:.3f}**" if vals[n] == best else f"{vals[n]:.3f}") for n in names) + " |")
    lines += ["", "Mean over textures and K:", "", "| variant | mean AUROC | wins (of texture x K) |", "|---|---|---|"]
    cells = {(t, kk) for t, kk, *_ in rows}
    for n in names:
        mean = np.mean([a for _, _, nn, a, _ in rows if nn == n])
        wins = sum(1 for c in cells if max((a for t, kk, nn, a, _ in rows if (t, kk) == c), default=0) ==
                   next(a for t, kk, nn, a, _ in rows if (t, kk) == c and nn == n))
        lines.append(f"| {n} | {mean:.3f} | {wins} |")
    lines += ["", "Chain sample quality at K = all (mean distance to the nearest training code, top level; "
              "held-out good codes for reference):", "", "| texture | variant | chain samples | held-out codes |",
              "|---|---|---|---|"]
    lines += [f"| {t} | {n} | {s:.3f} | {h:.3f} |" for t, n, s, h in quality]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "few_shot.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS / 'few_shot.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
