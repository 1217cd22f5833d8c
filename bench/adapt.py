"""Few-shot adaptation (`linewatch adapt`) against no adaptation and against retraining.

Per demo texture (128-px crops by default; the demo's geometry: training crops from the texture's top
half, test and validation crops from its bottom half; defects drawn by ``defect-synthesis``):

* **original condition**: the parent bundle is trained (the real ``linewatch train`` job, default
  configuration at this image size) on the good crops of the *top-left* quadrant (``train/good/left``,
  each image its own cross-fitting group) and calibrated on the ``validation/good`` crops whose centre
  lies in the left half (split-conformal, less 5 held back). It is tested on the test crops whose
  centre lies in the left half, good and defective.
* **shifted conditions**, each with 5 good images to adapt with and a test set in that condition:

  - ``brighter`` / ``darker``: pixels x 1.35 / x 0.65 (clipped); adapt with the 5 held-back left
    validation crops under that light; test on the left test crops under that light;
  - ``blur``: Gaussian blur, sigma 1.5 px; same images as above;
  - ``region``: the other half of the texture: adapt with 5 validation crops of the right half; test
    on the right test crops.

* **methods**: ``none`` (the parent as is); ``adapt`` (``adapt_bundle`` with the 5 images, codes only,
  no calibration images: the threshold rule that ships by default); ``adapt + calibration`` (the same
  with ``--calibration``: the condition's other validation crops, ~100); ``retrain`` (``linewatch
  train`` on the parent's images + the 5 new ones, calibrated on the parent's validation crops, i.e.
  what retraining gives when the new condition has only those 5 images); and, on a chain bundle (stack
  width 64, density level 2, trained the same way), ``adapt (L2, codes)`` against ``adapt (L2, codes +
  chain)`` with ``--chain-samples`` 1024, next to that bundle unadapted (``none (L2)``).
* **metrics**: image AUROC on the shifted test set (good vs defective); false-alarm rate (share of
  shifted good test images above the bundle's threshold) and recall (share of shifted defective ones
  above it); the same three on the *original* test set, to show what adaptation costs there; seconds
  (adapt: on-device runtime, 1 onnxruntime thread; retrain: the whole train job, 1 torch thread).

Caveat of the data: validation and test crops are drawn at random positions of the same half and may
overlap, so the 5 adaptation images may share pixels with test images (as the demo's calibration
images do); the shifted test sets are small (about 40 good and 40 defective images each).

Writes ``bench/results/adapt.md`` (``--quick``: one texture, fewer images, prints only).

    python bench/adapt.py [--quick] [--textures brick gravel grass] [--size 128]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from linewatch.jobs.train import run_train
from linewatch.runtime.adapt import adapt_bundle
from linewatch.runtime.bundle import Bundle
from linewatch.runtime.inspector import Inspector
from linewatch.runtime.preprocess import decode_image, preprocess
from linewatch.training.config import config_from_dict
from linewatch.training.demo_data import TEXTURE_SIZE, TEXTURES, DemoSpec, build_texture
from linewatch.training.metrics import auroc

RESULTS = Path(__file__).resolve().parent / "results"
N_NEW = 5
CHAIN_SAMPLES = 1024
CONDITIONS = ("brighter", "darker", "blur", "region")


def transform(condition: str, img: np.ndarray) -> np.ndarray:
    """The photometric shift of ``condition`` on a uint8 image (identity for ``original`` and ``region``)."""
    if condition == "brighter":
        return np.clip(img.astype(np.float32) * 1.35, 0, 255).astype(np.uint8)
    if condition == "darker":
        return np.clip(img.astype(np.float32) * 0.65, 0, 255).astype(np.uint8)
    if condition == "blur":
        return cv2.GaussianBlur(img, (0, 0), 1.5)
    return img


def write_images(paths: list[Path], condition: str, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for p in paths:
        q = folder / f"{p.parent.name}_{p.name}"
        cv2.imwrite(str(q), transform(condition, cv2.imread(str(p), cv2.IMREAD_UNCHANGED)))
        out.append(q)
    return out


@dataclass
class Split:
    """One condition: the images to adapt with, good calibration images of it, and the test images."""

    adapt: list[Path]
    calibration: list[Path]
    good: list[Path]
    bad: list[Path]


def make_splits(category: Path, work: Path, size: int) -> tuple[list[Path], list[Path], dict[str, Split]]:
    """The parent's training and validation images and, per condition (``original`` included), its :class:`Split`.

    Left / right: the crop's centre column lies in the left / right half of the texture."""
    record = json.loads((category / "dataset.json").read_text())
    by = {}   # (split, side, good?) -> paths
    for f in record["files"]:
        side = "left" if f["col"] + size / 2 < TEXTURE_SIZE / 2 else "right"
        by.setdefault((f["split"], side, f["label"] == "good"), []).append(category / f["image"])
    train = sorted((category / "train/good/left").glob("*.png"))
    val_left, val_right = by[("validation", "left", True)], by[("validation", "right", True)]
    splits = {}
    for cond in ("original",) + CONDITIONS:
        region = "right" if cond == "region" else "left"
        base = work / cond
        adapt, cal = (val_right[:N_NEW], val_right[N_NEW:]) if cond == "region" else (val_left[-N_NEW:], val_left[:-N_NEW])
        splits[cond] = Split(adapt=write_images(adapt, cond, base / "adapt"),
                             calibration=write_images(cal, cond, base / "calibration"),
                             good=write_images(by[("test", region, True)], cond, base / "good"),
                             bad=write_images(by[("test", region, False)], cond, base / "bad"))
    return train, val_left[:-N_NEW], splits


