"""``linewatch inspect``: score a source into ``OUT/results.jsonl`` and heat maps of flagged images.

Sources (``runtime/streams.py``): image files (an image, a folder, a glob), a watched folder (new
files as they arrive, until stopped), a video file or a camera (every Nth frame). A reader thread
decodes frames into a bounded queue (``runtime/frame_queue.py``: backpressure for files and videos,
drop-oldest for cameras) and this module scores them in batches and writes the records.

``results.jsonl`` is append-only, one JSON object per input, written and flushed (optionally
fsynced) as soon as its verdict exists. It is the only state: re-running with the same output folder
and bundle resumes, skipping every source id already recorded, so after a crash or a kill each input
ends up recorded exactly once (a torn last line is ignored and the input re-scored). Unreadable
inputs are recorded as errors, so they are not retried.

Each record also says whether the drift warning (``runtime/drift_watch.py``) is on after it; a resumed
run first replays the recorded verdicts into the warning's window.
"""
from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, TextIO

import cv2
import numpy as np

from .drift_watch import DRIFT_WINDOW, DriftWatch, change_message, checked_window, warning_message, watch_bundle
from .frame_queue import FrameQueue
from .heatmap import overlay
from .inspector import Inspector, Verdict
from .preprocess import ImageError, display_bgr, preprocess
from .streams import Frame, open_source

RESULTS_NAME = "results.jsonl"
PROGRESS_EVERY_S = 10.0

Scored = tuple[Verdict, "np.ndarray | None", "np.ndarray | None"]


@dataclass
class RunSummary:
    """What one run did. ``stopped``: ``end of source``, ``idle timeout``, ``max images`` or
    ``stop requested`` (a signal); ``dropped_frames``: camera frames discarded by the queue.
    ``drift``: the drift warning's final state (None when off); ``drift_warnings``: how often it turned
    on in this run (None: no drift watch ran, as in ``score-archive``; then neither is reported)."""

    results: Path
    inspected: int = 0
    flagged: int = 0
    errors: int = 0
    skipped_already_recorded: int = 0
    heatmaps: list[str] = field(default_factory=list)
    source_kind: str = "files"
    stopped: str = "end of source"
    dropped_frames: int = 0
    queue_peak: int = 0
    drift: dict | None = None
    drift_warnings: int | None = None

    def to_dict(self) -> dict:
        out = {"results": str(self.results), "inspected": self.inspected, "flagged": self.flagged,
               "errors": self.errors, "skipped_already_recorded": self.skipped_already_recorded,
               "source_kind": self.source_kind, "stopped": self.stopped, "dropped_frames": self.dropped_frames}
        if self.drift_warnings is not None:
            out.update(drift=self.drift, drift_warnings=self.drift_warnings)
        return out


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


def recorded_sources(results: str | os.PathLike, bundle_id: str) -> set[str]:
    """Sources already recorded in ``results`` (what a resumed run skips).

    Raises ``RuntimeError`` when the file holds results of another bundle than ``bundle_id``.
    """
    return {r["source"] for r in _previous_records(results, bundle_id) if "source" in r}


def _previous_records(results: str | os.PathLike, bundle_id: str) -> list[dict]:
    """The records of ``results``, in file order; ``RuntimeError`` if another bundle wrote any of them."""
    previous = read_results(results)
    other = {r.get("bundle") for r in previous} - {bundle_id}
    if other:
        raise RuntimeError(f"{results}: holds results of another bundle ({', '.join(sorted(map(str, other)))}); "
                           "use a new --out folder for a new bundle")
    return previous


def _start_drift_watch(inspector: Inspector, window: int, previous: list[dict],
                       say: Callable[[str], None]) -> DriftWatch | None:
    """The run's drift watch (None for ``window == 0``), with the recorded verdicts replayed into it in
    file order, so a resumed run goes on with the state an unbroken run would have."""
    watch = watch_bundle(inspector.bundle.manifest, window)
    if watch is None:
        return None
    target = inspector.bundle.manifest.decision.target_false_alarm_rate
    if watch.target > target:
        n = len(inspector.bundle.manifest.calibration.scores)
        say(f"drift warning: measured against {100 * watch.target:.1f} % flagged, not the bundle's {100 * target:g} % "
            f"target: with {n} calibration images its threshold flags about that share of good images")
    for r in previous:
        watch.observe(r.get("score"), r.get("anomalous"))
    if watch.drift:                           # this run starts with the warning on: say so again
        say(warning_message(watch.state()))
    return watch


def _heatmap_name(source: str, base: Path, index: int) -> str:
    """``000042_<source id relative to the inspected folder, '/' -> '_'>.png``."""
    path_part, _, fragment = source.partition("#")          # video and camera ids: 'clip.avi#frame=000120'
    p = Path(path_part)
    rel = p.relative_to(base) if p.is_relative_to(base) else Path(p.name)
    stem = rel.with_suffix("").as_posix() + (f"_{fragment}" if fragment else "")
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem)[-120:]
    return f"{index:06d}_{stem}.png"


