"""A fitted detector -> a verified bundle folder (``model.onnx`` + ``manifest.json``)."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..runtime.bundle import Bundle, Calibration, Decision, Manifest, Scoring, image_score_name, write_bundle
from ..training.config import TrainConfig
from ..training.fit import FittedDetector
from .chain_codec import export_chain_codec
from .density_file import externalize_density
from .gallery import attach_gallery
from .onnx_export import (CHAIN_NEXT, CHAIN_NOISE, CHAIN_STATE, DECODER_INPUT, DECODER_OUTPUT, check_chain_parity,
                          check_decoder_parity, check_parity, export_chain_step, export_decoder, export_scorer,
                          model_spec)


def build_manifest(det: FittedDetector, config: TrainConfig, parity: dict[str, Any],
                   training_data: dict[str, Any], lineage: dict[str, Any] | None = None) -> Manifest:
    cal = det.calibrator
    scoring = scoring_of(det, config)
    return Manifest(
        model=model_spec(det.map_shape, config.export.opset, det.backbone),
        input=det.input_spec,
        decision=Decision(threshold=float(cal.threshold_), target_false_alarm_rate=cal.alpha,
                          score_definition=score_definition(scoring)),
        calibration=Calibration(
            method=det.calibration_method,
            scores=[float(s) for s in cal.scores_], target_reachable=bool(cal.target_reachable_),
            heatmap_low=det.heatmap_low, folds=int(det.figures.get("folds", 0)),
            false_alarm_rate_on_calibration=cal.false_alarm_rate(cal.scores_)),
        scoring=scoring,
        density={"kind": "parzen-gaussian", "bandwidth": det.bandwidth, "weighted": config.density.weighted,
                 **{k: det.figures[k] for k in ("level", "bank_size", "feature_dim", "code_dim", "chain_samples",
                                                "bandwidth_grid", "heldout_mean_loglik") if k in det.figures},
                 "parameters": det.figures.get("density_parameters", {})},
        training_data={**training_data, "fit_seconds": det.figures.get("fit_seconds")},
        parity=parity,
        lineage={"parent": None, "config": config.to_dict(), **(lineage or {})},
        selection=dict(getattr(det, "selection", {})),   # absent on detectors pickled before it existed
    )


def score_definition(scoring: Scoring) -> str:
    """The manifest's plain-words account of the image score."""
    words = ("the largest patch score" if scoring.top_k == 1 else f"mean of the {scoring.top_k} largest patch scores")
    if scoring.global_branch:
        words += (" plus the global branch's term (the patches' per-channel mean and spread, scored by a Gaussian "
                  "of good images; scoring.global_*)")
    return words + "; patch score = -log p(patch feature), nats"


def scoring_of(det: FittedDetector, config: TrainConfig) -> Scoring:
    """The manifest's scoring section: the graph's own ``top_k`` and bandwidth, the density's level, and
    the feature settings of the configuration fitted (after self-configuration, when it ran)."""
    fitted = getattr(det, "config", None) or config       # detectors pickled before it existed lack it
    m, d = fitted.model, fitted.density
    top_k = int(det.scorer.top_k)
    return Scoring(top_k=top_k, image_score=image_score_name(top_k),
                   feature_strides=[int(s) for s in m.feature_strides], patch_pool=int(m.patch_pool),
                   lite0_blocks=int(m.lite0_blocks) if det.backbone == "lite0" else None,
                   whiten=bool(d.whiten), whiten_shrinkage=float(d.whiten_shrinkage),
                   density_level=int(det.figures.get("level", d.level)), bandwidth=float(det.bandwidth),
                   position_weight=float(getattr(getattr(det.scorer, "position", None), "weight", 0.0)),
                   **_global_fields(getattr(det.scorer, "global_branch", None)))


def _global_fields(branch) -> dict[str, Any]:
    if branch is None:
        return {}
    return {"global_branch": True, "global_offset": float(branch.offset), "global_scale": float(branch.scale),
            "global_weight": float(branch.weight)}


def export_bundle(det: FittedDetector, out: str | Path, parity_images: np.ndarray, config: TrainConfig,
                  training_data: dict[str, Any], lineage: dict[str, Any] | None = None,
                  overwrite: bool = False, gallery_images: Sequence[tuple[str, bytes]] = ()) -> Bundle:
    """Export the graph, check torch/onnxruntime parity on ``parity_images`` ``(N, C, H, W)``, write the bundle.

    ``gallery_images``: ``(name, encoded bytes)`` of good training images for the audit gallery
    (:mod:`linewatch.export.gallery`); none = no gallery.

    Raises ``ParityError`` (and writes nothing) when the parity check fails.
    """
    spec = det.input_spec
    with tempfile.TemporaryDirectory(prefix="linewatch-export-") as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        export_scorer(det.scorer, spec.channels, spec.height, spec.width, onnx_path, config.export.opset)
        files = separate_density(det, onnx_path)
        parity = check_parity(det.scorer, onnx_path, parity_images[: config.export.parity_images],
                              config.export.parity_rtol, config.export.parity_atol)
        manifest = build_manifest(det, config, parity, training_data, lineage)
        if det.chain is not None:
            files.update(_export_chain(det, config, Path(tmp), manifest))
        if det.decoder is not None:   # a class default, so older checkpoints read None
            files.update(_export_decoder(det, config, Path(tmp), manifest))
        attach_gallery(files, manifest, gallery_images, onnx_path, config)
        return write_bundle(out, manifest, files, overwrite=overwrite)


