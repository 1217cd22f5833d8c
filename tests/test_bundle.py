import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from linewatch.runtime.bundle import (SCHEMA_VERSION, Bundle, BundleError, Calibration, Decision, Manifest,
                                      ModelSpec, seal_manifest, sweep_interrupted_writes, write_bundle)
from linewatch.runtime.inspector import Inspector
from linewatch.runtime.preprocess import InputSpec


def tiny_manifest():
    return Manifest(model=ModelSpec(), input=InputSpec(),
                    decision=Decision(threshold=1.0, target_false_alarm_rate=0.01),
                    calibration=Calibration(method="test", scores=[0.5, 1.0], target_reachable=False, heatmap_low=0.1))


def test_round_trip_and_checksums(tmp_path):
    b = write_bundle(tmp_path / "b", tiny_manifest(), {"model.onnx": b"\x00graph"})
    assert b.manifest.files["model.onnx"]["bytes"] == 6
    again = Bundle.load(tmp_path / "b")
    assert again.manifest.to_dict() == b.manifest.to_dict() and again.id == b.id
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]      # no temp folders left


def test_refuses_to_overwrite_without_asking(tmp_path):
    write_bundle(tmp_path / "b", tiny_manifest(), {"model.onnx": b"x"})
    with pytest.raises(BundleError, match="already exists"):
        write_bundle(tmp_path / "b", tiny_manifest(), {"model.onnx": b"y"})
    write_bundle(tmp_path / "b", tiny_manifest(), {"model.onnx": b"y"}, overwrite=True)
    assert (tmp_path / "b" / "model.onnx").read_bytes() == b"y"



def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_killed_replacement_is_undone_and_its_leftovers_swept(tmp_path):
    """The state a SIGKILL between write_bundle's two renames leaves: no bundle at `b`, the previous one in
    `.b.old-PID`, the new one complete in `.b.tmp-PID-*`. Loading says where the previous bundle is; the next
    write puts it back first (so without overwrite it is not clobbered) and removes the dead writer's folders."""
    write_bundle(tmp_path / "b", tiny_manifest(), {"model.onnx": b"old"})
    pid = dead_pid()
    (tmp_path / "b").rename(tmp_path / f".b.old-{pid}")
    shutil.copytree(tmp_path / f".b.old-{pid}", tmp_path / f".b.tmp-{pid}-x1y2")
    with pytest.raises(BundleError, match=rf"\.b\.old-{pid} holds the bundle that was there"):
        Bundle.load(tmp_path / "b")
    with pytest.raises(BundleError, match="already exists"):
        write_bundle(tmp_path / "b", tiny_manifest(), {"model.onnx": b"new"})
    assert Bundle.load(tmp_path / "b").path.joinpath("model.onnx").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_sweep_removes_dead_writers_temp_folders_and_spares_live_ones(tmp_path):
    write_bundle(tmp_path / "b", tiny_manifest(), {"model.onnx": b"x"})
    dead = tmp_path / f".b.tmp-{dead_pid()}-abcd"
    stale_old = tmp_path / f".b.old-{dead_pid()}"
    dead.mkdir()
    stale_old.mkdir()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        busy = tmp_path / f".b.tmp-{live.pid}-efgh"
        busy.mkdir()
        odd = tmp_path / ".b.tmp-notapid"
        odd.mkdir()
        assert sorted(sweep_interrupted_writes(tmp_path / "b")) == sorted([dead, stale_old])
        assert busy.is_dir() and odd.is_dir() and not dead.exists() and not stale_old.exists()
        assert (tmp_path / "b" / "model.onnx").read_bytes() == b"x"   # `b` existed: the old copy was just dropped
    finally:
        live.kill()
        live.wait()

def edit_manifest(path, **changes):
    m = json.loads((path / "manifest.json").read_text())
    m.update(changes)
    (path / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("damage, message", [
    (lambda p: (p / "model.onnx").write_bytes(b"\x01graph"), "checksum mismatch"),
    (lambda p: (p / "model.onnx").unlink(), "missing"),
    (lambda p: (p / "manifest.json").unlink(), "manifest.json is missing"),
    (lambda p: (p / "manifest.json").write_text("{"), "not valid JSON"),
    (lambda p: edit_manifest(p, schema_version=SCHEMA_VERSION + 1), "newer than this linewatch"),
    (lambda p: edit_manifest(p, linewatch_version="99.0.0"), "major versions differ"),
    (lambda p: edit_manifest(p, format="other"), "not a linewatch bundle"),
    (lambda p: edit_manifest(p, decision={}), "wrong form"),
])
def test_damaged_bundles_are_refused_with_a_reason(tmp_path, damage, message):
    write_bundle(tmp_path / "b", tiny_manifest(), {"model.onnx": b"\x00graph"})
    damage(tmp_path / "b")
    with pytest.raises(BundleError, match=message):
        Bundle.load(tmp_path / "b")


def test_graph_that_does_not_match_manifest_is_refused(small_bundle, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(small_bundle, copy)
    m = json.loads((copy / "manifest.json").read_text())
    m["input"]["height"] = m["input"]["width"] = 96
    (copy / "manifest.json").write_text(json.dumps(m))
    seal_manifest(copy)              # an edit that keeps the manifest digest consistent
    with pytest.raises(BundleError, match="does not match the manifest"):
        Inspector(copy)


def test_trained_manifest_is_complete(small_bundle):
    m = Bundle.load(small_bundle).manifest
    assert m.input.height == 64 and m.input.color_order == "RGB"
    assert m.training_data["fingerprint"].startswith("sha256:") and m.training_data["n_images"] == 24
    assert m.parity["max_abs_score_diff"] <= m.parity["atol"] + m.parity["rtol"] * max(1, abs(m.decision.threshold))
    assert len(m.calibration.scores) == 12 and m.calibration.folds == 2       # validation/good calibrates
    assert m.decision.threshold == pytest.approx(np.max(m.calibration.scores))   # 12 images < 99 needed for 1 %
    assert m.calibration.target_reachable is False
