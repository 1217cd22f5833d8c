"""A fitted detector -> a verified bundle folder (``model.onnx`` + ``manifest.json``)."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..runtime.bundle import Bundle, Calibration, Decision, Manifest, write_bundle
from ..training.config import TrainConfig
from ..training.fit import FittedDetector
from .onnx_export import check_parity, export_scorer, model_spec


def build_manifest(det: FittedDetector, config: TrainConfig, parity: dict[str, Any],
                   training_data: dict[str, Any], lineage: dict[str, Any] | None = None) -> Manifest:
    cal = det.calibrator
    return Manifest(
        model=model_spec(det.map_shape, config.export.opset, det.backbone),
        input=det.input_spec,
        decision=Decision(threshold=float(cal.threshold_), target_false_alarm_rate=cal.alpha,
                          score_definition=f"mean of the {det.figures['top_k']} largest patch scores; "
                                           "patch score = -log p(patch feature), nats"),
        calibration=Calibration(
            method="cross-conformal (out-of-fold image scores of good training images)",
            scores=[float(s) for s in cal.scores_], target_reachable=bool(cal.target_reachable_),
            heatmap_low=det.heatmap_low, folds=int(det.figures.get("folds", 0)),
            false_alarm_rate_on_calibration=cal.false_alarm_rate(cal.scores_)),
        density={"kind": "parzen-gaussian", "level": 1, "bandwidth": det.bandwidth,
                 "weighted": config.density.weighted, **{k: det.figures[k] for k in
                 ("bank_size", "feature_dim", "bandwidth_grid", "heldout_mean_loglik") if k in det.figures}},
        training_data={**training_data, "fit_seconds": det.figures.get("fit_seconds")},
        parity=parity,
        lineage={"parent": None, "config": config.to_dict(), **(lineage or {})},
    )


def export_bundle(det: FittedDetector, out: str | Path, parity_images: np.ndarray, config: TrainConfig,
                  training_data: dict[str, Any], lineage: dict[str, Any] | None = None,
                  overwrite: bool = False) -> Bundle:
    """Export the graph, check torch/onnxruntime parity on ``parity_images`` ``(N, C, H, W)``, write the bundle.

    Raises ``ParityError`` (and writes nothing) when the parity check fails.
    """
    spec = det.input_spec
    with tempfile.TemporaryDirectory(prefix="linewatch-export-") as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        export_scorer(det.scorer, spec.channels, spec.height, spec.width, onnx_path, config.export.opset)
        parity = check_parity(det.scorer, onnx_path, parity_images[: config.export.parity_images],
                              config.export.parity_rtol, config.export.parity_atol)
        manifest = build_manifest(det, config, parity, training_data, lineage)
        return write_bundle(out, manifest, {"model.onnx": onnx_path}, overwrite=overwrite)
