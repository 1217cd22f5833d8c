"""Few-shot on-device adaptation of a bundle's density: onnxruntime + numpy only (no torch, no onnx).

``adapt_bundle(bundle, good_paths, out)`` writes a new bundle version in which the Parzen bank also
covers a few new good images (a new light, focus or region of the part):

1. **Encode**: the bundle's own graph gives the new images' patches in the density's space
   (``patch_features``, ``(n, h*w, d)``).
2. **Chain samples** (optional, chain bundles only; ``chain_samples > 0``): top-layer CAE chains
   started from the new patches (their codes decoded to the chain's state level by
   ``chain_decode.onnx``), run with ``chain_step.onnx``, and the recorded states encoded back to the
   density's level by ``chain_encode.onnx``. This needs the chain's samples to live at the density's
   level (a density in the stack's top layer). Bundles without a stack (the default) have no chain,
   and a level-1 density under a stack (kept for ``linewatch augment``) has one whose codes are not
   the density's: both adapt with the new codes only.
3. **New bank of the same size M** (the graph fixes M): the weighted greedy k-centre coreset of
   :mod:`.density` over the union of the parent's centres and the new rows. Each parent centre
   carries the number of training patches it stood for (``weight x N_parent``, where ``N_parent`` =
   training images x patches per image + chain samples, as the training coreset's coverage weights
   were made); each new patch (or chain sample) counts as one training patch. Every row not kept
   hands its mass to its nearest kept centre, and the weights are the masses normalised. The
   bandwidth stays the parent's (it is baked into the graph).
4. **Re-calibration** (see :func:`adapt_bundle` for exactly what holds):

   * with ``calibration_paths`` (good images of the conditions the line will see, not the adaptation
     images): split-conformal on their scores under the adapted density (exact, as in training);
   * without: the threshold is the larger of (a) the parent's calibration scores shifted by how much
     the adapted density raised the score at the parent's centres (each scored as a held-out patch;
     :func:`parent_score_shift`), taken at the parent's conformal rank, and (b) the largest leave-one-image-out score of the new
     images (image ``j`` scored under a bank rebuilt without image ``j``).

5. **Write**: ``density.bin`` is rewritten, every other file is copied byte for byte, and the
   manifest records the parent in ``lineage`` and the new calibration; :func:`write_bundle` writes
   it to a temporary sibling folder renamed into place, so no partial bundle is ever visible.
"""
from __future__ import annotations

import copy
import hashlib
import math
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnxruntime as ort

from .bundle import Bundle, BundleError, Scoring, write_bundle
from .calibration import ConformalCalibrator
from .density import PROJECTION_DIM, image_scores, log_density, weighted_kcenter
from .density_params import DENSITY_FILE, DensityParams, read_density_params
from .inspector import Inspector
from .preprocess import ImageError, decode_image, preprocess

Progress = Callable[[str], None]

SPLIT_METHOD = "split-conformal after adaptation (image scores of given good calibration images, adapted model)"
SHIFTED_METHOD = ("adapted without calibration images: parent calibration scores shifted by the adapted density's "
                  "score change at the parent's centres, and leave-one-image-out scores of the adaptation images; "
                  "threshold = max(shifted parent threshold, largest leave-one-out score)")
SHIFT_Z = 1.645          # one-sided 95% normal quantile
# Test hook for the kill-safety test: seconds to sleep after the new bundle is complete in its temporary
# folder and before it is renamed into place.
SLEEP_BEFORE_RENAME_ENV = "LINEWATCH_ADAPT_SLEEP_BEFORE_RENAME"


# ---------------------------------------------------------------------------------------------------
# The bundle's density (the density itself: :mod:`.density`)


def read_bundle_density(bundle: Bundle) -> DensityParams:
    """The bundle's density parameters from ``density.bin``; :class:`BundleError` for bundles made before it existed."""
    layout = bundle.manifest.density.get("parameters")
    if not layout or DENSITY_FILE not in bundle.manifest.files:
        raise BundleError(f"{bundle.path}: the bundle has no {DENSITY_FILE} (made by an older linewatch), so its "
                          "density cannot be adapted; re-export it with this linewatch (`linewatch export "
                          "--checkpoint CKPT --out BUNDLE`)")
    return read_density_params(bundle.file(layout["file"]).read_bytes(), layout, str(bundle.file(layout["file"])))


