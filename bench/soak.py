"""Soak of ``linewatch serve``: a fixed request rate for a fixed time; errors, p99 latency and RSS growth.

Writes ``bench/results/soak.md``. Targets (issue 8): zero errors and server RSS growth <= 5 % over the
run. Not part of CI; ``make bench-soak`` runs the full 10 minutes.

    python bench/soak.py [--duration 600] [--rate 20] [--bundle B] [--clients 8] [--reload-every 0]
                         [--burst 100] [--warmup 60] [--threads 1] [--workers 0] [--out FILE] [--note TEXT]

The server is ``linewatch serve --quiet`` in its own process (see ``bench/service.py``). Requests are
sent on a fixed schedule (open loop: request ``i`` is due at ``start + i / rate``) by ``--clients``
threads, each with its own keep-alive connection, posting the demo brick test images in turn. Latency
is measured from the moment a request was due, so a server that falls behind shows it in the
latency instead of silently lowering the rate; requests sent more than 100 ms after they were due are
counted as late. ``--reload-every S`` also reloads the bundle every S seconds during the run.

Before the schedule starts, a burst of ``--burst`` requests as fast as the ``--clients`` threads go
brings the server to its peak concurrency once: buffers (onnxruntime's arena, per-thread memory) grow
to the size the peak needs the first time it happens, which a fixed-rate run may only meet minutes in,
and that step is not a leak. The burst's errors count as errors of the run.

Memory: the server's ``VmRSS`` (``/proc/<pid>/status``) is sampled every ``--sample-every`` seconds.
Growth is measured from the end of the warm-up (``--warmup`` seconds: arenas, caches and the first
allocations of every thread settle there) to the end of the run, on the median of the last three
samples at each end; the slope of a least-squares line through the samples after the warm-up is
reported too (MB per minute), which tells a leak from a step.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import latency  # noqa: E402
from service import default_bundle, drive, load_images, percentile, post_image, rss_mb, start_server  # noqa: E402

RESULTS = HERE / "results"
TARGET_RSS_GROWTH = 0.05
LATE_S = 0.1


def say(msg: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_soak(server, images: list[bytes], duration: float, rate: float, clients: int, sample_every: float,
             reload_every: float = 0.0) -> dict:
    """Drive ``server`` at ``rate`` requests/s for ``duration`` s -> per-request records and RSS samples."""
    n = int(duration * rate)
    start = time.monotonic() + 0.5
    lock = threading.Lock()
    next_i = [0]
    records: list[tuple[float, int, float, bool]] = []     # (due offset s, status, latency ms, late)
    errors: list[str] = []
    samples: list[tuple[float, float]] = []                 # (offset s, RSS MB)
    reloads: list[tuple[float, int]] = []
    done = threading.Event()

    def client() -> None:
        conn = server.connection()
        while True:
            with lock:
                i = next_i[0]
                next_i[0] += 1
            if i >= n:
                break
            due = start + i / rate
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            sent = time.monotonic()
            try:
                status, body = post_image(conn, images[i % len(images)])
            except Exception as exc:  # noqa: BLE001  (every failure is an error of the run)
                status, body = -1, {"error": repr(exc)}
                conn.close()
                conn = server.connection()
            end = time.monotonic()
            with lock:
                records.append((due - start, status, 1000 * (end - due), sent - due > LATE_S))
                if status != 200:
                    errors.append(f"{status}: {body.get('error')}")
        conn.close()

    def sampler() -> None:
        while not done.is_set():
            v = rss_mb(server.pid)
            if v is not None:
                samples.append((time.monotonic() - start, v))
            done.wait(sample_every)

    def reloader() -> None:
        while not done.wait(reload_every):
            conn = server.connection()
            try:
                conn.request("POST", "/v1/reload")
                r = conn.getresponse()
                r.read()
                reloads.append((time.monotonic() - start, r.status))
            except Exception:  # noqa: BLE001
                reloads.append((time.monotonic() - start, -1))
            finally:
                conn.close()

    helpers = [threading.Thread(target=sampler, daemon=True)]
    if reload_every > 0:
        helpers.append(threading.Thread(target=reloader, daemon=True))
    workers = [threading.Thread(target=client) for _ in range(clients)]
    for t in helpers + workers:
        t.start()
    last_report = time.monotonic()
    while any(t.is_alive() for t in workers):
        time.sleep(0.5)
        if time.monotonic() - last_report >= 30:
            last_report = time.monotonic()
            with lock:
                k, e = len(records), len(errors)
            say(f"  {time.monotonic() - start:.0f} s: {k} requests, {e} errors, RSS {rss_mb(server.pid):.0f} MB")
    for t in workers:
        t.join()
    done.set()
    samples.append((time.monotonic() - start, rss_mb(server.pid) or float("nan")))
    return {"records": records, "errors": errors, "samples": samples, "reloads": reloads, "n": n,
            "wall_s": time.monotonic() - start}


def summarise(run: dict, duration: float, warmup: float, windows: int = 10) -> dict:
    import numpy as np

    recs = sorted(run["records"])
    ok = [lat for _, st, lat, _ in recs if st == 200]
    t = np.asarray([s[0] for s in run["samples"]])
    v = np.asarray([s[1] for s in run["samples"]])
    warm = min(warmup, 0.5 * duration)
    after = t >= warm
    base = float(np.median(v[after][:3])) if after.any() else float("nan")
    end = float(np.median(v[-3:])) if len(v) else float("nan")
    slope = float(np.polyfit(t[after], v[after], 1)[0] * 60) if after.sum() >= 3 else None
    rows = []
    width = duration / windows
    for w in range(windows):
        lo, hi = w * width, (w + 1) * width
        part = [r for r in recs if lo <= r[0] < hi]
        lats = [lat for _, st, lat, _ in part if st == 200]
        rss = v[(t >= lo) & (t < hi)]
        rows.append({"from_s": lo, "to_s": hi, "requests": len(part), "errors": sum(st != 200 for _, st, _, _ in part),
                     "p50_ms": percentile(lats, 50), "p99_ms": percentile(lats, 99),
                     "rss_mb": float(rss.max()) if rss.size else None})
    return {"requests": len(recs), "scheduled": run["n"], "errors": len(run["errors"]),
            "error_examples": sorted(set(run["errors"]))[:5], "late": sum(r[3] for r in recs),
            "achieved_rate": len(recs) / max(run["wall_s"], 1e-9), "p50_ms": percentile(ok, 50),
            "p99_ms": percentile(ok, 99), "max_ms": max(ok, default=None), "rss_start_mb": float(v[0]) if len(v) else None,
            "rss_base_mb": base, "rss_end_mb": end, "rss_peak_mb": float(v.max()) if len(v) else None,
            "rss_growth": (end - base) / base if base == base and base > 0 else None,
            "rss_slope_mb_per_min": slope, "warmup_s": warm, "windows": rows,
            "reloads": len(run["reloads"]), "reload_failures": sum(st != 200 for _, st in run["reloads"])}


def f1(x, nd=1) -> str:
    return "–" if x is None else f"{x:.{nd}f}"


def write_report(R: dict, path: Path) -> None:
    S, m = R["summary"], R["machine"]
    growth = S["rss_growth"]
    burst_errors = R["burst"]["errors"] if R.get("burst") else 0
    ok_errors = S["errors"] == 0 and burst_errors == 0 and S["reload_failures"] == 0
    ok_rss = growth is not None and growth <= TARGET_RSS_GROWTH
    L = [
        "# `linewatch serve` soak",
        "",
        f"Written by `bench/soak.py` (`make bench-soak`): {R['duration_s']:.0f} s at {R['rate']:g} requests/s "
        f"(open loop, {R['clients']} client threads with keep-alive connections), posting {R['images']} demo brick "
        f"test images (224-px PNG) in turn to `POST /v1/inspect`. Server: `linewatch serve --quiet`, "
        f"{R['workers']} workers x {R['threads']} onnxruntime thread(s), bundle `{R['bundle']}` (id `{R['bundle_id']}`)"
        + (f"; the bundle was reloaded every {R['reload_every']:g} s ({S['reloads']} reloads, {S['reload_failures']} failed)"
           if R["reload_every"] else "") + ".",
        "",
        f"Machine: {m['cpu']}, {m['cores']} logical CPUs; Python {m['python']}, onnxruntime {m['onnxruntime']}; "
        f"{m['utc']}; load average {m['load_before'][0]:.1f} before, {m['load_after'][0]:.1f} after.",
        "",
        "| target | measured | met |",
        "|---|---|---|",
        f"| zero errors | {S['errors']} errors in {S['requests']} requests"
        + (f" (+ {burst_errors} in the burst)" if burst_errors else "")
        + (f", {S['reload_failures']} failed reloads" if R["reload_every"] else "") + f" | {'yes' if ok_errors else 'no'} |",
        f"| RSS growth <= {100 * TARGET_RSS_GROWTH:.0f} % | {f1(S['rss_base_mb'])} -> {f1(S['rss_end_mb'])} MB "
        f"({'–' if growth is None else f'{100 * growth:+.1f} %'}) | {'yes' if ok_rss else 'no'} |",
        f"| p99 latency (reported) | {f1(S['p99_ms'])} ms (p50 {f1(S['p50_ms'])}, max {f1(S['max_ms'])}) | – |",
        "",
        (f"Before the schedule, a burst of {R['burst']['requests']} requests at concurrency {R['clients']} "
         f"({R['burst']['errors']} errors; RSS {f1(R['burst']['rss_before_mb'])} -> {f1(R['burst']['rss_after_mb'])} MB) "
         "brought the server to its peak concurrency once. " if R.get("burst") else "")
        + f"Achieved rate {S['achieved_rate']:.2f} requests/s of {R['rate']:g} scheduled ({S['requests']} of "
        f"{S['scheduled']} requests); {S['late']} sent more than {1000 * LATE_S:.0f} ms after they were due. "
        f"RSS: {f1(S['rss_start_mb'])} MB at the start, {f1(S['rss_base_mb'])} MB after the {S['warmup_s']:.0f}-s "
        f"warm-up, {f1(S['rss_end_mb'])} MB at the end, peak {f1(S['rss_peak_mb'])} MB; slope after the warm-up "
        f"{f1(S['rss_slope_mb_per_min'], 2)} MB/min. The server exited with code {R['exit_code']} on SIGTERM.",
        "",
        "| window s | requests | errors | p50 ms | p99 ms | max RSS MB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for w in S["windows"]:
        L.append(f"| {w['from_s']:.0f}-{w['to_s']:.0f} | {w['requests']} | {w['errors']} | {f1(w['p50_ms'])} | "
                 f"{f1(w['p99_ms'])} | {f1(w['rss_mb'])} |")
    L += [
        "",
        "- Latency is measured from the moment each request was due (the schedule), so queueing in a server that "
        "falls behind counts; growth is measured from the end of the warm-up, on the median of three samples at each end.",
    ]
    if S["error_examples"]:
        L.append(f"- Error examples: {'; '.join(S['error_examples'])}.")
    for note in R.get("notes", []):
        L.append(f"- {note}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(L) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=600.0, metavar="S", help="seconds of load (default 600)")
    ap.add_argument("--rate", type=float, default=20.0, metavar="R", help="requests per second (default 20)")
    ap.add_argument("--bundle", help="bundle to serve (default: bench/latency.py's default 224-px bundle)")
    ap.add_argument("--clients", type=int, default=8, metavar="N", help="client threads (default 8)")
    ap.add_argument("--warmup", type=float, default=60.0, metavar="S",
                    help="seconds before the RSS baseline is taken (default 60; at most half the duration)")
    ap.add_argument("--burst", type=int, default=100, metavar="N",
                    help="before the schedule starts, N requests as fast as --clients threads go (default 100): "
                         "the server meets its peak concurrency once, so its buffers reach their working size "
                         "before the baseline")
    ap.add_argument("--sample-every", type=float, default=2.0, metavar="S", help="RSS sampling period (default 2 s)")
    ap.add_argument("--reload-every", type=float, default=0.0, metavar="S",
                    help="also POST /v1/reload every S seconds (default 0 = never)")
    ap.add_argument("--threads", type=int, default=1, help="the server's onnxruntime intra-op threads (default 1)")
    ap.add_argument("--workers", type=int, default=0, help="the server's --workers (default 0 = CPUs / threads)")
    ap.add_argument("--out", type=Path, default=RESULTS / "soak.md", help="report (default bench/results/soak.md)")
    ap.add_argument("--json", type=Path, help="also write the summary as JSON here")
    ap.add_argument("--note", action="append", default=[], help="a note to add to the report (repeatable)")
    args = ap.parse_args(argv)
    if args.duration <= 0 or args.rate <= 0 or args.clients < 1:
        ap.error("--duration and --rate must be positive and --clients at least 1")

    data = latency.prepare_data()
    bundle, how = (Path(args.bundle), f"given: {args.bundle}") if args.bundle else default_bundle()
    images = load_images(data)
    load_before = os.getloadavg()
    server = start_server(bundle, args.threads, args.workers)
    say(f"server pid {server.pid} at {server.url}; {args.duration:.0f} s at {args.rate:g} req/s ({bundle}, {how})")
    try:
        burst = drive(server, images, args.clients, args.burst) if args.burst > 0 else None
        if burst:
            say(f"burst of {args.burst} requests at concurrency {args.clients}: {burst['errors']} errors, "
                f"RSS {burst['rss_before_mb']:.0f} -> {burst['rss_after_mb']:.0f} MB")
        run = run_soak(server, images, args.duration, args.rate, args.clients, args.sample_every, args.reload_every)
    finally:
        exit_code = server.stop()
    machine = latency.machine()
    machine["load_before"], machine["load_after"] = load_before, os.getloadavg()
    S = summarise(run, args.duration, args.warmup)
    R = {"summary": S, "machine": machine, "duration_s": args.duration, "rate": args.rate, "clients": args.clients,
         "images": len(images), "bundle": str(bundle), "bundle_id": server.bundle, "workers": server.workers,
         "threads": server.threads, "reload_every": args.reload_every, "burst": burst, "exit_code": exit_code, "notes": args.note}
    if args.json:
        args.json.write_text(json.dumps(R, indent=1))
    write_report(R, args.out)
    g = S["rss_growth"]
    say(f"{S['requests']} requests, {S['errors']} errors, p99 {f1(S['p99_ms'])} ms, RSS growth "
        f"{'–' if g is None else f'{100 * g:+.1f} %'}; wrote {args.out}")
    burst_errors = burst["errors"] if burst else 0
    return 0 if S["errors"] == 0 and burst_errors == 0 and S["reload_failures"] == 0 and g is not None and g <= TARGET_RSS_GROWTH else 1


if __name__ == "__main__":
    sys.exit(main())
