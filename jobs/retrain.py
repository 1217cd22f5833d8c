"""``linewatch retrain``: fold reviewed images into a new bundle, and write it only if it is not worse.

The job (run periodically, e.g. nightly):

1. **Inputs.** The current bundle (the *champion*; its training configuration is in its manifest,
   ``lineage.config``), the original data folder it was trained on (``--data``, same layouts as
   ``train``), and a verdict file from the review (:mod:`linewatch.jobs.verdicts`).
2. **Training set** = the original good training images + the images reviewers marked ``good``
   (false alarms), read where they are (nothing is copied into the data folder), less a held-out
   share of them (``holdout_reviewed``, chosen by content hash) and less any that are also evaluation
   images; + the reviewed images the parent itself was retrained with (its lineage lists them), so a
   periodic retrain keeps what earlier reviews taught unless a new verdict overrides one; + optional augmented samples (``augment``, needs a bundle with a pixel decoder). The
   threshold is calibrated as ``train`` does (on ``validation/good`` when the data has it).
3. **Evaluation set**, the same for both bundles and trained on by neither: the data's held-out good
   images (``test/good``; if there is none, ``validation/good``, on which the threshold was calibrated,
   so its false-alarm rate is biased towards the target) + confirmed defects (the data's ``test/<type>``
   images and the images reviewers marked ``defect``). Both bundles are scored by onnxruntime, as on
   the line. Reported separately: each bundle's false-alarm rate on the reviewed false alarms (all of
   them, and the held-out share the challenger did not train on).
4. **Gate.** The challenger is written only if its image AUROC >= the champion's - ``auroc_tolerance``
   and its false-alarm rate (at its own threshold) <= the champion's (at the champion's threshold),
   both on the evaluation set; otherwise :class:`GateRefused` is raised with both figures and nothing
   is written, unless ``force`` (then the manifest records that the gate was forced).
   ``auroc_tolerance`` defaults to 0.005, the int8 gate's limit: on a few hundred evaluation images
   AUROC moves by that much when a handful of good/defect pairs swap order, which is noise, not a
   regression; false alarms get no tolerance because they are what reviewers complain about.
5. **Lineage** in the new manifest: parent id and path, data fingerprints (sha256 over the sorted
   file hashes, and counts) of the original and the reviewed images, the verdict file's sha256, the
   comparison figures and the decision.

**Crash safety.** Everything is staged in a hidden sibling folder ``.OUT.retrain-<pid>`` and moved into
place by renames at the end (checkpoint, then bundle), so a reader never finds a partial bundle at
``OUT``; the inputs are only read. A later run removes the staging folders of dead runs and, if a run
was killed between moving the old ``OUT`` aside and the new one in (``--overwrite``), puts the old
bundle back first.
"""
from __future__ import annotations

import hashlib
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..runtime.bundle import Bundle, BundleError, dead_writer_pid, sha256_file, write_bundle
from ..runtime.inspector import Inspector
from ..training.checkpoint import default_checkpoint_path, make_checkpoint, save_checkpoint
from ..training.config import TrainConfig, config_from_stored
from ..training.data import DataError, Dataset, discover, fingerprint, load_images
from ..training.metrics import auroc
from .export import export_checkpoint
from .verdicts import VerdictError, VerdictSet, read_verdicts

AUROC_TOLERANCE = 0.005
HOLDOUT_REVIEWED = 0.2
ENGINES = ("local", "ray")
STAGING = ".{name}.retrain-{pid}"


class GateRefused(RuntimeError):
    """The challenger is worse than the champion; ``comparison`` holds both sets of figures."""

    def __init__(self, message: str, comparison: dict[str, Any]):
        super().__init__(message)
        self.comparison = comparison


@dataclass
class ScoredSet:
    """Scores of one image set under one bundle: ``scores`` ``(N,)`` nats, ``flagged`` bool ``(N,)``."""

    scores: np.ndarray
    flagged: np.ndarray
    ok: np.ndarray | None = None        # bool (N_paths,): which paths were scored


# ---------------------------------------------------------------- fingerprints and staging

