"""int8 bundles: quantise the graph, gate it against fp32 on held-out images, re-derive the threshold, write.

Steps (nothing is written unless all pass):

1. export the fp32 graph and check torch/onnxruntime parity on it (as for an fp32 bundle);
2. quantise it (:func:`linewatch.export.quantize.quantize_scorer`), calibrated on training images;
3. **gate**: score the gate images with the fp32 and the int8 graph (onnxruntime both). The int8
   bundle passes when the image AUROC drops by at most ``max_auroc_drop`` (0.005) and the Spearman
   rank correlation of the two score vectors is at least ``min_spearman`` (0.99). AUROC needs
   labelled good *and* defective images; without them the gate says so and rests on Spearman alone.
   On failure :class:`QuantizationGateError` gives both figures;
4. re-derive the threshold and p-value calibration for int8 scores (below);
5. write the bundle: ``model.precision = "int8"``, the gate's figures and how the graph was
   quantised under ``manifest.quantization``.

Re-deriving the calibration. int8 scores differ slightly from fp32 ones (quantisation noise on the
features moves a good image's distance to the bank; measured on the 224-px demo bundles: mean
int8-minus-fp32 difference -0.14 to +0.04 nats, per-image spread 0.6-0.9 nats; with a wider
quantisation scope the mean was +4 to +12 nats). fp32 calibration scores could therefore give an
int8 bundle a threshold that is too low (too many false alarms) or too high (missed defects):

* **split-conformal** bundles (held-out ``validation/good`` images calibrated the fp32 threshold):
  the same validation images are scored by the int8 graph and calibrate it. This is exact
  split-conformal calibration of the int8 model, with the same guarantee as fp32.
* **cross-conformal** bundles (out-of-fold scores of training images, which came from fold models
  that no longer exist and cannot be re-scored): each calibration score is shifted by the median
  int8-minus-fp32 difference of good gate images (or of all gate images when none are labelled
  good). The median is robust to the odd large difference; a shift rather than a fitted line,
  because the good images' scores span a narrow range in which a slope is mostly noise. The
  per-image spread around the shift is recorded; it widens the int8 score distribution slightly,
  so the guarantee is approximate here. Give training a ``validation/good`` folder to make it exact.

The heat-map scale (``calibration.heatmap_low``, a median patch score) moves by the median
int8-minus-fp32 patch-score difference over the gate images.
"""
from __future__ import annotations

import dataclasses
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import onnxruntime as ort

from ..runtime.bundle import Bundle, write_bundle
from ..runtime.calibration import ConformalCalibrator
from ..training.config import TrainConfig
from ..training.fit import SPLIT_CONFORMAL, FittedDetector
from ..training.metrics import auroc, spearman
from .bundle_export import _export_chain, _export_decoder, build_manifest, separate_density
from .gallery import attach_gallery
from .onnx_export import INPUT_NAME, MAP_NAME, SCORE_NAME, check_parity, export_scorer
from .quantize import quantize_scorer

MAX_AUROC_DROP = 0.005     # the gate: image AUROC(fp32) - AUROC(int8) <= this ...
MIN_SPEARMAN = 0.99        # ... and Spearman(fp32 scores, int8 scores) >= this


class QuantizationGateError(RuntimeError):
    """The int8 graph scores too differently from fp32; the message gives the gate's figures."""


@dataclass
class GateData:
    """Images the gate compares fp32 and int8 on.

    Attributes:
        images: model inputs ``float32 (N, C, H, W)``.
        labels: ``int (N,)`` 0 good / 1 defective, or ``None`` when unlabelled (all good).
        source: what the images are, for messages and the manifest.
        held_out: whether the density never saw them.
    """

    images: np.ndarray
    labels: np.ndarray | None
    source: str
    held_out: bool = True


@dataclass
class Int8Inputs:
    """Data an int8 export needs besides the detector.

    Attributes:
        calibration_images: good training images ``float32 (N, C, H, W)`` that set activation ranges.
        gate: the held-out comparison set.
        validation_images: the split-conformal calibration images ``(V, C, H, W)``, or ``None``.
    """

    calibration_images: np.ndarray
    gate: GateData
    validation_images: np.ndarray | None = None