def train_bundle(images: list[Path], validation: list[Path], folder: Path, out: Path, config: dict
                 ) -> tuple[Bundle, float]:
    """An MVTec-style folder: ``images`` flat in ``train/good`` (each its own cross-fitting group) and
    ``validation`` in ``validation/good`` (the threshold's calibration images); run the train job on it."""
    shutil.rmtree(folder, ignore_errors=True)
    for sub, paths in (("train/good", images), ("validation/good", validation)):
        (folder / sub).mkdir(parents=True)
        for i, p in enumerate(paths):
            shutil.copyfile(p, folder / sub / f"{i:04d}_{p.name}")
    t0 = time.perf_counter()
    bundle, _ = run_train(folder, out, config_from_dict(config), overwrite=True, checkpoint=False,
                          progress=lambda m: print(f"    train: {m}", file=sys.stderr, flush=True))
    return bundle, time.perf_counter() - t0


def scores(bundle: Bundle, paths: list[Path]) -> np.ndarray:
    insp = Inspector(bundle, threads=1)
    x = np.stack([preprocess(decode_image(p.read_bytes(), str(p)), insp.spec) for p in paths])
    return np.concatenate([insp.score_batch(x[i:i + 16])[0] for i in range(0, len(x), 16)])


def evaluate(bundle: Bundle, split: Split, original: Split, base: Bundle | None = None) -> dict:
    """Metrics of ``bundle`` on ``split`` and on the original test set; ``orig_change``: median change of the
    original good images' scores from ``base`` (the bundle adapted or retrained) to ``bundle``."""
    th = bundle.manifest.decision.threshold
    g, b = scores(bundle, split.good), scores(bundle, split.bad)
    og, ob = scores(bundle, original.good), scores(bundle, original.bad)
    labels = np.r_[np.zeros(len(g)), np.ones(len(b))]
    o_labels = np.r_[np.zeros(len(og)), np.ones(len(ob))]
    return {"auroc": auroc(labels, np.r_[g, b]), "far": float(np.mean(g > th)), "recall": float(np.mean(b > th)),
            "orig_auroc": auroc(o_labels, np.r_[og, ob]), "orig_far": float(np.mean(og > th)),
            "orig_recall": float(np.mean(ob > th)), "threshold": float(th),
            "orig_change": float(np.median(og - scores(base or bundle, original.good))),
            "shift": float(bundle.manifest.lineage.get("adapted_with", {}).get("calibration", {})
                           .get("parent_score_shift", float("nan")))}


