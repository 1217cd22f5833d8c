"""``linewatch serve``: inspect images over HTTP with a bundle (standard library + the runtime only).

Endpoints (JSON in and out unless said otherwise):

* ``POST /v1/inspect``: the body is one encoded image (PNG, JPEG, BMP or TIFF; ``Content-Type``
  ``image/*``, ``application/octet-stream``, curl's default ``application/x-www-form-urlencoded`` or
  none), or ``multipart/form-data`` whose part named
  ``image`` or ``file`` (else the first part) holds it. Answers the verdict of
  :meth:`Inspector.inspect_image` (``source, score, threshold, anomalous, p_value, error,
  latency_ms, bundle``) plus ``bundle_version``, ``server_ms`` (body received -> answer ready) and
  ``drift``: whether the drift warning (:mod:`drift_watch`) is on after this image (None when off).
  ``?map=1`` adds ``heatmap_png_base64``: the heat-map overlay as a base64 PNG. ``?source=NAME``
  names the image in the verdict (default: the multipart file name, else ``request body``).
* ``GET /healthz``: ``{"status": "ok", "bundle": ..., "drift": ...}``; never needs the token. Drift does
  not make it fail: the service works, its verdicts need a look.
* ``GET /metrics``: Prometheus text format (:mod:`service_metrics`).
* ``POST /v1/reload``: body empty or ``{"bundle": "PATH"}``. The new bundle is loaded and verified
  fully (checksums, onnxruntime session, graph check) before one reference is swapped; requests in
  flight finish with the inspector they started with. A bundle that cannot be loaded answers 422 and
  the old bundle keeps serving. A new bundle starts a new drift window (a new calibration).

Limits: bodies over ``max_body_bytes`` get 413 (decided from ``Content-Length`` before any byte of
the body is read; ``Expect: 100-continue`` is answered only once the request passed every check),
a missing length 411, a body or request that takes longer than ``timeout_s`` 408, undecodable images
400 with the decoder's message, other content types 415, unknown paths 404, wrong methods 405, a
missing or wrong bearer token 401 (when a token is set). At most ``workers`` images are decoded and
scored at once; a request that waits longer than ``timeout_s`` for its turn gets 503, as does a
connection beyond ``max_connections``. Every error is a JSON object ``{"error": MESSAGE, "status": CODE}``;
an unexpected failure is a 500 of that form and the service keeps running.
"""
from __future__ import annotations

import base64
import errno
import functools
import hmac
import json
import os
import signal
import socket
import sys
import threading
import time
import traceback
import weakref
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qs, urlsplit

import cv2

from .bundle import MANIFEST_NAME, Bundle, BundleError, sibling_prefix
from .drift_watch import DRIFT_WINDOW, DriftWatch, change_message, watch_bundle
from .heatmap import overlay
from .inspector import Inspector
from .preprocess import ImageError, decode_image, display_bgr
from .service_metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .service_metrics import ServiceMetrics

TOKEN_ENV = "LINEWATCH_TOKEN"
DEFAULT_MAX_BODY_BYTES = 20 * 1024 * 1024
# Largest image decoded (pixels): 50 MP is ~150 MB as 8-bit BGR. A small PNG can describe a huge
# image, so the limit, not the body size, is what bounds a request's memory (``linewatch inspect``
# keeps preprocess's far larger default, for files it is given by its operator).
SERVE_MAX_PIXELS = 50_000_000
ROUTES = {"/v1/inspect": {"POST": "inspect"}, "/v1/reload": {"POST": "reload"},
          "/healthz": {"GET": "healthz"}, "/metrics": {"GET": "metrics"}}
OPEN_PATHS = ("/healthz",)          # answered without the bearer token
IMAGE_PARTS = ("image", "file")     # multipart field names taken as the image
# besides image/*, Content-Types whose body is taken as the image bytes (curl --data-binary sends the last)
RAW_BODY_TYPES = ("application/octet-stream", "application/x-www-form-urlencoded")


def available_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:           # not Linux
        return max(1, os.cpu_count() or 1)


