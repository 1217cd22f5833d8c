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


def session_options(threads: int = 0) -> ort.SessionOptions:
    """onnxruntime options for a scoring graph, chosen from profiles (``bench/results/latency.md``).

    * ``intra_op_num_threads = threads`` (0 = onnxruntime's default, one per physical core). The graph
      is a chain of operators, so there is nothing for inter-op parallelism: one inter-op thread and
      sequential execution.
    * ``ORT_ENABLE_ALL``: constant folding, Conv+Clip fusion, the NCHWc layout for the convolutions
      and MatMul+Add -> Gemm for the density (the extended and layout levels are what make the
      backbone fast on x86).
    * The CPU memory arena and memory-pattern planning stay on (the input size is fixed, so after the
      first run every buffer is reused).
    """
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.enable_cpu_mem_arena = True
    opts.enable_mem_pattern = True
    return opts


class Inspector:
    """Load and verify a bundle, then score images.

    Args:
        bundle: a bundle folder or a loaded :class:`Bundle`.
        threads: onnxruntime intra-op threads (0 = onnxruntime's default: all cores).
        max_pixels: larger images are refused before their pixels are decoded.
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
        self.threads = int(threads)
        self.session = self._new_session(self.threads)
        self._single_thread_session: ort.InferenceSession | None = self.session if self.threads == 1 else None
        self._check_graph()

    def _new_session(self, threads: int) -> ort.InferenceSession:
        model_path = self.bundle.file(self.bundle.manifest.model.file)
        try:
            return ort.InferenceSession(str(model_path), session_options(threads), providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise BundleError(f"{model_path}: onnxruntime cannot load the model ({exc})") from exc

    def single_thread_session(self) -> ort.InferenceSession:
        """A one-intra-op-thread session of the same graph (made once), for data-parallel workers."""
        if self._single_thread_session is None:
            self._single_thread_session = self._new_session(1)
        return self._single_thread_session

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
        missing = {m.model.score_output, m.model.map_output, m.model.features_output} - outs - {""}
        if missing:
            raise BundleError(f"{where}: graph outputs {sorted(outs)} lack {sorted(missing)}; re-export the bundle")

    def score_batch(self, batch: np.ndarray, session: ort.InferenceSession | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
        """Model inputs ``float32 (N, C, H, W)`` -> (scores ``(N,)``, patch-score maps ``(N, h, w)``)."""
        m = self.bundle.manifest.model
        scores, maps = (session or self.session).run([m.score_output, m.map_output], {m.input_name: batch})
        return scores, maps

    def patch_features(self, batch: np.ndarray) -> np.ndarray:
        """Model inputs ``float32 (N, C, H, W)`` -> the patches in the density's space ``float32 (N, h*w, d)``
        (row-major over the patch map). Raises :class:`BundleError` for bundles made before the graph had them."""
        m = self.bundle.manifest.model
        if not m.features_output:
            raise BundleError(f"{self.bundle.path}: this bundle's graph does not output patch features (made by an "
                              "older linewatch); re-export it with `linewatch export`")
        return self.session.run([m.features_output], {m.input_name: batch})[0]

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
        x = preprocess(image, self.spec, source=source)[None]
        scores, maps = self.score_batch(x)
        return self.verdicts([source], scores, [1000 * (time.perf_counter() - t0)])[0], maps[0]

    def _load(self, path: str | os.PathLike, out: np.ndarray) -> tuple[str, np.ndarray | Verdict, float]:
        """Read, decode and preprocess one file into ``out`` -> (source, decoded image or error verdict, ms)."""
        src = str(path)
        t0 = time.perf_counter()
        try:
            data = Path(path).read_bytes()
            img = decode_image(data, source=src, max_pixels=self.max_pixels)
            preprocess(img, self.spec, out=out, source=src)
        except OSError as exc:
            return src, self.error_verdict(src, f"{src}: cannot be read ({exc.strerror or exc}); check the path, "
                                                "permissions and the disk"), 0.0
        except ImageError as exc:
            return src, self.error_verdict(src, str(exc)), 0.0
        return src, img, 1000 * (time.perf_counter() - t0)

    def inspect_paths(self, paths: Iterable[str | os.PathLike], batch_size: int = 8, workers: int = 1
                      ) -> Iterator[tuple[Verdict, np.ndarray | None, np.ndarray | None]]:
        """Yield ``(verdict, decoded image or None, patch map or None)`` per path, in order.

        An unreadable file yields a verdict with ``error`` set; the run goes on. Images are
        preprocessed straight into one reused ``(batch_size, C, H, W)`` buffer.

        ``workers > 1`` scores that many batches at once, each on its own thread from reading the
        files to the session run, with a one-thread session (onnxruntime runs concurrent calls of one
        session in parallel), instead of splitting each operator over ``threads`` intra-op threads.
        Verdicts still come in input order. For throughput over many files that uses the cores
        better: decoding overlaps with scoring and no operator waits for its slowest thread
        (``bench/results/latency.md``).
        """
        batch_size = max(1, int(batch_size))
        if int(workers) > 1:
            yield from self._inspect_parallel(paths, batch_size, int(workers))
            return
        spec = self.spec
        buf = np.empty((batch_size, spec.channels, spec.height, spec.width), dtype=np.float32)
        pending: list[tuple[str, np.ndarray | Verdict, float]] = []    # unreadable files wait their turn

        def flush():
            ok = [i for i, (_, img, _) in enumerate(pending) if not isinstance(img, Verdict)]
            scored = iter(())
            if ok:
                t0 = time.perf_counter()
                scores, maps = self.score_batch(buf[:len(ok)])
                share = 1000 * (time.perf_counter() - t0) / len(ok)
                vs = self.verdicts([pending[i][0] for i in ok], scores, [pending[i][2] + share for i in ok])
                scored = iter(zip(vs, maps))
            for _, img, _ in pending:
                if isinstance(img, Verdict):
                    yield img, None, None
                else:
                    v, mp = next(scored)
                    yield v, img, mp
            pending.clear()

        n_ok = 0
        for path in paths:
            src, img, ms = self._load(path, buf[n_ok])
            pending.append((src, img, ms))
            n_ok += not isinstance(img, Verdict)
            if len(pending) >= batch_size:
                yield from flush()
                n_ok = 0
        yield from flush()

    def _inspect_parallel(self, paths: Iterable[str | os.PathLike], batch_size: int, workers: int
                          ) -> Iterator[tuple[Verdict, np.ndarray | None, np.ndarray | None]]:
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor
        from itertools import islice

        session = self.single_thread_session()
        spec = self.spec

        def job(chunk: list) -> list[tuple[Verdict, np.ndarray | None, np.ndarray | None]]:
            buf = np.empty((len(chunk), spec.channels, spec.height, spec.width), dtype=np.float32)
            loaded = [self._load(p, buf[i]) for i, p in enumerate(chunk)]
            ok = [i for i, (_, img, _) in enumerate(loaded) if not isinstance(img, Verdict)]
            out: list = [(img, None, None) for _, img, _ in loaded]
            if ok:
                t0 = time.perf_counter()
                scores, maps = self.score_batch(buf[ok] if len(ok) < len(chunk) else buf, session)
                share = 1000 * (time.perf_counter() - t0) / len(ok)
                vs = self.verdicts([loaded[i][0] for i in ok], scores, [loaded[i][2] + share for i in ok])
                for v, i, mp in zip(vs, ok, maps):
                    out[i] = (v, loaded[i][1], mp)
            return out

        it = iter(paths)
        with ThreadPoolExecutor(workers, thread_name_prefix="linewatch-inspect") as pool:
            inflight: deque = deque()
            while True:
                while len(inflight) < 2 * workers:          # bounded read-ahead, results in input order
                    chunk = list(islice(it, batch_size))
                    if not chunk:
                        break
                    inflight.append(pool.submit(job, chunk))
                if not inflight:
                    return
                yield from inflight.popleft().result()