def run_texture(texture: str, data: Path, size: int, spec: DemoSpec, base_config: dict) -> list[dict]:
    category = build_texture(texture, data, spec)
    work = data / f"adapt-{texture}"
    train, validation, splits = make_splits(category, work / "images", size)
    deep_config = {**base_config, "stack": {"widths": [64]}, "density": {**base_config.get("density", {}), "level": 2}}
    print(f"{texture}: parent on {len(train)} top-left crops, {len(validation)} validation crops; test sizes "
          + ", ".join(f"{c} {len(s.good)}+{len(s.bad)}" for c, s in splits.items()), file=sys.stderr, flush=True)
    parent, t_parent = train_bundle(train, validation, work / "train-parent", work / "bundles/parent", base_config)
    deep, _ = train_bundle(train, validation, work / "train-deep", work / "bundles/deep", deep_config)
    rows = []
    row = {"texture": texture, "condition": "original", "method": "none", "seconds": 0.0,
           **evaluate(parent, splits["original"], splits["original"])}
    rows.append(row)
    print(json.dumps(row), file=sys.stderr, flush=True)
    for cond in CONDITIONS:
        s = splits[cond]
        runs = [("none", lambda: (parent, 0.0), parent)]

        def adapted(b=parent, name="adapt", k=0, cal=None, cond=cond, s=s):
            t0 = time.perf_counter()
            new, _ = adapt_bundle(b, s.adapt, work / f"bundles/{cond}-{name}", chain_samples=k, overwrite=True,
                                  calibration_paths=cal, threads=1)
            return new, time.perf_counter() - t0

        runs.append(("adapt", adapted, parent))
        runs.append(("adapt + calibration", lambda f=adapted, s=s: f(parent, "adapt-cal", 0, s.calibration), parent))
        runs.append(("retrain", lambda cond=cond, s=s: train_bundle(train + s.adapt, validation, work / f"train-{cond}",
                                                                     work / f"bundles/{cond}-retrain", base_config),
                     parent))
        runs.append(("none (L2)", lambda: (deep, 0.0), deep))
        runs.append(("adapt (L2, codes)", lambda f=adapted: f(deep, "adapt-l2"), deep))
        runs.append(("adapt (L2, codes + chain)", lambda f=adapted: f(deep, "adapt-l2-chain", CHAIN_SAMPLES), deep))
        for method, make, base in runs:
            bundle, seconds = make()
            row = {"texture": texture, "condition": cond, "method": method, "seconds": round(seconds, 2),
                   **evaluate(bundle, s, splits["original"], base)}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    rows[0]["parent_train_seconds"] = round(t_parent, 1)
    return rows


def where_adaptation_loses(rows: list[dict], target: float) -> list[str]:
    """Plain statements, computed from the rows: where ``adapt`` is worse than retraining or than nothing."""
    by = {(r["texture"], r["condition"], r["method"]): r for r in rows}
    out = []
    for (tex, cond, method), r in by.items():
        if method != "adapt":
            continue
        none, re = by[(tex, cond, "none")], by[(tex, cond, "retrain")]
        if r["auroc"] < re["auroc"] - 0.01:
            out.append(f"{tex}/{cond}: AUROC {r['auroc']:.3f} after adaptation vs {re['auroc']:.3f} retrained")
        if r["auroc"] < none["auroc"] - 0.01:
            out.append(f"{tex}/{cond}: AUROC {r['auroc']:.3f} after adaptation vs {none['auroc']:.3f} without it")
        if r["far"] > max(target, re["far"]) + 1e-9:
            out.append(f"{tex}/{cond}: false alarms on the shifted good images {r['far']:.0%} after adaptation "
                       f"(retrained {re['far']:.0%}, target {target:.0%})")
        if r["recall"] < re["recall"] - 0.05:
            out.append(f"{tex}/{cond}: recall {r['recall']:.0%} after adaptation vs {re['recall']:.0%} retrained "
                       f"(threshold {r['threshold']:.1f} vs {re['threshold']:.1f})")
        if r["orig_recall"] < none["orig_recall"] - 0.05 or r["orig_far"] > max(target, none["orig_far"]) + 1e-9:
            out.append(f"{tex}/{cond}: on the original condition, recall {none['orig_recall']:.0%} -> "
                       f"{r['orig_recall']:.0%} and false alarms {none['orig_far']:.0%} -> {r['orig_far']:.0%}")
    return out


