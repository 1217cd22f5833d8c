"""``linewatch serve``: a real server on loopback (ephemeral port), every endpoint, the limits, the token,
reloads under concurrent requests, the CLI's SIGTERM shutdown and the edge import rule (no torch)."""
from __future__ import annotations

import base64
import contextlib
import gc
import http.client
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import run_without_torch
from linewatch.runtime.bundle import MANIFEST_NAME, Bundle, BundleError, seal_manifest
from linewatch.runtime.inspector import Inspector
from linewatch.runtime.preprocess import decode_image
from linewatch.runtime.serve import InspectionService, ServeOptions, make_server
from linewatch.runtime.service_metrics import ServiceMetrics, quantile


@contextlib.contextmanager
def running(bundle, **options):
    """A real server on 127.0.0.1 and a free port, serving in a thread; yields it (``server.url``)."""
    opts = ServeOptions(host="127.0.0.1", port=0, log_requests=False, **options)
    server = make_server(bundle, opts)
    loop = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    loop.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def call(server, method, path, body=None, headers=None, timeout=60):
    """-> (status, headers, body bytes); a new connection per call."""
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def inspect(server, data, path="/v1/inspect", headers=None):
    status, h, body = call(server, "POST", path, data, {"Content-Type": "image/png", **(headers or {})})
    return status, json.loads(body)