@dataclass
class ServeOptions:
    """How the service listens and what it accepts.

    ``threads``: onnxruntime intra-op threads per image; ``workers``: images scored at once (0 = the
    CPUs available divided by ``threads``). ``token``: bearer token required on every endpoint except
    ``/healthz`` (None or empty = no authentication). ``timeout_s``: socket timeout, longest time to
    receive a body, and longest wait for a scoring slot. ``drift_window``: verdicts the drift warning
    looks back over (0 = off).
    """

    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    timeout_s: float = 30.0
    threads: int = 1
    workers: int = 0
    max_connections: int = 64
    token: str | None = None
    log_requests: bool = True
    max_pixels: int = SERVE_MAX_PIXELS
    reload_retry_s: float = 2.0
    drift_window: int = DRIFT_WINDOW

    def resolved_workers(self) -> int:
        return self.workers if self.workers > 0 else max(1, available_cpus() // max(1, self.threads))


class HTTPError(Exception):
    """An answer other than 200: ``status`` and a message for the client (``{"error": message}``)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = int(status)
        self.message = message
        self.headers = headers or {}


def bundle_version(bundle: Bundle) -> dict:
    m = bundle.manifest
    return {"id": bundle.id, "created_utc": m.created_utc, "linewatch_version": m.linewatch_version,
            "schema_version": m.schema_version, "precision": m.model.precision, "path": str(bundle.path)}


def _manifest_id(path: Path) -> str | None:
    import hashlib
    try:
        return hashlib.sha256((path / MANIFEST_NAME).read_bytes()).hexdigest()[:16]
    except OSError:
        return None


def _write_in_progress(path: Path) -> bool:
    """``write_bundle`` is replacing ``path`` now: its temporary or old sibling folder exists."""
    try:
        return any(any(path.parent.glob(sibling_prefix(path, kind) + "*")) for kind in ("tmp", "old"))
    except OSError:
        return False


@functools.lru_cache(maxsize=1)
def _libc():
    """The C library this process runs on (its symbols via ``dlopen(NULL)``), or None."""
    import ctypes

    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


def release_free_memory() -> None:
    """Give freed heap memory back to the OS (glibc ``malloc_trim``; nothing elsewhere).

    A dropped onnxruntime session frees its buffers, but glibc keeps freed chunks in its arenas: without
    this, each reload raised the resident size by about a session's size (measured in-process: +20 MB over
    3 reloads without it, flat with it)."""
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is not None:
        trim(0)


def limit_malloc_arenas(n: int = 2) -> bool:
    """Cap glibc's malloc arenas at ``n`` (``mallopt(M_ARENA_MAX)``) unless ``MALLOC_ARENA_MAX`` is set.

    The server runs a thread per connection; glibc gives threads arenas of their own (up to 8 per
    core), and sessions opened by reloads on new threads then fragment them: resident memory crept up
    by ~2 MB per reload with no Python object alive. With 2 arenas it stays flat (``bench/soak.py
    --reload-every 5``: RSS -0.6 % over 60 s and 12 reloads).
    Call it before the threads start. Returns whether the cap was set (False off glibc)."""
    mallopt = getattr(_libc(), "mallopt", None)
    if "MALLOC_ARENA_MAX" in os.environ or mallopt is None:
        return False
    return bool(mallopt(-8, int(n)))          # -8: M_ARENA_MAX in glibc's malloc.h


class InspectionService:
    """The bundle being served and what is done with a request body, independent of HTTP.

    ``inspector`` is one reference, read once per request and replaced whole by :meth:`reload`, so a
    request in flight keeps the inspector it started with. Each inspector comes with its own drift
    watch (assigning ``inspector`` starts a new one), swapped in the same reference, so a request
    finishing on the old bundle never counts towards the new bundle's window.
    """

    def __init__(self, bundle: str | os.PathLike, options: ServeOptions | None = None,
                 metrics: ServiceMetrics | None = None):
        self.options = options or ServeOptions()
        self.metrics = metrics or ServiceMetrics()
        self.bundle_path = Path(bundle)
        self._reload_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(self.options.resolved_workers())
        self.inspector = self.load(self.bundle_path)
        self.metrics.drift_source = self.drift_state
        self.metrics.set_bundle(**{k: v for k, v in bundle_version(self.inspector.bundle).items() if k != "path"})

    # ---- bundles

    @property
    def inspector(self) -> Inspector:
        return self._served[0]

    @inspector.setter
    def inspector(self, inspector: Inspector) -> None:
        """Serve ``inspector`` from now on, with a new drift window (one assignment: the swap)."""
        self._served = (inspector, watch_bundle(inspector.bundle.manifest, self.options.drift_window))

    @property
    def drift(self) -> bool | None:
        """Whether the drift warning is on for the bundle served now (None: no drift watch)."""
        watch = self._served[1]
        return None if watch is None else watch.drift

    def drift_state(self) -> dict | None:
        """The drift watch's state (:class:`drift_watch.DriftState` as a dict), or None when off."""
        watch = self._served[1]
        return None if watch is None else watch.state().to_dict()

    def load(self, path: str | os.PathLike) -> Inspector:
        """Load, verify and open ``path`` into a new :class:`Inspector` (does not serve it).

        A bundle being rewritten in place by ``write_bundle(overwrite=True)`` (two renames) may be
        missing or mixed for an instant: while its temporary sibling folders exist, loading is retried
        for up to ``reload_retry_s``. The manifest is re-read after the session is open, so a model
        file from a newer bundle never runs under an older manifest.
        """
        path = Path(path)
        deadline = time.monotonic() + self.options.reload_retry_s
        while True:
            changed = False
            try:
                inspector = Inspector(path, threads=self.options.threads, max_pixels=self.options.max_pixels)
                if _manifest_id(path) == inspector.bundle.id:
                    return inspector
                changed = True
                err = BundleError(f"{path}: the bundle changed while it was being loaded; retry the reload")
            except BundleError as exc:
                err = exc
            if time.monotonic() >= deadline or not (changed or _write_in_progress(path)):
                raise err
            time.sleep(0.05)

    def reload(self, path: str | os.PathLike | None = None) -> dict:
        """Serve the bundle at ``path`` (default: the path served now) once it loaded fully.

        Raises :class:`BundleError` or ``OSError`` (the old bundle keeps serving). Reloads run one at a time."""
        with self._reload_lock:
            target = Path(path) if path else self.bundle_path
            t0 = time.perf_counter()
            try:
                new = self.load(target)
            except (BundleError, OSError):
                self.metrics.reloaded(False)
                raise
            old = self.inspector
            self.inspector = new                      # the swap: one reference assignment
            # the old session is freed when its last request finishes; then its memory goes back to the OS
            weakref.finalize(old, release_free_memory)
            self.bundle_path = target
            self.metrics.set_bundle(**{k: v for k, v in bundle_version(new.bundle).items() if k != "path"})
            self.metrics.reloaded(True)
        previous, old = old.bundle.id, None
        return {"bundle": new.bundle.id, "previous": previous, "bundle_version": bundle_version(new.bundle),
                "reload_ms": round(1000 * (time.perf_counter() - t0), 1)}

    # ---- requests

    def inspect(self, data: bytes, source: str = "request body", heatmap: bool = False) -> dict:
        """Encoded image bytes -> verdict dict. Raises :class:`ImageError` for undecodable data and
        :class:`HTTPError` 503 when no scoring slot frees up within ``timeout_s``."""
        t0 = time.perf_counter()
        inspector, watch = self._served               # this request's inspector, whatever reloads do
        if not self._slots.acquire(timeout=self.options.timeout_s):
            raise HTTPError(503, f"busy: {self.options.resolved_workers()} images are being scored and none "
                                 f"finished within {self.options.timeout_s:g} s; retry later",
                            {"Retry-After": "1"})
        try:
            try:
                image = decode_image(data, source=source, max_pixels=inspector.max_pixels)
            except cv2.error as exc:      # OpenCV's own limits (OPENCV_IO_MAX_IMAGE_PIXELS, see cmd_serve)
                raise ImageError(f"{source}: OpenCV refused to decode it ({exc.err or exc}); images over "
                                 f"{inspector.max_pixels} pixels are refused (--max-pixels)") from None
            verdict, patch_map = inspector.inspect_image(image, source=source)
            out = verdict.to_dict()
            out["bundle_version"] = bundle_version(inspector.bundle)
            if heatmap:
                low = inspector.bundle.manifest.calibration.heatmap_low
                ok, png = cv2.imencode(".png", overlay(display_bgr(image), patch_map, low, inspector.threshold))
                if not ok:
                    raise RuntimeError("OpenCV could not encode the heat map as PNG")
                out["heatmap_png_base64"] = base64.b64encode(png.tobytes()).decode("ascii")
        finally:
            self._slots.release()
        out["drift"] = None if watch is None else self._observe_drift(watch, verdict.score, verdict.anomalous)
        seconds = time.perf_counter() - t0
        out["server_ms"] = round(1000 * seconds, 3)
        self.metrics.observe_inspection(seconds, verdict.score, bool(verdict.anomalous))
        return out

    def _observe_drift(self, watch: DriftWatch, score: float, anomalous: bool) -> bool:
        """Add a verdict to ``watch``; say on stderr when the warning turns on or off. -> the warning after it."""
        change = watch.observe(score, anomalous)
        if change is None:
            return watch.drift
        sys.stderr.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} linewatch serve: "
                         f"{change_message(change)}\n")
        sys.stderr.flush()
        return change.drift


