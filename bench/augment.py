"""What does `linewatch augment` produce? Decoder fidelity, sample diversity and distance to training images.

Trains a bundle with ``configs/augment.yaml`` (level-1 density, CAEs of widths 64 and 32 whose top-layer
chain runs on level-2 codes, pixel decoder) on a demo texture, and another with one CAE (widths [64]: the
chain runs on level-1 states), then, with the runtime only (onnxruntime):

1. decoder fidelity: mean absolute pixel error (pixels in [0, 1]) of decode(patch_features(image))
   against the image, for shipped training images and held-out good test images, against decoding
   another image's features and against the mean training image;
2. samples after K chain steps (K = 0, 1, 5, 20, 100, 500): distinct nearest training images (feature
   space, as `linewatch augment` prints), how many moved nearer another image than their start, the
   RMS level-1 distance to the nearest shipped training map, and the pixel distance to the nearest
   shipped training image; against held-out good images measured the same way;
3. a contact sheet: training originals, their decodes, and samples from the same starts after K steps.

Writes ``bench/results/augment.md`` and ``bench/results/augment_sheet.png``.

    python bench/augment.py [--quick] [--texture brick] [--n-train 100]
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import yaml

from linewatch.jobs.train import run_train
from linewatch.runtime.augment import Augmenter, contact_sheet, nearest_maps, to_uint8, write_png
from linewatch.runtime.bundle import Bundle
from linewatch.runtime.preprocess import load_for_model
from linewatch.training.config import config_from_dict
from linewatch.training.data import discover
from linewatch.training.demo_data import DemoSpec, build_texture

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
STEPS = (0, 1, 5, 20, 100, 500)


def model_inputs_and_features(bundle: Bundle, paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Pixels ``(N, C, H, W)`` in [0, 1] and model.onnx's ``patch_features`` ``(N, P, D)``."""
    spec = bundle.manifest.input
    x = np.stack([load_for_model(p, spec) for p in paths])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(bundle.file("model.onnx")), opts, providers=["CPUExecutionProvider"])
    feats = np.concatenate([sess.run(["patch_features"], {"image": x[i:i + 8]})[0] for i in range(0, len(x), 8)])
    pixels = np.clip(x * np.asarray(spec.std, np.float32)[:, None, None] + np.asarray(spec.mean, np.float32)[:, None, None], 0, 1)
    return pixels.astype(np.float32), feats


def pixel_nearest(images: np.ndarray, reference: np.ndarray, exclude_self: bool = False) -> np.ndarray:
    """Mean absolute pixel distance of each image ``(N, ...)`` to its nearest ``reference`` image ``(S, ...)``."""
    d = np.abs(images[:, None].astype(np.float32) - reference[None].astype(np.float32)).reshape(
        len(images), len(reference), -1).mean(-1)
    if exclude_self:
        np.fill_diagonal(d, np.inf)
    return d.min(1)


def thumbs(images_u8: np.ndarray, size: int) -> np.ndarray:
    return np.stack([cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA).reshape(size, size, -1)
                     for im in images_u8])


