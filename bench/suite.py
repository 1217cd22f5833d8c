"""Broad accuracy suite: linewatch as shipped against baselines on the suite's categories, one run.

Data: ``bench/suite_data.py`` (categories split into a DEV and a CONFIRM half; each with train/good/<group>,
validation/good, test/good, test/<defect> + ground_truth, shifted/good). Rows, all fitted on good images:

1. ``linewatch default``: ``run_train`` with no configuration on a view of the category without
   validation/ (so the bundle's threshold is the cross-fitted one), then ``run_inspection`` (what
   ``linewatch inspect`` runs) on test/, shifted/good and validation/good;
2. ``linewatch configured``: the same with self-configuration off (the configured settings as written), and
   ``linewatch earlier default``: the previous release's default (whitened 0.05, no benign copies);
3. kNN patch distance on Lite0 strides 8+16 (PatchCore-like, every training patch kept);
4. a Gaussian per map position on the default stride-16 maps (PaDiM-like);
5. colour histogram + ECOD, and image statistics + IsolationForest (``bench/global_baselines.py``);
6. anomalib PatchCore and PaDiM through the peer env (``bench/peers``), when it exists (with ``--quick``
   only when ``--peer-models`` names them).

Metrics per (method, category): image AUROC (test/good against every defect), AUROC per defect source
(``ds-*``: defect-synthesis, ``own-*``: own drawing, ``other-digit``), false-alarm rates on test/good (iid)
and shifted/good at the target (1 %) with the threshold found without validation images (the bundle's
for linewatch, 5-fold cross-fitted conformal for the baselines) and with them (split-conformal on
validation/good scores). Writes ``suite.md`` (``bench/suite_report.py``) and ``suite.csv``.

``--quick`` (about 7 min on 2 idle cores, without anomalib) is a smoke run on a smaller spec; the full
spec takes hours, most of it in the exhaustive kNN (training patches x scored patches distances).

    python bench/suite.py [--quick] [--no-peers] [--only NAMES] [--out-md PATH] [--data-root DIR] [--threads N]
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from accuracy import PEER_PYTHON, Case, FeatureCache, run_peers  # noqa: E402
from baselines import KnnPatchDistance, PositionGaussian  # noqa: E402
from global_baselines import ColourHistogramECOD, ImageStatsIsolationForest  # noqa: E402
from suite_data import CATEGORIES, FULL, QUICK, build_suite  # noqa: E402
from suite_report import DEFAULT, EARLIER, FIXED, GLOBAL_HIST, GLOBAL_STATS, KNN, PADIM, write_csv, write_markdown  # noqa: E402

from linewatch.cli import resolve_batch_size  # noqa: E402
from linewatch.jobs.train import run_train  # noqa: E402
from linewatch.runtime.calibration import ConformalCalibrator  # noqa: E402
from linewatch.runtime.inspect_run import RESULTS_NAME, read_results, run_inspection  # noqa: E402
from linewatch.runtime.inspector import Inspector  # noqa: E402
from linewatch.runtime.preprocess import read_image  # noqa: E402
from linewatch.runtime.sources import list_images  # noqa: E402
from linewatch.training.config import TrainConfig, config_from_dict  # noqa: E402
from linewatch.training.data import discover  # noqa: E402
from linewatch.training.fit import assign_folds  # noqa: E402
from linewatch.training.metrics import auroc  # noqa: E402

TARGET = TrainConfig().calibration.target_false_alarm_rate
FOLDS = 5                     # cross-fitting folds of the baselines' no-validation thresholds
PEER_MODELS = ("patchcore", "padim")
DATA_ROOT = Path("/tmp/lw-suite-data")
# --quick: suite_data's QUICK with fewer images, so that every row on all 14 categories fits in 10 min on
# 2 cores (with QUICK itself one category took 4 min here: the self-configuring train and the exhaustive
# kNN, whose cost is training patches x scored patches, dominate)
QUICK_RUN = dataclasses.replace(QUICK, n_train=30, n_validation=30, n_test_good=50, n_shifted=30, n_per_defect=4)
SPECS = {"quick": QUICK_RUN, "mid": QUICK, "full": FULL}
# the default of the previous release: fixed settings, sphering shrunk 0.05, no benign copies in the bank
EARLIER_CONFIG = config_from_dict({"autoconfig": {"enabled": False},
                                   "density": {"whiten_shrinkage": 0.05, "benign_copies": 0}})
# the two feature settings of the patch baselines, at linewatch's input (224 px RGB)
KNN_FEATURES = {"model": {"feature_strides": [8, 16], "patch_pool": 3, "lite0_blocks": 8}}
PADIM_FEATURES = {"model": {"feature_strides": [16], "patch_pool": 3, "lite0_blocks": 8}}


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------
# Categories and per-method scores


@dataclass
class Category:
    """One suite category as every method sees it (paths as listed by ``linewatch.training.data``)."""

    name: str
    half: str                        # "dev" or "confirm"
    family: str
    folder: Path
    train: list[Path]
    groups: list[str]                # cross-fitting group of each training image (its train/good/<group>)
    test: list[Path]
    types: np.ndarray                # str (T,): "good" or the defect folder name
    shifted: list[Path]
    validation: list[Path]

    @property
    def labels(self) -> np.ndarray:
        return self.types != "good"


def defect_source(defect: str) -> str:
    """``ds-*`` -> ``ds`` (defect-synthesis), ``own-*`` -> ``own`` (own drawing), else ``other``."""
    return "ds" if defect.startswith("ds-") else "own" if defect.startswith("own-") else "other"


def load_category(name: str, folder: Path) -> Category:
    info = CATEGORIES[name]
    ds = discover(folder)
    for sub in ("validation/good", "shifted/good"):
        if not (folder / sub).is_dir() or not list_images(folder / sub):
            raise SystemExit(f"{folder / sub}: missing or empty; rebuild the suite data (delete {folder})")
    return Category(name, info.half, info.family, Path(folder), ds.train, ds.groups(ds.train),
                    [t.path for t in ds.test], np.array([t.defect_type for t in ds.test]),
                    list_images(folder / "shifted" / "good"), ds.validation)


@dataclass
class Run:
    """One method on one category: image scores (higher = more anomalous) and its thresholds."""

    test: np.ndarray                 # (T,) on the category's test images, in Category.test order
    shifted: np.ndarray | None       # (S,) on shifted/good (None: the method did not score them)
    validation: np.ndarray | None    # (V,) on validation/good
    threshold_noval: float           # found without validation images
    fit_seconds: float
    score_seconds: float
    selection: str = ""              # the self-configuration's chosen candidate, if any
    note: str = ""
    flagged_test: np.ndarray | None = None   # bool (T,): the method's own decisions (anomalib)


def far(scores: np.ndarray | None, threshold: float) -> float:
    """Fraction of ``scores`` above ``threshold`` (NaN when there are none or no threshold)."""
    if scores is None or len(scores) == 0 or not np.isfinite(threshold):
        return float("nan")
    return float(np.mean(np.asarray(scores) > threshold))


def conformal(scores: np.ndarray | None) -> float:
    """Split-conformal threshold at the target on good-image ``scores`` (as train does with validation/good)."""
    if scores is None or len(scores) == 0:
        return float("nan")
    return ConformalCalibrator(TARGET).fit(scores).threshold_


def metrics(cat: Category, method: str, run: Run) -> dict:
    """The CSV row of one (method, category)."""
    y, s, good = cat.labels, run.test, ~cat.labels
    src = np.array([defect_source(t) for t in cat.types])
    thr_val = conformal(run.validation)
    row = {"method": method, "category": cat.name, "half": cat.half, "family": cat.family,
           "image_auroc": auroc(y, s)}
    for name in ("ds", "own", "other"):
        keep = good | (src == name)
        row[f"auroc_{name}"] = auroc(y[keep], s[keep]) if (keep & y).any() else float("nan")
    own = run.flagged_test
    iid_noval = float(own[good].mean()) if own is not None else far(s[good], run.threshold_noval)
    row.update(far_iid_noval=iid_noval, far_iid_val=far(s[good], thr_val),
               far_shifted_noval=far(run.shifted, run.threshold_noval), far_shifted_val=far(run.shifted, thr_val),
               threshold_noval=run.threshold_noval, threshold_val=thr_val,
               n_train=len(cat.train), n_test_good=int(good.sum()), n_defect=int(y.sum()),
               n_shifted=len(cat.shifted), n_validation=len(cat.validation),
               fit_seconds=run.fit_seconds, score_seconds=run.score_seconds, selection=run.selection, note=run.note)
    return row


# --------------------------------------------------------------------------------------------------
# linewatch as shipped: train -> bundle -> the inspect runtime


def training_view(folder: Path, view: Path) -> Path:
    """A folder of symlinks to ``folder``'s train/, test/ and ground_truth/ (no validation/), so that
    ``run_train`` calibrates on cross-fitted training scores."""
    view.mkdir(parents=True)
    for sub in ("train", "test", "ground_truth"):
        if (folder / sub).exists():
            (view / sub).symlink_to((folder / sub).resolve(), target_is_directory=True)
    return view


def inspect_folder(inspector: Inspector, folder: Path, out: Path, threads: int) -> dict[str, float]:
    """``run_inspection`` of every image below ``folder`` -> score per source path (as listed)."""
    run_inspection(inspector, str(folder), out, batch_size=resolve_batch_size("auto", threads, 1), heatmaps=False)
    records = read_results(out / RESULTS_NAME)
    bad = [r for r in records if r.get("error")]
    if bad:
        raise RuntimeError(f"{folder}: {len(bad)} images failed to score, e.g. {bad[0]['error']}")
    return {r["source"]: float(r["score"]) for r in records}


def chosen_candidate(bundle, summary: dict) -> str:
    """The self-configuration's chosen candidate name ('' when the bundle records no selection)."""
    sel = getattr(bundle.manifest, "selection", None) or summary.get("selection") or {}
    if isinstance(sel, dict) and sel.get("chosen"):
        chosen = sel["chosen"]
        return chosen if isinstance(chosen, str) else str(chosen.get("name", chosen))
    return ""