def open_session(path: str | Path, threads: int = 1) -> ort.InferenceSession:
    """An onnxruntime CPU session with the runtime's settings and ``threads`` intra-op threads (0 = all)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def score_images(session: ort.InferenceSession, images: np.ndarray, batch_size: int = 8
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Image scores ``float64 (N,)`` and patch-score maps ``float32 (N, h, w)`` (nats) of ``images`` ``(N, C, H, W)``."""
    scores, maps = [], []
    for i in range(0, images.shape[0], batch_size):
        s, m = session.run([SCORE_NAME, MAP_NAME], {INPUT_NAME: np.ascontiguousarray(images[i:i + batch_size])})
        scores.append(s)
        maps.append(m)
    return np.concatenate(scores).astype(np.float64), np.concatenate(maps)


def gate_figures(fp32: np.ndarray, int8: np.ndarray, labels: np.ndarray | None, source: str, held_out: bool,
                 max_auroc_drop: float = MAX_AUROC_DROP, min_spearman: float = MIN_SPEARMAN) -> dict[str, Any]:
    """Compare fp32 and int8 image scores ``(N,)`` of the gate images; ``passed`` says whether int8 may ship."""
    rho = spearman(fp32, int8)
    both = labels is not None and 0 < int(np.sum(labels)) < len(labels)
    fig: dict[str, Any] = {
        "data": source, "held_out": bool(held_out), "n_images": int(len(fp32)),
        "n_good": int(len(fp32) if labels is None else np.sum(labels == 0)),
        "n_defective": int(0 if labels is None else np.sum(labels == 1)),
        "spearman": rho, "min_spearman": min_spearman, "max_auroc_drop": max_auroc_drop,
        "auroc_gated": both,
        "score_diff_mean": float(np.mean(int8 - fp32)), "score_diff_sd": float(np.std(int8 - fp32)),
    }
    ok = not math.isnan(rho) and rho >= min_spearman
    if both:
        a32, a8 = auroc(labels, fp32), auroc(labels, int8)
        fig.update(auroc_fp32=a32, auroc_int8=a8, auroc_drop=a32 - a8)
        ok = ok and a32 - a8 <= max_auroc_drop
    else:
        fig.update(auroc_fp32=None, auroc_int8=None, auroc_drop=None,
                   note="no labelled good and defective images: image AUROC cannot be computed; "
                        "gated on the Spearman correlation only")
    fig["passed"] = bool(ok)
    return fig


def describe_gate(fig: dict[str, Any]) -> str:
    """Both gate figures in one sentence."""
    if fig["auroc_gated"]:
        a = (f"image AUROC fp32 {fig['auroc_fp32']:.4f} -> int8 {fig['auroc_int8']:.4f} "
             f"(drop {fig['auroc_drop']:.4f}, allowed <= {fig['max_auroc_drop']:g})")
    else:
        a = "image AUROC not computed (no labelled good and defective images)"
    return (f"{a}; Spearman rank correlation of fp32 and int8 scores {fig['spearman']:.4f} "
            f"(required >= {fig['min_spearman']:g}) on {fig['n_images']} {fig['data']}")


def recalibrate(det: FittedDetector, int8_session: ort.InferenceSession, inputs: Int8Inputs,
                gate_fp32: np.ndarray, gate_int8: np.ndarray, maps_fp32: np.ndarray, maps_int8: np.ndarray,
                batch_size: int = 8) -> tuple[ConformalCalibrator, float, dict[str, Any]]:
    """The int8 bundle's calibrator and heat-map scale (module docstring says how and why).

    ``gate_fp32`` / ``gate_int8``: image scores ``(N,)`` of the gate images; ``maps_*``: their patch maps.
    Returns (calibrator, heatmap_low, figures for the manifest).
    """
    alpha = det.calibrator.alpha
    heat_shift = float(np.median(maps_int8.astype(np.float64) - maps_fp32))
    val = inputs.validation_images
    if det.calibration_method == SPLIT_CONFORMAL and val is not None and len(val) > 0:
        scores, _ = score_images(int8_session, val, batch_size)
        fig = {"method": "split-conformal: the validation images re-scored by the int8 graph",
               "n_images": int(len(scores))}
    else:
        g = inputs.gate
        good = np.ones(len(gate_fp32), bool) if g.labels is None or not np.any(g.labels == 0) else g.labels == 0
        diff = gate_int8[good] - gate_fp32[good]
        shift = float(np.median(diff))
        scores = np.asarray(det.calibrator.scores_, dtype=np.float64) + shift
        fig = {"method": "cross-conformal: fp32 out-of-fold scores shifted by the median int8 - fp32 difference "
                         "of good gate images", "shift": shift, "diff_sd": float(np.std(diff)),
               "n_images": int(good.sum()), "from": g.source}
    cal = ConformalCalibrator(alpha).fit(scores)
    fig.update(threshold_fp32=float(det.calibrator.threshold_), threshold_int8=float(cal.threshold_),
               heatmap_low_shift=heat_shift)
    return cal, det.heatmap_low + heat_shift, fig


