"""Which level-1 features and image score to use by default: measured on the demo textures.

Runs the real fitting pipeline (``fit_detector``: coreset, weighted Parzen density, cross-fitted
bandwidth and conformal threshold) for each variant and scores the test split with the fitted torch
graph (the exported graph matches it within the parity tolerance). Writes ``bench/results/ablation.md``.

    python bench/ablation.py [--quick] [--textures brick gravel grass]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from linewatch.training.config import config_from_dict
from linewatch.training.data import discover, load_images
from linewatch.training.demo_data import TEXTURES, DemoSpec, build_demo_dataset
from linewatch.training.fit import fit_detector, input_spec_for
from linewatch.training.metrics import auroc

RESULTS = Path(__file__).resolve().parent / "results"

VARIANTS = {
    "strides 8+16, pool 3, max": {"model": {"feature_strides": [8, 16], "patch_pool": 3}, "scoring": {"top_k": 1}},
    "strides 8+16, pool 3, top-10": {"model": {"feature_strides": [8, 16], "patch_pool": 3}, "scoring": {"top_k": 10}},
    "stride 16, pool 3, max": {"model": {"feature_strides": [16], "patch_pool": 3}, "scoring": {"top_k": 1}},
    "stride 16, pool 1, top-10": {"model": {"feature_strides": [16], "patch_pool": 1}, "scoring": {"top_k": 10}},
    "stride 16, pool 3, top-10": {"model": {"feature_strides": [16], "patch_pool": 3}, "scoring": {"top_k": 10}},
    "stride 16, pool 3, top-20": {"model": {"feature_strides": [16], "patch_pool": 3}, "scoring": {"top_k": 20}},
}


def evaluate(folder: Path, variant: dict, threads: int) -> dict:
    cfg = config_from_dict({**variant, "threads": threads})
    ds = discover(folder)
    spec = input_spec_for(cfg)
    train, used, _ = load_images(ds.train, spec)
    t0 = time.perf_counter()
    det = fit_detector(train, cfg, groups=ds.groups(used))
    fit_s = time.perf_counter() - t0
    test, _, _ = load_images([t.path for t in ds.test], spec)
    with torch.no_grad():
        scores = torch.cat([det.scorer(torch.from_numpy(test[i:i + 16]))[0] for i in range(0, len(test), 16)]).numpy()
    types = np.array([t.defect_type for t in ds.test])
    y = types != "good"
    flagged = scores > det.calibrator.threshold_
    per_type = {t: auroc(np.r_[np.zeros((~y).sum()), np.ones((types == t).sum())],
                         np.r_[scores[~y], scores[types == t]]) for t in sorted(set(types) - {"good"})}
    return {"auroc": auroc(y, scores), "far": float(flagged[~y].mean()), "detected": float(flagged[y].mean()),
            "per_type": per_type, "fit_s": fit_s}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small data (for a smoke test), results not written")
    ap.add_argument("--textures", nargs="+", default=list(TEXTURES))
    ap.add_argument("--data", default="/tmp/linewatch-bench-data", help="where the demo data is built")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    load_before = os.getloadavg()[0]
    base = config_from_dict({})
    spec = DemoSpec(size=64, n_train=24, n_test_good=8, n_test_per_defect=3) if args.quick else DemoSpec()
    folders = build_demo_dataset(Path(args.data) / ("quick" if args.quick else "full"), args.textures, spec)
    rows = []
    for name, variant in VARIANTS.items():
        for tex in args.textures:
            if args.quick and variant["model"]["feature_strides"] == [16]:
                variant = {**variant, "model": {**variant["model"], "feature_strides": [8]}}
            r = evaluate(folders[tex], variant, args.threads)
            rows.append((name, tex, r))
            print(f"{name:<32} {tex:<7} AUROC {r['auroc']:.3f}  FAR {r['far']:.3f}  detected {r['detected']:.3f}  "
                  f"fit {r['fit_s']:.0f} s", flush=True)
    if args.quick:
        return 0
    types = sorted(rows[0][2]["per_type"])
    lines = [
        "# Ablation: level-1 features and image score (demo textures)",
        "",
        f"Produced by `python bench/ablation.py` on {platform.machine()}, {args.threads} threads, "
        f"{time.strftime('%Y-%m-%d')}. Demo spec: {spec.n_train} training crops ({spec.size} px, two column "
        f"groups of the top half), {spec.n_test_good} good and {spec.n_test_per_defect} per defect type "
        "test crops from the bottom half. Every variant runs the full fitting pipeline of the default "
        f"configuration (Lite0 blocks {base.model.lite0_blocks}, bank {base.density.bank_size}, "
        f"{'whitened' if base.density.whiten else 'raw'} features, weighted Parzen, cross-fitted bandwidth) "
        "with the changes its name says. There are no validation crops here, so the threshold is the "
        "cross-fitted one from the training crops alone: with whitened features it flags far more than 1 % "
        "of the bottom-half good crops (bench/accuracy_notes.md explains why; `linewatch train` calibrates "
        "on `validation/good`), so read the false-alarm column as a comparison between rows only. "
        f"Load average (1 min) when the run started: {load_before:.1f}.",
        "",
        "| variant | texture | image AUROC | " + " | ".join(types) + " | false alarms (good test) | defects flagged | fit s |",
        "|---|---|---|" + "---|" * len(types) + "---|---|---|",
    ]
    for name, tex, r in rows:
        lines.append(f"| {name} | {tex} | {r['auroc']:.3f} | " + " | ".join(f"{r['per_type'][t]:.3f}" for t in types)
                     + f" | {r['far']:.1%} | {r['detected']:.1%} | {r['fit_s']:.0f} |")
    lines += ["", "Mean image AUROC over the textures:", "", "| variant | mean | min |", "|---|---|---|"]
    for name in VARIANTS:
        a = [r["auroc"] for n, _, r in rows if n == name]
        lines.append(f"| {name} | {np.mean(a):.3f} | {np.min(a):.3f} |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ablation.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS / 'ablation.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