def parent_patch_count(bundle: Bundle) -> float:
    """How many training patches the parent's bank stands for: images x patches per image + chain samples
    (plus patches added by earlier adaptations, recorded in the lineage)."""
    m = bundle.manifest
    previous = m.lineage.get("adapted_with", {}).get("bank_patches")
    if previous:
        return float(previous)
    n_images = int(m.training_data.get("n_images") or 0)
    if n_images <= 0:
        raise BundleError(f"{bundle.path}: the manifest does not say how many images the bank was made from "
                          "(training_data.n_images); re-export it with this linewatch")
    return float(n_images * m.model.map_height * m.model.map_width + int(m.density.get("chain_samples") or 0))


def scoring_of(bundle: Bundle) -> Scoring:
    """The bundle's scoring parameters; :class:`BundleError` when its manifest has none to give."""
    if bundle.manifest.scoring is None:
        raise BundleError(f"{bundle.path}: the manifest has no scoring section (nor a lineage.config to derive it "
                          "from), so adaptation cannot re-score images as the graph does; re-export it with this "
                          "linewatch")
    if bundle.manifest.scoring.global_branch:
        # the branch's Gaussian lives in the graph and would not follow the new bank: its calibration would be wrong
        raise BundleError(f"{bundle.path}: this bundle's score includes a global branch (scoring.global_branch), "
                          "which adapt cannot re-fit on the station; fold the new images in with `linewatch "
                          "retrain`, or train with autoconfig.enabled: false and scoring.global_branch: false")
    return bundle.manifest.scoring


# ---------------------------------------------------------------------------------------------------
# Encoding images and running chains


@dataclass
class Encoded:
    """Patch codes ``float32 (n, h*w, d)`` of the readable images, their paths, and what was skipped."""

    codes: np.ndarray
    paths: list[Path]
    skipped: list[str]
    fingerprint: str


