"""Scoring images with a bundle: onnxruntime + numpy + OpenCV only."""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import onnxruntime as ort

from .bundle import Bundle, BundleError
from .calibration import ConformalCalibrator
from .preprocess import DEFAULT_MAX_PIXELS, ImageError, decode_image, preprocess


@dataclass
class Verdict:
    """One inspected image. ``score`` is in nats (higher = more anomalous); ``error`` is None when fine."""

    source: str
    score: float | None
    threshold: float
    anomalous: bool | None
    p_value: float | None
    error: str | None = None
    latency_ms: float | None = None
    bundle: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class Inspector:
    """Load and verify a bundle, then score images.

    Args:
        bundle: a bundle folder or a loaded :class:`Bundle`.
        threads: onnxruntime intra-op threads (0 = onnxruntime's default: all cores).
    """

    def __init__(self, bundle: str | os.PathLike | Bundle, threads: int = 0,
                 max_pixels: int = DEFAULT_MAX_PIXELS):
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
        m = self.bundle.manifest
        self.spec = m.input
        self.threshold = float(m.decision.threshold)
        self.calibrator = ConformalCalibrator.from_scores(m.calibration.scores, m.decision.target_false_alarm_rate,
                                                          m.decision.threshold)
        self.max_pixels = max_pixels
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        model_path = self.bundle.file(m.model.file)
        try:
            self.session = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise BundleError(f"{model_path}: onnxruntime cannot load the model ({exc})") from exc
        self._check_graph()

    def _check_graph(self) -> None:
        m = self.bundle.manifest
        inputs = self.session.get_inputs()
        where = self.bundle.file(m.model.file)
        if len(inputs) != 1 or inputs[0].name != m.model.input_name:
            raise BundleError(f"{where}: graph inputs {[i.name for i in inputs]} do not match the manifest's "
                              f"{m.model.input_name!r}; the bundle is inconsistent, re-export it")
        shape = inputs[0].shape
        want = [self.spec.channels, self.spec.height, self.spec.width]
        if len(shape) != 4 or list(shape[1:]) != want:
            raise BundleError(f"{where}: graph input shape {shape} does not match the manifest's [N, {want}]; "
                              "re-export the bundle")
        outs = {o.name for o in self.session.get_outputs()}
        missing = {m.model.score_output, m.model.map_output} - outs
        if missing:
            raise BundleError(f"{where}: graph outputs {sorted(outs)} lack {sorted(missing)}; re-export the bundle")

    def score_batch(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Model inputs ``float32 (N, C, H, W)`` -> (scores ``(N,)``, patch-score maps ``(N, h, w)``)."""
        m = self.bundle.manifest.model
        scores, maps = self.session.run([m.score_output, m.map_output], {m.input_name: batch})
        return scores, maps

    def verdicts(self, sources: list[str], scores: np.ndarray, latencies_ms: list[float]) -> list[Verdict]:
        p = self.calibrator.p_values(scores)
        return [Verdict(source=s, score=float(v), threshold=self.threshold, anomalous=bool(v > self.threshold),
                        p_value=float(pv), latency_ms=round(lat, 3), bundle=self.bundle.id)
                for s, v, pv, lat in zip(sources, scores, p, latencies_ms)]

    def error_verdict(self, source: str, message: str) -> Verdict:
        return Verdict(source=source, score=None, threshold=self.threshold, anomalous=None, p_value=None,
                       error=message, bundle=self.bundle.id)

    def inspect_image(self, image: np.ndarray, source: str = "<array>") -> tuple[Verdict, np.ndarray]:
        """A decoded image -> (verdict, patch-score map ``(h, w)``)."""
        t0 = time.perf_counter()
        x = preprocess(image, self.spec)[None]
        scores, maps = self.score_batch(x)
        return self.verdicts([source], scores, [1000 * (time.perf_counter() - t0)])[0], maps[0]

    def inspect_paths(self, paths: Iterable[str | os.PathLike], batch_size: int = 8
                      ) -> Iterator[tuple[Verdict, np.ndarray | None, np.ndarray | None]]:
        """Yield ``(verdict, decoded image or None, patch map or None)`` per path, in order.

        An unreadable file yields a verdict with ``error`` set; the run goes on.
        """
        pending: list[tuple[str, np.ndarray, np.ndarray, float]] = []

        def flush():
            if not pending:
                return
            t0 = time.perf_counter()
            scores, maps = self.score_batch(np.stack([p[2] for p in pending]))
            share = 1000 * (time.perf_counter() - t0) / len(pending)
            vs = self.verdicts([p[0] for p in pending], scores, [p[3] + share for p in pending])
            for v, p, mp in zip(vs, pending, maps):
                yield v, p[1], mp
            pending.clear()

        for path in paths:
            src = str(path)
            t0 = time.perf_counter()
            try:
                data = Path(path).read_bytes()
                img = decode_image(data, source=src, max_pixels=self.max_pixels)
                x = preprocess(img, self.spec)
            except OSError as exc:
                yield self.error_verdict(src, f"{src}: cannot be read ({exc.strerror or exc})"), None, None
                continue
            except ImageError as exc:
                yield self.error_verdict(src, str(exc)), None, None
                continue
            pending.append((src, img, x, 1000 * (time.perf_counter() - t0)))
            if len(pending) >= batch_size:
                yield from flush()
        yield from flush()
