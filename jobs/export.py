"""``linewatch export``: write a bundle (fp32 or int8) from a training checkpoint, without refitting.

Which stored images (see :mod:`linewatch.training.checkpoint`) serve which purpose:

* parity check (torch vs onnxruntime): up to ``export.parity_images`` labelled test images spread over
  the list, else the first stored training images (as ``train`` always did);
* int8 quantisation calibration: every other stored training image (``int8_calibration_images``);
* int8 gate, first available of: the labelled test images (good and defective: AUROC and Spearman);
  the held-out ``validation/good`` images (Spearman only); the *other* stored training images, which
  are in the density's bank, not held out (Spearman only; the manifest says so);
* int8 threshold: the validation images re-scored (split-conformal bundles), see
  :mod:`linewatch.export.int8_bundle`.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..export.bundle_export import export_bundle
from ..export import int8_bundle
from ..export.int8_bundle import GateData, Int8Inputs, export_int8_bundle
from ..runtime.bundle import Bundle
from ..training.checkpoint import Checkpoint, decode_stored, load_checkpoint, spread


def bundle_bytes(path: str | Path) -> int:
    """Total size in bytes of the files in a bundle folder."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def _decode(ckpt: Checkpoint, which: str, say: Callable[[str], None]) -> tuple[np.ndarray, np.ndarray]:
    images = getattr(ckpt, f"{which}_images")
    x, y, errors = decode_stored(images, ckpt.detector.input_spec)
    for e in errors:
        say(f"skipped stored {which} image: {e}")
    return x, y


def export_checkpoint(ckpt: Checkpoint, out: str | Path, int8: bool = False, overwrite: bool = False,
                      progress: Callable[[str], None] | None = None, max_auroc_drop: float | None = None,
                      min_spearman: float | None = None) -> tuple[Bundle, dict[str, Any]]:
    """Write the bundle of ``ckpt`` to ``out`` (``int8``: quantised and gated). Returns it and a summary.

    ``max_auroc_drop`` / ``min_spearman``: the int8 gate's limits; ``None`` = the issue's figures
    (:data:`~linewatch.export.int8_bundle.MAX_AUROC_DROP`, :data:`~linewatch.export.int8_bundle.MIN_SPEARMAN`).
    """
    say = progress or (lambda _m: None)
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: already exists; choose another --out or pass --overwrite")
    t0 = time.perf_counter()
    cfg, det = ckpt.config, ckpt.detector
    train_x, _ = _decode(ckpt, "train", say)
    test_x, test_y = _decode(ckpt, "test", say)
    if len(train_x) == 0:
        raise ValueError(f"{ckpt.path or 'checkpoint'}: holds no readable training images; re-run `linewatch train`")
    k = cfg.export.parity_images
    parity = test_x[spread(len(test_x), k)] if len(test_x) else train_x[:k]
    lineage = {"checkpoint": str(ckpt.path) if ckpt.path else None}
    gallery = [(s.name, s.data) for s in ckpt.train_images]     # thumbnails for `linewatch audit`
    if not int8:
        say("exporting to ONNX and checking parity with onnxruntime")
        bundle = export_bundle(det, out, parity, cfg, ckpt.training_data, lineage, overwrite=overwrite,
                               gallery_images=gallery)
    else:
        val_x, _ = _decode(ckpt, "validation", say)
        if len(test_x):
            gate = GateData(test_x, test_y, "labelled test images")
        elif len(val_x):
            gate = GateData(val_x, None, "held-out validation/good images")
        elif len(train_x) > 1:
            gate = GateData(train_x[1::2], None, "training images (in the density's bank; no held-out images "
                                                 "were available)", held_out=False)
        else:
            raise ValueError(f"{ckpt.path or 'checkpoint'}: one training image and no held-out images: "
                             "nothing to compare int8 with fp32 on; export fp32")
        calib = train_x[::2] if len(train_x) > 1 else train_x
        inputs = Int8Inputs(calib, gate, val_x if len(val_x) else None)
        say("exporting to ONNX, checking parity with onnxruntime, quantising to int8")
        bundle = export_int8_bundle(det, out, parity, cfg, ckpt.training_data, inputs, lineage,
                                    overwrite=overwrite, threads=cfg.threads or 0, progress=say,
                                    max_auroc_drop=int8_bundle.MAX_AUROC_DROP if max_auroc_drop is None
                                    else max_auroc_drop,
                                    min_spearman=int8_bundle.MIN_SPEARMAN if min_spearman is None else min_spearman,
                                    gallery_images=gallery)
    m = bundle.manifest
    summary: dict[str, Any] = {
        "bundle": str(out), "bundle_id": bundle.id, "precision": m.model.precision,
        "bundle_bytes": bundle_bytes(out), "model_bytes": m.files[m.model.file]["bytes"],
        "threshold": m.decision.threshold, "parity_max_abs_score_diff": m.parity["max_abs_score_diff"],
    }
    if m.quantization:
        gate = m.quantization["gate"]
        summary["gate"] = {k: gate[k] for k in ("data", "n_images", "auroc_fp32", "auroc_int8", "auroc_drop",
                                                 "spearman", "passed")}
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    say(f"bundle written: {out} ({m.model.precision}, {summary['bundle_bytes'] / 1e6:.2f} MB, model.onnx "
        f"{summary['model_bytes'] / 1e6:.2f} MB, threshold {summary['threshold']:.4g})")
    return bundle, summary


def run_export(checkpoint: str | Path, out: str | Path, int8: bool = False, overwrite: bool = False,
               progress: Callable[[str], None] | None = None) -> tuple[Bundle, dict[str, Any]]:
    """``linewatch export``: load ``checkpoint`` and write its bundle to ``out`` (fp32, or int8 with ``int8``)."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: already exists; choose another --out or pass --overwrite")
    ckpt = load_checkpoint(checkpoint)
    if ckpt.config.threads:
        import torch

        torch.set_num_threads(ckpt.config.threads)
    bundle, summary = export_checkpoint(ckpt, out, int8, overwrite, progress)
    summary["checkpoint"] = str(checkpoint)
    return bundle, summary