def content_fingerprint(paths: list[Path]) -> dict[str, Any]:
    """``{"n_images", "sha256"}``: sha256 over the sorted sha256 of each file (independent of paths and order)."""
    h = hashlib.sha256()
    for digest in sorted(sha256_file(p) for p in paths):
        h.update(digest.encode() + b"\n")
    return {"n_images": len(paths), "sha256": h.hexdigest()}


def recover_interrupted(out: Path, say: Callable[[str], None]) -> None:
    """Clean up after retrain runs into ``out`` that were killed: restore a moved-aside old bundle when
    ``out`` is missing, then remove their staging folders. Live runs' folders are left alone."""
    prefix = f".{out.name}.retrain-"
    if not out.parent.is_dir():
        return
    for stage in sorted(out.parent.glob(prefix + "*")):
        pid = dead_writer_pid(stage, prefix)
        if pid is None:
            continue
        old = stage / "old"
        if not out.exists() and (old / "manifest.json").is_file():
            old.rename(out)
            say(f"recovered {out}: a killed retrain (pid {pid}) had moved it aside; it is back in place")
        shutil.rmtree(stage, ignore_errors=True)
        say(f"removed the staging folder of a killed retrain run: {stage}")


# ---------------------------------------------------------------- training

def fit_on_paths(paths: list[Path], groups: list[str], validation: list[Path], config: TrainConfig,
                 engine: str = "local", workers: int = 2, progress: Callable[[str], None] | None = None):
    """Fit a detector on the good images at ``paths`` (``groups``: one cross-fitting group per path).

    ``engine="local"``: decode and extract in this process (what ``train`` does); ``"ray"``: decode and
    extract level-1 features in ``workers`` Ray actors, then fit the density here. For a frozen backbone
    both give the same maps in the same order, hence the same detector. Returns
    ``(detector, used training paths, used validation paths, skipped-file messages)``.
    """
    import torch

    from ..training.features import extract, lite0_features_for
    from ..training.fit import fit_detector, fit_on_maps, input_spec_for

    say = progress or (lambda _m: None)
    spec = input_spec_for(config)
    group_of = dict(zip(paths, groups))
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    t0 = time.perf_counter()
    if engine == "ray":
        from .distributed import RayFeatureExtractor, ray_session

        with ray_session(num_cpus=None):
            extractor = RayFeatureExtractor(config, workers)
            maps, used, errors = extractor.maps(paths, say)
            val_maps, val_used = None, []
            if validation:
                val_maps, val_used, val_errors = extractor.maps(validation, say)
                errors = errors + val_errors
        features = lite0_features_for(config.model).eval()
    else:
        images, used, errors = load_images(paths, spec, _every(100, say, "loading"))
        val_images, val_used = None, []
        if validation:
            val_images, val_used, val_errors = load_images(validation, spec, _every(100, say, "validation"))
            errors = errors + val_errors
        if config.model.backbone != "lite0":      # features trained on the images: the plain fit
            det = fit_detector(images, config, say, [group_of[p] for p in used], val_images)
            return det, used, val_used, errors
        features = lite0_features_for(config.model).eval()
        maps = extract(features, images, config.batch_size, _every(8 * config.batch_size, say, "features"))
        val_maps = None if val_images is None else extract(features, val_images, config.batch_size)
    for e in errors:
        say(f"skipped: {e}")
    feature_seconds = time.perf_counter() - t0
    det = fit_on_maps(features, maps, config, say, [group_of[p] for p in used], val_maps)
    det.figures["feature_seconds"] = round(feature_seconds, 2)
    det.figures["fit_seconds"] = round(time.perf_counter() - t0, 2)
    return det, used, val_used, errors


def _every(k: int, say: Callable[[str], None], what: str) -> Callable[[int, int], None]:
    def report(i: int, n: int) -> None:
        if i == n or i % k == 0:
            say(f"{what}: {i}/{n} images")
    return report


# ---------------------------------------------------------------- evaluation