def image_from_multipart(body: bytes, boundary: str | None) -> tuple[bytes, str | None]:
    """The image part of a ``multipart/form-data`` body -> (bytes, its file name or None).

    Takes the part named ``image`` or ``file``, else the first part. Raises :class:`HTTPError` 400."""
    from email.parser import HeaderParser

    if not boundary:
        raise HTTPError(400, "multipart/form-data without a boundary parameter in Content-Type")
    delimiter = b"--" + boundary.encode("latin-1")
    chunks = body.split(delimiter)
    parts = []
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):                   # the closing delimiter
            break
        head, sep, content = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        if not sep:
            raise HTTPError(400, "multipart/form-data part without a blank line after its headers")
        headers = HeaderParser().parsestr(head.decode("latin-1"))
        parts.append((headers.get_param("name", header="content-disposition"),
                      headers.get_filename(), content.removesuffix(b"\r\n")))
    if not parts:
        raise HTTPError(400, "multipart/form-data body without any part; send the image in a part named 'image'")
    name, filename, content = next((p for p in parts if p[0] in IMAGE_PARTS), parts[0])
    return content, filename


class ServiceHandler(BaseHTTPRequestHandler):
    """One connection (HTTP/1.1 keep-alive); every answer is JSON except ``/metrics``."""

    protocol_version = "HTTP/1.1"
    default_request_version = "HTTP/1.0"     # a malformed request line still gets a status line, not bare JSON
    server_version = "linewatch"
    sys_version = ""
    server: "ServiceHTTPServer"

    def setup(self) -> None:
        self.timeout = self.server.options.timeout_s      # socket timeout for every read and write
        super().setup()
        # headers and body go out in two writes: without TCP_NODELAY, Nagle holds the body back until the
        # client's delayed ACK of the headers (~40 ms on Linux) on every kept-alive request
        if self.request.family in (socket.AF_INET, socket.AF_INET6):
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    # ---- plumbing

    def handle_expect_100(self) -> bool:
        self._expect_100 = True                           # answered in _read_body, after every check
        return True

    def _reset(self, endpoint: str = "other") -> None:
        self._endpoint = endpoint
        self._counted = False
        self._status = 0
        self._body_read = False
        self._expect_100 = getattr(self, "_expect_100", False)

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        """Write one complete answer. Closes the connection when the request body was not read."""
        self._status = status
        if not self._counted:
            self._counted = True
            self.server.metrics.count_request(self._endpoint, status)
        unread = not self._body_read and (self.headers.get("Transfer-Encoding") is not None
                                          or self.headers.get("Content-Length", "0").strip() not in ("", "0"))
        if unread or self.server.closing:
            self.close_connection = True
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, status: int, obj: dict, headers: dict[str, str] | None = None) -> None:
        self._send(status, (json.dumps(obj) + "\n").encode(), "application/json", headers)

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self._send_json(status, {"error": message, "status": status}, headers)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own errors (malformed request line or headers, unknown method) as JSON."""
        self._reset("other")                              # never inside _dispatch: before a request was parsed
        if not hasattr(self, "headers"):
            from http.client import HTTPMessage
            self.headers = HTTPMessage()
        self.close_connection = True
        phrase = HTTPStatus(code).phrase if code in HTTPStatus._value2member_map_ else "error"
        self.server.metrics.request_started()
        try:
            self._error(code, message or explain or phrase)
        finally:
            self.server.metrics.request_finished()

    def log_request(self, code: object = "-", size: object = "-") -> None:
        pass                                              # one line per request is written by _dispatch

    def log_message(self, format: str, *args: object) -> None:
        if self.server.options.log_requests:
            sys.stderr.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {self.client_address[0]} "
                             f"{format % args}\n")

    def _read_body(self, required: bool) -> bytes:
        """The request body, within the size limit and ``timeout_s``. Raises :class:`HTTPError`."""
        opts = self.server.options
        if self.headers.get("Transfer-Encoding") is not None:
            raise HTTPError(411, "chunked or encoded bodies are not accepted; send the body with a Content-Length")
        length = self.headers.get("Content-Length")
        if length is None:
            if required:
                raise HTTPError(411, "Content-Length is required: send the image bytes as the request body")
            return b""
        try:
            n = int(length)
            if n < 0:
                raise ValueError
        except ValueError:
            raise HTTPError(400, f"Content-Length {length!r} is not a non-negative integer") from None
        if n > opts.max_body_bytes:
            raise HTTPError(413, f"body of {n} bytes is over the limit of {opts.max_body_bytes} bytes "
                                 "(--max-body-bytes); downscale or recompress the image")
        if self._expect_100:
            self.send_response_only(100)
            self.end_headers()
            self.wfile.flush()
            self._expect_100 = False
        deadline = time.monotonic() + opts.timeout_s
        chunks, got = [], 0
        while got < n:
            if time.monotonic() > deadline:
                raise HTTPError(408, f"the body did not arrive within {opts.timeout_s:g} s (--timeout)")
            chunk = self.rfile.read1(min(n - got, 1 << 20))
            if not chunk:
                raise HTTPError(400, f"the body ended after {got} of the {n} bytes announced by Content-Length")
            chunks.append(chunk)
            got += len(chunk)
        self._body_read = True
        return b"".join(chunks)

    def _check_token(self) -> None:
        token = self.server.options.token
        if not token:
            return
        scheme, _, given = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise HTTPError(401, f"missing or wrong bearer token: send 'Authorization: Bearer <token>' with the "
                                 f"token in the service's {TOKEN_ENV}", {"WWW-Authenticate": 'Bearer realm="linewatch"'})

    def _dispatch(self, method: str) -> None:
        t0 = time.perf_counter()
        url = urlsplit(self.path)
        endpoint = url.path if url.path in ROUTES else "other"
        self._reset(endpoint)
        metrics = self.server.metrics
        metrics.request_started()
        try:
            if url.path not in ROUTES:
                raise HTTPError(404, f"no endpoint {url.path}; the endpoints are POST /v1/inspect, POST /v1/reload, "
                                     "GET /healthz and GET /metrics")
            allowed = ROUTES[url.path]
            if method not in allowed:
                raise HTTPError(405, f"{method} is not allowed on {url.path}; use {', '.join(allowed)}",
                                {"Allow": ", ".join(allowed)})
            if url.path not in OPEN_PATHS:
                self._check_token()
            getattr(self, "_" + allowed[method])(parse_qs(url.query))
        except HTTPError as exc:
            self._error(exc.status, exc.message, exc.headers)
        except ImageError as exc:
            self._error(400, str(exc))
        except TimeoutError:
            self.close_connection = True
            self._error(408, f"the request did not arrive within {self.server.options.timeout_s:g} s (--timeout)")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True                  # the client went away; nothing to answer
            self._status = self._status or 499
        except Exception as exc:  # noqa: BLE001  (the service answers 500 and goes on)
            self.log_message("%s", "internal error:\n" + traceback.format_exc().rstrip())
            try:
                self._error(500, f"internal error: {type(exc).__name__}: {exc}")
            except OSError:
                self.close_connection = True
        finally:
            self._expect_100 = False
            if not self._counted:                         # no answer was written (the client went away)
                metrics.count_request(endpoint, self._status or 500)
            metrics.request_finished()
            self.log_message('"%s %s" %d %.1fms', method, url.path, self._status or 500,
                             1000 * (time.perf_counter() - t0))

    do_GET = lambda self: self._dispatch("GET")            # noqa: E731
    do_POST = lambda self: self._dispatch("POST")          # noqa: E731
    do_PUT = lambda self: self._dispatch("PUT")            # noqa: E731
    do_DELETE = lambda self: self._dispatch("DELETE")      # noqa: E731
    do_PATCH = lambda self: self._dispatch("PATCH")        # noqa: E731
    do_HEAD = lambda self: self._dispatch("HEAD")          # noqa: E731
    do_OPTIONS = lambda self: self._dispatch("OPTIONS")    # noqa: E731

    # ---- endpoints

    def _inspect(self, query: dict[str, list[str]]) -> None:
        body = self._read_body(required=True)
        ctype = self.headers.get("Content-Type")
        kind = self.headers.get_content_type() if ctype else None
        source = query.get("source", [None])[-1]
        if kind == "multipart/form-data":
            body, filename = image_from_multipart(body, self.headers.get_param("boundary"))
            source = source or filename
        elif kind is not None and not (kind.startswith("image/") or kind in RAW_BODY_TYPES):
            raise HTTPError(415, f"Content-Type {kind} is not an image: send the encoded image bytes (image/png, "
                                 "image/jpeg, application/octet-stream) or multipart/form-data with a part 'image'")
        heatmap = query.get("map", ["0"])[-1].lower() in ("1", "true", "yes")
        self._send_json(200, self.server.service.inspect(body, source or "request body", heatmap))

    def _reload(self, query: dict[str, list[str]]) -> None:
        body = self._read_body(required=False)
        path = None
        if body.strip():
            try:
                req = json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise HTTPError(400, f"the reload body is not JSON ({exc}); send {{\"bundle\": \"PATH\"}} or nothing") from None
            if not isinstance(req, dict) or not isinstance(req.get("bundle", ""), str):
                raise HTTPError(400, 'the reload body must be a JSON object {"bundle": "PATH"} (or empty)')
            path = req.get("bundle") or None
        try:
            result = self.server.service.reload(path)
        except (BundleError, OSError) as exc:
            raise HTTPError(422, f"reload failed, still serving bundle {self.server.service.inspector.bundle.id}: "
                                 f"{exc}") from None
        self._send_json(200, result)

    def _healthz(self, query: dict[str, list[str]]) -> None:
        service = self.server.service
        self._send_json(200, {"status": "ok", "bundle": service.inspector.bundle.id,
                              "uptime_s": round(time.time() - service.metrics.started, 1), "drift": service.drift})

    def _metrics(self, query: dict[str, list[str]]) -> None:
        self._send(200, self.server.metrics.render().encode(), METRICS_CONTENT_TYPE)


class ServiceHTTPServer(ThreadingHTTPServer):
    """A thread per connection, at most ``options.max_connections`` at once (503 beyond)."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, service: InspectionService, options: ServeOptions):
        self.service = service
        self.options = options
        self.metrics = service.metrics
        self.closing = False
        self._connections = threading.BoundedSemaphore(max(1, options.max_connections))
        if ":" in options.host:
            self.address_family = socket.AF_INET6
        try:
            super().__init__((options.host, options.port), ServiceHandler)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise OSError(f"{options.host}:{options.port} is already in use; pass another --port or stop the "
                              "process that holds it") from None
            raise OSError(f"cannot listen on {options.host}:{options.port} ({exc.strerror}); check --host and "
                          "--port") from None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def process_request(self, request, client_address) -> None:
        if not self._connections.acquire(blocking=False):
            body = json.dumps({"error": f"too many connections (over {self.options.max_connections}); retry later",
                               "status": 503}).encode()
            try:
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                b"Retry-After: 1\r\nConnection: close\r\nContent-Length: " + str(len(body)).encode()
                                + b"\r\n\r\n" + body)
            except OSError:
                pass
            self.metrics.count_request("other", 503)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._connections.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._connections.release()

    def handle_error(self, request, client_address) -> None:
        exc = sys.exc_info()[1]
        if self.options.log_requests:
            sys.stderr.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {client_address[0]} "
                             f"connection error: {type(exc).__name__}: {exc}\n")