def run_variant(cfg_dict: dict, widths: list[int], category: Path, spec: DemoSpec, args, out_dir: Path,
                tmp: Path) -> list[str]:
    """Train one bundle with stack ``widths`` and measure it; returns its section of the report."""
    cfg_dict = {**cfg_dict, "stack": {**cfg_dict["stack"], "widths": widths}}
    tag = "-".join(str(w) for w in widths)
    cfg = config_from_dict(cfg_dict)
    t0 = time.perf_counter()
    bundle, _ = run_train(category, tmp / f"bundle-{tag}", cfg, progress=lambda m: print(m, flush=True), checkpoint=False)
    train_seconds = time.perf_counter() - t0
    aug = Augmenter(bundle, threads=args.threads)
    ds = discover(category)
    S = aug.start_maps_.shape[0]
    train_px, train_feats = model_inputs_and_features(bundle, [ds.train[i] for i in aug.start_images_])
    held = [t.path for t in ds.test if t.defect_type == "good"]
    held_px, held_feats = model_inputs_and_features(bundle, held)

    # 1. decoder fidelity
    def l1(a, b):
        return float(np.abs(a - b).mean())
    fidelity = [
        ("shipped training images, own features", l1(aug.decode(train_feats), train_px)),
        ("held-out good images, own features", l1(aug.decode(held_feats), held_px)),
        ("held-out good images, another image's features", l1(aug.decode(np.roll(held_feats, 1, 0)), held_px)),
        ("held-out good images vs the mean training image", l1(train_px.mean(0, keepdims=True), held_px)),
    ]

    # 2. samples by number of steps (the same seed: the same starts for every K)
    # held-out maps projected through the stack like every sample (identity for level-1 states)
    held_idx, held_dist = nearest_maps(aug.to_rows(aug.to_states(held_feats)), aug.start_rows_)
    a2 = aug.start_rows_.reshape(S, -1).astype(np.float64)
    d_tt = np.sqrt(np.maximum(((a2[:, None] - a2[None]) ** 2).sum(-1), 0) / aug.start_rows_.shape[1])
    np.fill_diagonal(d_tt, np.inf)
    rows = []
    for k in STEPS:
        s = aug.sample(args.count, steps=k, seed=0)
        rows.append((f"samples, K = {k}", len(np.unique(s.nearest)), int(np.sum(s.nearest != s.start)),
                     float(s.distance.mean()), float(pixel_nearest(s.images.transpose(0, 3, 1, 2) / 255.0, train_px).mean())))
    rows.append((f"held-out good images ({len(held)})", len(np.unique(held_idx)), None, float(held_dist.mean()),
                 float(pixel_nearest(held_px, train_px).mean())))
    rows.append((f"shipped training images, leave-one-out ({S})", len(np.unique(d_tt.argmin(1))), None,
                 float(d_tt.min(1).mean()), float(pixel_nearest(train_px, train_px, exclude_self=True).mean())))
    held_dec = aug.decode(held_feats)
    rows.append(("decodes of held-out good images", None, None, None, float(pixel_nearest(held_dec, train_px).mean())))

    # 3. contact sheet: originals, decodes, samples from the same starts (spread over the shipped maps)
    size = 80 if not args.quick else 64
    starts = np.unique(np.linspace(0, S - 1, min(8, S)).round().astype(np.int64))
    grid = [thumbs(to_uint8(train_px[starts]), size), thumbs(to_uint8(aug.decode(aug.start_rows_[starts])), size)]
    for k in (5, 20, 100):
        grid.append(thumbs(aug.sample(len(starts), steps=k, seed=1, start=starts).images, size))
    sheet = contact_sheet(np.concatenate(grid), columns=len(starts))
    grey = sheet.shape[-1] == 3 and int(np.abs(sheet.astype(np.int16) - sheet.mean(-1, keepdims=True)).max()) <= 12
    if grey:   # the demo textures are grey: a one-channel PNG is a third of the size
        sheet = sheet.mean(-1, keepdims=True).round().astype(np.uint8)
    sheet_path = out_dir / f"augment_sheet_{tag}.png"
    write_png(sheet_path, sheet)

    m = bundle.manifest
    dec = m.decoder
    lines = [
        f"## Stack widths {widths}: the chain runs on layer {len(widths)}, states at level {len(widths)}", "",
        f"Training took {train_seconds:.0f} s. Data: demo texture `{args.texture}`, {spec.size}-px crops, "
        f"{len(ds.train)} training crops, {len(held)} held-out good test crops. Config: `configs/augment.yaml` "
        f"(level-1 whitened density, stack widths {cfg.stack.widths}, chain sigma {cfg.sampling.sigma}, decoder "
        f"width {cfg.decoder.width}, {cfg.decoder.epochs} epochs). The bundle ships {S} training images' state maps "
        f"({m.files['augment_start.npz']['bytes'] / 1e6:.2f} MB) and decoder.onnx "
        f"({m.files['decoder.onnx']['bytes'] / 1e6:.2f} MB; torch/onnxruntime parity {dec['parity_max_abs_diff']:.1e}).",
        "",
        "### Decoder fidelity",
        "",
        "Mean absolute pixel error, pixels in [0, 1] (decoder input: model.onnx's `patch_features`):", "",
        "| decoded | L1 |", "|---|---|",
        *[f"| {name} | {v:.4f} |" for name, v in fidelity],
        "",
        f"### Samples ({args.count} per row, seed 0; nearest among the {S} shipped training maps)",
        "",
        "Feature distance: RMS over patches of the whitened level-1 distance to the nearest shipped training "
        "map, patch by patch (what `linewatch augment` reports); with states above level 1, training and "
        "held-out maps are first projected through the stack (encoded to the state level and decoded back), as "
        "every sample is. Pixel distance: mean absolute pixel "
        "difference to the nearest shipped training image. *distinct nearest* is the diversity count "
        "`linewatch augment` prints; *moved* counts samples nearer another training image than their start.",
        "",
        "| images | distinct nearest | moved | feature distance | pixel distance |", "|---|---|---|---|---|",
        *["| " + " | ".join([r[0], *("" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v) for v in r[1:4]),
                            f"{r[4]:.4f}"]) + " |" for r in rows],
        "",
        f"Contact sheet (`{sheet_path.name}`, {size}-px thumbnails{', in grey' if grey else ''}, "
        f"{sheet_path.stat().st_size / 1e3:.0f} KB): "
        "row 1 training originals, row 2 their decodes (K = 0), rows 3-5 samples started from the same maps after "
        "K = 5, 20, 100 steps.",
        "",
        f"![contact sheet]({sheet_path.name})",
        "",
    ]
    shutil.rmtree(tmp / f"bundle-{tag}", ignore_errors=True)
    return lines