def score_with(inspector: Inspector, paths: list[Path], say: Callable[[str], None] | None = None) -> ScoredSet:
    """Score ``paths`` as the line would. An image that cannot be read is reported (``say``) and left out;
    ``ScoredSet.ok`` marks the paths that were scored."""
    scores, flagged, ok = [], [], []
    for v, _img, _map in inspector.inspect_paths(paths, batch_size=8):
        ok.append(v.error is None)
        if v.error is not None:
            if say:
                say(f"evaluation image skipped: {v.error}")
            continue
        scores.append(v.score)
        flagged.append(v.anomalous)
    return ScoredSet(np.asarray(scores, dtype=np.float64), np.asarray(flagged, dtype=bool), np.asarray(ok, dtype=bool))


def _rate(flags: np.ndarray) -> float | None:
    return float(flags.mean()) if flags.size else None


def _figures(bundle: Bundle, good: ScoredSet, defect: ScoredSet, reviewed: ScoredSet,
             reviewed_held_out: np.ndarray) -> dict[str, Any]:
    if not good.scores.size:
        raise DataError(f"none of the held-out good evaluation images could be scored by {bundle.path}")
    labels = np.r_[np.zeros(good.scores.size), np.ones(defect.scores.size)]
    a = auroc(labels, np.r_[good.scores, defect.scores]) if defect.scores.size else float("nan")
    return {
        "bundle_id": bundle.id, "path": str(bundle.path), "threshold": float(bundle.manifest.decision.threshold),
        "image_auroc": None if math.isnan(a) else round(a, 6),
        "false_alarm_rate": _rate(good.flagged), "false_alarms": int(good.flagged.sum()),
        "detection_rate": _rate(defect.flagged),
        "reviewed_false_alarm_rate": _rate(reviewed.flagged),
        "reviewed_held_out_false_alarm_rate": _rate(reviewed.flagged[reviewed_held_out[reviewed.ok]]),
    }


def gate(champion: dict[str, Any], challenger: dict[str, Any], tolerance: float) -> dict[str, Any]:
    """The decision: AUROC within ``tolerance`` (skipped, and said, without defects) and FAR not higher."""
    ca, cb = champion["image_auroc"], challenger["image_auroc"]
    auroc_ok = True if ca is None or cb is None else cb >= ca - tolerance
    far_ok = challenger["false_alarm_rate"] <= champion["false_alarm_rate"]
    reasons = []
    if ca is None:
        reasons.append("no confirmed defects in the evaluation set: AUROC not compared")
    elif not auroc_ok:
        reasons.append(f"image AUROC {cb:.4f} < champion {ca:.4f} - {tolerance:g}")
    if not far_ok:
        reasons.append(f"false-alarm rate {challenger['false_alarm_rate']:.4f} > champion "
                       f"{champion['false_alarm_rate']:.4f}")
    return {"auroc_tolerance": tolerance, "auroc_ok": bool(auroc_ok), "false_alarm_rate_ok": bool(far_ok),
            "passed": bool(auroc_ok and far_ok), "reasons": reasons}


def _eval_good(ds: Dataset) -> tuple[list[Path], str]:
    good = [t.path for t in ds.test if t.label == 0]
    if good:
        return good, "test/good"
    if ds.validation:
        return list(ds.validation), ("validation/good (no test/good: the threshold was calibrated on these "
                                     "images, so their false-alarm rate is biased towards the target)")
    raise DataError(f"{ds.root}: no held-out good images to compare the bundles on; add test/good (or "
                    "validation/good) images that neither bundle trains on")


def split_reviewed(paths: list[Path], fraction: float) -> tuple[list[Path], list[Path]]:
    """(trained, held out): about ``fraction`` of ``paths``, chosen by ranking the files' sha256
    (deterministic, independent of names and order), is held out of training."""
    ranked = sorted(paths, key=lambda p: sha256_file(p))
    held = {p for i, p in enumerate(ranked) if math.floor((i + 1) * fraction) > math.floor(i * fraction)}
    return [p for p in paths if p not in held], [p for p in paths if p in held]