def fmt(rows: list[dict]) -> str:
    lines = ["| texture | condition | method | AUROC | false alarms | recall | orig. AUROC | orig. false alarms | "
             "orig. recall | threshold | shift applied | orig. good score change | seconds |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        shift = "" if np.isnan(r["shift"]) else f"{r['shift']:+.1f}"
        lines.append(f"| {r['texture']} | {r['condition']} | {r['method']} | {r['auroc']:.3f} | {r['far']:.0%} | "
                     f"{r['recall']:.0%} | {r['orig_auroc']:.3f} | {r['orig_far']:.0%} | {r['orig_recall']:.0%} | "
                     f"{r['threshold']:.1f} | {shift} | {r['orig_change']:+.1f} | {r['seconds']:.1f} |")
    return "\n".join(lines)


def means(rows: list[dict]) -> str:
    lines = ["| method | mean AUROC | mean false alarms | mean recall | mean orig. AUROC | mean orig. false alarms |"
             " mean orig. recall | mean seconds |", "|---|---|---|---|---|---|---|---|"]
    methods = []
    for r in rows:
        if r["condition"] != "original" and r["method"] not in methods:
            methods.append(r["method"])
    for m in methods:
        rs = [r for r in rows if r["method"] == m and r["condition"] != "original"]
        lines.append(f"| {m} | {np.mean([r['auroc'] for r in rs]):.3f} | {np.mean([r['far'] for r in rs]):.0%} | "
                     f"{np.mean([r['recall'] for r in rs]):.0%} | {np.mean([r['orig_auroc'] for r in rs]):.3f} | "
                     f"{np.mean([r['orig_far'] for r in rs]):.0%} | {np.mean([r['orig_recall'] for r in rs]):.0%} | "
                     f"{np.mean([r['seconds'] for r in rs]):.1f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="brick only, fewer images; prints, writes no results")
    ap.add_argument("--textures", nargs="+", default=list(TEXTURES), choices=TEXTURES)
    ap.add_argument("--size", type=int, default=128, help="crop size in pixels (default 128)")
    ap.add_argument("--data", default="bench/.data/adapt", help="working folder (data, bundles, rows.json)")
    ap.add_argument("--report-only", action="store_true", help="write the report from DATA/rows.json of an earlier run")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    textures = ["brick"] if args.quick else args.textures
    spec = DemoSpec(size=args.size, n_train=60 if args.quick else 200, n_test_good=40 if args.quick else 80,
                    n_test_per_defect=6 if args.quick else 14,
                    n_validation=60 if args.quick else 240)
    # the configured settings, self-configuration off: adapt refuses bundles whose score has a global branch,
    # and one fixed configuration keeps the table's rows comparable across textures
    config = {"model": {"image_size": args.size}, "threads": 1, "autoconfig": {"enabled": False},
              **({"density": {"bank_size": 1024}} if args.quick else {})}
    t0 = time.perf_counter()
    saved = Path(args.data) / "rows.json"
    if args.report_only:
        rows = json.loads(saved.read_text())
        textures = list(dict.fromkeys(r["texture"] for r in rows))
    else:
        rows = []
        for tex in textures:
            rows += run_texture(tex, Path(args.data), args.size, spec, config)
            saved.write_text(json.dumps(rows))
    target = Bundle.load(Path(args.data) / f"adapt-{textures[0]}/bundles/parent").manifest.decision.target_false_alarm_rate
    losses = where_adaptation_loses(rows, target)
    body = (f"Produced by `python bench/adapt.py` ({args.size}-px crops, {', '.join(textures)}; "
            f"{time.strftime('%Y-%m-%d')}, {time.perf_counter() - t0:.0f} s in all).\n\n"
            f"{fmt(rows)}\n\nMeans over textures and shifted conditions:\n\n{means(rows)}\n\n"
            "Where adaptation loses (computed from the table: AUROC more than 0.01 below retraining or no adaptation; "
            "false alarms above the target and retraining's; recall more than 5 points below retraining's; any cost "
            "on the original condition):\n\n" + ("\n".join(f"- {line}" for line in losses) or "- nowhere") + "\n")
    print(body)
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "adapt.md").write_text("# Few-shot adaptation: adapt vs no adaptation vs retraining\n\n"
                                          + body + "\n## Notes\n\n(written after the run; re-running the script "
                                          "replaces this file, so carry them over)\n")


if __name__ == "__main__":
    main()
