"""Inspection sources that yield decoded frames: image files, a watched folder, a video file, a camera.

Every source yields :class:`Frame` items in order, each keyed by a **source id**, the ``source`` field
of its record in ``results.jsonl``:

=================  ==========================================  ===========================================
source             source id                                   resume after a restart
=================  ==========================================  ===========================================
image files        the path as listed (``cam1/0001.png``)      recorded paths are skipped, not read
watched folder     the path as listed                          recorded paths are skipped, not read
video file         ``clip.avi#frame=000120`` (0-based index)   recorded frames are skipped (grabbed, not
                                                               decoded)
camera             ``camera:0#t=<UTC ISO time>#frame=000042``  none needed: every frame is new
=================  ==========================================  ===========================================

A decoded image is an array as stored (``(H, W)`` grey, ``(H, W, 3)`` BGR or ``(H, W, 4)`` BGRA,
``uint8`` or ``uint16``); a file that cannot be used becomes a frame with ``error`` set, so it is
recorded once and never retried. Only numpy, OpenCV and the standard library are used.
"""
from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Collection, Iterator

import cv2
import numpy as np

from .preprocess import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, ImageError, decode_image
from .sources import expand_source, list_images

VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".wmv", ".webm", ".mjpg", ".mjpeg")

# A file that stays empty this long is recorded as an error (a writer may create a file well before
# it writes the first byte, so an empty file is not complete just because it stopped changing).
EMPTY_FILE_GRACE_S = 30.0


class SourceError(RuntimeError):
    """A source that cannot be opened or read any more; the message says which and what to do."""


@dataclass
class Frame:
    """One item of a source: a decoded image, or the reason there is none.

    ``source``: the source id (the record key). ``image``: decoded array as stored, or None.
    ``error``: None, or which file/frame is unusable and why. ``read_ms``: time to read and decode.
    """

    source: str
    image: np.ndarray | None
    error: str | None = None
    read_ms: float = 0.0


