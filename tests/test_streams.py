"""Streaming sources for `linewatch inspect`: folder watch, video files, the bounded queue, the CLI."""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import run_without_torch

from linewatch.cli import main, resolve_batch_size
from linewatch.runtime.frame_queue import FrameQueue
from linewatch.runtime.inspect_run import read_results, run_inspection
from linewatch.runtime.inspector import Inspector
from linewatch.runtime.streams import Frame, FolderWatch, SourceError, camera_index


def png_bytes(seed: int, size: int = 32) -> bytes:
    img = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return cv2.imencode(".png", img)[1].tobytes()


def put_by_rename(data: bytes, folder: Path, name: str) -> Path:
    """What a careful camera writer does: write a hidden temporary file, then rename it into place."""
    tmp = folder / f".{name}.part"
    tmp.write_bytes(data)
    os.replace(tmp, folder / name)
    return folder / name


def test_folder_watch_takes_a_file_once_it_stops_changing_and_only_once(tmp_path):
    watch = FolderWatch(tmp_path, poll_s=0.05, settle_s=0.3)
    data = png_bytes(0)
    a = tmp_path / "a.png"
    a.write_bytes(data[: len(data) // 2])                     # a writer is half-way through
    (tmp_path / "empty.png").touch()                          # created, nothing written yet
    assert watch.poll() == []                                 # first sight: not yet known to be stable
    time.sleep(0.35)
    with open(a, "ab") as f:
        f.write(data[len(data) // 2:])
    assert watch.poll() == []                                 # it changed since the last poll
    (tmp_path / ".b.png.part").write_bytes(data)              # hidden temporary names are never listed
    time.sleep(0.35)
    b = put_by_rename(png_bytes(1), tmp_path, "b.png")
    assert watch.poll() == [a]                                # unchanged for 0.35 s >= settle
    time.sleep(0.35)
    assert watch.poll() == [b]
    time.sleep(0.35)
    assert watch.poll() == [] and watch.pending == 1          # each file once; the empty one waits
    assert FolderWatch(tmp_path, skip={str(a)}, settle_s=0).poll() == [b]   # settle 0: at once; skip recorded


class CountingSource:
    live = False

    def __init__(self, n: int, fail_at: int | None = None):
        self.n, self.fail_at, self.yielded = n, fail_at, 0

    def frames(self, stop):
        for i in range(self.n):
            if i == self.fail_at:
                raise SourceError("camera:7: unplugged")
            self.yielded = i + 1
            yield Frame(str(i), None, "placeholder")


def test_a_slow_scorer_holds_back_the_reader_and_the_queue_stays_bounded():
    src = CountingSource(60)
    got: list[str] = []
    with FrameQueue(src, maxsize=4, policy="block") as fq:
        while (batch := fq.take(2)) is not None:
            time.sleep(0.003)                                  # the scorer is slower than the reader
            got += [f.source for f in batch]
            assert src.yielded - len(got) <= 4 + 1             # queued + the one waiting to be queued
    assert got == [str(i) for i in range(60)] and fq.dropped == 0 and 1 <= fq.peak <= 4


def test_a_live_source_drops_the_oldest_frames_and_counts_them():
    src = CountingSource(300)
    src.live = True
    got: list[int] = []
    with FrameQueue(src, maxsize=3, policy="drop-oldest") as fq:
        while (batch := fq.take(1)) is not None:
            time.sleep(0.002)
            got += [int(f.source) for f in batch]
    assert fq.dropped > 0 and len(got) + fq.dropped == 300 and fq.peak <= 3
    assert got == sorted(got) and got[-1] == 299              # in order, and the newest frame is kept


def test_a_source_error_reaches_the_scorer_after_the_frames_before_it():
    got = []
    with pytest.raises(SourceError, match="camera:7: unplugged"):
        with FrameQueue(CountingSource(10, fail_at=5), maxsize=2) as fq:
            while (batch := fq.take(4)) is not None:
                got += batch
    assert [f.source for f in got] == ["0", "1", "2", "3", "4"]


def test_watch_scores_files_that_arrive_and_stops_on_idle_timeout_or_stop(small_bundle, small_category, tmp_path):
    test = small_category / "test"
    images = sorted(test.glob("good/*.png"))[:2] + [sorted(d.glob("*.png"))[0] for d in sorted(test.iterdir())
                                                    if d.name != "good"][:3]
    watched = tmp_path / "watched"
    watched.mkdir()
    out = watched / "results"                      # inside the watched folder: its heat maps must not be scored
    put_by_rename(images[0].read_bytes(), watched, images[0].name)

    def writer():
        for p in images[1:]:
            time.sleep(0.2)
            put_by_rename(p.read_bytes(), watched, f"{p.parent.name}_{p.name}")

    inspector = Inspector(small_bundle, threads=1)
    t = threading.Thread(target=writer)
    t.start()
    summary = run_inspection(inspector, str(watched), out, batch_size=2, watch=True, poll_s=0.05,
                             settle_s=0.1, idle_timeout_s=3.0)
    t.join()
    names = [Path(r["source"]).name for r in read_results(out / "results.jsonl")]
    assert sorted(names) == sorted([images[0].name] + [f"{p.parent.name}_{p.name}" for p in images[1:]])
    assert summary.stopped == "idle timeout" and summary.source_kind == "watch" and summary.inspected == 5
    assert summary.flagged >= 1 and len(list((out / "heatmaps").glob("*.png"))) == summary.flagged

    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    again = run_inspection(inspector, str(watched), out, watch=True, poll_s=0.05, stop=stop)
    assert again.stopped == "stop requested" and again.inspected == 0 and again.skipped_already_recorded == 5


def write_video(path: Path, images: list[Path], size: int = 64) -> list[np.ndarray]:
    """An MJPG .avi of the given images; returns the frames as OpenCV decodes them back."""
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (size, size))
    assert w.isOpened()
    for p in images:
        w.write(cv2.resize(cv2.imread(str(p)), (size, size)))
    w.release()
    cap, frames = cv2.VideoCapture(str(path)), []
    while (got := cap.read())[0]:
        frames.append(got[1])
    return frames


def test_video_every_nth_frame_resumes_by_frame_id(small_bundle, small_category, tmp_path):
    images = sorted((small_category / "test").rglob("*.png"))[:20]
    video = tmp_path / "clip.avi"
    frames = write_video(video, images)
    assert len(frames) == 20
    inspector = Inspector(small_bundle, threads=1)
    out = tmp_path / "out"
    first = run_inspection(inspector, str(video), out, batch_size=4, every=3, max_images=3)
    assert first.stopped == "max images" and first.inspected == 3 and first.source_kind == "video"
    rest = run_inspection(inspector, str(video), out, batch_size=4, every=3)
    assert rest.inspected == 4 and rest.skipped_already_recorded == 3 and rest.stopped == "end of source"
    more = run_inspection(inspector, str(video), out, batch_size=4, every=2)   # evens not yet recorded
    assert more.inspected == 6
    recs = read_results(out / "results.jsonl")
    ids = [r["source"] for r in recs]
    want = sorted({i for i in range(0, 20, 3)} | {i for i in range(0, 20, 2)})
    assert sorted(ids) == [f"{video}#frame={i:06d}" for i in want] and len(set(ids)) == len(ids)
    # each record is the score of the frame its id names (skipped frames were grabbed, not miscounted)
    for r in recs:
        i = int(r["source"].rsplit("=", 1)[1])
        assert r["score"] == pytest.approx(inspector.inspect_image(frames[i])[0].score, rel=1e-5)
    flagged = [r for r in recs if r["anomalous"]]
    assert all(f"clip_frame_{r['source'][-6:]}" in r["heatmap"] for r in flagged)


def test_cli_inspect_options_and_clear_errors(small_bundle, small_category, tmp_path, capsys):
    assert resolve_batch_size("auto", threads=1, workers=1) == 1
    assert resolve_batch_size("auto", threads=0, workers=2) == 1
    assert resolve_batch_size("auto", threads=2, workers=1) == 8
    assert resolve_batch_size(4, threads=1, workers=1) == 4
    assert camera_index("camera:3") == 3 and camera_index("0") == 0 and camera_index("cam1/*.png") is None
    good = small_category / "test" / "good"
    (tmp_path / "bad.avi").write_text("not a video")
    base = ["inspect", "--bundle", str(small_bundle), "--out", str(tmp_path / "o")]
    for extra, message in [
        (["--source", "camera:99"], "camera:99: OpenCV cannot open this camera"),
        (["--source", str(tmp_path / "bad.avi")], "bad.avi: OpenCV cannot open this video"),
        (["--source", str(good), "--every", "2"], "--every applies to video files and cameras"),
        (["--source", str(next(good.glob("*.png"))), "--watch"], "--watch needs a folder"),
        (["--source", str(good), "--idle-timeout", "1"], "--idle-timeout applies to --watch only"),
    ]:
        assert main(base + extra) == 1
        assert message in capsys.readouterr().err, extra
    with pytest.raises(SystemExit) as e:
        main(base + ["--source", str(good), "--batch-size", "0"])
    assert e.value.code == 2
    capsys.readouterr()
    assert main(base + ["--source", str(good), "--workers", "2", "--threads", "1", "--max-images", "3"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["inspected"] == 3 and summary["stopped"] == "max images"


def test_streaming_sources_run_without_torch(small_bundle, small_category, tmp_path):
    images = sorted((small_category / "test").rglob("*.png"))[:6]
    write_video(tmp_path / "clip.avi", images)
    watched = tmp_path / "watched"
    watched.mkdir()
    for p in images[:2]:
        put_by_rename(p.read_bytes(), watched, p.name)
    result = run_without_torch(f"""
        from linewatch.cli import main
        common = ["--bundle", {str(small_bundle)!r}, "--threads", "1"]
        rc_video = main(["inspect", *common, "--source", {str(tmp_path / "clip.avi")!r}, "--every", "2",
                         "--out", {str(tmp_path / "v")!r}])
        rc_watch = main(["inspect", *common, "--source", {str(watched)!r}, "--watch", "--settle", "0",
                         "--idle-timeout", "0.5", "--out", {str(tmp_path / "w")!r}])
        bad = [m for m in sys.modules if m.split(".")[0] in ("torch", "onnx")
               or m.startswith(("linewatch.training", "linewatch.export", "linewatch.jobs"))]
        print(json.dumps({{"rc": [rc_video, rc_watch], "bad": bad}}))
    """)
    assert result == {"rc": [0, 0], "bad": []}
    assert len(read_results(tmp_path / "v" / "results.jsonl")) == 3
    assert len(read_results(tmp_path / "w" / "results.jsonl")) == 2


class FakeCamera:
    """A live source that delivers frames faster than anything can score them."""

    kind, live, total, stopped_reason = "camera", True, None, "camera closed"

    def __init__(self, image: np.ndarray, n: int):
        self.image, self.n = image, n

    def frames(self, stop):
        for i in range(self.n):
            yield Frame(f"camera:9#frame={i:06d}", self.image)


def test_a_camera_faster_than_scoring_drops_the_oldest_and_the_summary_counts_them(small_bundle, small_category,
                                                                                    tmp_path, monkeypatch):
    import linewatch.runtime.inspect_run as inspect_run

    image = cv2.imread(str(next((small_category / "test" / "good").glob("*.png"))))
    monkeypatch.setattr(inspect_run, "open_source", lambda *a, **k: FakeCamera(image, 300))
    summary = run_inspection(Inspector(small_bundle, threads=1), "camera:9", tmp_path, batch_size=1, queue_size=2)
    ids = [int(r["source"][-6:]) for r in read_results(tmp_path / "results.jsonl")]
    assert summary.source_kind == "camera" and summary.dropped_frames > 0
    assert summary.inspected + summary.dropped_frames == 300 == len(ids) + summary.dropped_frames
    assert ids == sorted(set(ids)) and ids[-1] == 299