def run_linewatch(cat: Category, config: TrainConfig | None, work: Path, threads: int, verbose: bool) -> Run:
    """Train a bundle as ``linewatch train`` does, then score through the station's runtime."""
    view = training_view(cat.folder, work / "view")
    t0 = time.perf_counter()
    bundle, summary = run_train(data=view, out=work / "bundle", config=config, checkpoint=False,
                                progress=(lambda m: say(f"      {m}")) if verbose else None)
    fit_s = time.perf_counter() - t0
    inspector = Inspector(bundle, threads=threads)
    t0 = time.perf_counter()
    scored = {}
    for i, folder in enumerate((cat.folder / "test", cat.folder / "shifted/good", cat.folder / "validation/good")):
        scored.update(inspect_folder(inspector, folder, work / f"inspect-{i}", threads))
    score_s = time.perf_counter() - t0
    pick = lambda paths: np.array([scored[str(p)] for p in paths])  # noqa: E731
    return Run(pick(cat.test), pick(cat.shifted), pick(cat.validation), inspector.threshold, fit_s, score_s,
               selection=chosen_candidate(bundle, summary))


def fixed_config() -> tuple[TrainConfig | None, bool]:
    """The earlier fixed default (self-configuration off) and whether it differs from the default at all."""
    differs = any(f.name == "autoconfig" for f in dataclasses.fields(TrainConfig))
    cfg = config_from_dict({"autoconfig": {"enabled": False}}) if differs else TrainConfig()
    m = cfg.model
    if (m.feature_strides, m.patch_pool, cfg.scoring.top_k, cfg.density.whiten, cfg.density.whiten_shrinkage,
            m.lite0_blocks) != ([16], 3, 20, True, 0.3, 8):
        raise SystemExit(f"linewatch's configured defaults no longer match the row label {FIXED!r}; "
                         "update suite_report.FIXED")
    return (cfg if differs else None), differs


