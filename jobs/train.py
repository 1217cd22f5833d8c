"""``linewatch train``: fit on good images, write a checkpoint, then export and verify a bundle.

The checkpoint (default ``BUNDLE.ckpt`` next to the bundle folder; see
:mod:`linewatch.training.checkpoint`) lets ``linewatch export`` write the bundle again, e.g. as int8,
without refitting. The bundle itself is written by the export job's code (:mod:`linewatch.jobs.export`),
so ``train`` and ``export`` produce the same bundle from the same fit.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from ..export.int8_bundle import QuantizationGateError
from ..runtime.bundle import Bundle
from ..training.checkpoint import default_checkpoint_path, make_checkpoint, save_checkpoint
from ..training.config import TrainConfig, load_config
from ..training.data import discover, fingerprint, load_images
from ..training.fit import FittedDetector, fit_detector, input_spec_for
from .export import export_checkpoint


def _loading_progress(say: Callable[[str], None], what: str) -> Callable[[int, int], None]:
    def report(i: int, n: int) -> None:
        if i == n or i % 100 == 0:
            say(f"{what}: {i}/{n} images")
    return report


def run_train(data: str | Path, out: str | Path, config: TrainConfig | str | Path | None = None,
              progress: Callable[[str], None] | None = None, overwrite: bool = False,
              checkpoint: str | Path | bool = True) -> tuple[Bundle, dict]:
    """Train on the good images under ``data`` and write a bundle to ``out`` (int8 with ``export.int8``).

    ``checkpoint``: where to write the training checkpoint; ``True`` (default) = ``OUT.ckpt`` next to
    the bundle folder, ``False`` = none. It is written before the bundle, so it survives a failed
    int8 gate. Returns the loaded bundle and a summary (counts, timings, threshold, skipped files).
    """
    say = progress or (lambda _m: None)
    cfg = config if isinstance(config, TrainConfig) else load_config(config)
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: already exists; choose another --out or pass --overwrite")
    ckpt_path = None if checkpoint is False else \
        default_checkpoint_path(out) if checkpoint is True else Path(checkpoint)
    if ckpt_path is not None and ckpt_path.exists() and not overwrite:
        raise FileExistsError(f"{ckpt_path}: a checkpoint already exists there; choose another --out or "
                              "--checkpoint, or pass --overwrite")
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
    else:
        say("note: no validation/good folder; the threshold comes from cross-fitted training scores, which "
            "hold only while production images look like the training images (another region, light or "
            "batch shifts the false-alarm rate: bench/results/accuracy.md). Add validation/good to calibrate "
            "on images taken the way the line takes them")
    det = fit_detector(images, cfg, say, groups, validation)
    cfg = det.config or cfg   # the configuration fitted: self-configuration resolved
    training_data = {"source": str(ds.root), "layout": ds.layout, "n_images": len(used),
                     "fingerprint": fingerprint(used, ds.root), "skipped": errors}
    if val_used:
        training_data["validation"] = {"n_images": len(val_used), "fingerprint": fingerprint(val_used, ds.root)}
    ckpt = make_checkpoint(det, cfg, ds, used, val_used, training_data)
    if ckpt_path is not None:
        save_checkpoint(ckpt, ckpt_path)
        say(f"checkpoint written: {ckpt_path} ({ckpt_path.stat().st_size / 1e6:.1f} MB)")
    try:
        bundle, exported = export_checkpoint(ckpt, out, cfg.export.int8, overwrite, say)
    except QuantizationGateError as exc:
        if ckpt_path is None:
            raise
        raise QuantizationGateError(f"{exc}. The checkpoint {ckpt_path} was kept: `linewatch export --checkpoint "
                                    f"{ckpt_path} --out {out}` writes the fp32 bundle without refitting") from exc
    summary = _summary(out, bundle, det, exported, ckpt_path, len(used), len(errors), t0)
    say(f"bundle written: {out} (threshold {summary['threshold']:.4g}, {summary['seconds']} s)")
    return bundle, summary


def _summary(out: Path, bundle: Bundle, det: FittedDetector, exported: dict, ckpt_path: Path | None, n_images: int,
             n_skipped: int, t0: float) -> dict:
    """The JSON summary ``train`` prints (see :func:`run_train`)."""
    summary = {"bundle": str(out), "bundle_id": bundle.id, "n_images": n_images, "skipped": n_skipped,
               "threshold": bundle.manifest.decision.threshold,
               "target_false_alarm_rate": bundle.manifest.decision.target_false_alarm_rate,
               "target_reachable": bundle.manifest.calibration.target_reachable,
               "bandwidth": det.bandwidth, "parity_max_abs_score_diff": bundle.manifest.parity["max_abs_score_diff"],
               "precision": exported["precision"], "bundle_bytes": exported["bundle_bytes"],
               "checkpoint": str(ckpt_path) if ckpt_path is not None else None,
               "configuration": configuration_name(det.selection),
               "seconds": round(time.perf_counter() - t0, 1)}
    if "gate" in exported:
        summary["gate"] = exported["gate"]
    return summary


def configuration_name(selection: dict) -> str:
    """The summary's ``configuration``: the self-configuration's choice, or why the configured settings were used."""
    if "chosen" in selection:
        return selection["chosen"]
    if "skipped" in selection:
        return f"as configured (self-configuration skipped: {selection['skipped']})"
    return "as configured (self-configuration off)"