def _write_png_atomically(path: Path, image: np.ndarray) -> None:
    """Write to a hidden temporary name, then rename: a kill never leaves a half-written heat map."""
    ok, png = cv2.imencode(".png", image)
    if not ok:
        raise RuntimeError(f"{path}: OpenCV could not encode the heat map")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(png.tobytes())
    os.replace(tmp, path)


def score_frames(inspector: Inspector, frames: list[Frame], buf: np.ndarray | None = None,
                 session=None) -> list[Scored]:
    """Score one batch of frames -> ``(verdict, decoded image or None, patch map (h, w) or None)`` each,
    in order. Frames with an error become error verdicts. ``buf``: a reusable float32
    ``(>= len(frames), C, H, W)`` buffer; ``session``: the onnxruntime session (default the inspector's)."""
    spec = inspector.spec
    if buf is None or len(buf) < len(frames):
        buf = np.empty((len(frames), spec.channels, spec.height, spec.width), dtype=np.float32)
    out: list[Scored | None] = [None] * len(frames)
    ok, ms = [], []
    for i, f in enumerate(frames):
        if f.error is not None:
            out[i] = (inspector.error_verdict(f.source, f.error), None, None)
            continue
        t0 = time.perf_counter()
        try:
            preprocess(f.image, spec, out=buf[len(ok)], source=f.source)
        except ImageError as exc:                   # e.g. far smaller than the model input
            out[i] = (inspector.error_verdict(f.source, str(exc)), None, None)
            continue
        except (ValueError, cv2.error) as exc:
            out[i] = (inspector.error_verdict(f.source, f"{f.source}: cannot be preprocessed ({exc})"), None, None)
            continue
        ok.append(i)
        ms.append(f.read_ms + 1000 * (time.perf_counter() - t0))
    if ok:
        t0 = time.perf_counter()
        scores, maps = inspector.score_batch(buf[:len(ok)], session)
        share = 1000 * (time.perf_counter() - t0) / len(ok)
        verdicts = inspector.verdicts([frames[i].source for i in ok], scores, [m + share for m in ms])
        for i, v, pmap in zip(ok, verdicts, maps):
            out[i] = (v, frames[i].image, pmap)
    return out  # type: ignore[return-value]


