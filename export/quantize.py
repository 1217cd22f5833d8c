"""int8 quantisation of an exported scoring graph: onnxruntime static quantisation, QDQ format.

Only the *backbone* is quantised; the density head (squared distances to the bank, logsumexp, top-k)
stays fp32. Weights are int8, symmetric, per output channel; activations uint8, per tensor,
asymmetric, with MinMax ranges from training images. Dynamic quantisation is never used: its
ConvInteger kernels are ~20x slower than fp32 for convolutions here.

What is quantised was measured on the 224-px default demo bundles (200 training crops; gate data:
40 good + 60 defective test crops each). Figures: Spearman rank correlation of int8 and fp32 image
scores on brick / gravel / grass, and the model size; "error sd" = spread of int8 minus fp32 score
(nats) on brick, whose good test images score 250-274 and defective ones 266-421:

==========================================  ========  =========================  ========
quantised nodes                             error sd  Spearman b / gv / gs       model MB
==========================================  ========  =========================  ========
whole graph (density too)                   n/a       undefined (AUROC 0.5)      1.16
whole backbone                              14.5      0.972 / - / -              1.83
whole backbone, graph input range pinned    8.7       0.977 / - / -              1.83
Lite0 blocks 3-10 (from stride 8)           4.6       0.990 / 0.864 / 0.937      1.86
Lite0 blocks 5-10 (stride 16)               -         - / 0.894 / 0.988          1.95
Lite0 blocks 6-10                           1.1       0.999 / 0.995 / 0.998      2.03
Lite0 blocks 7-10 [chosen]                  1.0       0.999 / 0.996 / 0.998      2.26
fp32                                        0         1                          3.73
==========================================  ========  =========================  ========

(AUROC drops were at most 0.0025 wherever Spearman passed; 16-bit activations, Percentile or Entropy
calibration and symmetric activations did not help.) The density is far too sensitive for int8:
scores are hundreds of nats and the kernel bandwidth is ~2 feature units, and the good test images'
scores lie within ~25 nats of each other, so the gate tolerates an error spread of about 1 nat. The
early, high-resolution layers carry most of the error, and quantising the graph input with ranges
from good images clips dark or bright defects. So for Lite0 the stem and blocks 0-6 stay fp32, and
blocks 7-10 (the last 80-channel block and the 112-channel stage, which hold most of the weights)
plus the patch pooling are quantised: the model shrinks from 3.7 to 2.3 MB with a margin on the gate
on all three textures. The speed-up on x86 is small, because those layers run on the 14 x 14 map and
the density head costs about as much as the backbone. (Measured with all 11 blocks. With the default
``model.lite0_blocks: 8`` the graph ends at block 7, so block 7 and the pooling are all that is
quantised: 9 % of the multiply-adds; the gate passed on the three textures, README.) For other backbones every node of the feature
module is quantised and the input range is pinned to what preprocessing can produce. Either way the
export's accuracy gate (:mod:`linewatch.export.int8_bundle`) decides.

Node selection relies on the scope names of torch's TorchScript ONNX exporter (``/features/...``,
``/features/blocks.<k>/...``); torch is pinned, and a graph without such names is refused.
"""
from __future__ import annotations

import logging
import re
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process

from ..runtime.preprocess import InputSpec

FEATURE_SCOPE = "/features/"
LITE0_FIRST_QUANTIZED_BLOCK = 7          # blocks 7-10: see the table above
_BLOCK = re.compile(r"^/features/(?:backbone/)?blocks\.(\d+)/")


class QuantizationError(RuntimeError):
    """The graph could not be quantised; the message says why and what to do."""


def nodes_to_quantize(model: onnx.ModelProto, backbone: str) -> list[str]:
    """Names of the nodes to quantise in ``model`` (a scoring graph after ``quant_pre_process``).

    Lite0: nodes of backbone blocks >= :data:`LITE0_FIRST_QUANTIZED_BLOCK` plus the feature module's
    pooling; other backbones: every node of the feature module. Never the density head.
    """
    names = []
    for node in model.graph.node:
        if not node.name.startswith(FEATURE_SCOPE):
            continue
        if backbone == "lite0":
            m = _BLOCK.match(node.name)
            in_backbone = m is not None or node.name.startswith(("/features/stem", "/features/backbone/stem"))
            if in_backbone and (m is None or int(m.group(1)) < LITE0_FIRST_QUANTIZED_BLOCK):
                continue
        names.append(node.name)
    chosen = set(names)
    if not any(n.op_type == "Conv" for n in model.graph.node if n.name in chosen):
        raise QuantizationError(f"no convolution of the feature module found to quantise (looked for nodes named "
                                f"{FEATURE_SCOPE}...); this graph was not made by linewatch's exporter: export fp32")
    return names