def export_int8_bundle(det: FittedDetector, out: str | Path, parity_images: np.ndarray, config: TrainConfig,
                       training_data: dict[str, Any], inputs: Int8Inputs, lineage: dict[str, Any] | None = None,
                       overwrite: bool = False, max_auroc_drop: float = MAX_AUROC_DROP,
                       min_spearman: float = MIN_SPEARMAN, threads: int = 1,
                       progress: Callable[[str], None] | None = None,
                       gallery_images: Sequence[tuple[str, bytes]] = ()) -> Bundle:
    """Quantise, gate, recalibrate and write an int8 bundle to ``out`` (``gallery_images``: see
    :func:`~linewatch.export.bundle_export.export_bundle`).

    Raises ``ParityError`` (fp32 graph vs torch) or :class:`QuantizationGateError`; either way
    nothing is written. ``threads``: onnxruntime threads for scoring (0 = all cores).
    """
    say = progress or (lambda _m: None)
    spec = det.input_spec
    with tempfile.TemporaryDirectory(prefix="linewatch-export-") as tmp:
        fp32_path, int8_path = Path(tmp) / "model-fp32.onnx", Path(tmp) / "model.onnx"
        export_scorer(det.scorer, spec.channels, spec.height, spec.width, fp32_path, config.export.opset)
        parity = check_parity(det.scorer, fp32_path, parity_images[: config.export.parity_images],
                              config.export.parity_rtol, config.export.parity_atol)
        say(f"quantising to int8 (static QDQ, per-channel) on {len(inputs.calibration_images)} training images")
        quant = quantize_scorer(fp32_path, int8_path, inputs.calibration_images, INPUT_NAME, det.backbone, spec)
        int8_bytes = int8_path.stat().st_size
        files = separate_density(det, int8_path)
        g = inputs.gate
        say(f"int8 gate: scoring {len(g.images)} {g.source} with fp32 and int8")
        s32, m32 = score_images(open_session(fp32_path, threads), g.images)
        int8_session = open_session(int8_path, threads)
        s8, m8 = score_images(int8_session, g.images)
        gate = gate_figures(s32, s8, g.labels, g.source, g.held_out, max_auroc_drop, min_spearman)
        if not gate["passed"]:
            raise QuantizationGateError(f"int8 accuracy gate failed: {describe_gate(gate)}. The bundle was not "
                                        "written; export fp32 instead (without --int8, or export.int8: false)")
        say(f"int8 gate passed: {describe_gate(gate)}")
        calibrator, heatmap_low, recal = recalibrate(det, int8_session, inputs, s32, s8, m32, m8)
        det8 = dataclasses.replace(det, calibrator=calibrator, heatmap_low=heatmap_low)
        manifest = build_manifest(det8, config, parity, training_data, lineage)
        manifest.model.precision = "int8"
        manifest.parity["graph"] = "fp32, before quantisation (the int8 graph is checked by the gate)"
        manifest.quantization = {**quant, "gate": gate, "recalibration": recal,
                                 "fp32_model_bytes": fp32_path.stat().st_size,
                                 "int8_model_bytes": int8_bytes}
        if det.chain is not None:
            files.update(_export_chain(det, config, Path(tmp), manifest))
        if det.decoder is not None:
            files.update(_export_decoder(det, config, Path(tmp), manifest))
        attach_gallery(files, manifest, gallery_images, int8_path, config)
        return write_bundle(out, manifest, files, overwrite=overwrite)