def inherited_reviewed(parent: Bundle, vs: VerdictSet, exclude_hashes: set[str],
                       say: Callable[[str], None]) -> list[Path]:
    """The reviewed good images the parent was retrained with (its ``lineage.data.reviewed_good.paths``), so
    a periodic retrain keeps what earlier reviews taught: those that still exist, are not judged again in
    this verdict file (the new verdict wins) and are not in ``exclude_hashes`` (evaluation images, new ones)."""
    recorded = parent.manifest.lineage.get("data", {}).get("reviewed_good", {}).get("paths", [])
    judged = {v.path.resolve() for v in vs.verdicts}
    kept, gone = [], 0
    for s in recorded:
        p = Path(s)
        if not p.is_file():
            gone += 1
        elif p.resolve() not in judged and sha256_file(p) not in exclude_hashes:
            kept.append(p)
    if gone:
        say(f"note: {gone} reviewed image(s) the parent was retrained with no longer exist; not used")
    return kept


def _augmented(parent: Bundle, count: int, staging: Path, seed: int, say: Callable[[str], None]) -> list[Path]:
    """``count`` new good images from the parent's chain and pixel decoder, written as PNGs into
    ``staging``; none (with a note) when this linewatch or the bundle cannot augment."""
    try:
        from ..runtime.augment import Augmenter, write_png
    except ImportError:
        say("note: --augment skipped: this linewatch has no augmentation module (linewatch.runtime.augment)")
        return []
    try:
        samples = Augmenter(parent, threads=1).sample(count, seed=seed)
    except BundleError as exc:
        say(f"note: --augment skipped: {exc}")
        return []
    staging.mkdir(parents=True, exist_ok=True)
    out = []
    for i, img in enumerate(samples.images):
        p = staging / f"augmented_{i:05d}.png"
        write_png(p, img)
        out.append(p)
    say(f"augmentation: {len(out)} samples from the parent's chain")
    return out


# ---------------------------------------------------------------- the job

