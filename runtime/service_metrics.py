"""Counters, a latency histogram and recent-score quantiles of ``linewatch serve``, in Prometheus text format.

Standard library only, thread-safe (one lock; every update is a few dictionary operations). Rendered
by :meth:`ServiceMetrics.render` in the Prometheus text exposition format (version 0.0.4):

* ``linewatch_requests_total{endpoint, code}``: every answered request;
* ``linewatch_request_errors_total{endpoint}``: requests answered with a 4xx or 5xx status;
* ``linewatch_inspect_seconds``: histogram of server time per ``/v1/inspect`` (body read to response
  ready), fixed buckets :data:`LATENCY_BUCKETS_S`;
* ``linewatch_images_inspected_total``, ``linewatch_images_flagged_total`` and
  ``linewatch_flagged_ratio_recent`` (the share of the last ``window`` scored images that were flagged);
* ``linewatch_score`` (a summary): quantiles 0.5 / 0.9 / 0.99 of the last ``window`` image scores
  (nats), with ``_sum`` and ``_count`` over all scored images;
* ``linewatch_drift`` (1 while the drift warning is on, else 0), ``linewatch_drift_flagged_share``,
  ``linewatch_drift_target`` and ``linewatch_drift_psi`` (NaN until the window has enough scores), from
  :attr:`ServiceMetrics.drift_source` (a :class:`drift_watch.DriftState` dict); none when it is unset;
* ``linewatch_in_flight_requests``, ``linewatch_reloads_total{result}``, ``linewatch_bundle_info``,
  ``linewatch_up_seconds`` and, on Linux, ``process_resident_memory_bytes``.
"""
from __future__ import annotations

import math
import threading
import time
from collections import deque
from typing import Callable

# seconds; chosen around the 224-px bundle's 5-50 ms per image, up to a request stuck behind a queue
LATENCY_BUCKETS_S = (0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SCORE_QUANTILES = (0.5, 0.9, 0.99)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _label_value(v: object) -> str:
    return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**kw: object) -> str:
    return "{" + ",".join(f'{k}="{_label_value(v)}"' for k, v in kw.items()) + "}" if kw else ""


def _num(x: float) -> str:
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return repr(float(x)) if not float(x).is_integer() else str(int(x))


def _num_or_nan(x: float | None) -> str:
    return _num(math.nan if x is None else x)


