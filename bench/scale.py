"""Archive scoring throughput: one process vs Ray workers, and the identical-results check.

    python bench/scale.py            # 224-px demo brick bundle, 2000-image archive (minutes)
    python bench/scale.py --quick    # 64-px bundle, 400-image archive (a check that the script works)

Trains a bundle on the demo brick texture, builds an archive by copying its test images under distinct
names (the same pixels repeat; only throughput is measured), then scores the archive with
``linewatch score-archive``'s code (:func:`linewatch.jobs.score_archive.run_score_archive`) in:

* one process, one onnxruntime thread; one process, all cores (intra-op threads); one process with one
  one-thread pipeline per core;
* Ray (local instance) with 1 and 2 one-thread actors. Ray's start-up and the actors' bundle loading are
  timed separately ("startup s") and not counted in images/s.

Every configuration writes its own ``results.jsonl``; the check compares each with the first: same
sources in the same order, same verdicts, and the largest absolute score difference.
Writes ``bench/results/scale.md`` (``--out``).
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent


def build(work: Path, quick: bool) -> tuple[Path, Path, int]:
    from linewatch.jobs.train import run_train
    from linewatch.training.config import config_from_dict
    from linewatch.training.demo_data import DemoSpec, build_texture

    size = 64 if quick else 224
    spec = DemoSpec(size=size, n_train=40 if quick else 100, n_test_good=20, n_test_per_defect=3,
                    n_validation=20 if quick else 100)
    data = build_texture("brick", work / "data", spec)
    cfg = {"model": {"image_size": size}, "threads": 1}
    if quick:
        cfg["density"] = {"bank_size": 256, "folds": 2}
    bundle = work / "bundle"
    print(f"training a {size}-px bundle", file=sys.stderr, flush=True)
    run_train(data, bundle, config_from_dict(cfg), checkpoint=False)
    archive = work / "archive"
    sources = sorted((data / "test").rglob("*.png"))
    n = 400 if quick else 2000
    for i in range(n):
        src = sources[i % len(sources)]
        day = archive / f"day{i // 100:02d}"
        day.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, day / f"{i:06d}_{src.parent.name}.png")
    return bundle, archive, size


def fit_both(data: Path, size: int, quick: bool) -> list[tuple[str, float, float, float, float]]:
    """Fit on the training images with the local and the Ray engine: (engine, seconds, bandwidth, threshold,
    max |score difference| on the test images against local)."""
    import numpy as np
    import torch

    from linewatch.jobs.retrain import fit_on_paths
    from linewatch.training.config import config_from_dict
    from linewatch.training.data import discover, load_images
    from linewatch.training.fit import input_spec_for

    cfg = {"model": {"image_size": size}, "threads": 1}
    if quick:
        cfg["density"] = {"bank_size": 256, "folds": 2}
    cfg = config_from_dict(cfg)
    ds = discover(data)
    paths = list(ds.train)
    test_x, _, _ = load_images([t.path for t in ds.test], input_spec_for(cfg))
    out, ref = [], None
    for engine in ("local", "ray"):
        t0 = time.perf_counter()
        det, *_ = fit_on_paths(paths, ds.groups(paths), list(ds.validation), cfg, engine, 2)
        sec = time.perf_counter() - t0
        with torch.no_grad():
            scores = det.scorer(torch.from_numpy(test_x))[0].numpy()
        ref = scores if ref is None else ref
        out.append((engine, sec, det.bandwidth, float(det.calibrator.threshold_), float(np.abs(scores - ref).max())))
    return out


def compare(base: list[dict], other: list[dict]) -> tuple[bool, bool, float]:
    """(same sources in order, same verdicts, max |score difference|)."""
    same_sources = [r["source"] for r in base] == [r["source"] for r in other]
    same_verdicts = [r["anomalous"] for r in base] == [r["anomalous"] for r in other]
    diff = max(abs(a["score"] - b["score"]) for a, b in zip(base, other))
    return same_sources, same_verdicts, float(diff)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="64-px bundle and 400 images")
    ap.add_argument("--out", default=str(HERE / "results" / "scale.md"))
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args(argv)
    load_before = os.getloadavg()[0]
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from linewatch.jobs.score_archive import run_score_archive
    from linewatch.runtime.inspect_run import read_results

    cores = os.cpu_count() or 1
    runs = [("one process, 1 thread", "local", 1, 1), (f"one process, {cores} intra-op threads", "local", 1, 0),
            (f"one process, {cores} one-thread pipelines", "local", cores, 1),
            ("Ray, 1 actor", "ray", 1, 1), ("Ray, 2 actors", "ray", 2, 1)]
    rows, records = [], []
    with tempfile.TemporaryDirectory(prefix="linewatch-scale-") as tmp:
        work = Path(tmp)
        bundle, archive, size = build(work, args.quick)
        for i, (name, engine, workers, threads) in enumerate(runs):
            print(f"scoring: {name}", file=sys.stderr, flush=True)
            out = work / f"run{i}"
            s = run_score_archive(bundle, str(archive), out, engine, workers, args.batch_size, threads)
            recs = read_results(out / "results.jsonl")
            records.append(recs)
            rows.append((name, s["inspected"], s["startup_seconds"], s["seconds"], s["images_per_second"]))
        checks = [compare(records[0], r) for r in records[1:]]
        print("fitting with the local and the Ray engine", file=sys.stderr, flush=True)
        fits = fit_both(work / "data" / "brick", size, args.quick)
    lines = [
        "# Archive scoring: one process vs Ray (`bench/scale.py`)",
        "",
        f"Measured {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} on this project's machine "
        f"({cores} cores, {platform.machine()}, Python {platform.python_version()}){' with --quick' if args.quick else ''}. "
        f"Load average (1 min) {load_before:.1f} before the run and {os.getloadavg()[0]:.1f} after it (this run's own "
        "work counts in the second; well above 2 before it means other jobs shared the cores and the images/s are "
        "distorted). The identical-results check does not depend on load. The configurations run one after "
        "another, so a change of load during the run favours the later rows.",
        "",
        f"Bundle: demo brick, {size} px, fp32. Archive: {rows[0][1]} PNG files (copies of the test images under "
        f"distinct names), batch size {args.batch_size}. `linewatch score-archive` writes the same "
        "`results.jsonl` records whichever engine runs.",
        "",
        "| engine | images | startup s | scoring s | images/s |",
        "|---|---|---|---|---|",
    ]
    for name, n, startup, sec, ips in rows:
        lines.append(f"| {name} | {n} | {startup:.1f} | {sec:.2f} | {ips:.1f} |")
    lines += ["", "Identical results, each configuration against the first (one process, 1 thread):", "",
              "| engine | same sources, same order | same verdicts | max abs score difference (nats) |",
              "|---|---|---|---|"]
    for (name, *_), (ss, sv, d) in zip(rows[1:], checks):
        lines.append(f"| {name} | {'yes' if ss else 'NO'} | {'yes' if sv else 'NO'} | {d:.3g} |")
    lines += ["", f"Distributed training: level-1 features of the {size}-px training and validation images "
              "extracted in this process, or by 2 one-thread Ray actors (`--engine ray`; decode + backbone in the "
              "actors, density fitted here); then the whole fitted detector scores the test images:", "",
              "| engine | fit s (incl. Ray start) | bandwidth | threshold | max abs test-score difference vs local |",
              "|---|---|---|---|---|"]
    for engine, sec, bw, thr, d in fits:
        lines.append(f"| {engine} | {sec:.1f} | {bw:.6g} | {thr:.6g} | {d:.3g} |")
    lines += ["", "Startup = Ray's local start plus each actor loading and verifying the bundle; it is paid once "
              "per job, so it matters for small archives only. Each Ray actor holds one CPU and one onnxruntime "
              "thread; on a cluster the same job spreads over the nodes' cores (`RAY_ADDRESS`).", ""]
    import ray

    ray_mb = sum(f.stat().st_size for f in Path(ray.__file__).parent.rglob("*") if f.is_file()) / 1e6
    lines += [f"Ray {ray.__version__} (core only, the `scale` extra): {ray_mb:.0f} MB installed; `ray[data]` would add "
              "pandas and pyarrow, which the actor-based engines do not need.", ""]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))
    ok = all(ss and sv for ss, sv, _ in checks) and all(d == 0.0 for *_, d in fits)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