def read_frame(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> Frame:
    """Read and decode one image file into a :class:`Frame` (errors become ``Frame.error``)."""
    src = str(path)
    t0 = time.perf_counter()
    try:
        img = decode_image(Path(path).read_bytes(), source=src, max_pixels=max_pixels)
    except OSError as exc:
        return Frame(src, None, f"{src}: cannot be read ({exc.strerror or exc}); check the path, permissions "
                                    "and the disk")
    except ImageError as exc:
        return Frame(src, None, str(exc))
    return Frame(src, img, None, 1000 * (time.perf_counter() - t0))


def outside(paths: list[Path], folder: str | os.PathLike | None) -> list[Path]:
    """``paths`` minus those inside ``folder`` (the run's own output: its heat maps are PNGs too)."""
    if folder is None:
        return paths
    root = Path(folder).resolve()
    return [p for p in paths if not p.resolve().is_relative_to(root)]


class FileSource:
    """A fixed list of image files, in order, minus those in ``skip`` (already recorded)."""

    kind = "files"
    live = False

    def __init__(self, paths: list[Path], skip: Collection[str] = (), max_pixels: int = DEFAULT_MAX_PIXELS):
        self.paths = [p for p in paths if str(p) not in skip]
        self.max_pixels = max_pixels
        self.total: int | None = len(self.paths)
        self.stopped_reason = "end of source"

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        for p in self.paths:
            if stop.is_set():
                return
            yield read_frame(p, self.max_pixels)


class FolderWatch:
    """Image files below ``folder`` (recursive, as :func:`list_images`), as they arrive, until stopped.

    The folder is listed every ``poll_s`` seconds. A file is taken once it is complete: its size and
    modification time have not changed for ``settle_s`` seconds (seen equal by polls at least that far
    apart), so a file still being written is not scored half-written. ``settle_s=0`` takes a file as
    soon as it is listed, which is right when writers rename complete files into place: write
    ``.0001.png`` or ``0001.png.part`` (hidden and non-image names are never listed), then rename.
    An empty file waits :data:`EMPTY_FILE_GRACE_S` and is then recorded as an error.

    Files already there at start are taken too (after ``settle_s``), except those in ``skip``; each
    file is yielded once. Stops when ``stop`` is set or, with ``idle_timeout_s``, when no file has
    been taken or was pending for that long (``stopped_reason`` says which).
    """

    kind = "watch"
    live = False

    def __init__(self, folder: str | os.PathLike, skip: Collection[str] = (), poll_s: float = 0.2,
                 settle_s: float = 0.5, idle_timeout_s: float | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                 exclude: str | os.PathLike | None = None):
        self.folder = Path(folder)
        # files below ``exclude`` (the run's output folder, when it lies inside the watched one) are ignored
        self.exclude = exclude if exclude is not None and Path(exclude).resolve().is_relative_to(
            self.folder.resolve()) else None
        if not self.folder.is_dir():
            raise SourceError(f"{folder}: --watch needs a folder, and this is not one")
        if poll_s <= 0 or settle_s < 0 or (idle_timeout_s is not None and idle_timeout_s <= 0):
            raise ValueError("FolderWatch: poll_s and idle_timeout_s must be > 0, settle_s >= 0")
        self.poll_s, self.settle_s, self.idle_timeout_s = float(poll_s), float(settle_s), idle_timeout_s
        self.max_pixels = max_pixels
        self.taken: set[str] = set(skip)
        self._seen: dict[str, tuple[tuple[int, int], float]] = {}     # path -> ((size, mtime_ns), since)
        self.total: int | None = None
        self.stopped_reason = "stopped"

    def poll(self) -> list[Path]:
        """List the folder once; return the files that became ready (sorted by path) and mark them taken."""
        try:
            listed = outside(list_images(self.folder), self.exclude) if self.exclude else list_images(self.folder)
        except OSError as exc:
            raise SourceError(f"{self.folder}: the watched folder cannot be listed any more ({exc})") from exc
        now = time.monotonic()
        seen, ready = {}, []
        for p in listed:
            key = str(p)
            if key in self.taken:
                continue
            try:
                st = p.stat()
            except FileNotFoundError:          # renamed or deleted since the listing
                continue
            sig = (st.st_size, st.st_mtime_ns)
            prev = self._seen.get(key)
            since = prev[1] if prev is not None and prev[0] == sig else now
            seen[key] = (sig, since)
            need = EMPTY_FILE_GRACE_S if st.st_size == 0 else self.settle_s
            if (need == 0 and st.st_size > 0) or (prev is not None and prev[0] == sig and now - since >= need):
                ready.append(p)
        for p in ready:
            self.taken.add(str(p))
            seen.pop(str(p))
        self._seen = seen
        return ready

    @property
    def pending(self) -> int:
        """Files listed but not yet complete."""
        return len(self._seen)

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        last_activity = time.monotonic()
        while not stop.is_set():
            ready = self.poll()
            for p in ready:
                if stop.is_set():
                    return
                frame = read_frame(p, self.max_pixels)
                if frame.error is not None and not p.exists():   # moved away since the listing: not ours
                    continue
                yield frame
            if ready or self.pending:
                last_activity = time.monotonic()
            elif self.idle_timeout_s is not None and time.monotonic() - last_activity >= self.idle_timeout_s:
                self.stopped_reason = "idle timeout"
                return
            stop.wait(self.poll_s)


class VideoSource:
    """Every ``every``-th frame of a video file or a camera, through ``cv2.VideoCapture``.

    ``target``: a video file path, or a camera index (``int``). Video files yield frames 0, N, 2N, ...
    with ids ``<path>#frame=<index>``, skipping ids in ``skip`` without decoding them, and end at the
    end of the file. A camera is *live*: ids carry the UTC capture time, and it runs until stopped;
    after ``max_failures`` reads in a row without a frame it raises :class:`SourceError`.
    """

    def __init__(self, target: str | os.PathLike | int, every: int = 1, skip: Collection[str] = (),
                 max_pixels: int = DEFAULT_MAX_PIXELS, max_failures: int = 50):
        if int(every) < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.every, self.skip, self.max_pixels, self.max_failures = int(every), set(skip), max_pixels, max_failures
        self.camera = isinstance(target, int)
        self.live = self.camera
        self.kind = "camera" if self.camera else "video"
        self.name = f"camera:{target}" if self.camera else str(target)
        self.cap = cv2.VideoCapture(int(target)) if self.camera else cv2.VideoCapture(str(target))
        if not self.cap.isOpened():
            self.cap.release()
            if self.camera:
                raise SourceError(f"{self.name}: OpenCV cannot open this camera (no such device, in use, or no "
                                  "permission); check the index (ls /dev/video*) and that nothing else holds it")
            raise SourceError(f"{self.name}: OpenCV cannot open this video (not a video, or a codec this OpenCV "
                              "build lacks); re-encode it (e.g. MJPG .avi or H.264 .mp4) or extract frames as PNG")
        self.total: int | None = None
        if not self.camera:
            count = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
            if count > 0:
                self.total = sum(self.frame_id(i) not in self.skip for i in range(0, count, self.every))
        self.frames_read = 0
        self.stopped_reason = "end of source" if not self.camera else "stopped"

    def frame_id(self, index: int, when: datetime | None = None) -> str:
        if self.camera:
            t = (when or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            return f"{self.name}#t={t}#frame={index:06d}"
        return f"{self.name}#frame={index:06d}"

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        index, failures = -1, 0
        try:
            while not stop.is_set():
                index += 1
                img, t0, when = None, time.perf_counter(), datetime.now(timezone.utc)
                if index % self.every or (not self.camera and self.frame_id(index) in self.skip):
                    ok = self.cap.grab()               # skipped frames are not decoded
                else:
                    ok, img = self.cap.read()
                    ok = ok and img is not None
                if not ok:
                    if not self.camera:                # a video file ends at its first failed read
                        return
                    index -= 1                         # a camera's frame numbers count frames received
                    failures += 1
                    if failures >= self.max_failures:
                        raise SourceError(f"{self.name}: no frame in {failures} reads in a row; the camera was "
                                          "disconnected or stopped sending; check it and restart")
                    stop.wait(0.02)
                    continue
                failures = 0
                if img is None:
                    continue
                self.frames_read += 1
                fid = self.frame_id(index, when)
                if img.shape[0] * img.shape[1] > self.max_pixels:
                    yield Frame(fid, None, f"{fid}: {img.shape[1]}x{img.shape[0]} pixels is over the limit of "
                                           f"{self.max_pixels}; lower the capture resolution")
                    continue
                yield Frame(fid, img, None, 1000 * (time.perf_counter() - t0))
        finally:
            self.cap.release()


_CAMERA = re.compile(r"^(?:camera:)?(\d+)$")


def camera_index(source: str) -> int | None:
    """``camera:N`` or a bare ``N`` -> N; anything else -> None."""
    m = _CAMERA.match(source.strip())
    return int(m.group(1)) if m else None


def open_source(source: str, skip: Collection[str] = (), *, watch: bool = False, every: int = 1,
                poll_s: float = 0.2, settle_s: float = 0.5, idle_timeout_s: float | None = None,
                max_pixels: int = DEFAULT_MAX_PIXELS, exclude: str | os.PathLike | None = None
                ) -> FileSource | FolderWatch | VideoSource:
    """Pick the source for ``source``: ``camera:N`` (or a bare ``N`` that is not a path), a video file
    (by extension: :data:`VIDEO_EXTENSIONS`), a folder to watch (``watch=True``), or image files (an
    image, a folder or a glob, as :func:`expand_source`). Options that do not fit the source are refused.
    Image files below ``exclude`` (the output folder) are left out.
    """
    s = str(source)
    p = Path(s)
    cam = camera_index(s) if not p.exists() else None
    video = cam is None and p.suffix.lower() in VIDEO_EXTENSIONS
    if watch and not p.is_dir():
        raise ValueError(f"{s}: --watch needs a folder to watch, and this is not a folder")
    if int(every) != 1 and cam is None and not video:
        raise ValueError(f"{s}: --every applies to video files and cameras, not to images "
                         f"(video extensions: {', '.join(VIDEO_EXTENSIONS)})")
    if idle_timeout_s is not None and not watch:
        raise ValueError("--idle-timeout applies to --watch only")
    if cam is not None:
        return VideoSource(cam, every, max_pixels=max_pixels)
    if video:
        if not p.is_file():
            raise FileNotFoundError(f"{s}: no such video file")
        return VideoSource(p, every, skip, max_pixels)
    if watch:
        return FolderWatch(p, skip, poll_s, settle_s, idle_timeout_s, max_pixels, exclude)
    paths = outside(expand_source(s), exclude)
    if not paths:
        raise FileNotFoundError(f"{s}: no images outside the output folder {exclude}")
    return FileSource(paths, skip, max_pixels)


__all__ = ["VIDEO_EXTENSIONS", "IMAGE_EXTENSIONS", "EMPTY_FILE_GRACE_S", "SourceError", "Frame", "read_frame",
           "FileSource", "FolderWatch", "VideoSource", "camera_index", "open_source", "outside"]