def read_all(sock: socket.socket) -> str:
    """Everything the server sends until it closes the connection."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks).decode()


@pytest.fixture(scope="module")
def images(small_category):
    """Encoded PNGs: a few good and a few defective test images of the small category."""
    good = sorted((Path(small_category) / "test" / "good").glob("*.png"))[:3]
    bad = sorted(p for p in (Path(small_category) / "test").rglob("*.png") if p.parent.name != "good")[:3]
    return [p.read_bytes() for p in good + bad]


@pytest.fixture(scope="module")
def other_bundle(small_bundle, tmp_path_factory):
    """The small bundle with a different manifest (threshold + 1): another bundle id, same graph."""
    dst = tmp_path_factory.mktemp("other") / "brick2"
    shutil.copytree(small_bundle, dst)
    m = json.loads((dst / MANIFEST_NAME).read_text())
    m["decision"]["threshold"] += 1.0
    (dst / MANIFEST_NAME).write_text(json.dumps(m, indent=2))
    seal_manifest(dst)
    return dst


def test_inspect_raw_multipart_and_heat_map_match_the_inspector(small_bundle, images):
    direct = Inspector(small_bundle, threads=1)
    with running(small_bundle) as server:
        for data in images:
            status, v = inspect(server, data)
            assert status == 200, v
            want, _ = direct.inspect_image(decode_image(data))
            assert v["score"] == pytest.approx(want.score, rel=1e-5)
            assert v["p_value"] == pytest.approx(want.p_value)
            assert v["anomalous"] is (v["score"] > v["threshold"]) and v["threshold"] == direct.threshold
            assert v["bundle"] == direct.bundle.id == v["bundle_version"]["id"]
            assert v["bundle_version"]["created_utc"] and v["latency_ms"] > 0 and v["server_ms"] >= v["latency_ms"]
            assert "heatmap_png_base64" not in v

        boundary = "xYzBoundary42"
        form = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n"
                f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"cam1-0007.png\"\r\n"
                f"Content-Type: image/png\r\n\r\n").encode() + images[-1] + f"\r\n--{boundary}--\r\n".encode()
        status, _, body = call(server, "POST", "/v1/inspect?map=1", form,
                               {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        v = json.loads(body)
        assert status == 200, v
        assert v["source"] == "cam1-0007.png"
        assert v["score"] == pytest.approx(direct.inspect_image(decode_image(images[-1]))[0].score, rel=1e-5)
        heat = cv2.imdecode(np.frombuffer(base64.b64decode(v["heatmap_png_base64"]), np.uint8), cv2.IMREAD_UNCHANGED)
        assert heat.shape == decode_image(images[-1]).shape[:2] + (3,)

        status, v = inspect(server, images[0], path="/v1/inspect?source=line2/part9.png",
                            headers={"Content-Type": "application/octet-stream"})
        assert status == 200 and v["source"] == "line2/part9.png"


def test_healthz_and_metrics_count_what_happened(small_bundle, images):
    with running(small_bundle) as server:
        status, _, body = call(server, "GET", "/healthz")
        assert status == 200 and json.loads(body)["status"] == "ok"
        scores = [inspect(server, d)[1]["score"] for d in images]
        flagged = sum(s > Bundle.load(small_bundle).manifest.decision.threshold for s in scores)
        assert inspect(server, b"not an image")[0] == 400
        status, headers, body = call(server, "GET", "/metrics")
        assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = body.decode()
    rows = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            rows[name] = float(value)
    n = len(images)
    assert rows['linewatch_requests_total{endpoint="/v1/inspect",code="200"}'] == n
    assert rows['linewatch_requests_total{endpoint="/v1/inspect",code="400"}'] == 1
    assert rows['linewatch_requests_total{endpoint="/healthz",code="200"}'] == 1
    assert rows['linewatch_request_errors_total{endpoint="/v1/inspect"}'] == 1
    assert rows['linewatch_inspect_seconds_count'] == n == rows['linewatch_inspect_seconds_bucket{le="+Inf"}']
    buckets = [v for k, v in rows.items() if k.startswith("linewatch_inspect_seconds_bucket")]
    assert buckets == sorted(buckets)                                     # cumulative
    assert rows["linewatch_images_inspected_total"] == n and rows["linewatch_images_flagged_total"] == flagged
    assert rows["linewatch_flagged_ratio_recent"] == pytest.approx(flagged / n)
    assert rows['linewatch_score{quantile="0.5"}'] == pytest.approx(float(np.median(scores)), rel=1e-6)
    assert rows["linewatch_score_sum"] == pytest.approx(sum(scores), rel=1e-6)
    assert rows["linewatch_in_flight_requests"] >= 1     # the /metrics request itself (an earlier one may be closing)
    assert any(k.startswith("linewatch_bundle_info{") for k in rows) and rows["process_resident_memory_bytes"] > 1e6


def test_limits_answer_json_errors_and_the_service_goes_on(small_bundle, images):
    with running(small_bundle, max_body_bytes=len(images[0]) + 10, timeout_s=0.5) as server:
        host, port = server.server_address[:2]
        conn = http.client.HTTPConnection(host, port, timeout=10)            # 413 from Content-Length alone
        conn.putrequest("POST", "/v1/inspect")
        conn.putheader("Content-Type", "image/png")
        conn.putheader("Content-Length", str(10 ** 9))
        conn.endheaders()
        r = conn.getresponse()
        err = json.loads(r.read())
        assert r.status == 413 and err["status"] == 413 and "limit" in err["error"] and r.getheader("Connection") == "close"
        conn.close()

        conn = http.client.HTTPConnection(host, port, timeout=10)            # 411: no Content-Length
        conn.putrequest("POST", "/v1/inspect")
        conn.endheaders()
        r = conn.getresponse()
        assert r.status == 411 and "Content-Length" in json.loads(r.read())["error"]
        conn.close()

        status, err = inspect(server, b"\x89PNG\r\n\x1a\n garbage")
        assert status == 400 and "not a readable image" in err["error"]
        assert inspect(server, b"")[0] == 400
        status, _, body = call(server, "POST", "/v1/inspect", images[0], {"Content-Type": "application/json"})
        assert status == 415 and "not an image" in json.loads(body)["error"]
        status, _, body = call(server, "POST", "/v1/inspect", b"--x\r\n", {"Content-Type": "multipart/form-data"})
        assert status == 400 and "boundary" in json.loads(body)["error"]
        status, _, body = call(server, "GET", "/v2/everything")
        assert status == 404 and json.loads(body)["status"] == 404
        status, headers, body = call(server, "GET", "/v1/inspect")
        assert status == 405 and headers["Allow"] == "POST" and "not allowed" in json.loads(body)["error"]
        status, _, body = call(server, "POST", "/v1/reload", b"{not json", {"Content-Type": "application/json"})
        assert status == 400 and "not JSON" in json.loads(body)["error"]

        with socket.create_connection((host, port), timeout=10) as s:        # 408: the body never arrives
            s.sendall(b"POST /v1/inspect HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 100\r\n\r\n0123")
            reply = read_all(s)
        assert reply.startswith("HTTP/1.1 408") and '"status": 408' in reply
        with socket.create_connection((host, port), timeout=10) as s:        # malformed request line
            s.sendall(b"NONSENSE\r\n\r\n")
            reply = read_all(s)
        assert reply.startswith("HTTP/1.1 400") and '"error"' in reply

        status, v = inspect(server, images[0])                               # still serving
        assert status == 200 and v["score"] is not None


def test_bearer_token_guards_everything_but_healthz(small_bundle, images):
    with running(small_bundle, token="s3cret-t0ken") as server:
        status, headers, body = call(server, "POST", "/v1/inspect", images[0], {"Content-Type": "image/png"})
        assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer") and "LINEWATCH_TOKEN" in json.loads(body)["error"]
        assert inspect(server, images[0], headers={"Authorization": "Bearer wrong"})[0] == 401
        assert inspect(server, images[0], headers={"Authorization": "Basic s3cret-t0ken"})[0] == 401
        assert inspect(server, images[0], headers={"Authorization": "Bearer s3cret-t0ken"})[0] == 200
        assert call(server, "GET", "/metrics")[0] == 401
        assert call(server, "POST", "/v1/reload")[0] == 401
        assert call(server, "GET", "/metrics", headers={"Authorization": "Bearer s3cret-t0ken"})[0] == 200
        assert call(server, "GET", "/healthz")[0] == 200


def test_reload_under_concurrent_requests_drops_nothing(small_bundle, other_bundle, images):
    first, second = Bundle.load(small_bundle), Bundle.load(other_bundle)
    thresholds = {first.id: first.manifest.decision.threshold, second.id: second.manifest.decision.threshold}
    with running(small_bundle, workers=2) as server:
        host, port = server.server_address[:2]
        stop = threading.Event()
        results: list[list[tuple[int, dict]]] = [[] for _ in range(4)]

        def client(k: int) -> None:
            conn = http.client.HTTPConnection(host, port, timeout=60)         # keep-alive, as a camera would
            i = 0
            while not stop.is_set():
                try:
                    conn.request("POST", "/v1/inspect", images[(i + k) % len(images)], {"Content-Type": "image/png"})
                    r = conn.getresponse()
                    results[k].append((r.status, json.loads(r.read())))
                except Exception as exc:  # noqa: BLE001  (counted as a failure)
                    results[k].append((-1, {"error": repr(exc)}))
                    conn.close()
                    conn = http.client.HTTPConnection(host, port, timeout=60)
                i += 1
            conn.close()

        threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()

        def wait_for(n: int) -> None:
            deadline = time.monotonic() + 60
            while sum(map(len, results)) < n and time.monotonic() < deadline:
                time.sleep(0.01)

        reloads = []
        try:
            wait_for(8)
            for target in (other_bundle, small_bundle, other_bundle):
                status, _, body = call(server, "POST", "/v1/reload", json.dumps({"bundle": str(target)}).encode(),
                                       {"Content-Type": "application/json"})
                reloads.append((status, json.loads(body)))
                wait_for(sum(map(len, results)) + 8)
            bad = call(server, "POST", "/v1/reload", json.dumps({"bundle": str(other_bundle) + "-missing"}).encode())
            marks = [len(rs) for rs in results]       # every client gets two more answers after the last reload
            deadline = time.monotonic() + 60
            while any(len(rs) < m + 2 for rs, m in zip(results, marks)) and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        status, _, body = call(server, "POST", "/v1/reload")                  # re-read the served folder
        assert status == 200 and json.loads(body)["bundle"] == second.id

    assert [s for s, _ in reloads] == [200, 200, 200], reloads
    assert [r["bundle"] for _, r in reloads] == [second.id, first.id, second.id]
    assert [r["previous"] for _, r in reloads] == [first.id, second.id, first.id]
    assert bad[0] == 422 and second.id in json.loads(bad[2])["error"]           # still serving the second
    flat = [r for rs in results for r in rs]
    failures = [r for r in flat if r[0] != 200]
    assert not failures, failures[:3]
    assert len(flat) >= 40
    seen = {v["bundle"] for _, v in flat}
    assert seen == {first.id, second.id}
    for _, v in flat:                        # each verdict was made whole by one bundle
        assert v["threshold"] == pytest.approx(thresholds[v["bundle"]]) and v["bundle_version"]["id"] == v["bundle"]
    for rs in results:                       # after the last reload every client ends on the second bundle
        assert rs[-1][1]["bundle"] == second.id


def test_reload_waits_out_a_bundle_being_rewritten(small_bundle, tmp_path):
    served = tmp_path / "brick"
    shutil.copytree(small_bundle, served)
    service = InspectionService(served, ServeOptions(reload_retry_s=5.0))
    old = service.inspector
    # the state between write_bundle's two renames: the folder is gone, its new version waits beside it
    tmp = tmp_path / ".brick.tmp-abc"
    served.rename(tmp_path / ".brick.old-1")
    shutil.copytree(small_bundle, tmp)
    m = json.loads((tmp / MANIFEST_NAME).read_text())
    m["decision"]["threshold"] += 2.0
    (tmp / MANIFEST_NAME).write_text(json.dumps(m))
    seal_manifest(tmp)

    def finish_writing() -> None:
        time.sleep(0.3)
        tmp.rename(served)
        shutil.rmtree(tmp_path / ".brick.old-1")

    writer = threading.Thread(target=finish_writing)
    writer.start()
    out = service.reload()
    writer.join()
    assert out["previous"] == old.bundle.id and out["bundle"] != old.bundle.id
    assert service.inspector.threshold == pytest.approx(old.threshold + 2.0)
    gone = weakref.ref(old)                  # nothing keeps the replaced inspector (and its session) alive
    del old
    gc.collect()
    assert gone() is None
    # without a writer at work, a missing bundle fails at once and the old one keeps serving
    t0 = time.monotonic()
    with pytest.raises(BundleError, match="no such bundle folder"):
        service.reload(tmp_path / "nothing-here")
    assert time.monotonic() - t0 < 1.0 and service.inspector.bundle.id == out["bundle"]


def test_cli_serves_until_sigterm(small_bundle, images, tmp_path):
    env = {**os.environ, "LINEWATCH_TOKEN": "tok"}
    env.pop("OPENCV_IO_MAX_IMAGE_PIXELS", None)
    proc = subprocess.Popen([sys.executable, "-m", "linewatch", "serve", "--bundle", str(small_bundle), "--port", "0",
                             "--quiet", "--max-pixels", "10000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        hello = json.loads(proc.stdout.readline())
        assert hello["listening"].startswith("http://127.0.0.1:") and hello["auth"] is True
        host, port = hello["listening"][len("http://"):].split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        conn.request("POST", "/v1/inspect", images[0], {"Authorization": "Bearer tok"})
        r = conn.getresponse()
        assert r.status == 200 and json.loads(r.read())["bundle"] == hello["bundle"]
        big = cv2.imencode(".png", np.zeros((200, 200), np.uint8))[1].tobytes()      # 40000 pixels > 10000
        conn.request("POST", "/v1/inspect", big, {"Authorization": "Bearer tok"})
        r = conn.getresponse()
        err = json.loads(r.read())
        assert r.status == 400 and "pixels" in err["error"], err  # refused from the header
        conn.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in proc.stderr.read()


def test_cli_serve_help_and_bad_bundle():
    out = subprocess.run([sys.executable, "-m", "linewatch", "serve", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for word in ("/v1/inspect", "/v1/reload", "/healthz", "/metrics", "LINEWATCH_TOKEN", "--max-body-bytes", "413"):
        assert word in out.stdout
    bad = subprocess.run([sys.executable, "-m", "linewatch", "serve", "--bundle", "/no/such/bundle", "--port", "0"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "no such bundle folder" in bad.stderr


def test_serve_runs_without_torch(small_bundle, images):
    png = Path(small_bundle).parent / "probe.png"
    png.write_bytes(images[0])
    result = run_without_torch(f"""
        import http.client, json, sys, threading
        from linewatch.runtime.serve import ServeOptions, make_server
        server = make_server({str(small_bundle)!r}, ServeOptions(port=0, log_requests=False))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        conn = http.client.HTTPConnection(*server.server_address[:2], timeout=60)
        conn.request("POST", "/v1/inspect?map=1", open({str(png)!r}, "rb").read())
        r = conn.getresponse()
        body = json.loads(r.read())
        server.shutdown()
        print(json.dumps({{"status": r.status, "map": "heatmap_png_base64" in body,
                          "loaded": sorted(m for m in ("torch", "onnx", "sklearn") if m in sys.modules)}}))
    """)
    assert result == {"status": 200, "map": True, "loaded": []}


def test_metrics_quantiles_buckets_and_escaping():
    m = ServiceMetrics(window=4, buckets_s=(0.01, 0.1))
    m.request_started()
    m.count_request("/v1/inspect", 413)
    assert m.in_flight == 1 and m.snapshot()["errors"] == {"/v1/inspect": 1}
    m.request_finished()
    assert m.in_flight == 0
    for s, score in [(0.005, 1.0), (0.01, 2.0), (0.05, 3.0), (3.0, 4.0), (0.02, 10.0)]:
        m.observe_inspection(s, score, anomalous=score > 3.5)
    snap = m.snapshot()
    assert snap["bucket_counts"] == [2, 2, 1]                   # le=0.01 is inclusive; 3.0 s goes to +Inf
    assert snap["recent_scores"] == [2.0, 3.0, 4.0, 10.0]       # the window keeps the last 4
    assert snap["flagged_ratio_recent"] == pytest.approx(0.5)
    values = [2.0, 3.0, 4.0, 10.0]
    for q in (0.0, 0.5, 0.9, 0.99, 1.0):
        assert quantile(values, q) == pytest.approx(float(np.quantile(values, q)))
    assert np.isnan(quantile([], 0.5))
    m.set_bundle(id='a"b\\c\nd')
    text = m.render()
    assert 'linewatch_bundle_info{id="a\\"b\\\\c\\nd"} 1' in text
    assert 'linewatch_inspect_seconds_bucket{le="0.1"} 4' in text and "linewatch_score_count 5" in text


def metric_rows(text: str) -> dict[str, float]:
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line and not line.startswith("#")}


def test_drift_shows_in_answers_healthz_and_metrics_and_a_reload_resets_it(small_bundle, small_category, capsys):
    train = sorted((Path(small_category) / "train").rglob("*.png"))
    good = [p.read_bytes() for p in train[:5]]
    rng = np.random.default_rng(0)    # a much brighter lamp and a noisier sensor: far beyond the benign copies
    bright = [cv2.imencode(".png", np.clip(cv2.imread(str(p)) * 2.0 + 40 + rng.normal(0, 25, (64, 64, 3)), 0, 255)
                           .astype(np.uint8))[1].tobytes() for p in train[5:20]]
    with running(small_bundle, drift_window=20) as server:
        answers = [inspect(server, d)[1] for d in good + bright]
        assert [a["anomalous"] for a in answers] == [False] * 5 + [True] * 15
        # 20 images is the window (and so min_images): 15 of 20 flagged, far above 1/13, warns with the 20th
        assert [a["drift"] for a in answers] == [False] * 19 + [True]
        health = json.loads(call(server, "GET", "/healthz")[2])
        assert health["status"] == "ok" and health["drift"] is True
        rows = metric_rows(call(server, "GET", "/metrics")[2].decode())
        assert rows["linewatch_drift"] == 1 and rows["linewatch_drift_flagged_share"] == pytest.approx(0.75)
        assert rows["linewatch_drift_target"] == pytest.approx(1 / 13) and rows["linewatch_drift_psi"] > 0.25
        assert call(server, "POST", "/v1/reload")[0] == 200                 # a new calibration: a new window
        assert json.loads(call(server, "GET", "/healthz")[2])["drift"] is False
        rows = metric_rows(call(server, "GET", "/metrics")[2].decode())
        assert rows["linewatch_drift"] == 0 and math.isnan(rows["linewatch_drift_flagged_share"])
        assert inspect(server, good[0])[1]["drift"] is False
    err = capsys.readouterr().err
    assert err.count("linewatch serve: warning: drift: 15 of the last 20 images flagged (75.0 %, target 7.7 %)") == 1

    with running(small_bundle, drift_window=0) as server:
        assert inspect(server, bright[0])[1]["drift"] is None
        assert json.loads(call(server, "GET", "/healthz")[2])["drift"] is None
        assert "linewatch_drift" not in call(server, "GET", "/metrics")[2].decode()