def run_retrain(bundle: str | os.PathLike, data: str | os.PathLike, verdicts: str | os.PathLike,
                out: str | os.PathLike, force: bool = False, any_bundle: bool = False, augment: int = 0,
                overwrite: bool = False, checkpoint: bool = True, engine: str = "local", workers: int = 2,
                auroc_tolerance: float = AUROC_TOLERANCE, holdout_reviewed: float = HOLDOUT_REVIEWED,
                progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Retrain ``bundle`` with the reviewed images and write the challenger to ``out`` if the gate
    passes (see the module docstring). Returns the comparison (what the manifest's lineage records).

    Raises :class:`GateRefused` (nothing written) when the challenger is worse and not ``force``;
    :class:`~linewatch.jobs.verdicts.VerdictError` for a bad verdict file or, unless ``any_bundle``,
    verdicts about another bundle than ``bundle``."""
    say = progress or (lambda _m: None)
    t0 = time.perf_counter()
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if not 0.0 <= holdout_reviewed < 1.0:
        raise ValueError(f"holdout_reviewed must be in [0, 1), got {holdout_reviewed}")
    out = Path(out)
    recover_interrupted(out, say)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: already exists; choose another --out or pass --overwrite")
    if checkpoint and default_checkpoint_path(out).exists() and not overwrite:
        raise FileExistsError(f"{default_checkpoint_path(out)}: a checkpoint already exists there; choose another "
                              "--out, or pass --overwrite")
    parent = Bundle.load(bundle)
    if "config" not in parent.manifest.lineage:
        raise BundleError(f"{parent.path}: the manifest has no lineage.config (training configuration); "
                          "retrain needs a bundle written by `linewatch train`")
    config = config_from_stored(parent.manifest.lineage["config"], where=f"{parent.path} (lineage.config)")

    vs = read_verdicts(verdicts)
    _check_bundles(vs, parent, any_bundle, say)
    for m in vs.missing:
        say(f"verdict skipped: {m}")
    if vs.replaced:
        say(f"note: {vs.replaced} verdict(s) replaced by a later verdict for the same image")

    ds = discover(data)
    eval_good, eval_good_name = _eval_good(ds)
    data_defects = [t.path for t in ds.test if t.label == 1]
    reviewed_defects = [v.path for v in vs.defect]
    eval_hashes = {sha256_file(p) for p in eval_good + data_defects + reviewed_defects}
    train_hashes = {sha256_file(p) for p in ds.train}
    reviewed_good, in_eval, already = [], 0, 0
    for v in vs.good:
        h = sha256_file(v.path)
        if h in eval_hashes:
            in_eval += 1
        elif h in train_hashes:
            already += 1
        else:
            reviewed_good.append(v.path)
    if in_eval:
        say(f"note: {in_eval} reviewed good image(s) are evaluation images ({eval_good_name}); not trained on")
    if already:
        say(f"note: {already} reviewed good image(s) are already training images")
    reviewed_train, reviewed_held = split_reviewed(reviewed_good, holdout_reviewed)
    inherited = inherited_reviewed(parent, vs, eval_hashes | train_hashes | {sha256_file(p) for p in reviewed_good},
                                   say)
    reviewed_train = inherited + reviewed_train
    say(f"verdicts: {len(vs.good)} good (false alarms), {len(vs.defect)} defect; training on "
        f"{len(reviewed_train)} reviewed good images ({len(inherited)} from the parent's retraining), "
        f"{len(reviewed_held)} held out for evaluation")

    staging = out.parent / STAGING.format(name=out.name, pid=os.getpid())
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        augmented = _augmented(parent, augment, staging / "augmented", config.seed, say) if augment > 0 else []
        paths = list(ds.train) + reviewed_train + augmented
        groups = ds.groups(list(ds.train)) + [f"reviewed:{p.parent.name}" for p in reviewed_train] + \
            ["augmented"] * len(augmented)
        say(f"training on {len(paths)} good images ({len(ds.train)} original + {len(reviewed_train)} reviewed + "
            f"{len(augmented)} augmented), engine {engine}")
        det, used, val_used, errors = fit_on_paths(paths, groups, list(ds.validation), config, engine, workers, say)
        original, reviewed_set, augmented_set = set(ds.train), set(reviewed_train), set(augmented)
        original_used = [p for p in used if p in original]
        training_data = {"source": str(ds.root), "layout": ds.layout, "n_images": len(used),
                         "fingerprint": fingerprint(original_used, ds.root), "skipped": errors,
                         "reviewed_good": sum(p in reviewed_set for p in used),
                         "augmented": sum(p in augmented_set for p in used)}
        if val_used:
            training_data["validation"] = {"n_images": len(val_used), "fingerprint": fingerprint(val_used, ds.root)}
        ckpt = make_checkpoint(det, config, ds, used, val_used, training_data)
        say("exporting the challenger")
        challenger, _ = export_checkpoint(ckpt, staging / "challenger", config.export.int8, False, say)

        say(f"evaluating champion and challenger on {len(eval_good)} good ({eval_good_name}) and "
            f"{len(data_defects) + len(reviewed_defects)} defective images")
        reviewed_all = reviewed_train + reviewed_held
        held_mask = np.r_[np.zeros(len(reviewed_train), bool), np.ones(len(reviewed_held), bool)]
        figures = {}
        for name, b in (("champion", parent), ("challenger", challenger)):
            insp = Inspector(b, threads=config.threads or 0)
            note = say if name == "champion" else None            # report unreadable images once
            figures[name] = _figures(b, score_with(insp, eval_good, note),
                                     score_with(insp, data_defects + reviewed_defects, note),
                                     score_with(insp, reviewed_all, note), held_mask)
        decision = gate(figures["champion"], figures["challenger"], auroc_tolerance)
        decision["forced"] = bool(force and not decision["passed"])
        decision["decision"] = "written" if decision["passed"] else "forced" if force else "refused"
        comparison = {
            "evaluation": {"good": eval_good_name, "n_good": len(eval_good), "n_defect_data": len(data_defects),
                           "n_defect_reviewed": len(reviewed_defects), "n_reviewed_good": len(reviewed_all),
                           "n_reviewed_good_held_out": len(reviewed_held),
                           "note": "false_alarm_rate: evaluation good images at each bundle's own threshold; "
                                   "reviewed_false_alarm_rate: the images reviewers marked good (the challenger "
                                   "trained on all but the held-out share)"},
            "champion": figures["champion"],
            "challenger": {**figures["challenger"], "bundle_id": None, "path": str(out)},   # id: see the summary
            "gate": decision,
        }
        lineage = {
            "parent": {"id": parent.id, "path": str(parent.path.resolve()),
                       "created_utc": parent.manifest.created_utc},
            "config": config.to_dict(),
            "data": {"original": {**content_fingerprint(original_used), "path_fingerprint": training_data["fingerprint"],
                                  "same_as_parent": training_data["fingerprint"] ==
                                  parent.manifest.training_data.get("fingerprint")},
                     "reviewed_good": {**content_fingerprint(reviewed_train), "inherited": len(inherited),
                                       "paths": [str(p.resolve()) for p in reviewed_train]},
                     "reviewed_good_held_out": content_fingerprint(reviewed_held),
                     "reviewed_defect": content_fingerprint(reviewed_defects),
                     "augmented": len(augmented)},
            "verdicts": {"path": str(Path(verdicts).resolve()), "sha256": sha256_file(verdicts),
                         "n": len(vs.verdicts), "missing": len(vs.missing), "bundles": vs.bundles},
            "comparison": comparison,
            "engine": {"name": engine, "workers": workers if engine == "ray" else 1},
        }
        summary = {"out": str(out), **comparison}
        if not decision["passed"] and not force:
            c, h = figures["champion"], figures["challenger"]
            raise GateRefused(
                f"the challenger is worse than {parent.path} ({'; '.join(decision['reasons'])}): image AUROC "
                f"{_f(h['image_auroc'])} vs champion {_f(c['image_auroc'])}, false-alarm rate "
                f"{_f(h['false_alarm_rate'])} vs {_f(c['false_alarm_rate'])} on {eval_good_name}; "
                f"{out} was not written (--force writes it anyway)", summary)
        if decision["forced"]:
            say(f"warning: gate failed ({'; '.join(decision['reasons'])}); writing anyway because of --force")
        ckpt_path = default_checkpoint_path(out) if checkpoint else None
        lineage["checkpoint"] = str(ckpt_path) if ckpt_path else None
        manifest = challenger.manifest
        manifest.lineage = lineage
        final = write_bundle(staging / "final", manifest,
                             {name: challenger.path / name for name in challenger.manifest.files})
        if ckpt_path is not None:
            save_checkpoint(ckpt, staging / "ckpt")
        _move_into_place(staging, out, ckpt_path)
        summary["challenger"]["bundle_id"] = final.id
        summary["checkpoint"] = str(ckpt_path) if ckpt_path else None
        summary["seconds"] = round(time.perf_counter() - t0, 1)
        say(f"bundle written: {out} ({decision['decision']}; {summary['seconds']} s)")
        return summary
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _check_bundles(vs: VerdictSet, parent: Bundle, any_bundle: bool, say: Callable[[str], None]) -> None:
    others = {b: n for b, n in vs.bundles.items() if b != parent.id}
    if not others:
        return
    listing = ", ".join(f"{b} ({n})" for b, n in sorted(others.items()))
    if not any_bundle:
        raise VerdictError(f"{vs.file}: {sum(others.values())} verdict(s) were made on other bundles ({listing}), "
                           f"not on {parent.path} ({parent.id}); pass the verdicts of this bundle's review, or "
                           "--any-bundle to use them anyway (labels are about images; their scores are not used)")
    say(f"warning: {sum(others.values())} verdict(s) were made on other bundles ({listing}); used (--any-bundle)")


def _move_into_place(staging: Path, out: Path, ckpt_path: Path | None) -> None:
    """Renames only: the checkpoint, then the old bundle aside and the new one in (see the module docstring)."""
    if ckpt_path is not None:
        os.replace(staging / "ckpt", ckpt_path)
    if out.exists():
        out.rename(staging / "old")
    (staging / "final").rename(out)
    _fsync_dir(out.parent)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