def quantile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default) of an ascending list; NaN when empty."""
    n = len(sorted_values)
    if n == 0:
        return math.nan
    pos = q * (n - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, n - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def resident_memory_bytes() -> int | None:
    """This process's resident set size (``VmRSS`` of ``/proc/self/status``); None where there is no /proc."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class ServiceMetrics:
    """The service's metrics. ``window``: how many recent scored images the quantiles and ratio cover.
    ``drift_source``: called at each :meth:`render` for the drift watch's state dict (or None: no gauges)."""

    def __init__(self, window: int = 1000, buckets_s: tuple[float, ...] = LATENCY_BUCKETS_S):
        self._lock = threading.Lock()
        self.started = time.time()
        self.buckets_s = tuple(sorted(buckets_s))
        self._requests: dict[tuple[str, int], int] = {}
        self._errors: dict[str, int] = {}
        self._bucket_counts = [0] * (len(self.buckets_s) + 1)     # the last one is +Inf
        self._latency_sum = 0.0
        self._latency_count = 0
        self._inspected = 0
        self._flagged = 0
        self._score_sum = 0.0
        self._recent: deque[tuple[float, bool]] = deque(maxlen=int(window))
        self._in_flight = 0
        self._reloads = {"ok": 0, "failed": 0}
        self._bundle: dict[str, str] = {}
        self.drift_source: Callable[[], dict | None] | None = None

    # ---- updates (each takes the lock once)

    def request_started(self) -> None:
        with self._lock:
            self._in_flight += 1

    def request_finished(self) -> None:
        """A request counted by :meth:`request_started` is over (its answer written, or the client gone)."""
        with self._lock:
            self._in_flight -= 1

    def count_request(self, endpoint: str, code: int) -> None:
        """Count an answer by endpoint and status (call before writing it, so a client that reads the
        answer and then asks ``/metrics`` sees it counted)."""
        with self._lock:
            key = (endpoint, int(code))
            self._requests[key] = self._requests.get(key, 0) + 1
            if code >= 400:
                self._errors[endpoint] = self._errors.get(endpoint, 0) + 1

    def observe_inspection(self, seconds: float, score: float, anomalous: bool) -> None:
        """One scored image: its server time (s), score (nats) and verdict."""
        with self._lock:
            i = 0
            while i < len(self.buckets_s) and seconds > self.buckets_s[i]:
                i += 1
            self._bucket_counts[i] += 1
            self._latency_sum += seconds
            self._latency_count += 1
            self._inspected += 1
            self._flagged += bool(anomalous)
            self._score_sum += score
            self._recent.append((float(score), bool(anomalous)))

    def reloaded(self, ok: bool) -> None:
        with self._lock:
            self._reloads["ok" if ok else "failed"] += 1

    def set_bundle(self, **info: str) -> None:
        """Labels of ``linewatch_bundle_info`` (the bundle being served)."""
        with self._lock:
            self._bundle = {k: str(v) for k, v in info.items()}

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    def snapshot(self) -> dict:
        """The figures as a dict (for tests and JSON)."""
        with self._lock:
            recent = [s for s, _ in self._recent]
            flagged_recent = sum(a for _, a in self._recent)
            return {
                "requests": {f"{e} {c}": n for (e, c), n in sorted(self._requests.items())},
                "errors": dict(self._errors), "inspected": self._inspected, "flagged": self._flagged,
                "in_flight": self._in_flight, "reloads": dict(self._reloads),
                "latency_count": self._latency_count, "latency_sum_s": self._latency_sum,
                "bucket_counts": list(self._bucket_counts),
                "recent_scores": recent,
                "flagged_ratio_recent": flagged_recent / len(recent) if recent else math.nan,
                "score_sum": self._score_sum, "bundle": dict(self._bundle),
            }

    # ---- exposition

    def render(self) -> str:
        """All metrics in the Prometheus text exposition format (one ``# HELP``/``# TYPE`` per family)."""
        s = self.snapshot()
        out: list[str] = []

        def family(name: str, kind: str, text: str) -> None:
            out.append(f"# HELP {name} {text}")
            out.append(f"# TYPE {name} {kind}")

        family("linewatch_requests_total", "counter", "Requests answered, by endpoint and HTTP status.")
        for key, n in s["requests"].items():
            endpoint, code = key.rsplit(" ", 1)
            out.append(f"linewatch_requests_total{_labels(endpoint=endpoint, code=code)} {n}")
        family("linewatch_request_errors_total", "counter", "Requests answered with a 4xx or 5xx status.")
        for endpoint, n in sorted(s["errors"].items()):
            out.append(f"linewatch_request_errors_total{_labels(endpoint=endpoint)} {n}")

        family("linewatch_inspect_seconds", "histogram", "Server time per /v1/inspect, body read to response ready.")
        cum = 0
        for le, n in zip(self.buckets_s, s["bucket_counts"]):
            cum += n
            out.append(f"linewatch_inspect_seconds_bucket{_labels(le=_num(le))} {cum}")
        out.append(f'linewatch_inspect_seconds_bucket{{le="+Inf"}} {s["latency_count"]}')
        out.append(f"linewatch_inspect_seconds_sum {_num(s['latency_sum_s'])}")
        out.append(f"linewatch_inspect_seconds_count {s['latency_count']}")

        family("linewatch_images_inspected_total", "counter", "Images scored.")
        out.append(f"linewatch_images_inspected_total {s['inspected']}")
        family("linewatch_images_flagged_total", "counter", "Images scored above the bundle's threshold.")
        out.append(f"linewatch_images_flagged_total {s['flagged']}")
        family("linewatch_flagged_ratio_recent", "gauge", "Share of the recent scored images that were flagged.")
        out.append(f"linewatch_flagged_ratio_recent {_num(s['flagged_ratio_recent'])}")

        family("linewatch_score", "summary", "Image anomaly score (nats): quantiles of the recent images, "
               "sum and count over all.")
        recent = sorted(s["recent_scores"])
        for q in SCORE_QUANTILES:
            out.append(f"linewatch_score{_labels(quantile=_num(q))} {_num(quantile(recent, q))}")
        out.append(f"linewatch_score_sum {_num(s['score_sum'])}")
        out.append(f"linewatch_score_count {s['inspected']}")

        self._render_drift(family, out)
        family("linewatch_in_flight_requests", "gauge", "Requests being handled now.")
        out.append(f"linewatch_in_flight_requests {s['in_flight']}")
        family("linewatch_reloads_total", "counter", "Bundle reloads, by result.")
        for result, n in sorted(s["reloads"].items()):
            out.append(f"linewatch_reloads_total{_labels(result=result)} {n}")
        family("linewatch_bundle_info", "gauge", "The bundle being served (value 1).")
        out.append(f"linewatch_bundle_info{_labels(**s['bundle'])} 1")
        family("linewatch_up_seconds", "gauge", "Seconds since the service started.")
        out.append(f"linewatch_up_seconds {_num(round(time.time() - self.started, 3))}")
        rss = resident_memory_bytes()
        if rss is not None:
            family("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.")
            out.append(f"process_resident_memory_bytes {rss}")
        return "\n".join(out) + "\n"

    def _render_drift(self, family: Callable[[str, str, str], None], out: list[str]) -> None:
        """The drift gauges (none when there is no drift source or it answers None)."""
        state = self.drift_source() if self.drift_source is not None else None
        if state is None:
            return
        family("linewatch_drift", "gauge", "1 while the drift warning is on: far more images flagged than the "
               "target false-alarm rate.")
        out.append(f"linewatch_drift {int(bool(state['drift']))}")
        family("linewatch_drift_flagged_share", "gauge", "Share of the drift window's images that were flagged.")
        out.append(f"linewatch_drift_flagged_share {_num_or_nan(state['flagged_share'])}")
        family("linewatch_drift_target", "gauge", "Flagged share expected without drift.")
        out.append(f"linewatch_drift_target {_num(state['target'])}")
        family("linewatch_drift_psi", "gauge", "PSI of the drift window's scores against the calibration scores.")
        out.append(f"linewatch_drift_psi {_num_or_nan(state['psi'])}")