def _scored_stream(inspector: Inspector, frames: FrameQueue, batch_size: int, workers: int) -> Iterator[Scored]:
    """Verdicts of the queued frames, in order. A batch is whatever is queued (up to ``batch_size``):
    a stream never waits for a full batch. ``workers > 1``: that many batches are scored at once on a
    one-thread session (as :meth:`Inspector.inspect_paths`), the oldest written first."""
    if workers <= 1:
        spec = inspector.spec
        buf = np.empty((batch_size, spec.channels, spec.height, spec.width), dtype=np.float32)
        while (batch := frames.take(batch_size)) is not None:
            yield from score_frames(inspector, batch, buf)
        return
    session = inspector.single_thread_session()
    pool = ThreadPoolExecutor(workers, thread_name_prefix="linewatch-inspect")
    inflight: deque = deque()
    ended = False
    try:
        while True:
            while not ended and len(inflight) < 2 * workers:
                batch = frames.take(batch_size, wait=not inflight)
                if batch is None:
                    ended = True
                elif batch:
                    inflight.append(pool.submit(score_frames, inspector, batch, None, session))
                else:
                    break
            if not inflight:
                return
            yield from inflight.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def run_inspection(inspector: Inspector, source: str, out: str | os.PathLike, batch_size: int = 8,
                   heatmaps: bool = True, progress: Callable[[str], None] | None = None,
                   workers: int = 1, *, watch: bool = False, every: int = 1, queue_size: int = 8,
                   max_images: int | None = None, poll_s: float = 0.2, settle_s: float = 0.5,
                   idle_timeout_s: float | None = None, stop: threading.Event | None = None,
                   fsync: bool = False, drift_window: int = DRIFT_WINDOW) -> RunSummary:
    """Inspect ``source`` into ``out``; see the module docstring.

    Args:
        source: an image, a folder, a glob, a video file, ``camera:N`` (see :func:`streams.open_source`).
        batch_size: at most this many frames per model call (fewer when fewer are queued).
        workers: ``> 1`` scores that many batches at once (see :meth:`Inspector.inspect_paths`).
        watch: ``source`` is a folder to watch for new images until stopped (``poll_s``, ``settle_s``,
            ``idle_timeout_s``: see :class:`streams.FolderWatch`).
        every: video and camera: score every ``every``-th frame.
        queue_size: decoded frames that may wait for the scorer (each holds a full decoded image).
        max_images: stop after recording this many new inputs.
        stop: set it (e.g. from a signal handler) to stop: frames already scored are recorded, the
            rest is left for the next run.
        fsync: ``os.fsync`` every record (survives power loss, not only a crash; costs a disk flush each).
        drift_window: verdicts the drift warning looks back over (``runtime/drift_watch.py``); 0 = off.
    """
    if max_images is not None and int(max_images) < 1:
        raise ValueError(f"max_images must be >= 1, got {max_images}")
    checked_window(drift_window)             # before any file is made
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / RESULTS_NAME
    previous = _previous_records(results, inspector.bundle.id)
    done = {r["source"] for r in previous if "source" in r}
    src = open_source(source, done, watch=watch, every=every, poll_s=poll_s, settle_s=settle_s,
                      idle_timeout_s=idle_timeout_s, max_pixels=inspector.max_pixels, exclude=out)
    summary = RunSummary(results, skipped_already_recorded=len(done), source_kind=src.kind)
    say = progress or (lambda msg: None)
    if done:
        say(f"resuming: {len(done)} inputs already recorded in {results}")
    monitor = _start_drift_watch(inspector, drift_window, previous, say)
    summary.drift_warnings = int(monitor is not None and monitor.drift)
    del previous                              # a watch runs for hours: do not hold every old record
    if watch:
        say(f"watching {source} for new images (every {poll_s:g} s; a file is taken once unchanged for "
            f"{settle_s:g} s); stop with Ctrl-C or SIGTERM"
            + (f", or after {idle_timeout_s:g} s without new files" if idle_timeout_s else ""))
    elif src.kind == "camera":
        say(f"reading {source}, every {every} frame(s); stop with Ctrl-C or SIGTERM")
    heat_dir = out / "heatmaps"
    base = Path(source) if Path(source).is_dir() else Path(source).parent
    low = inspector.bundle.manifest.calibration.heatmap_low
    stop = stop if stop is not None else threading.Event()
    queue_stop = threading.Event()
    total = src.total if max_images is None or src.total is None else min(src.total, int(max_images))
    last_report = time.monotonic()
    policy = "drop-oldest" if src.live else "block"
    with open(results, "a") as log, FrameQueue(src, queue_size, policy, queue_stop) as frames, \
            closing(_scored_stream(inspector, frames, max(1, int(batch_size)), int(workers))) as scored:
        threading.Thread(target=_relay, args=(stop, queue_stop), daemon=True).start()
        _repair_torn_tail(results, log)
        for i, (verdict, image, pmap) in enumerate(scored, start=1):
            rec = verdict.to_dict()
            rec["heatmap"] = None
            if verdict.anomalous and heatmaps and image is not None:
                heat_dir.mkdir(exist_ok=True)
                name = heat_dir / _heatmap_name(verdict.source, base, len(done) + i)
                _write_png_atomically(name, overlay(display_bgr(image), pmap, low, inspector.threshold))
                rec["heatmap"] = str(name)
                summary.heatmaps.append(str(name))
            if monitor is not None:
                change = monitor.observe(verdict.score, verdict.anomalous)
                if change is not None:
                    say(change_message(change))
                    summary.drift_warnings += change.drift
            rec["drift"] = None if monitor is None else monitor.drift
            log.write(json.dumps(rec) + "\n")
            log.flush()
            if fsync:
                os.fsync(log.fileno())
            summary.inspected += 1
            summary.flagged += bool(verdict.anomalous)
            summary.errors += verdict.error is not None
            now = time.monotonic()
            if i % 50 == 0 or i == total or now - last_report >= PROGRESS_EVERY_S:
                last_report = now
                say(f"inspected {i}" + (f"/{total}" if total else "") + f": {summary.flagged} flagged, "
                    f"{summary.errors} errors" + (f", {frames.dropped} frames dropped" if src.live else ""))
            if max_images is not None and summary.inspected >= int(max_images):
                summary.stopped = "max images"
                break
        else:
            summary.stopped = "stop requested" if stop.is_set() else src.stopped_reason
        summary.dropped_frames, summary.queue_peak = frames.dropped, frames.peak
        queue_stop.set()
    summary.drift = None if monitor is None else monitor.state().to_dict()
    if summary.stopped != "end of source" or src.kind != "files":
        say(f"stopped ({summary.stopped}): {summary.inspected} inspected, {summary.flagged} flagged, "
            f"{summary.errors} errors" + (f", {summary.dropped_frames} frames dropped" if src.live else ""))
    return summary


def _relay(stop: threading.Event, queue_stop: threading.Event) -> None:
    """Pass the caller's ``stop`` on to the queue's own event (which ends with the run) until the run ends."""
    while not queue_stop.is_set():
        if stop.wait(0.1):
            queue_stop.set()


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
