"""torch -> ONNX for the scoring graph, with a torch-vs-onnxruntime parity check."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from ..runtime.bundle import ModelSpec

INPUT_NAME, SCORE_NAME, MAP_NAME, FEATURES_NAME = "image", "score", "patch_scores", "patch_features"


class ParityError(RuntimeError):
    """onnxruntime's scores differ from torch's by more than the stated tolerance."""


def export_scorer(scorer: nn.Module, channels: int, height: int, width: int, path: str | Path, opset: int = 17) -> None:
    """Write ``scorer`` as ONNX: input ``image (N, C, H, W)``, outputs ``score (N,)``, ``patch_scores (N, h, w)``
    and ``patch_features (N, h*w, d)`` (see :mod:`linewatch.training.scorer`).

    The batch axis is dynamic; the image size is fixed (the manifest states it). The density's
    parameters are still inside the file; :func:`linewatch.export.density_file.externalize_density`
    moves them out for a bundle.
    """
    dummy = torch.zeros(2, channels, height, width)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the TorchScript exporter's deprecation and tracer warnings
        torch.onnx.export(scorer.eval(), (dummy,), str(path), dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=[SCORE_NAME, MAP_NAME, FEATURES_NAME],
                          dynamic_axes={INPUT_NAME: {0: "n"}, SCORE_NAME: {0: "n"}, MAP_NAME: {0: "n"},
                                        FEATURES_NAME: {0: "n"}})


def model_spec(map_shape: tuple[int, int], opset: int, backbone: str, precision: str = "fp32") -> ModelSpec:
    return ModelSpec(file="model.onnx", input_name=INPUT_NAME, score_output=SCORE_NAME, map_output=MAP_NAME,
                     features_output=FEATURES_NAME,
                     map_height=int(map_shape[0]), map_width=int(map_shape[1]), opset=opset,
                     precision=precision, backbone=backbone)


@torch.no_grad()
def check_parity(scorer: nn.Module, onnx_path: str | Path, images: np.ndarray, rtol: float, atol: float) -> dict:
    """Score ``images`` ``float32 (N, C, H, W)`` with torch and onnxruntime; raise :class:`ParityError` when
    any image score differs by more than ``atol + rtol * max(1, |torch score|)``.

    Returns the measured figures (recorded in the manifest).
    """
    t_scores, t_maps = scorer.eval()(torch.from_numpy(images))[:2]
    t_scores, t_maps = t_scores.numpy().astype(np.float64), t_maps.numpy().astype(np.float64)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    o_scores, o_maps = sess.run([SCORE_NAME, MAP_NAME], {INPUT_NAME: images})
    diff = np.abs(o_scores.astype(np.float64) - t_scores)
    allowed = atol + rtol * np.maximum(1.0, np.abs(t_scores))
    figures = {
        "n_images": int(images.shape[0]),
        "max_abs_score_diff": float(diff.max()),
        "max_abs_map_diff": float(np.abs(o_maps - t_maps).max()),
        "tolerance": f"|onnx - torch| <= {atol} + {rtol} * max(1, |score|) for every image score",
        "rtol": rtol, "atol": atol,
    }
    worst = int(np.argmax(diff - allowed))
    if diff[worst] > allowed[worst]:
        raise ParityError(f"onnxruntime and torch disagree: image {worst} scores {o_scores[worst]:.6g} vs "
                          f"{t_scores[worst]:.6g} (|diff| {diff[worst]:.3g} > allowed {allowed[worst]:.3g}); "
                          "the bundle was not written. Report this with the config used.")
    return figures


CHAIN_STATE, CHAIN_NOISE, CHAIN_NEXT = "state", "noise", "next_state"


def export_chain_step(step: nn.Module, state_dim: int, noise_dim: int, path: str | Path, opset: int = 17) -> None:
    """Write one top-layer chain step: ``state (N, D_state)``, ``noise (N, D_code)`` standard normal ->
    ``next_state (N, D_state)``. The noise is an input, so the graph is deterministic."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(step.eval(), (torch.zeros(2, state_dim), torch.zeros(2, noise_dim)), str(path),
                          dynamo=False, opset_version=opset, input_names=[CHAIN_STATE, CHAIN_NOISE],
                          output_names=[CHAIN_NEXT],
                          dynamic_axes={CHAIN_STATE: {0: "n"}, CHAIN_NOISE: {0: "n"}, CHAIN_NEXT: {0: "n"}})


@torch.no_grad()
def check_chain_parity(step: nn.Module, onnx_path: str | Path, start: np.ndarray, noise_dim: int,
                       atol: float = 1e-4) -> float:
    """One step from ``start`` with the same noise in torch and onnxruntime; raises :class:`ParityError`
    beyond ``atol`` (relative to max(1, |value|)). Returns the largest difference."""
    noise = np.random.default_rng(0).standard_normal((start.shape[0], noise_dim)).astype(np.float32)
    want = step.eval()(torch.from_numpy(start), torch.from_numpy(noise)).numpy()
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run([CHAIN_NEXT], {CHAIN_STATE: start, CHAIN_NOISE: noise})[0]
    diff = float(np.max(np.abs(got - want) / np.maximum(1.0, np.abs(want))))
    if diff > atol:
        raise ParityError(f"the chain-step graph differs from torch by {diff:.3g} (> {atol}); the bundle was not written")
    return diff


DECODER_INPUT, DECODER_OUTPUT = "features", "image"


def export_decoder(decoder: nn.Module, n_rows: int, dim: int, path: str | Path, opset: int = 17) -> None:
    """Write the pixel decoder: ``features (N, P, D)`` level-1 rows (row-major map order) ->
    ``image (N, C, H, W)`` in [0, 1]. The batch axis is dynamic; ``P`` and ``D`` are fixed."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(decoder.eval(), (torch.zeros(2, n_rows, dim),), str(path), dynamo=False,
                          opset_version=opset, input_names=[DECODER_INPUT], output_names=[DECODER_OUTPUT],
                          dynamic_axes={DECODER_INPUT: {0: "n"}, DECODER_OUTPUT: {0: "n"}})


@torch.no_grad()
def check_decoder_parity(decoder: nn.Module, onnx_path: str | Path, rows: np.ndarray, atol: float = 1e-4) -> float:
    """Decode ``rows`` ``(N, P, D)`` with torch and onnxruntime; raises :class:`ParityError` when any pixel
    differs by more than ``atol`` (pixels are in [0, 1]). Returns the largest difference."""
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    want = decoder.eval()(torch.from_numpy(rows)).numpy()
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run([DECODER_OUTPUT], {DECODER_INPUT: rows})[0]
    diff = float(np.max(np.abs(got - want)))
    if diff > atol:
        raise ParityError(f"the pixel-decoder graph differs from torch by {diff:.3g} (> {atol}); "
                          "the bundle was not written")
    return diff
