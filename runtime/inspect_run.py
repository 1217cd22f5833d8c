"""``linewatch inspect``: score a source into ``OUT/results.jsonl`` and heat maps of flagged images.

``results.jsonl`` is append-only, one JSON object per input, flushed after every record, so a
killed run loses at most the image in flight. Re-running with the same output folder and bundle
resumes: sources already recorded are skipped, none is recorded twice.
"""
from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TextIO

import cv2

from .heatmap import overlay
from .inspector import Inspector
from .preprocess import display_bgr
from .sources import expand_source

RESULTS_NAME = "results.jsonl"


@dataclass
class RunSummary:
    results: Path
    inspected: int = 0
    flagged: int = 0
    errors: int = 0
    skipped_already_recorded: int = 0
    heatmaps: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"results": str(self.results), "inspected": self.inspected, "flagged": self.flagged,
                "errors": self.errors, "skipped_already_recorded": self.skipped_already_recorded}


def read_results(path: str | os.PathLike) -> list[dict]:
    """All complete records of a results file (a torn last line from a crash is ignored)."""
    records = []
    p = Path(path)
    if not p.is_file():
        return records
    with open(p) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def _heatmap_name(source: str, base: Path, index: int) -> str:
    """``000042_<path relative to the inspected folder, '/' -> '_'>.png``."""
    p = Path(source)
    rel = p.relative_to(base) if p.is_relative_to(base) else Path(p.name)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", rel.with_suffix("").as_posix())[-120:]
    return f"{index:06d}_{stem}.png"


def run_inspection(inspector: Inspector, source: str, out: str | os.PathLike, batch_size: int = 8,
                   heatmaps: bool = True, progress: Callable[[str], None] | None = None,
                   workers: int = 1) -> RunSummary:
    """Inspect every image of ``source`` (file, folder or glob) into ``out``; see the module docstring.

    ``workers > 1``: score that many batches at once (see :meth:`Inspector.inspect_paths`)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / RESULTS_NAME
    previous = read_results(results)
    other = {r.get("bundle") for r in previous} - {inspector.bundle.id}
    if other:
        raise RuntimeError(f"{results}: holds results of another bundle ({', '.join(sorted(map(str, other)))}); "
                           "use a new --out folder for a new bundle")
    done = {r["source"] for r in previous if "source" in r}
    paths = [p for p in expand_source(source) if str(p) not in done]
    summary = RunSummary(results, skipped_already_recorded=len(done))
    if done and progress:
        progress(f"resuming: {len(done)} images already recorded in {results}")
    heat_dir = out / "heatmaps"
    base = Path(source) if Path(source).is_dir() else Path(source).parent
    low = inspector.bundle.manifest.calibration.heatmap_low
    with open(results, "a") as log:
        _repair_torn_tail(results, log)
        for i, (verdict, image, pmap) in enumerate(inspector.inspect_paths(paths, batch_size, workers), start=1):
            rec = verdict.to_dict()
            rec["heatmap"] = None
            if verdict.anomalous and heatmaps and image is not None:
                heat_dir.mkdir(exist_ok=True)
                name = heat_dir / _heatmap_name(verdict.source, base, len(done) + i)
                cv2.imwrite(str(name), overlay(display_bgr(image), pmap, low, inspector.threshold))
                rec["heatmap"] = str(name)
                summary.heatmaps.append(str(name))
            log.write(json.dumps(rec) + "\n")
            log.flush()
            summary.inspected += 1
            summary.flagged += bool(verdict.anomalous)
            summary.errors += verdict.error is not None
            if progress and (i % 50 == 0 or i == len(paths)):
                progress(f"inspected {i}/{len(paths)}: {summary.flagged} flagged, {summary.errors} errors")
    return summary


def _repair_torn_tail(path: Path, log: TextIO) -> None:
    """After a crash the last line may lack its newline; end it so the next record starts clean."""
    if path.stat().st_size == 0:
        return
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) != b"\n":
            log.write("\n")
            log.flush()


def print_progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
