"""Load on ``linewatch serve``: throughput, latency, errors and memory at concurrency 1, 4 and 16.

Writes ``bench/results/service.md``. The server runs in its own process (``linewatch serve --quiet``,
onnxruntime ``--threads`` intra-op threads per image, ``--workers`` images at once); client threads in
this process post the demo brick test images (224-px PNGs, good and defective, cycled) to
``POST /v1/inspect``, each over its own keep-alive connection, ``--requests`` requests per concurrency
level after a warm-up. Reported per level: requests per second, client round-trip p50 / p99, the
server's own time per image (``server_ms``) p50, errors (any answer but 200, or a failed connection),
and the server's resident memory (``VmRSS`` of ``/proc/<pid>/status``) before the level and after it.

    python bench/service.py [--quick] [--bundle B] [--requests N] [--concurrency 1 4 16]
                            [--threads 1] [--workers 0] [--out FILE] [--note TEXT]

Without ``--bundle`` it uses bench/latency.py's default 224-px bundle (trained on the demo brick data
and cached under ``/tmp/linewatch-latency``; see that script). Clients and server share the machine:
the figures are the service on this machine with its load generator, not the service alone.
``bench/soak.py`` imports the helpers here (server start, memory, image loading, posting).
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))
import latency  # noqa: E402  (bench/latency.py: the default bundle, demo data, machine description)


def say(msg: str) -> None:
    print(f"[service {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- the server process


def rss_mb(pid: int, field: str = "VmRSS") -> float | None:
    """A memory figure of ``/proc/<pid>/status`` in MB (``VmRSS`` now, ``VmHWM`` the peak)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    host: str
    port: int
    bundle: str
    workers: int
    threads: int

    @property
    def pid(self) -> int:
        return self.proc.pid

    def connection(self, timeout: float = 60.0) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def get(self, path: str) -> tuple[int, bytes]:
        conn = self.connection()
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, then wait: the exit code (0 = a clean shutdown)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return -9


def start_server(bundle: str | os.PathLike, threads: int = 1, workers: int = 0, extra: list[str] | None = None,
                 timeout: float = 300.0) -> Server:
    """``linewatch serve --port 0 --quiet`` in a fresh process with ``threads`` OpenMP/BLAS threads; returns
    once it listens (it prints one JSON line with its address)."""
    cmd = [sys.executable, "-m", "linewatch", "serve", "--bundle", str(bundle), "--port", "0", "--quiet",
           "--threads", str(threads), "--workers", str(workers), *(extra or [])]
    proc = subprocess.Popen(cmd, env=latency.child_env(threads), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=str(REPO))
    line = proc.stdout.readline()
    if not line:
        err = proc.stderr.read()
        proc.wait(timeout=timeout)
        raise RuntimeError(f"linewatch serve did not start (exit {proc.returncode}):\n{err[-3000:]}")
    hello = json.loads(line)
    threading.Thread(target=proc.stderr.read, daemon=True).start()     # keep its stderr pipe drained
    host, port = hello["listening"][len("http://"):].rsplit(":", 1)
    return Server(proc, hello["listening"], host, int(port), hello["bundle"], hello["workers"], hello["threads"])


# ---- clients


def load_images(data: Path | None = None) -> list[bytes]:
    """The encoded test PNGs of the demo brick data (good and defective): what the load posts."""
    paths = latency._test_pngs(data or latency.prepare_data())
    if not paths:
        raise RuntimeError(f"no test PNGs under {data}/test")
    return [p.read_bytes() for p in paths]


