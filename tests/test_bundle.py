import json
import shutil

import numpy as np
import pytest

from linewatch.runtime.bundle import (SCHEMA_VERSION, Bundle, BundleError, Calibration, Decision, Manifest,
                                      ModelSpec, seal_manifest, write_bundle)
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