def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="64-px smoke run (results written to a temp folder)")
    ap.add_argument("--texture", default="brick", choices=["brick", "gravel", "grass"])
    ap.add_argument("--n-train", type=int, default=100, help="training crops (default 100)")
    ap.add_argument("--variants", nargs="+", default=["64,32", "64"],
                    help="stack widths to compare, comma-separated per variant (default: 64,32 as in "
                         "configs/augment.yaml, and 64)")
    ap.add_argument("--count", type=int, default=32, help="samples per number of steps (default 32)")
    ap.add_argument("--data", default="/tmp/linewatch-bench-data/augment")
    ap.add_argument("--threads", type=int, default=1, help="torch and onnxruntime threads (default 1: best on a shared machine)")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    cfg_dict = yaml.safe_load((ROOT / "configs" / "augment.yaml").read_text())
    cfg_dict["threads"] = args.threads
    if args.quick:
        spec = DemoSpec(size=64, n_train=24, n_test_good=8, n_test_per_defect=1, n_validation=0)
        cfg_dict.update(model={"image_size": 64}, density={"bank_size": 256, "folds": 2})
        cfg_dict["stack"] = {**cfg_dict["stack"], "epochs": 100, "batch_size": 32}
        cfg_dict["decoder"] = {**cfg_dict["decoder"], "epochs": 30, "batch_size": 4, "start_images": 8}
    else:
        spec = DemoSpec(size=224, n_train=args.n_train, n_test_good=40, n_test_per_defect=1, n_validation=0)
    tmp = Path(tempfile.mkdtemp(prefix="linewatch-bench-augment-"))
    out_dir = tmp if args.quick else RESULTS
    category = build_texture(args.texture, Path(args.data) / ("quick" if args.quick else "full"), spec)
    lines = [
        "# Augmentation: top-layer chain samples decoded to pixels", "",
        f"Produced by `python bench/augment.py{' --quick' if args.quick else ''}` ({time.strftime('%Y-%m-%d')}, "
        f"{args.threads} thread(s), on a 2-core machine shared with other jobs: times are inflated). Each variant "
        "trains a bundle with `configs/augment.yaml` and the stack widths given; everything after training runs "
        "on the runtime (onnxruntime, numpy).", ""]
    for v in args.variants:
        lines += run_variant(cfg_dict, [int(w) for w in v.split(",")], category, spec, args, out_dir, tmp)
    lines.insert(3, f"Total {time.perf_counter() - t_start:.0f} s.")
    (out_dir / "augment.md").write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"written: {out_dir / 'augment.md'} and its contact sheets")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