def post_image(conn: http.client.HTTPConnection, data: bytes, token: str | None = None) -> tuple[int, dict]:
    """One ``POST /v1/inspect`` on a kept-alive connection -> (status, JSON answer)."""
    headers = {"Content-Type": "image/png"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    conn.request("POST", "/v1/inspect", data, headers)
    r = conn.getresponse()
    body = r.read()
    try:
        return r.status, json.loads(body)
    except ValueError:
        return r.status, {"error": body[:200].decode(errors="replace")}


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    import numpy as np
    return float(np.percentile(np.asarray(values, dtype=float), q))


def drive(server: Server, images: list[bytes], concurrency: int, n: int) -> dict:
    """``n`` requests from ``concurrency`` client threads (closed loop: each sends its next request when
    the last one is answered) -> figures of the level."""
    lock = threading.Lock()
    counter = iter(range(n))
    lat_ms: list[float] = []
    server_ms: list[float] = []
    score_ms: list[float] = []
    errors: list[str] = []

    def client() -> None:
        conn = server.connection()
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            t0 = time.perf_counter()
            try:
                status, body = post_image(conn, images[i % len(images)])
            except (OSError, http.client.HTTPException) as exc:
                status, body = -1, {"error": repr(exc)}
                conn.close()
                conn = server.connection()
            dt = 1000 * (time.perf_counter() - t0)
            with lock:
                if status == 200:
                    lat_ms.append(dt)
                    server_ms.append(body.get("server_ms", float("nan")))
                    score_ms.append(body.get("latency_ms", float("nan")))
                else:
                    errors.append(f"{status}: {body.get('error')}")
        conn.close()

    rss_before = rss_mb(server.pid)
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"concurrency": concurrency, "requests": n, "ok": len(lat_ms), "errors": len(errors),
            "error_examples": sorted(set(errors))[:3], "seconds": wall, "req_per_s": len(lat_ms) / wall,
            "p50_ms": percentile(lat_ms, 50), "p99_ms": percentile(lat_ms, 99), "max_ms": max(lat_ms, default=None),
            "server_p50_ms": percentile(server_ms, 50), "score_p50_ms": percentile(score_ms, 50), "rss_before_mb": rss_before, "rss_after_mb": rss_mb(server.pid)}


# ---- the run


def default_bundle() -> tuple[Path, str]:
    bundle, _, how = latency.prepare_fp32(latency.prepare_data(), None)
    return bundle, how


def measure(args) -> dict:
    data = latency.prepare_data()
    bundle, how = (Path(args.bundle), f"given: {args.bundle}") if args.bundle else default_bundle()
    images = load_images(data)
    say(f"bundle {bundle} ({how}); {len(images)} test images")
    server = start_server(bundle, args.threads, args.workers)
    say(f"server pid {server.pid} at {server.url} ({server.workers} workers x {server.threads} threads)")
    R = {"machine": latency.machine(), "bundle": str(bundle), "bundle_how": how, "bundle_id": server.bundle,
         "images": len(images), "image_bytes": int(sum(map(len, images)) / len(images)), "threads": server.threads,
         "workers": server.workers, "levels": [], "quick": bool(args.quick)}
    try:
        time.sleep(1.0)
        R["rss_start_mb"] = rss_mb(server.pid)
        warm = drive(server, images, 2, args.warmup)
        R["warmup"] = {"requests": args.warmup, "errors": warm["errors"]}
        R["rss_after_warmup_mb"] = rss_mb(server.pid)
        for c in args.concurrency:
            say(f"concurrency {c}: {args.requests} requests")
            level = drive(server, images, c, args.requests)
            say(f"  {level['req_per_s']:.1f} req/s, p50 {level['p50_ms']:.1f} ms, p99 {level['p99_ms']:.1f} ms, "
                f"{level['errors']} errors, RSS {level['rss_after_mb']:.0f} MB")
            R["levels"].append(level)
        R["rss_end_mb"] = rss_mb(server.pid)
        R["rss_peak_mb"] = rss_mb(server.pid, "VmHWM")
        status, text = server.get("/metrics")
        R["server_metrics"] = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                               for line in text.decode().splitlines()
                               if line.startswith(("linewatch_requests_total", "linewatch_request_errors_total"))}
    finally:
        R["exit_code"] = server.stop()
    R["machine"]["load_after"] = os.getloadavg()
    return R


def f1(x, nd=1) -> str:
    return "–" if x is None else f"{x:.{nd}f}"


