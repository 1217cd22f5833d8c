"""``linewatch score-archive``: score a large archive of images (e.g. a month of production) into
``OUT/results.jsonl``, in this process or spread over Ray workers.

The records are those of ``linewatch inspect --no-heatmaps`` (same fields, same order of sources, the
same scores: each worker runs the same bundle with onnxruntime), and the file follows the same rules:
append-only, flushed per record, resumable (sources already recorded are skipped), and a folder holding
another bundle's results is refused. Only ``latency_ms`` differs between engines: it is measured where
the image was scored.

Engines:

* ``local``: an :class:`~linewatch.runtime.inspector.Inspector` in this process, with ``workers``
  one-thread batch pipelines (``workers=1``: one pipeline with ``threads`` intra-op threads);
* ``ray``: ``workers`` Ray actors with one-thread sessions, each scoring chunks of ``batch_size`` paths
  (:class:`linewatch.jobs.distributed.RayScorer`); on one machine, a local Ray instance.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable, Iterator

from ..runtime.inspect_run import RESULTS_NAME, RunSummary, _repair_torn_tail, recorded_sources
from ..runtime.inspector import Inspector
from ..runtime.sources import expand_source

ENGINES = ("local", "ray")


def _local_records(inspector: Inspector, paths: list[Path], batch_size: int, workers: int) -> Iterator[dict]:
    for v, _img, _map in inspector.inspect_paths(paths, batch_size, workers):
        yield v.to_dict()


def run_score_archive(bundle: str | os.PathLike, source: str, out: str | os.PathLike, engine: str = "local",
                      workers: int = 1, batch_size: int = 8, threads: int = 0,
                      progress: Callable[[str], None] | None = None) -> dict:
    """Score every image of ``source`` (file, folder or glob) into ``out/results.jsonl``; returns a summary
    (counts, seconds, images per second). See the module docstring."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    say = progress or (lambda _m: None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / RESULTS_NAME
    inspector = Inspector(bundle, threads=1 if engine == "ray" else threads)
    done = recorded_sources(results, inspector.bundle.id)
    paths = [p for p in expand_source(source) if str(p) not in done]
    summary = RunSummary(results, skipped_already_recorded=len(done))
    if done:
        say(f"resuming: {len(done)} images already recorded in {results}")
    say(f"scoring {len(paths)} images with engine {engine} ({workers} worker{'s' if workers != 1 else ''})")
    t0 = time.perf_counter()
    startup = 0.0
    with open(results, "a") as log:
        _repair_torn_tail(results, log)
        if engine == "ray":
            from .distributed import RayScorer, ray_session

            with ray_session(num_cpus=max(1, workers)):
                scorer = RayScorer(inspector.bundle.path, workers)
                ids = set(scorer.ready())
                if ids != {inspector.bundle.id}:
                    raise RuntimeError(f"Ray workers loaded bundle(s) {sorted(ids)}, not {inspector.bundle.id}: the "
                                       "bundle folder differs between nodes; give every node the same bundle")
                startup = time.perf_counter() - t0   # Ray and actor start-up: reported, not counted in images/s
                t0 = time.perf_counter()
                _write(scorer.score(paths, batch_size), log, summary, len(paths), say)
        else:
            _write(_local_records(inspector, paths, batch_size, workers), log, summary, len(paths), say)
    seconds = time.perf_counter() - t0
    return {**summary.to_dict(), "engine": engine, "workers": workers, "bundle_id": inspector.bundle.id,
            "startup_seconds": round(startup, 3), "seconds": round(seconds, 3), "images_per_second": round(len(paths) / seconds, 2) if seconds > 0 else None}


def _write(records: Iterator[dict], log, summary: RunSummary, n: int, say: Callable[[str], None]) -> None:
    for i, rec in enumerate(records, start=1):
        rec["heatmap"] = None
        log.write(json.dumps(rec) + "\n")
        log.flush()
        summary.inspected += 1
        summary.flagged += bool(rec.get("anomalous"))
        summary.errors += rec.get("error") is not None
        if i % 200 == 0 or i == n:
            say(f"scored {i}/{n}: {summary.flagged} flagged, {summary.errors} errors")
