"""``linewatch train``: fit on good images, then export and verify a bundle."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

from ..export.bundle_export import export_bundle
from ..runtime.bundle import Bundle
from ..training.config import TrainConfig, load_config
from ..training.data import Dataset, discover, fingerprint, load_images
from ..training.fit import fit_detector, input_spec_for


def _loading_progress(say: Callable[[str], None], what: str) -> Callable[[int, int], None]:
    def report(i: int, n: int) -> None:
        if i == n or i % 100 == 0:
            say(f"{what}: {i}/{n} images")
    return report


def parity_images(ds: Dataset, train_images: np.ndarray, config: TrainConfig) -> np.ndarray:
    """Images for the torch/onnxruntime check: labelled test images when there are any (good and
    defective, spread over the list), else training images."""
    k = config.export.parity_images
    if ds.test:
        picks = [ds.test[i].path for i in np.linspace(0, len(ds.test) - 1, min(k, len(ds.test))).astype(int)]
        arrays, _, _ = load_images(picks, input_spec_for(config))
        return arrays
    return train_images[:k]


def run_train(data: str | Path, out: str | Path, config: TrainConfig | str | Path | None = None,
              progress: Callable[[str], None] | None = None, overwrite: bool = False) -> tuple[Bundle, dict]:
    """Train on the good images under ``data`` and write a bundle to ``out``.

    Returns the loaded bundle and a summary (counts, timings, threshold, skipped files).
    """
    say = progress or (lambda _m: None)
    cfg = config if isinstance(config, TrainConfig) else load_config(config)
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: already exists; choose another --out or pass --overwrite")
    t0 = time.perf_counter()
    ds = discover(data)
    spec = input_spec_for(cfg)
    say(f"data: {ds.root} ({ds.layout} layout), {len(ds.train)} good training images")
    images, used, errors = load_images(ds.train, spec, _loading_progress(say, "loading"))
    for e in errors:
        say(f"skipped: {e}")
    groups = ds.groups(used)
    say(f"{len(set(groups))} image groups for cross-fitting")
    validation, val_used = None, []
    if ds.validation:
        validation, val_used, val_errors = load_images(ds.validation, spec, _loading_progress(say, "validation"))
        for e in val_errors:
            say(f"skipped: {e}")
        errors = errors + val_errors
        say(f"calibrating the threshold on {len(val_used)} held-out good images (validation/good)")
    det = fit_detector(images, cfg, say, groups, validation)
    say("exporting to ONNX and checking parity with onnxruntime")
    training_data = {"source": str(ds.root), "layout": ds.layout, "n_images": len(used),
                     "fingerprint": fingerprint(used, ds.root), "skipped": errors}
    if val_used:
        training_data["validation"] = {"n_images": len(val_used), "fingerprint": fingerprint(val_used, ds.root)}
    bundle = export_bundle(det, out, parity_images(ds, images, cfg), cfg, training_data, overwrite=overwrite)
    summary = {"bundle": str(out), "bundle_id": bundle.id, "n_images": len(used), "skipped": len(errors),
               "threshold": bundle.manifest.decision.threshold,
               "target_false_alarm_rate": bundle.manifest.decision.target_false_alarm_rate,
               "target_reachable": bundle.manifest.calibration.target_reachable,
               "bandwidth": det.bandwidth, "parity_max_abs_score_diff": bundle.manifest.parity["max_abs_score_diff"],
               "seconds": round(time.perf_counter() - t0, 1)}
    say(f"bundle written: {out} (threshold {summary['threshold']:.4g}, {summary['seconds']} s)")
    return bundle, summary