def write_report(R: dict, path: Path) -> None:
    m = R["machine"]
    errors = sum(lv["errors"] for lv in R["levels"])
    L = [
        "# `linewatch serve` under load",
        "",
        "Written by `bench/service.py` (`make bench-service`). The server is `linewatch serve --quiet` in its own "
        f"process with {R['workers']} workers x {R['threads']} onnxruntime intra-op thread(s) (the default: one thread "
        "per image, as many images at once as CPUs); the load comes from client threads of the benchmark process on "
        "the same machine, each with its own keep-alive connection, sending its next request when the last one is "
        f"answered (closed loop). Each request posts one of {R['images']} demo brick test images (224-px PNG, "
        f"{R['image_bytes'] / 1024:.0f} KB on average, good and defective) to `POST /v1/inspect`; "
        f"{R['levels'][0]['requests'] if R['levels'] else 0} requests per level after {R['warmup']['requests']} warm-up requests.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} logical CPUs ({', '.join(m['isa'])}); Python {m['python']}, onnxruntime "
        f"{m['onnxruntime']}; {m['utc']}; load average {m['load_before'][0]:.1f} before, {m['load_after'][0]:.1f} after.",
        f"Bundle: `{R['bundle']}` ({R['bundle_how']}), id `{R['bundle_id']}`.",
        "",
        "| concurrency | requests | errors | req/s | p50 ms | p99 ms | max ms | server p50 ms | scoring p50 ms | RSS before MB | RSS after MB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for lv in R["levels"]:
        L.append(f"| {lv['concurrency']} | {lv['requests']} | {lv['errors']} | {f1(lv['req_per_s'])} | {f1(lv['p50_ms'])} | "
                 f"{f1(lv['p99_ms'])} | {f1(lv['max_ms'])} | {f1(lv['server_p50_ms'])} | {f1(lv.get('score_p50_ms'))} | {f1(lv['rss_before_mb'], 0)} | "
                 f"{f1(lv['rss_after_mb'], 0)} |")
    L += [
        "",
        f"Server memory (VmRSS): {f1(R.get('rss_start_mb'), 0)} MB once listening, {f1(R.get('rss_after_warmup_mb'), 0)} MB "
        f"after the warm-up, {f1(R.get('rss_end_mb'), 0)} MB at the end; peak (VmHWM) {f1(R.get('rss_peak_mb'), 0)} MB. "
        f"Errors over all levels: {errors}. The server exited with code {R['exit_code']} on SIGTERM.",
        "",
        "- p50 / p99 / max: client round trip (request sent to answer read) over the level's successful requests; "
        "server p50: the `server_ms` the service reports (body received to answer ready: the wait for a scoring "
        "slot, decode, preprocess, score, p-value); scoring p50: the verdict's `latency_ms` (preprocess and "
        "score only). Round trip minus server time is HTTP, JSON and the client's own threads.",
        "- Throughput is bounded by the scoring: once every worker is busy (concurrency >= workers), more clients add "
        "queueing (p50 grows with concurrency) but not images per second.",
    ]
    if errors:
        examples = sorted({e for lv in R["levels"] for e in lv["error_examples"]})[:5]
        L.append(f"- Error examples: {'; '.join(examples)}.")
    if R.get("quick"):
        L.append("- Quick run (`--quick`): few requests per level; a smoke test of the script, not a measurement.")
    for note in R.get("notes", []):
        L.append(f"- {note}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(L) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", help="bundle to serve (default: bench/latency.py's default 224-px bundle)")
    ap.add_argument("--requests", type=int, default=300, metavar="N", help="requests per concurrency level (default 300)")
    ap.add_argument("--warmup", type=int, default=20, metavar="N", help="warm-up requests (default 20)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16], metavar="C",
                    help="client threads per level (default 1 4 16)")
    ap.add_argument("--threads", type=int, default=1, help="the server's onnxruntime intra-op threads (default 1)")
    ap.add_argument("--workers", type=int, default=0, help="the server's --workers (default 0 = CPUs / threads)")
    ap.add_argument("--quick", action="store_true", help="30 requests per level: a smoke test")
    ap.add_argument("--out", type=Path, default=RESULTS / "service.md", help="report (default bench/results/service.md)")
    ap.add_argument("--json", type=Path, help="also write the raw figures as JSON here")
    ap.add_argument("--note", action="append", default=[], help="a note to add to the report (repeatable)")
    args = ap.parse_args(argv)
    if args.quick:
        args.requests, args.warmup = min(args.requests, 30), min(args.warmup, 5)
    t0 = time.perf_counter()
    R = measure(args)
    R["notes"] = args.note
    R["seconds"] = time.perf_counter() - t0
    if args.json:
        args.json.write_text(json.dumps(R, indent=1))
    write_report(R, args.out)
    say(f"wrote {args.out} in {R['seconds']:.0f} s")
    return 0 if all(lv["errors"] == 0 for lv in R["levels"]) else 1


if __name__ == "__main__":
    sys.exit(main())
