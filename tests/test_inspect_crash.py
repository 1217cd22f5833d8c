"""A killed `linewatch inspect` loses and duplicates nothing: SIGKILL part-way, restart, every image once.

Also: SIGTERM stops a folder watch cleanly (exit 0, a summary, no torn record).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import cv2
import pytest

from linewatch.runtime.inspect_run import read_results

N_IMAGES = 60


def linewatch_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "linewatch", *args]


def lines_in(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def kill_when(proc: subprocess.Popen, results: Path, at_least: int, delay_s: float = 0.0,
              timeout_s: float = 180) -> int:
    """SIGKILL ``proc`` ``delay_s`` after ``results`` has ``at_least`` lines; return the line count seen then."""
    deadline = time.monotonic() + timeout_s
    n = 0
    while time.monotonic() < deadline and proc.poll() is None:
        n = lines_in(results)
        if n >= at_least:
            break
        time.sleep(0.0005)
    time.sleep(delay_s)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    return n


@pytest.fixture(scope="module")
def image_folder(small_category, tmp_path_factory):
    """60 images (training, validation and test crops of the small category) enlarged to 256 px, so
    that decoding makes the run long enough (a few ms per image) to be killed part-way."""
    found = sorted(p for p in small_category.rglob("*.png") if "ground_truth" not in p.parts)[:N_IMAGES]
    assert len(found) == N_IMAGES
    folder = tmp_path_factory.mktemp("line")
    for i, p in enumerate(found):
        cv2.imwrite(str(folder / f"{i:03d}_{p.name}"), cv2.resize(cv2.imread(str(p)), (256, 256)))
    return folder


def test_sigkill_part_way_then_restart_records_every_image_exactly_once(small_bundle, image_folder, tmp_path):
    out = tmp_path / "out"
    results = out / "results.jsonl"
    cmd = linewatch_cmd("inspect", "--bundle", str(small_bundle), "--source", str(image_folder), "--out", str(out),
                        "--batch-size", "1", "--threads", "1")
    history: list[dict] = []
    # kill twice: right after a record, then 3 ms later (anywhere: mid-record, mid-heat-map, mid-batch)
    for more, delay_s in ((5, 0.0), (10, 0.003)):
        at_least = (history[-1]["valid_records"] if history else 0) + more
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        seen = kill_when(proc, results, at_least, delay_s)
        valid = len(read_results(results))
        history.append({"lines_at_kill": seen, "valid_records": valid, "returncode": proc.returncode})
        assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed part-way"
        assert at_least <= valid < N_IMAGES
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    sources = [r["source"] for r in read_results(results)]
    counts = Counter(sources)
    print(f"\nSIGKILL test: {history}; final run: {summary}; records {len(sources)}, distinct {len(counts)}")
    assert summary["skipped_already_recorded"] == history[-1]["valid_records"]
    assert summary["inspected"] == N_IMAGES - history[-1]["valid_records"]
    assert set(counts) == {str(p) for p in image_folder.glob("*.png")}          # nothing lost, nothing extra
    assert max(counts.values()) == 1                                            # nothing twice
    assert all(r["error"] is None and r["score"] is not None for r in read_results(results))


def test_sigterm_stops_a_folder_watch_cleanly(small_bundle, image_folder, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(linewatch_cmd("inspect", "--bundle", str(small_bundle), "--source", str(image_folder),
                                          "--out", str(out), "--watch", "--poll", "0.05", "--settle", "0",
                                          "--threads", "1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while lines_in(out / "results.jsonl") < 10 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    summary = json.loads(stdout)
    assert summary["stopped"] == "SIGTERM" and summary["source_kind"] == "watch"
    text = (out / "results.jsonl").read_text()
    assert text.endswith("\n") and len(read_results(out / "results.jsonl")) == text.count("\n") == summary["inspected"]