def encode_images(inspector: Inspector, paths: list[Path], batch_size: int = 8) -> Encoded:
    """Decode, preprocess and encode ``paths`` with the bundle's graph; unreadable files are skipped and reported.

    ``fingerprint`` is ``"sha256:"`` over the sha256 of each used file's bytes, in path order.
    """
    arrays, used, skipped = [], [], []
    h = hashlib.sha256()
    for p in sorted(Path(q) for q in paths):
        try:
            data = p.read_bytes()
            arrays.append(preprocess(decode_image(data, str(p), inspector.max_pixels), inspector.spec))
        except OSError as exc:
            skipped.append(f"{p}: cannot be read ({exc.strerror or exc})")
            continue
        except ImageError as exc:
            skipped.append(str(exc))
            continue
        used.append(p)
        h.update(hashlib.sha256(data).hexdigest().encode() + b"\n")
    if not arrays:
        codes = np.empty((0, 0, 0), dtype=np.float32)
    else:
        x = np.stack(arrays)
        codes = np.concatenate([inspector.patch_features(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
    return Encoded(codes=codes, paths=used, skipped=skipped, fingerprint="sha256:" + h.hexdigest())


class ChainCodec:
    """The bundle's ``chain_decode.onnx`` (density-level code -> chain state) and ``chain_encode.onnx``
    (chain state -> density-level code), written by the exporter next to ``chain_step.onnx``."""

    def __init__(self, bundle: Bundle, threads: int = 0):
        spec = bundle.manifest.chain
        if not spec.get("encode_file") or not spec.get("decode_file"):
            raise BundleError(f"{bundle.path}: the bundle's chain has no encode/decode graphs (made by an older "
                              "linewatch), so chains cannot start from new codes; re-export it with this linewatch")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        self.spec = spec
        self.encoder = ort.InferenceSession(str(bundle.file(spec["encode_file"])), opts, providers=["CPUExecutionProvider"])
        self.decoder = ort.InferenceSession(str(bundle.file(spec["decode_file"])), opts, providers=["CPUExecutionProvider"])

    def encode(self, states: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(states, dtype=np.float32)
        return self.encoder.run(None, {self.encoder.get_inputs()[0].name: x})[0]

    def decode(self, codes: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(codes, dtype=np.float32)
        return self.decoder.run(None, {self.decoder.get_inputs()[0].name: x})[0]


def chain_samples_from(bundle: Bundle, codes: np.ndarray, n_samples: int, n_chains: int = 64, seed: int = 0,
                       threads: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Top-layer chain samples started from random patches of ``codes`` ``(n, h*w, d)``.

    Returns samples ``float32 (n_samples, d)`` in the density's space and, for each, the index of the
    image whose patch started its chain ``int64 (n_samples,)``.
    """
    from .chain import ChainRunner

    runner, codec = ChainRunner(bundle, threads), ChainCodec(bundle, threads)
    n, p, d = codes.shape
    n_chains = max(1, min(n_chains, n_samples))
    rng = np.random.default_rng(seed)
    pick = rng.choice(n * p, n_chains, replace=n * p < n_chains)
    start = codec.decode(codes.reshape(-1, d)[pick])
    states = runner.run(n_samples, n_chains=n_chains, seed=seed, start=start)
    source = np.tile(pick // p, -(-n_samples // n_chains))[:n_samples]      # run() returns step-major order
    return codec.encode(states).astype(np.float32), source.astype(np.int64)


# ---------------------------------------------------------------------------------------------------
# Adaptation


@dataclass
class AdaptedBank:
    params: DensityParams
    kept_parent: int          # parent centres kept
    kept_new: int             # new rows (patches + chain samples) kept
    rows: np.ndarray          # int64 (M,): which row of [parent bank; new rows] each centre is


def adapted_bank(parent: DensityParams, parent_patches: float, new_rows: np.ndarray, seed: int = 0,
                 projection_dim: int = PROJECTION_DIM) -> AdaptedBank:
    """The parent bank ``(M, d)`` with masses ``w x parent_patches`` and ``new_rows`` ``(K, d)`` of mass 1
    each -> a bank of the same ``M`` (see the module docstring)."""
    bank = parent.bank
    m = bank.shape[0]
    x = np.concatenate([bank, np.asarray(new_rows, dtype=np.float32).reshape(-1, bank.shape[1])])
    mass = np.concatenate([np.exp(parent.log_weights) * parent_patches, np.ones(x.shape[0] - m)])
    idx, w = weighted_kcenter(x, mass, m, projection_dim, seed)
    if idx.size < m:   # fewer rows than M (cannot happen: the parent alone has M); keep the graph's shape
        raise ValueError(f"the adapted bank has {idx.size} rows, the graph needs {m}")
    return AdaptedBank(DensityParams.from_bank(x[idx], w, parent.c), int(np.sum(idx < m)), int(np.sum(idx >= m)), idx)


def score_change_at_parent_centres(parent: DensityParams, adapted: AdaptedBank) -> np.ndarray:
    """``float64 (M,)``: how much adaptation raises the patch score (nats) at each parent centre, the centre
    scored as a held-out patch (its own kernel left out of both densities; a dropped centre's mass now
    sits on its nearest kept neighbour)."""
    m = parent.kernel.shape[1]
    own_in_adapted = np.full(m, -1, dtype=np.int64)
    kept = np.flatnonzero(adapted.rows < m)
    own_in_adapted[adapted.rows[kept]] = kept
    bank = parent.bank
    return (log_density(bank, parent, exclude=np.arange(m)) -
            log_density(bank, adapted.params, exclude=own_in_adapted))


def parent_score_shift(change: np.ndarray, top_k: int) -> float:
    """How much to raise the parent's calibration (image) scores: an image score is the mean of ``top_k`` patch
    scores, so its change is modelled as the mean of ``top_k`` independent draws of the per-centre ``change``;
    the shift is that mean's one-sided 95% upper bound (normal approximation), and never negative."""
    change = np.asarray(change, dtype=np.float64)
    return max(0.0, float(change.mean() + SHIFT_Z * change.std() / math.sqrt(max(1, top_k))))


def _calibrate_with_images(params: DensityParams, codes: np.ndarray, top_k: int, alpha: float
                           ) -> tuple[ConformalCalibrator, np.ndarray]:
    n, p, d = codes.shape
    scores = image_scores(-log_density(codes.reshape(-1, d), params).reshape(n, p), top_k)
    return ConformalCalibrator(alpha).fit(scores), scores


def adapt_bundle(bundle: str | os.PathLike | Bundle, good_paths: list[str | os.PathLike], out: str | os.PathLike,
                 chain_samples: int = 0, calibration_paths: list[str | os.PathLike] | None = None,
                 overwrite: bool = False, seed: int = 0, threads: int = 0, batch_size: int = 8,
                 progress: Progress | None = None) -> tuple[Bundle, dict[str, Any]]:
    """Adapt ``bundle``'s density to the good images ``good_paths`` and write the new version to ``out``.

    Args:
        chain_samples: top-layer chain samples to add (chain bundles only; 0 = the new codes only).
        calibration_paths: optional good images (not the adaptation images) that re-set the threshold
            exactly (split-conformal under the adapted density); at least ``1/alpha - 1`` reach the target.
        overwrite: replace an existing ``out`` (the swap is atomic either way).

    What the threshold guarantees:

    * with ``calibration_paths``: a false-alarm rate <= the target on good images exchangeable with
      them, exactly as a bundle trained with ``validation/good`` (if there are enough of them);
    * without: no finite-sample guarantee remains for the target. For images like the parent's
      calibration images the threshold is the parent's conformal quantile after a shift that bounds
      (one-sided 95%, normal approximation) how much adaptation raised image scores made of patches like
      the parent's centres: a heuristic, checked in ``bench/results/adapt.md``. For images like the ``n`` adaptation images,
      the threshold is at least their largest leave-one-out score, which bounds the false-alarm rate
      of an exchangeable new image by ``1 / (n + 1)`` only (17% with 5 images). Pass
      ``calibration_paths`` (>= 99 good images of the new condition for a 1% target) to restore the guarantee.

    Returns the written bundle and a JSON-ready summary. Raises ``ValueError`` / :class:`BundleError`
    with what to do (no readable images, bundle without ``density.bin``, chain samples on a level-1 bundle).
    """
    say = progress or (lambda _m: None)
    t0 = time.perf_counter()
    parent = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: already exists; choose another --out or pass --overwrite")
    if Path(out).resolve() == parent.path.resolve():
        raise ValueError(f"{out}: is the parent bundle itself; write the adapted bundle to a new folder")
    scoring = scoring_of(parent)
    density_level = scoring.density_level
    if chain_samples and not parent.manifest.chain:
        raise ValueError(f"{parent.path}: this bundle has no chain (density level "
                         f"{density_level}); adapt it with --chain-samples 0 (codes only)")
    if chain_samples and int(parent.manifest.chain.get("sample_level", density_level)) != density_level:
        raise ValueError(f"{parent.path}: this bundle's chain samples live at stack level "
                         f"{parent.manifest.chain['sample_level']}, its density at level {density_level} (the chain "
                         "is there for `linewatch augment`); adapt it with --chain-samples 0 (codes only)")
    params = read_bundle_density(parent)
    m = parent.manifest
    alpha = float(m.decision.target_false_alarm_rate)
    top_k = scoring.top_k
    n_parent = parent_patch_count(parent)
    insp = Inspector(parent, threads=threads)

    say(f"encoding {len(good_paths)} adaptation images with {parent.path}")
    enc = encode_images(insp, [Path(p) for p in good_paths], batch_size)
    for s in enc.skipped:
        say(f"skipped: {s}")
    if not enc.paths:
        raise ValueError(f"none of the {len(good_paths)} adaptation images could be read; give good images of the "
                         "new condition (PNG, JPEG, BMP or TIFF)")
    codes = enc.codes
    n, p, d = codes.shape
    rows, source = codes.reshape(-1, d), np.repeat(np.arange(n), p)
    k_chain = 0
    if chain_samples:
        say(f"running top-layer chains from the new codes for {chain_samples} samples")
        samples, src = chain_samples_from(parent, codes, int(chain_samples), seed=seed, threads=threads)
        rows, source = np.concatenate([rows, samples]), np.concatenate([source, src])
        k_chain = int(samples.shape[0])
    say(f"new bank of {params.kernel.shape[1]} centres from {params.kernel.shape[1]} parent centres "
        f"({n_parent:.0f} patches) + {n * p} new patches + {k_chain} chain samples")
    adapted = adapted_bank(params, n_parent, rows, seed)

    parent_cal = np.asarray(m.calibration.scores, dtype=np.float64)
    figures: dict[str, Any] = {"parent_threshold": float(m.decision.threshold), "parent_method": m.calibration.method}
    if calibration_paths:
        cal = encode_images(insp, [Path(q) for q in calibration_paths], batch_size)
        for s in cal.skipped:
            say(f"skipped (calibration): {s}")
        if not cal.paths:
            raise ValueError("none of the calibration images could be read")
        calibrator, cal_scores = _calibrate_with_images(adapted.params, cal.codes, top_k, alpha)
        method, target_reachable = SPLIT_METHOD, calibrator.target_reachable_
        figures.update({"calibration_images": len(cal.paths), "calibration_fingerprint": cal.fingerprint})
        say(f"threshold from {len(cal.paths)} calibration images under the adapted density")
    else:
        # (a) how much adaptation raised the score at the parent's centres
        change = score_change_at_parent_centres(params, adapted)
        shift = parent_score_shift(change, top_k)
        shifted = parent_cal + shift
        parent_side = ConformalCalibrator(alpha).fit(shifted)
        # (b) leave-one-image-out scores of the new images
        loo = np.empty(n)
        for j in range(n):
            keep = source != j
            bank_j = adapted_bank(params, n_parent, rows[keep], seed).params
            loo[j] = image_scores(-log_density(codes[j], bank_j)[None, :], top_k)[0]
        say(f"leave-one-out scores of the {n} new images: {np.round(loo, 2).tolist()}; parent scores shifted by "
            f"{shift:.3f} nats")
        cal_scores = np.concatenate([shifted, loo])
        calibrator = ConformalCalibrator(alpha).fit(cal_scores)
        calibrator.threshold_ = max(parent_side.threshold_, float(loo.max()))
        method, target_reachable = SHIFTED_METHOD, False
        figures.update({"parent_score_shift": shift,
                        "shift_rule": "mean + 1.645 std / sqrt(top_k) of the change at the parent's centres",
                        "change_at_parent_centres": {"mean": float(change.mean()), "std": float(change.std()),
                                                     "median": float(np.median(change)), "max": float(change.max())},
                        "leave_one_out_scores": [float(v) for v in loo],
                        "shifted_parent_threshold": parent_side.threshold_,
                        "new_condition_false_alarm_bound": 1.0 / (n + 1)})

    manifest = copy.deepcopy(m)
    manifest.created_utc = datetime.now(timezone.utc).isoformat(timespec="seconds")
    manifest.decision.threshold = float(calibrator.threshold_)
    manifest.calibration.method = method
    manifest.calibration.scores = [float(v) for v in np.sort(cal_scores)]
    manifest.calibration.target_reachable = bool(target_reachable)
    manifest.calibration.false_alarm_rate_on_calibration = calibrator.false_alarm_rate(cal_scores)
    manifest.calibration.folds = 0
    manifest.density["parameters"] = adapted.params.layout()
    seconds = round(time.perf_counter() - t0, 2)
    ancestors = [a for a in [m.lineage.get("parent"), *m.lineage.get("ancestors", [])] if a]
    manifest.lineage = {**m.lineage, "parent": parent.id, "parent_path": str(parent.path.resolve()),
                        "ancestors": ancestors,   # earlier bundle ids, nearest first (adapting an adapted bundle)
                        "adapted_with": {"images": n, "fingerprint": enc.fingerprint, "chain_samples": k_chain,
                                         "skipped": enc.skipped, "patches": int(n * p),
                                         "bank_patches": float(n_parent + n * p + k_chain),
                                         "kept_parent_centres": adapted.kept_parent,
                                         "kept_new_centres": adapted.kept_new,
                                         "calibration": figures, "seconds": seconds}}
    files: dict[str, Any] = {name: parent.file(name) for name in m.files}
    files[DENSITY_FILE] = adapted.params.to_bytes()
    delay = float(os.environ.get(SLEEP_BEFORE_RENAME_ENV) or 0)
    new = write_bundle(out, manifest, files, overwrite=overwrite,
                       **({"before_rename": lambda: time.sleep(delay)} if delay else {}))
    summary = {"bundle": str(out), "bundle_id": new.id, "parent": parent.id, "images": n, "skipped": enc.skipped,
               "patches_added": int(n * p), "chain_samples": k_chain,
               "chain": "chain samples added" if k_chain else
                        ("no chain in this bundle (level 1): new codes only" if not m.chain else "codes only"),
               "kept_parent_centres": adapted.kept_parent, "kept_new_centres": adapted.kept_new,
               "threshold": float(calibrator.threshold_), "parent_threshold": float(m.decision.threshold),
               "calibration_method": method, "target_reachable": bool(target_reachable),
               "seconds": round(time.perf_counter() - t0, 2)}
    return new, summary