def separate_density(det: FittedDetector, onnx_path: Path) -> dict[str, Path]:
    """Move the density's parameters to ``density.bin`` beside ``onnx_path`` (external data), record
    where in ``det.figures["density_parameters"]``; returns the bundle files ``{name: path}``."""
    bin_path, layout = externalize_density(onnx_path, 0.5 / det.bandwidth ** 2)
    det.figures["density_parameters"] = layout
    return {"model.onnx": onnx_path, bin_path.name: bin_path}


def _export_chain(det: FittedDetector, config: TrainConfig, tmp: Path, manifest) -> dict[str, Path]:
    """Write the chain-step graph and its start states; describe them in ``manifest.chain``."""
    chain = det.chain
    state_dim, noise_dim = chain.start.shape[1], chain.step.W.shape[0]
    step_path, start_path = tmp / "chain_step.onnx", tmp / "chain_start.npy"
    export_chain_step(chain.step, state_dim, noise_dim, step_path, config.export.opset)
    diff = check_chain_parity(chain.step, step_path, chain.start[:64], noise_dim)
    np.save(start_path, chain.start.astype(np.float32))
    s = config.sampling
    manifest.chain = {"file": step_path.name, "start_file": start_path.name, "state_input": CHAIN_STATE,
                      "noise_input": CHAIN_NOISE, "output": CHAIN_NEXT, "state_dim": int(state_dim),
                      "noise_dim": int(noise_dim), "sigma": float(s.sigma), "burn_in": int(s.burn_in),
                      "thin": int(s.thin), "state_level": int(chain.level - 1), "sample_level": int(chain.level),
                      "parity_max_abs_diff": diff}
    codec_files, codec_spec = export_chain_codec(chain.step, chain.start, tmp, config.export.opset)
    manifest.chain.update(codec_spec)
    return {step_path.name: step_path, start_path.name: start_path, **codec_files}


DECODER_INPUT_SPACE = ("level-1 rows: the backbone's pooled patch features (model.onnx's first stage), sphered by "
                       "the density's whitening when density.whiten is true (the rows a level-1 density scores), "
                       "laid out (N, P, D) with P = map_height * map_width in row-major map order; with density "
                       "level 1 these are exactly model.onnx's patch_features output (model_output)")


def _export_decoder(det: FittedDetector, config: TrainConfig, tmp: Path, manifest) -> dict[str, Path]:
    """Write ``decoder.onnx`` (and, with a level-1 chain, ``augment_start.npz``); describe them in
    ``manifest.decoder``."""
    dec = det.decoder
    module = dec.module
    h, w = module.map_shape
    path = tmp / "decoder.onnx"
    export_decoder(module, h * w, module.dim, path, config.export.opset)
    probe = np.random.default_rng(0).standard_normal((4, h * w, module.dim)).astype(np.float32)
    if dec.start_maps is not None:   # real maps too: back from the chain's state space to level-1 rows
        probe = np.concatenate([probe, dec.rows_from_states(dec.start_maps[:4])]).astype(np.float32)
    diff = check_decoder_parity(module, path, probe)
    spec = det.input_spec
    manifest.decoder = {
        "file": path.name, "input": DECODER_INPUT, "output": DECODER_OUTPUT,
        "input_space": DECODER_INPUT_SPACE, "whitened": bool(config.density.whiten),
        # at density level 1 the density's space is the decoder's: model.onnx's patch_features feed it as they are
        "model_output": "patch_features" if int(det.figures.get("level", 1)) == 1 else None,
        "map_height": int(h), "map_width": int(w), "feature_dim": int(module.dim),
        "image_height": int(module.image_shape[0]), "image_width": int(module.image_shape[1]),
        "channels": int(module.channels), "color_order": spec.color_order,
        "output_range": [0.0, 1.0], "training": dict(dec.figures),
        "parity_max_abs_diff": diff,
    }
    files = {path.name: path}
    if dec.start_maps is not None and det.chain is not None:
        start = tmp / "augment_start.npz"
        down = {}
        for k, (W, c, b) in enumerate(dec.down or []):
            down[f"down_W_{k}"], down[f"down_c_{k}"], down[f"down_b_{k}"] = W, c, b
        with open(start, "wb") as f:
            np.savez(f, maps=dec.start_maps.astype(np.float32), state_mean=dec.state_mean.astype(np.float32),
                     state_std=dec.state_std.astype(np.float32), image_index=dec.start_images.astype(np.int64),
                     state_level=np.int64(dec.state_level), **down)
        manifest.decoder["augment"] = {
            "start_file": start.name, "n_start_maps": int(dec.start_maps.shape[0]),
            "state_level": int(dec.state_level), "n_down_layers": len(dec.down or []),
            "state_space": "chain states at state_level; back to decoder input: for k = 0 .. n_down_layers - 1, "
                           "h = h @ down_W_k + down_c_k, then sigmoid except after the last (layer 1 is linear); "
                           "rows = h * state_std + state_mean (the stack's standardisation)",
            "arrays": {"maps": "float32 (S, P, D_state) states", "state_mean": "float32 (D,)",
                       "state_std": "float32 (D,)", "image_index": "int64 (S,) index of each map's image in the "
                       "training set", "down_W_k, down_c_k, down_b_k": "CAE weights (D_k, D_{k-1}), decoder bias, encoder "
                       "bias, top layer first"}}
        files[start.name] = start
    return files
