"""Kill `linewatch inspect` with SIGKILL at random moments, restart it each time, then count records
lost, duplicated and torn. Prints a markdown section for ``bench/results/robustness.md``.

    python bench/crash_inspect.py --bundle BUNDLE --images DIR [--copies 3] [--kills 12] [--seed 0]

The images of ``DIR`` (``*.png``) are copied ``--copies`` times into a fresh work folder; each round
starts ``linewatch inspect --batch-size 1 --threads 1`` over it, waits for its first new record, sleeps
a random 0-``--max-delay`` s, and kills it. A final run finishes the folder. ``tests/test_inspect_crash.py``
is the pass/fail version of this (it fails if a record is lost or duplicated).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from linewatch.runtime.inspect_run import read_results


def unparsable_lines(results: Path) -> int:
    bad = 0
    for line in results.read_bytes().split(b"\n") if results.exists() else []:
        if line.strip():
            try:
                json.loads(line)
            except json.JSONDecodeError:
                bad += 1
    return bad


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--images", required=True, type=Path)
    ap.add_argument("--copies", type=int, default=3)
    ap.add_argument("--kills", type=int, default=12)
    ap.add_argument("--max-delay", type=float, default=0.15)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=None)
    a = ap.parse_args()

    work = a.work or Path(tempfile.mkdtemp(prefix="linewatch-crash-"))
    shutil.rmtree(work, ignore_errors=True)
    src = work / "src"
    src.mkdir(parents=True)
    for r in range(a.copies):
        for p in sorted(a.images.glob("*.png")):
            shutil.copy(p, src / f"{r}_{p.name}")
    want = {str(p) for p in src.glob("*.png")}
    out = work / "out"
    results = out / "results.jsonl"
    cmd = [sys.executable, "-m", "linewatch", "inspect", "--bundle", a.bundle, "--source", str(src),
           "--out", str(out), "--batch-size", "1", "--threads", "1"]
    rng = random.Random(a.seed)
    rows = []
    for _ in range(a.kills):
        before = len(read_results(results))
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while proc.poll() is None and len(read_results(results)) <= before:
            time.sleep(0.001)
        time.sleep(rng.uniform(0, a.max_delay))
        finished = proc.poll() is not None
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        rows.append((before, len(read_results(results)), unparsable_lines(results), finished))
        if finished:
            break
    final = subprocess.run(cmd, capture_output=True, text=True)
    counts = Counter(r["source"] for r in read_results(results))
    summary = json.loads(final.stdout) if final.returncode == 0 else {"error": final.stderr.strip()}
    print(f"{len(want)} images (`{a.images}` x {a.copies}), `linewatch inspect --batch-size 1 --threads 1`, "
          f"killed {len(rows)} times with SIGKILL at a random moment (0-{a.max_delay:g} s after a new record), "
          "restarted after each kill.\n")
    print("| kill | records before | records after the kill | unparsable lines in the file |")
    print("|---|---|---|---|")
    for i, (before, after, bad, finished) in enumerate(rows, 1):
        print(f"| {i} | {before} | {after}{' (had finished)' if finished else ''} | {bad} |")
    print(f"\nFinal run: exit {final.returncode}, skipped {summary.get('skipped_already_recorded')}, "
          f"inspected {summary.get('inspected')}. Records {sum(counts.values())}, distinct {len(counts)}: "
          f"**lost {len(want - set(counts))}, duplicated {sum(v - 1 for v in counts.values())}, "
          f"extra {len(set(counts) - want)}**, unparsable lines {unparsable_lines(results)}.")


if __name__ == "__main__":
    main()