def quantized_ops(model: onnx.ModelProto) -> dict[str, int]:
    """Op types (and counts) of the quantised nodes of a QDQ graph: those between a DequantizeLinear
    (an input) and a QuantizeLinear (their output), which onnxruntime runs as int8 kernels."""
    from_dq = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    to_q = {n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    ops = Counter(n.op_type for n in model.graph.node
                  if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
                  and from_dq & set(n.input) and to_q & set(n.output))
    return dict(sorted(ops.items()))


class _ImageBatches(CalibrationDataReader):
    """Feeds ``images`` ``float32 (N, C, H, W)`` to the calibrator in batches."""

    def __init__(self, input_name: str, images: np.ndarray, batch_size: int = 8):
        self._batches = iter([{input_name: np.ascontiguousarray(images[i:i + batch_size])}
                              for i in range(0, images.shape[0], batch_size)])

    def get_next(self):
        return next(self._batches, None)


def quantize_scorer(fp32_path: str | Path, int8_path: str | Path, calibration_images: np.ndarray,
                    input_name: str, backbone: str, spec: InputSpec) -> dict:
    """Write the int8 (QDQ) version of the scoring graph ``fp32_path`` to ``int8_path``.

    Args:
        calibration_images: model inputs ``float32 (N, C, H, W)`` (good training images) whose
            activation ranges (min/max per tensor) set the uint8 scales.
        input_name: the graph input; backbone: ``"lite0"`` or ``"conv_ae"`` (selects the nodes).
        spec: the input spec; its value range pins the graph input's range when the input is quantised.

    Returns the figures recorded in the manifest's ``quantization`` section.
    """
    if calibration_images.shape[0] == 0:
        raise QuantizationError("no calibration images for int8 quantisation; the checkpoint holds no "
                                "readable training images: re-run `linewatch train`")
    with tempfile.TemporaryDirectory(prefix="linewatch-quant-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre))     # shape inference + graph clean-up, as ORT advises
        model = onnx.load(str(pre))
        names = nodes_to_quantize(model, backbone)
        chosen = set(names)
        input_quantized = any(input_name in n.input for n in model.graph.node if n.name in chosen)
        extra = {}
        if input_quantized:   # never clip what preprocessing can produce (dark/bright defects)
            lo = min((0.0 - m) / s for m, s in zip(spec.mean, spec.std))
            hi = max((1.0 - m) / s for m, s in zip(spec.mean, spec.std))
            extra["TensorQuantOverrides"] = {input_name: [{"rmin": np.float32(lo), "rmax": np.float32(hi)}]}
        quiet = logging.getLogger().level
        logging.getLogger().setLevel(max(quiet, logging.ERROR))   # ORT logs advice through the root logger
        try:
            quantize_static(str(pre), str(int8_path), _ImageBatches(input_name, calibration_images),
                            quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                            nodes_to_quantize=names, extra_options=extra)
        finally:
            logging.getLogger().setLevel(quiet)
    ops = quantized_ops(onnx.load(str(int8_path)))
    scope = (f"Lite0 blocks {LITE0_FIRST_QUANTIZED_BLOCK} and later, and the patch pooling; stem, blocks 0-"
             f"{LITE0_FIRST_QUANTIZED_BLOCK - 1} and the density head stay fp32" if backbone == "lite0"
             else "the feature module; the density head stays fp32")
    return {
        "method": "onnxruntime quantize_static", "format": "QDQ", "onnxruntime_version": ort.__version__,
        "weights": "int8, symmetric, per output channel", "activations": "uint8, per tensor, asymmetric",
        "calibrate_method": "MinMax", "calibration_images": int(calibration_images.shape[0]),
        "scope": scope, "quantized_nodes": sum(ops.values()), "quantized_ops": ops,
        "input_range_pinned": bool(input_quantized),
    }
