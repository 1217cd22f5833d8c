"""Fitting the patch-density detector on good images only.

0. With ``autoconfig.enabled``, the scoring configuration is chosen first by proxy validation
   (``training/autoconfig.py``); everything below then runs with the chosen configuration. Near-duplicate
   images are merged into one group (``training/folds.py``), and with ``density.benign_copies`` each
   image gets benign-shifted copies (``training/proxy_defects.py``) that join the banks and the sphering
   but are never scored for calibration.
1. Level-1 patch features of every training image (frozen Lite0, or a conv autoencoder trained here),
   sphered with their training covariance when ``density.whiten`` is set (``training/whitening.py``);
   with ``stack.widths``, CAE levels above them, and the density at ``density.level`` (the stack is
   fitted once on all training patches, before cross-fitting; optional top-layer chain samples join
   each bank).
2. Cross-fitting over ``folds`` groups of images: for each fold, a Parzen bank is built from the
   other folds' patches (greedy coreset, weighted by the patches each centre covers), and the held-out
   patches get log-densities for a grid of bandwidths. The bandwidth with the highest held-out mean
   log-likelihood wins. Each training image thereby gets an out-of-fold image score, which is what a
   new good image would score: these are the conformal calibration scores.
3. The final bank is built from all images' patches with the chosen bandwidth. With
   ``scoring.position_weight`` the rows carry their map coordinates (``training/position.py``); with
   ``scoring.global_branch`` the image score gets the global branch's term (``training/global_branch.py``),
   fused on out-of-fold scores.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..runtime.calibration import ConformalCalibrator
from ..runtime.preprocess import InputSpec
from .backbones.conv_ae import train_conv_ae
from .config import TrainConfig
from .autoconfig import select_configuration
from .bank import PatchBank, bandwidth_grid, build_bank
from .folds import assign_folds, merge_near_duplicates
from .global_branch import Fusion, GlobalBranch, GlobalGaussian, descriptors, out_of_fold_global
from .features import PatchFeatures, conv_ae_patch_features, extract, lite0_features_for, to_patches
from .levels import chain_samples, fit_stack
from .parzen import ParzenDensity, log_density, log_density_grid
from .position import PositionCode, with_position
from .proxy_defects import benign_copies
from .pixel_decoder import PixelDecoder, display_images, fit_pixel_decoder
from .sampler import ChainStep
from .scorer import PatchDensityScorer, image_score
from .whitening import Whitening, fit_whitening

Progress = Callable[[str], None]

CROSS_CONFORMAL = "cross-conformal (out-of-fold image scores of good training images)"
SPLIT_CONFORMAL = "split-conformal (image scores of held-out good validation images, final model)"


def input_spec_for(config: TrainConfig) -> InputSpec:
    m = config.model
    if m.channels == 3:
        return InputSpec(m.image_size, m.image_size, 3, "RGB", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    return InputSpec(m.image_size, m.image_size, 1, "GRAY", (0.5,), (0.5,))


@dataclass
class ChainExport:
    """The top-layer chain shipped in the bundle: one step (state, noise) -> state, and start states."""

    step: ChainStep
    start: np.ndarray                # float32 (S, D_state): codes at level - 1 of random training patches
    level: int                       # the level samples are encoded to: density.level if >= 2, else the top + 1


@dataclass
class DecoderExport:
    """The pixel decoder and what ``linewatch augment`` starts from.

    ``module`` maps level-1 rows ``(N, P, D)`` (whitened level-1 features when ``density.whiten``, see
    ``training/pixel_decoder.py``) to images ``(N, C, H, W)`` in [0, 1]. ``start_maps``
    ``float32 (S, P, D_state)``: full maps of ``S`` training images (indices ``start_images`` into the
    training set) in the chain's state space at ``state_level`` (``None`` without a chain). A state goes
    back to level-1 rows through the CAE decoders below it, ``down`` = ``[(W, c, b), ...]`` for stack layers
    ``state_level - 1, ..., 1`` (``h <- sigmoid(h W + c)``, linear for layer 1), then
    ``row = h * state_std + state_mean`` (the stack's standardisation, ``(D,)``).
    """

    module: PixelDecoder
    figures: dict
    start_maps: np.ndarray | None = None
    start_images: np.ndarray | None = None   # int64 (S,)
    state_mean: np.ndarray | None = None     # float32 (D,)
    state_std: np.ndarray | None = None      # float32 (D,)
    state_level: int = 1
    down: list | None = None                 # [(W (D_k, D_{k-1}), c (D_{k-1},), b (D_k,)), ...] float32, top first

    def rows_from_states(self, states: np.ndarray) -> np.ndarray:
        """Chain states ``(..., D_state)`` -> level-1 rows ``(..., D)`` (numpy; what the runtime does too)."""
        h = np.asarray(states, dtype=np.float32)
        for k, (W, c, _b) in enumerate(self.down or []):
            a = h @ W + c
            h = a if k == len(self.down) - 1 else 1.0 / (1.0 + np.exp(-a))   # layer 1's decoder is linear
        return (h * self.state_std + self.state_mean).astype(np.float32)


@dataclass
class FittedDetector:
    """Everything export needs. ``scorer`` is the pure graph; the rest goes into the manifest."""

    scorer: PatchDensityScorer
    input_spec: InputSpec
    calibrator: ConformalCalibrator
    bandwidth: float
    heatmap_low: float
    map_shape: tuple[int, int]
    backbone: str
    figures: dict = field(default_factory=dict)
    chain: ChainExport | None = None
    calibration_method: str = CROSS_CONFORMAL
    decoder: DecoderExport | None = None
    config: TrainConfig | None = None        # the configuration fitted (after self-configuration)
    selection: dict = field(default_factory=dict)   # the self-configuration's record (empty without one)


def _features_module(images: np.ndarray, config: TrainConfig, progress: Progress) -> PatchFeatures:
    m = config.model
    if m.backbone == "lite0":
        return lite0_features_for(m)
    ae_cfg = config.conv_ae
    progress(f"training the conv autoencoder on {len(images)} images ({ae_cfg.epochs} epochs)")
    ae = train_conv_ae(images, config.model.channels, ae_cfg.width, ae_cfg.epochs, ae_cfg.learning_rate,
                       ae_cfg.batch_size, config.seed, progress)
    return conv_ae_patch_features(ae, m.feature_strides, m.patch_pool)


def extract_maps(images: np.ndarray, config: TrainConfig, progress: Progress | None = None
                 ) -> tuple[PatchFeatures, np.ndarray]:
    """The level-1 feature module (trained here for conv_ae) and its maps ``float32 (N, D, h, w)``."""
    say = progress or (lambda _msg: None)
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    features = _features_module(images, config, say).eval()
    maps = extract(features, images, config.batch_size,
                   lambda i, k: say(f"features {i}/{k} images") if i == k or i % (8 * config.batch_size) == 0 else None)
    return features, maps


def fit_detector(images: np.ndarray, config: TrainConfig, progress: Progress | None = None,
                 groups: list[str] | None = None, validation: np.ndarray | None = None) -> FittedDetector:
    """Fit on good images ``float32 (N, C, H, W)`` (model inputs from ``preprocess``).

    ``groups`` (one label per image) keeps related images in the same cross-fitting fold; by default
    every image is its own group. Near-duplicate images are merged into one group either way
    (:func:`~.folds.merge_near_duplicates`). ``validation``: held-out good images ``(V, C, H, W)``; when given,
    the threshold and p-values are calibrated on their scores under the final model (split-conformal)
    instead of on the cross-fitted training scores. With ``autoconfig.enabled`` the scoring configuration
    is chosen first (``training/autoconfig.py``); ``FittedDetector.config`` is the configuration fitted.
    """
    if images.shape[0] < 2:
        raise ValueError(f"training needs at least 2 good images, got {images.shape[0]}")
    t0 = time.perf_counter()
    say = progress or (lambda _m: None)
    groups, joined = merge_near_duplicates(images, groups if groups is not None else
                                           [str(i) for i in range(images.shape[0])])
    if joined:
        say(f"{joined} near-duplicate images joined the group of their copy, so cross-fitting never scores an "
            "image against its own copy")
    spec, k = input_spec_for(config), config.density.benign_copies
    benign = benign_copies(images, spec.mean, spec.std, k, config.seed) if k else None
    selection, maps, benign_maps = {}, None, None
    if config.autoconfig.enabled:
        config, selection, maps, benign_maps = select_configuration(images, groups, config, spec, benign, progress)
    if maps is None:
        features, maps = extract_maps(images, config, progress)
        benign_maps = None if benign is None else extract(features, benign, config.batch_size)
    else:
        features = _features_module(images, config, say).eval()
    val_maps = None if validation is None else extract(features, validation, config.batch_size)
    det = fit_on_maps(features, maps, config, progress, groups, val_maps, images=images, benign_maps=benign_maps)
    det.selection = selection
    det.figures["near_duplicates_grouped"] = int(joined)
    det.figures["feature_seconds"] = round(time.perf_counter() - t0 - det.figures["fit_seconds"], 2)
    det.figures["fit_seconds"] = round(time.perf_counter() - t0, 2)
    return det


def _level1_rows(maps: np.ndarray, benign_maps: np.ndarray | None, config: TrainConfig
                 ) -> tuple[np.ndarray, np.ndarray, Whitening | None]:
    """Level-1 rows ``(N, h*w, D)`` of the images and ``(B, h*w, D)`` of their benign copies (``B = 0``
    without), sphered when ``density.whiten``; the sphering is fitted on both, so that it does not magnify
    the directions in which a brighter lamp or a softer focus moves good patches."""
    patches = to_patches(maps)
    extra = to_patches(benign_maps) if benign_maps is not None else patches[:0]
    if not config.density.whiten:
        return patches, extra, None
    dim = patches.shape[-1]
    whitening = fit_whitening(np.concatenate([patches, extra]).reshape(-1, dim), config.density.whiten_shrinkage,
                              seed=config.seed)
    return whitening.transform(patches), whitening.transform(extra), whitening


def fit_on_maps(features: PatchFeatures, maps: np.ndarray, config: TrainConfig, progress: Progress | None = None,
                groups: list[str] | None = None, validation_maps: np.ndarray | None = None,
                images: np.ndarray | None = None, benign_maps: np.ndarray | None = None) -> FittedDetector:
    """The density, bandwidth and calibration part of :func:`fit_detector`, on level-1 maps ``(N, D, h, w)``
    (and the held-out good images' maps ``(V, D, h, w)``, if any). ``images``: the model inputs
    ``(N, C, H, W)`` the maps came from; needed only with ``decoder.enabled`` (pixel targets).
    ``benign_maps`` ``(N * k, D, h, w)``: maps of ``k`` benign-shifted copies of each image (image ``i``'s
    copies at rows ``i*k .. i*k+k-1``), which join the banks of the folds their image is in but are never
    scored for calibration: the threshold stays exact for new images like the training images."""
    say = progress or (lambda _msg: None)
    n, dim, h, w = maps.shape
    fold_of = assign_folds(groups if groups is not None else [str(i) for i in range(n)],
                           config.density.folds, config.seed)
    folds = int(fold_of.max()) + 1
    if folds < 2:
        raise ValueError("all training images are in one group (subfolder); cross-fitting needs at least two "
                         "groups: put images directly in the training folder or in two or more subfolders")
    t0 = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    level = config.density.level
    patches, extra, whitening = _level1_rows(maps, benign_maps, config)   # (N, h*w, D), (B, h*w, D)
    extra_fold = np.repeat(fold_of, extra.shape[0] // n) if extra.shape[0] else np.zeros(0, np.int64)
    rep = None
    if config.stack.widths:
        rep = fit_stack(patches.reshape(-1, dim), config.stack, config.seed, say)
    if rep is not None and level > 1:
        codes = rep.encode(patches.reshape(-1, dim), level).reshape(n, h * w, -1)
        extra_codes = (rep.encode(extra.reshape(-1, dim), level).reshape(extra.shape[0], h * w, -1)
                       if extra.shape[0] else codes[:0])
    else:   # level 1 (a stack, if any, only drives the chain): the density sees the level-1 rows themselves
        codes, extra_codes = patches, extra
    global_rows, global_extra = codes, extra_codes          # the global branch sees the rows without position
    if config.scoring.position_weight:
        codes, extra_codes = (with_position(r, h, w, config.scoring.position_weight) for r in (codes, extra_codes))
    cdim = codes.shape[-1]

    def bank_for(rows: np.ndarray, level1_rows: np.ndarray, seed: int, fold: int | None = None) -> PatchBank:
        if config.sampling.chain_samples:
            rows = np.concatenate([rows, chain_samples(rep, level, level1_rows, config.sampling, seed)])
        copies = extra_codes if fold is None else extra_codes[extra_fold != fold]
        return build_bank(np.concatenate([rows, copies.reshape(-1, cdim)]), config, seed)

    sample_per_fold = max(1, config.density.bandwidth_patches // folds)
    banks, grid, lls = [], None, []
    for k in range(folds):
        inside = fold_of != k
        bank = bank_for(codes[inside].reshape(-1, cdim), patches[inside].reshape(-1, dim), config.seed + k, k)
        z = codes[fold_of == k].reshape(-1, cdim)
        z = z[rng.choice(z.shape[0], min(sample_per_fold, z.shape[0]), replace=False)]
        if grid is None:   # one grid for all folds, scaled to the typical held-out-to-bank distance
            grid = bandwidth_grid(z, bank, config)
        lls.append(log_density_grid(z, bank.centres, bank.weights, grid))
        banks.append(bank)
        say(f"cross-fitting fold {k + 1}/{folds}: bank of {bank.centres.shape[0]} patches")
    mean_ll = np.concatenate(lls).mean(axis=0)
    best = int(np.argmax(mean_ll))
    bandwidth = float(grid[best])
    if best in (0, len(grid) - 1):
        say(f"warning: the best bandwidth is at the edge of the grid ({bandwidth:.4g}); widen density.bandwidth_factors")
    # out-of-fold scores of every held-out image, by the same module the exported graph uses
    oof_patch_scores = np.empty((n, h * w))
    for k, bank in enumerate(banks):
        held = fold_of == k
        lp = log_density(ParzenDensity(bank.centres, bandwidth, bank.weights), codes[held].reshape(-1, cdim))
        oof_patch_scores[held] = -lp.reshape(-1, h * w)
    top_k = min(config.scoring.top_k, h * w)
    oof_image_scores = image_score(torch.from_numpy(oof_patch_scores.reshape(n, h, w)), top_k).numpy()
    global_branch = None
    if config.scoring.global_branch:
        global_branch, oof_image_scores = fit_global_branch(global_rows, fold_of, oof_image_scores, global_extra,
                                                            extra_fold)

    bank = bank_for(codes.reshape(-1, cdim), patches.reshape(-1, dim), config.seed + folds)
    density = ParzenDensity(bank.centres, bandwidth, bank.weights)
    stages = [m for m in (whitening, rep.encoder(level) if rep is not None and level > 1 else None) if m is not None]
    encoder = None if not stages else stages[0] if len(stages) == 1 else nn.Sequential(*stages)
    position = PositionCode(h, w, config.scoring.position_weight) if config.scoring.position_weight else None
    scorer = PatchDensityScorer(features, density, top_k, encoder, global_branch, position).eval()
    if validation_maps is None:
        method, calibration_scores = CROSS_CONFORMAL, oof_image_scores
    else:
        method, calibration_scores = SPLIT_CONFORMAL, score_maps(scorer, validation_maps)[0]
    calibrator = ConformalCalibrator(config.calibration.target_false_alarm_rate).fit(calibration_scores)
    cross_fitted = ConformalCalibrator(config.calibration.target_false_alarm_rate).fit(oof_image_scores)
    if not calibrator.target_reachable_:
        say(f"warning: {len(calibration_scores)} good calibration images cannot guarantee a false-alarm rate of "
            f"{calibrator.alpha:g}; at least {calibrator.min_images_for_target_} are needed. "
            "The threshold is the highest calibration score.")
    chain = None
    if rep is not None:   # at density level 1 the chain runs on the top CAE (augmentation); else below the density
        chain_level = level if level > 1 else len(config.stack.widths) + 1
        start = rep.encode(patches.reshape(-1, dim)[rng.choice(n * h * w, min(256, n * h * w), replace=False)],
                           chain_level - 1)
        chain = ChainExport(step=ChainStep(rep.stack_.layers[chain_level - 2], config.sampling.sigma).eval(),
                            start=start, level=chain_level)
    decoder = None
    if config.decoder.enabled:
        decoder = _fit_decoder(patches, (h, w), images, rep, chain.level - 1 if chain is not None else 1, config, say)
    say(f"final bank: {bank.centres.shape[0]} level-{level} codes from {n * h * w} patches"
        f"{' + ' + str(config.sampling.chain_samples) + ' chain samples' if config.sampling.chain_samples else ''}, "
        f"bandwidth {bandwidth:.4g}, threshold {calibrator.threshold_:.4g}")
    figures = {
        "n_images": int(n), "feature_dim": int(dim), "code_dim": int(cdim), "level": int(level),
        "map_shape": [int(h), int(w)], "top_k": int(top_k),
        "bank_size": int(bank.centres.shape[0]), "folds": int(folds),
        "chain_samples": int(config.sampling.chain_samples), "n_calibration": len(calibration_scores),
        "bandwidth_grid": [float(g) for g in grid], "heldout_mean_loglik": [float(v) for v in mean_ll],
        "cross_fitted_threshold": cross_fitted.threshold_,
        "fit_seconds": round(time.perf_counter() - t0, 2),
    }
    return FittedDetector(scorer=scorer, input_spec=input_spec_for(config), calibrator=calibrator,
                          bandwidth=bandwidth, heatmap_low=float(np.median(oof_patch_scores)),
                          map_shape=(int(h), int(w)), backbone=config.model.backbone, figures=figures, chain=chain,
                          calibration_method=method, decoder=decoder, config=config)


def fit_global_branch(rows: np.ndarray, fold_of: np.ndarray, oof_image_scores: np.ndarray,
                      extra: np.ndarray, extra_fold: np.ndarray) -> tuple[GlobalBranch, np.ndarray]:
    """The global branch on the density's rows ``(N, P, d)`` of all training images (and ``extra`` rows
    ``(B, P, d)`` of their benign copies, in folds ``extra_fold``), fused by their out-of-fold global and patch
    image scores ``(N,)``; returns it and the out-of-fold fused image scores ``(N,)``."""
    oof_global = out_of_fold_global(rows, fold_of, extra, extra_fold)
    fusion = Fusion.from_good(oof_global, oof_image_scores)
    branch = GlobalBranch(GlobalGaussian().fit(descriptors(np.concatenate([rows, extra]))), fusion).eval()
    return branch, oof_image_scores + fusion.added(oof_global)


def _fit_decoder(rows: np.ndarray, map_shape: tuple[int, int], images: np.ndarray | None, rep, state_level: int,
                 config: TrainConfig, say: Progress) -> DecoderExport:
    """Train the pixel decoder on level-1 rows ``(N, P, D)``; with ``rep`` (the stack whose chain runs on
    ``state_level`` states), also pick the augment start maps in the chain's state space."""
    if images is None or images.shape[0] != rows.shape[0]:
        raise ValueError("decoder.enabled needs the training images the maps came from (fit_detector passes them)")
    d = config.decoder
    spec = input_spec_for(config)
    say(f"training the pixel decoder on {rows.shape[0]} images ({d.epochs} epochs)")
    module, figures = fit_pixel_decoder(rows, map_shape, display_images(images, spec.mean, spec.std), d.width,
                                        d.epochs, d.learning_rate, d.batch_size, d.input_noise, config.seed, say)
    out = DecoderExport(module=module, figures=figures)
    if rep is not None:
        n, p, dim = rows.shape
        idx = np.unique(np.linspace(0, n - 1, min(n, d.start_images)).round().astype(np.int64))
        out.start_maps = rep.encode(rows[idx].reshape(-1, dim), state_level).reshape(len(idx), p, -1)
        out.start_images, out.state_mean, out.state_std = idx, rep.mean_.copy(), rep.std_.copy()
        out.state_level = int(state_level)
        out.down = [tuple(t.detach().numpy().astype(np.float32).copy() for t in (layer.W, layer.c, layer.b))
                    for layer in reversed(rep.stack_.layers[: state_level - 1])]
    return out


@torch.no_grad()
def score_maps(scorer: PatchDensityScorer, maps: np.ndarray, block: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """The scorer's head (encoder, position code, density, image score, global branch) on level-1 maps
    ``(N, D, h, w)``, ``block`` images at a time: image scores ``float32 (N,)`` and patch scores ``(N, h, w)``,
    equal to running the whole graph on the images."""
    n, d, h, w = maps.shape
    scores, patches = [], []
    for i in range(0, n, block):
        z = scorer.encoder(torch.from_numpy(to_patches(maps[i:i + block]).reshape(-1, d)))
        score, patch, _rows = scorer.head(z.reshape(-1, h * w, z.shape[1]))
        scores.append(score.numpy())
        patches.append(patch.numpy().reshape(-1, h, w))
    return np.concatenate(scores), np.concatenate(patches)