def make_server(bundle: str | os.PathLike, options: ServeOptions) -> ServiceHTTPServer:
    """Load the bundle and bind (port 0 = any free port; see ``server.url``). Call ``serve_forever``."""
    return ServiceHTTPServer(InspectionService(bundle, options), options)


def run(bundle: str | os.PathLike, options: ServeOptions, announce: Callable[[str], None] | None = None,
        stop: threading.Event | None = None) -> int:
    """Serve until SIGTERM / SIGINT (or ``stop`` is set), then stop accepting, let requests in flight
    finish (up to ``timeout_s``) and return 0. ``announce`` gets one JSON line once listening."""
    limit_malloc_arenas()
    server = make_server(bundle, options)
    stop = stop or threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    loop = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="linewatch-serve",
                            daemon=True)
    loop.start()
    try:
        if announce:
            announce(json.dumps({"listening": server.url, "bundle": server.service.inspector.bundle.id,
                                 "pid": os.getpid(), "workers": options.resolved_workers(),
                                 "threads": options.threads, "auth": bool(options.token)}))
        while not stop.wait(0.5):
            pass
    finally:
        server.closing = True
        server.shutdown()                      # no new connections
        deadline = time.monotonic() + options.timeout_s
        while server.metrics.in_flight > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        server.server_close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
