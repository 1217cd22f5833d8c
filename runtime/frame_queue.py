"""A bounded queue between a source's reading thread (the producer) and the scorer (the consumer).

Reading and decoding run on their own thread while the model scores (OpenCV's decoders and
onnxruntime both release the GIL, so the two overlap). The queue holds at most ``maxsize`` decoded
frames, whatever the speeds; what happens when it is full depends on the source:

* ``"block"`` (image files, watched folders, video files): the producer waits until the scorer takes
  a frame: backpressure. Nothing is skipped, and memory stays bounded.
* ``"drop-oldest"`` (live cameras): the oldest waiting frame is discarded to make room and counted in
  ``dropped``. A camera cannot be paused: blocking would only move the backlog into the driver's
  buffer, and the scorer would then judge frames that are older and older. Dropping keeps the verdicts
  about what the line looks like now, and the count says how many frames went unscored (add
  ``--every N`` or workers when it is not zero).
"""
from __future__ import annotations

import queue
import threading
from typing import Iterator, Protocol

from .streams import Frame


class Source(Protocol):
    def frames(self, stop: threading.Event) -> Iterator[Frame]: ...


class _End:
    def __init__(self, error: BaseException | None = None):
        self.error = error


class FrameQueue:
    """Run ``source.frames(stop)`` on a daemon thread into a queue of at most ``maxsize`` frames.

    Use as a context manager; :meth:`take` returns batches. Leaving the context sets ``stop`` and
    waits for the producer thread to end.

    Attributes:
        produced: frames the source yielded. dropped: frames discarded (``"drop-oldest"`` only).
        peak: the largest number of frames that waited in the queue at once (<= ``maxsize``).
    """

    def __init__(self, source: Source, maxsize: int = 8, policy: str = "block",
                 stop: threading.Event | None = None):
        if policy not in ("block", "drop-oldest"):
            raise ValueError(f"policy must be 'block' or 'drop-oldest', got {policy!r}")
        if int(maxsize) < 1:
            raise ValueError(f"the queue size must be >= 1, got {maxsize}")
        self.source, self.maxsize, self.policy = source, int(maxsize), policy
        self.stop = stop if stop is not None else threading.Event()
        self._q: queue.Queue = queue.Queue(maxsize=self.maxsize)
        self._lock = threading.Lock()
        self._ended = False
        self.produced = self.dropped = self.peak = 0
        self._thread = threading.Thread(target=self._produce, name="linewatch-reader", daemon=True)

    def __enter__(self) -> "FrameQueue":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self, timeout: float = 10.0) -> None:
        self.stop.set()
        while self._thread.is_alive():            # unblock a producer waiting on a full queue
            try:
                while True:
                    self._q.get_nowait()
            except queue.Empty:
                pass
            self._thread.join(0.05)
            timeout -= 0.05
            if timeout <= 0:
                break

    def _produce(self) -> None:
        end = _End()
        try:
            for frame in self.source.frames(self.stop):
                self.produced += 1
                if not self._put(frame):
                    return
        except BaseException as exc:              # handed to the consumer, which re-raises it
            end = _End(exc)
        while not self.stop.is_set():             # the end marker waits for room, never drops a frame
            try:
                self._q.put(end, timeout=0.1)
                return
            except queue.Full:
                continue

    def _put(self, frame: Frame) -> bool:
        """Queue ``frame`` by the policy; False once stopped."""
        while not self.stop.is_set():
            try:
                self._q.put(frame, timeout=0.1) if self.policy == "block" else self._q.put_nowait(frame)
            except queue.Full:
                if self.policy == "drop-oldest":
                    try:
                        self._q.get_nowait()
                        self.dropped += 1
                    except queue.Empty:
                        pass
                continue
            self.peak = max(self.peak, self._q.qsize())
            return True
        return False

    def depth(self) -> int:
        return self._q.qsize()

    def take(self, max_items: int, wait: bool = True) -> list[Frame] | None:
        """Up to ``max_items`` frames: waits for the first (unless ``wait`` is False), then takes only
        what is already queued, so a partial batch is scored at once instead of waiting for a full one.

        Returns None at the end of the source (or once ``stop`` is set), ``[]`` when nothing is queued
        and ``wait`` is False. Re-raises an exception of the source.
        """
        if self._ended:
            return None
        out: list[Frame] = []
        while not out:
            if self.stop.is_set():
                return None
            try:
                item = self._q.get(timeout=0.1) if wait else self._q.get_nowait()
            except queue.Empty:
                if not wait:
                    return out
                continue
            if isinstance(item, _End):
                return self._finish(item)
            out.append(item)
        while len(out) < max_items:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _End):
                self._q.put(item)                  # the end marker is seen by the next take
                break
            out.append(item)
        return out

    def _finish(self, end: _End) -> None:
        self._ended = True
        if end.error is not None:
            raise end.error
        return None