# --------------------------------------------------------------------------------------------------
# Baselines: fit on training inputs, thresholds from cross-fitted training scores and from validation


class FusedKnnPatchDistance(KnnPatchDistance):
    """``KnnPatchDistance`` with the same distances, computed as ``min_b(|b|^2 - 2 q.b) + |q|^2`` with one
    fused GEMM per block: the elementwise passes of ``sq_dists`` over each (2048 x 8192) block cost more
    than the GEMM here, and this row dominates the suite's time. Equal to the parent's scores up to float
    rounding (checked on two test images of every category by :func:`check_knn`)."""

    @torch.no_grad()
    def score(self, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n, d, h, w = maps.shape
        z = torch.from_numpy(np.ascontiguousarray(maps.transpose(0, 2, 3, 1).reshape(-1, d)))
        best = torch.empty(z.shape[0])
        bank_t = self.bank_.T
        for i in range(0, z.shape[0], 2048):
            q = z[i:i + 2048]
            part = [torch.addmm(self.bank_sq_[j:j + 8192], q, bank_t[:, j:j + 8192], alpha=-2.0).amin(dim=1)
                    for j in range(0, self.bank_.shape[0], 8192)]
            best[i:i + 2048] = torch.stack(part).amin(dim=0) + (q * q).sum(dim=1)
        patch = best.clamp_min(0).sqrt().numpy().reshape(n, h, w)
        return patch.reshape(n, -1).max(axis=1), patch


def check_knn(model: FusedKnnPatchDistance, maps: np.ndarray) -> None:
    """The fused scores of a few images must equal ``KnnPatchDistance``'s own."""
    mine = model.score(maps[:2])[0]
    ref = KnnPatchDistance.score(model, maps[:2])[0]
    if not np.allclose(mine, ref, rtol=1e-4, atol=1e-4):
        raise RuntimeError(f"fused kNN scores {mine} differ from KnnPatchDistance's {ref}")


def take(x, idx: np.ndarray):
    return x[idx] if isinstance(x, np.ndarray) else [x[i] for i in idx]


def cross_fitted_scores(make: Callable, train, groups: list[str], folds: int = FOLDS) -> np.ndarray:
    """Out-of-fold scores ``(N,)`` of the training inputs: ``folds`` folds of whole groups (as linewatch's
    cross-fitting), each scored by a model fitted on the others; single images when there is one group."""
    n = len(train)
    if len(set(groups)) < 2:
        groups = [str(i) for i in range(n)]
    fold_of = assign_folds(groups, folds, seed=0)
    out = np.empty(n)
    for k in np.unique(fold_of):
        held = np.flatnonzero(fold_of == k)
        model = make().fit(take(train, np.flatnonzero(fold_of != k)))
        out[held] = model.score(take(train, held))[0]
    return out


def run_baseline(make: Callable, cat: Category, inputs: Callable[[list[Path]], object], prep_s: float = 0.0,
                 check: Callable | None = None) -> Run:
    """``make().fit`` on the training inputs; the no-validation threshold from cross-fitted training scores.
    ``inputs(paths)`` gives a method's inputs (maps or decoded images); ``prep_s``: their training-set cost;
    ``check(model, inputs)``: run on the fitted model and two test images' inputs (not timed)."""
    train = inputs(cat.train)
    t0 = time.perf_counter()
    oof = cross_fitted_scores(make, train, cat.groups)
    model = make().fit(train)
    fit_s = time.perf_counter() - t0 + prep_s
    if check is not None:
        check(model, inputs(cat.test[:2]))
    t0 = time.perf_counter()
    test, shifted, val = (np.asarray(model.score(inputs(p))[0], np.float64)
                          for p in (cat.test, cat.shifted, cat.validation))
    return Run(test, shifted, val, conformal(oof), fit_s, time.perf_counter() - t0)


class CategoryInputs:
    """Decoded images and Lite0 maps of one category, each computed once (kept only for the category)."""

    def __init__(self):
        self.caches = {name: FeatureCache(config_from_dict(over)) for name, over in
                       (("knn", KNN_FEATURES), ("padim", PADIM_FEATURES))}
        for cache in self.caches.values():      # same maps up to float rounding, 1.7x faster on this CPU
            cache.module = cache.module.to(memory_format=torch.channels_last)
        self.images: dict[str, np.ndarray] = {}

    def maps(self, setting: str) -> Callable[[list[Path]], np.ndarray]:
        return lambda paths: self.caches[setting].get(paths)[0]

    def feature_seconds(self, setting: str, paths: list[Path]) -> float:
        """Extraction seconds of ``paths`` (measured when first extracted)."""
        return self.caches[setting].get(paths)[1] * len(paths) / 1000.0

    def decoded(self, paths: list[Path]) -> list[np.ndarray]:
        for p in paths:
            if str(p) not in self.images:
                self.images[str(p)] = read_image(p)
        return [self.images[str(p)] for p in paths]


def run_patch_baseline(make: Callable, cat: Category, inputs: CategoryInputs, setting: str,
                       check: Callable | None = None) -> Run:
    maps = inputs.maps(setting)
    maps(cat.train)                                  # extract (and time) the training maps first
    return run_baseline(make, cat, maps, prep_s=inputs.feature_seconds(setting, cat.train), check=check)


def run_global_baseline(make: Callable, cat: Category, inputs: CategoryInputs) -> Run:
    t0 = time.perf_counter()
    inputs.decoded(cat.train)
    return run_baseline(make, cat, inputs.decoded, prep_s=time.perf_counter() - t0)


def run_anomalib(cat: Category, work: Path, threads: int, quick: bool, models: Sequence[str]) -> dict[str, Run]:
    """anomalib in its own env (``accuracy.run_peers``) on the category: test/ only, its own threshold."""
    case = Case(cat.name, "suite", cat.folder, cat.train, cat.groups, cat.test, cat.types, cat.validation, None,
                config_from_dict({"threads": threads}))
    out = {}
    for label, r in run_peers(case, work / "peers", threads, quick, tuple(models)).items():
        out[label] = Run(r.scores, None, None, float(r.threshold), r.fit_seconds,
                         r.ms_per_image * len(cat.test) / 1000.0, note=r.note or "anomalib's own threshold",
                         flagged_test=r.extra["pred"])
    return out


# --------------------------------------------------------------------------------------------------
# The run


def run_category(cat: Category, args, peers_on: bool, fixed: tuple[TrainConfig | None, bool],
                 seconds: dict[str, float]) -> list[dict]:
    """Every row on one category -> CSV rows; adds each method's wall seconds to ``seconds``."""
    rows, inputs = [], CategoryInputs()
    fixed_cfg, fixed_differs = fixed
    with tempfile.TemporaryDirectory(prefix=f"lw-suite-{cat.name}-") as tmp:
        work = Path(tmp)
        jobs: list[tuple[str, Callable[[], Run | dict[str, Run]]]] = [
            (DEFAULT, lambda: run_linewatch(cat, None, work / "default", args.threads, args.verbose)),
            (FIXED, (lambda: run_linewatch(cat, fixed_cfg, work / "fixed", args.threads, args.verbose))
             if fixed_differs else None),
            (EARLIER, lambda: run_linewatch(cat, EARLIER_CONFIG, work / "earlier", args.threads, args.verbose)),
            (KNN, lambda: run_patch_baseline(FusedKnnPatchDistance, cat, inputs, "knn", check_knn)),
            (PADIM, lambda: run_patch_baseline(PositionGaussian, cat, inputs, "padim")),
            (GLOBAL_HIST, lambda: run_global_baseline(ColourHistogramECOD, cat, inputs)),
            (GLOBAL_STATS, lambda: run_global_baseline(ImageStatsIsolationForest, cat, inputs)),
        ]
        if peers_on:
            jobs.append(("anomalib", lambda: run_anomalib(cat, work, args.threads, args.quick, args.peer_models)))
        default_run = None
        for name, job in jobs:
            t0 = time.perf_counter()
            if job is None:                          # no self-configuration in this linewatch: same as default
                runs = {name: dataclasses.replace(default_run, note="same bundle as linewatch default "
                                                  "(this linewatch has no self-configuration)")}
            else:
                result = job()
                runs = result if isinstance(result, dict) else {name: result}
            default_run = runs.get(DEFAULT, default_run)
            took = time.perf_counter() - t0
            for label, run in runs.items():
                spent = took if len(runs) == 1 else run.fit_seconds + run.score_seconds
                seconds[label] = seconds.get(label, 0.0) + spent
                rows.append(metrics(cat, label, run))
                progress_line(cat, rows[-1], took if len(runs) == 1 else None)
    return rows


def progress_line(cat: Category, r: dict, took: float | None) -> None:
    pct = lambda v: "  – " if np.isnan(v) else f"{100 * v:4.1f}"  # noqa: E731
    sel = f"  [{r['selection']}]" if r["selection"] else ""
    say(f"  {cat.name:<16} {r['method'][:44]:<44} AUROC {r['image_auroc']:.3f}  FAR % iid {pct(r['far_iid_noval'])}"
        f"/{pct(r['far_iid_val'])} shifted {pct(r['far_shifted_noval'])}/{pct(r['far_shifted_val'])}  "
        f"fit {r['fit_seconds']:6.1f} s  score {r['score_seconds']:5.1f} s"
        + (f"  ({took:.0f} s)" if took is not None else "") + sel)


def ordered_names(only: list[str] | None) -> list[str]:
    """Category names, DEV half first (each half in the data's order); ``only`` restricts them."""
    names = list(CATEGORIES)
    if only:
        unknown = sorted(set(only) - set(names))
        if unknown:
            raise SystemExit(f"--only: unknown categories {unknown}; choose from {names}")
        names = [n for n in names if n in only]
    return sorted(names, key=lambda n: CATEGORIES[n].half != "dev")


def peers_available(args) -> tuple[bool, str]:
    if args.no_peers:
        return False, "anomalib did not run (--no-peers)"
    if not args.peer_models:
        return False, "anomalib did not run (--quick runs no peer model unless --peer-models names some)"
    if not PEER_PYTHON.is_file():
        where = PEER_PYTHON.relative_to(BENCH.parent)
        return False, f"anomalib did not run ({where} is missing; `make bench-peers-venv` builds it)"
    return True, f"anomalib {' and '.join(args.peer_models)} ran in bench/peers/.venv"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a smaller data spec (QUICK_RUN): minutes, not hours")
    ap.add_argument("--spec", choices=sorted(SPECS), default=None,
                    help="data spec: quick (= --quick), mid (suite_data.QUICK: twice quick's images, for choosing "
                         "on the dev half), full (the default: the measurement)")
    ap.add_argument("--half", choices=("dev", "confirm"), default=None,
                    help="only the categories of one half (choose defaults on dev, report on confirm)")
    ap.add_argument("--no-peers", action="store_true", help="skip anomalib even if bench/peers/.venv exists")
    ap.add_argument("--peer-models", nargs="+", default=None, choices=PEER_MODELS,
                    help=f"anomalib models (default {' '.join(PEER_MODELS)}; none with --quick, where they would "
                         "add about 30 s per category)")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="run only these categories")
    ap.add_argument("--out-md", type=Path, default=None,
                    help="report path; the CSV goes beside it (default bench/results/suite.md, "
                         "with --quick /tmp/lw-suite-quick/suite.md)")
    ap.add_argument("--data-root", type=Path, default=DATA_ROOT, help="data cache; the spec's folder goes below it")
    ap.add_argument("--threads", type=int, default=2, help="torch and onnxruntime threads for every method")
    ap.add_argument("--verbose", action="store_true", help="also print linewatch train's progress lines")
    args = ap.parse_args(argv)
    if args.threads < 1:
        ap.error("--threads must be at least 1")
    args.spec = args.spec or ("quick" if args.quick else "full")
    args.quick = args.spec != "full"
    if args.peer_models is None:
        args.peer_models = [] if args.quick else list(PEER_MODELS)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_start, t_start = os.getloadavg(), time.perf_counter()
    torch.set_num_threads(args.threads)
    spec_name = args.spec
    out_md = args.out_md or (Path(f"/tmp/lw-suite-{spec_name}/suite.md") if args.quick else BENCH / "results" / "suite.md")
    names = [n for n in ordered_names(args.only) if args.half in (None, CATEGORIES[n].half)]
    peers_on, peer_note = peers_available(args)
    say(peer_note)
    spec = SPECS[spec_name]
    folders = build_suite(args.data_root / spec_name, spec, names=names, progress=say)
    fixed = fixed_config()
    rows, seconds = [], {}
    for name in names:
        t0 = time.perf_counter()
        say(f"== {name} ({CATEGORIES[name].half}): {folders[name]}")
        rows += run_category(load_category(name, Path(folders[name])), args, peers_on, fixed, seconds)
        say(f"== {name}: {time.perf_counter() - t0:.0f} s")
    out_md.parent.mkdir(parents=True, exist_ok=True)
    write_csv(out_md.with_suffix(".csv"), rows)
    meta = {"spec": spec_name, "spec_repr": repr(spec), "threads": args.threads,
            "load_start": load_start, "load_end": os.getloadavg(), "seconds": seconds,
            "minutes": (time.perf_counter() - t_start) / 60, "peer_note": peer_note, "peers_ran": peers_on,
            "fixed_differs": fixed[1], "target": TARGET, "argv": argv if argv is not None else sys.argv[1:]}
    write_markdown(out_md, rows, meta)
    say(f"wrote {out_md} and {out_md.with_suffix('.csv').name} in {meta['minutes']:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
