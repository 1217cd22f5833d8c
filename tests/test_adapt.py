"""`linewatch adapt`: few-shot adaptation of a bundle's density on the edge (no torch), and kill safety."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from linewatch.runtime.adapt import SLEEP_BEFORE_RENAME_ENV, read_bundle_density
from linewatch.runtime.bundle import Bundle, BundleError, seal_manifest
from linewatch.runtime.density import log_density, weighted_kcenter
from linewatch.runtime.inspector import Inspector
from linewatch.runtime.preprocess import decode_image, preprocess

from conftest import run_without_torch

DARKEN = 0.6   # the shifted condition: the light dims to 60%


def _darkened(paths: list[Path], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for p in paths:
        img = np.clip(cv2.imread(str(p)).astype(np.float32) * DARKEN, 0, 255).astype(np.uint8)
        q = folder / f"{p.parent.name}_{p.name}"
        cv2.imwrite(str(q), img)
        out.append(q)
    return out


@pytest.fixture(scope="module")
def shifted(small_category, tmp_path_factory):
    """Darkened copies: 4 validation images to adapt with, and the test split (good and defective)."""
    root = tmp_path_factory.mktemp("shifted")
    test = small_category / "test"
    return {"adapt": _darkened(sorted((small_category / "validation/good").glob("*.png"))[:4], root / "adapt"),
            "good": _darkened(sorted((test / "good").glob("*.png")), root / "good"),
            "bad": _darkened(sorted(p for p in test.rglob("*.png") if p.parent.name != "good"), root / "bad")}


def _scores(bundle, paths) -> np.ndarray:
    insp = Inspector(bundle, threads=1)
    x = np.stack([preprocess(decode_image(p.read_bytes(), str(p)), insp.spec) for p in paths])
    return insp.score_batch(x)[0]


@pytest.fixture(scope="module")
def adapted(small_bundle, shifted, tmp_path_factory):
    """The small bundle adapted, in an interpreter where torch and onnx cannot be imported."""
    out = tmp_path_factory.mktemp("adapted") / "b2"
    summary = run_without_torch(f"""
        from linewatch.runtime.adapt import adapt_bundle
        _, summary = adapt_bundle({str(small_bundle)!r}, {[str(p) for p in shifted["adapt"]]!r}, {str(out)!r}, threads=1)
        print(json.dumps(summary))
    """)
    return out, summary


def test_adapt_runs_without_torch_and_names_its_parent(small_bundle, adapted):
    out, summary = adapted
    parent, child = Bundle.load(small_bundle), Bundle.load(out)
    lin = child.manifest.lineage
    assert lin["parent"] == parent.id == summary["parent"] and lin["parent_path"] == str(Path(small_bundle).resolve())
    assert lin["adapted_with"]["images"] == 4 and lin["adapted_with"]["chain_samples"] == 0
    assert lin["adapted_with"]["fingerprint"].startswith("sha256:")
    assert "level 1" in summary["chain"]
    for name in parent.manifest.files:   # only the density changed
        same = child.file(name).read_bytes() == parent.file(name).read_bytes()
        assert same == (name != "density.bin"), name
    assert read_bundle_density(child).kernel.shape == read_bundle_density(parent).kernel.shape
    assert child.manifest.calibration.method != parent.manifest.calibration.method
    assert child.manifest.created_utc >= parent.manifest.created_utc


def test_adapted_bundle_scores_the_new_condition_lower_and_still_flags_defects(small_bundle, adapted, shifted):
    out, _ = adapted
    parent, child = Bundle.load(small_bundle), Bundle.load(out)
    good_before, good_after = _scores(parent, shifted["good"]), _scores(child, shifted["good"])
    bad_after = _scores(child, shifted["bad"])
    assert np.median(good_after - good_before) < -5.0        # the dimmed good surface now looks familiar
    assert np.mean(good_after > child.manifest.decision.threshold) <= np.mean(good_before > parent.manifest.decision.threshold)
    # defects under the new light are still flagged (the parent flags nearly all of them)
    assert np.mean(bad_after > child.manifest.decision.threshold) >= 0.8
    assert np.median(bad_after) > np.max(good_after)


def test_numpy_density_matches_the_graph(adapted, shifted):
    """Re-calibration scores in numpy what the graph scores (same density, same patches)."""
    child = Bundle.load(adapted[0])
    insp = Inspector(child, threads=1)
    x = np.stack([preprocess(decode_image(p.read_bytes(), str(p)), insp.spec) for p in shifted["good"][:3]])
    _, maps = insp.score_batch(x)
    z = insp.patch_features(x)
    ours = -log_density(z.reshape(-1, z.shape[2]), read_bundle_density(child)).reshape(maps.shape)
    assert np.allclose(ours, maps, atol=1e-2)


def test_weighted_kcenter_keeps_outliers_and_mass():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(size=(200, 8)), rng.normal(size=(3, 8)) + 40.0]).astype(np.float32)
    mass = rng.uniform(0.5, 2.0, len(x))
    idx, w = weighted_kcenter(x, mass, 20, projection_dim=4)
    assert len(set(idx.tolist())) == 20 and {200, 201, 202} & set(idx.tolist())
    assert np.isclose(w.sum(), mass.sum()) and np.all(w >= mass[idx] - 1e-9)


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "linewatch.cli", *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})


def test_cli_errors_and_skips(small_bundle, shifted, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = _cli("adapt", "--bundle", str(small_bundle), "--good", str(empty), "--out", str(tmp_path / "x"))
    assert r.returncode == 1 and "no images" in r.stderr and not (tmp_path / "x").exists()

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for p in shifted["adapt"][:2]:
        (mixed / p.name).write_bytes(p.read_bytes())
    (mixed / "broken.png").write_bytes(b"\x89PNG not really")
    r = _cli("adapt", "--bundle", str(small_bundle), "--good", str(mixed), "--out", str(tmp_path / "ok"),
             "--threads", "1")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["images"] == 2 and len(summary["skipped"]) == 1 and "broken.png" in summary["skipped"][0]
    assert "broken.png" in r.stderr
    Bundle.load(tmp_path / "ok")

    r = _cli("adapt", "--bundle", str(small_bundle), "--good", str(mixed), "--out", str(tmp_path / "c"),
             "--chain-samples", "100")
    assert r.returncode == 1 and "no chain" in r.stderr


def test_bundle_without_density_file_says_re_export(small_bundle, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(small_bundle, old)
    m = json.loads((old / "manifest.json").read_text())
    m["density"].pop("parameters")
    m["files"].pop("density.bin")
    (old / "manifest.json").write_text(json.dumps(m))
    seal_manifest(old)                      # as an older linewatch would have written it, digest included
    with pytest.raises(BundleError, match="re-export"):
        read_bundle_density(Bundle.load(old))


def _is_absent_or_complete(out: Path) -> str:
    if not out.exists():
        return "absent"
    Bundle.load(out)              # raises if partial or damaged
    Inspector(out, threads=1)     # and the graph with its density.bin loads
    return "complete"


def test_sigkill_during_adapt_never_leaves_a_partial_bundle(small_bundle, shifted, tmp_path):
    """Kill adapt while its bundle sits complete in the temporary folder (hook), then at random moments:
    --out is either absent or a complete bundle that loads."""
    good = str(shifted["adapt"][0].parent)
    out = tmp_path / "b2"
    proc = subprocess.Popen([sys.executable, "-m", "linewatch.cli", "adapt", "--bundle", str(small_bundle),
                             "--good", good, "--out", str(out), "--threads", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, SLEEP_BEFORE_RENAME_ENV: "60"})
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob(".b2.tmp-*/manifest.json")):
        time.sleep(0.05)
    assert list(tmp_path.glob(".b2.tmp-*/manifest.json")), "adapt never reached the rename"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    from linewatch.runtime.bundle import sweep_interrupted_writes
    assert sweep_interrupted_writes(out) and not list(tmp_path.glob(".b2.*"))   # the next write's clean-up

    outcomes = []
    rng = np.random.default_rng(1)
    for i in range(3):
        target = tmp_path / f"r{i}"
        proc = subprocess.Popen([sys.executable, "-m", "linewatch.cli", "adapt", "--bundle", str(small_bundle),
                                 "--good", good, "--out", str(target), "--threads", "1"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(float(rng.uniform(0.5, 4.0)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        outcomes.append(_is_absent_or_complete(target))
    assert set(outcomes) <= {"absent", "complete"}


def test_calibration_images_set_the_threshold_exactly(small_bundle, shifted, tmp_path):
    """With --calibration the threshold is the conformal quantile of those images' scores under the adapted graph."""
    from linewatch.runtime.adapt import SPLIT_METHOD, adapt_bundle

    cal = shifted["good"]
    child, summary = adapt_bundle(small_bundle, shifted["adapt"], tmp_path / "b2", calibration_paths=cal, threads=1)
    assert child.manifest.calibration.method == SPLIT_METHOD and summary["calibration_method"] == SPLIT_METHOD
    s = np.sort(_scores(child, cal))
    n, alpha = len(s), child.manifest.decision.target_false_alarm_rate
    k = min(n, int(np.ceil((n + 1) * (1 - alpha))))
    assert abs(child.manifest.decision.threshold - s[k - 1]) < 1e-2
    assert child.manifest.calibration.target_reachable is False     # 8 images cannot reach 1%


def test_chain_samples_are_refused_where_the_chain_is_not_at_the_density_level(small_category, shifted, tmp_path):
    """A level-1 density under a stack keeps the stack's chain for `augment`; its samples are top-layer codes,
    not level-1 rows, so adapt refuses --chain-samples with a message (and adapts with codes only)."""
    from linewatch.jobs.train import run_train
    from linewatch.runtime.adapt import adapt_bundle
    from linewatch.training.config import config_from_dict

    from conftest import SMALL_CONFIG

    b = tmp_path / "stacked"
    run_train(small_category, b, config_from_dict({**SMALL_CONFIG, "stack": {"widths": [32], "epochs": 2}}),
              checkpoint=False)
    m = Bundle.load(b).manifest
    assert m.density["level"] == 1 and m.chain["sample_level"] == 2
    with pytest.raises(ValueError, match="chain samples live at stack level 2, its density at level 1"):
        adapt_bundle(b, shifted["adapt"], tmp_path / "b2", chain_samples=16, threads=1)
    child, summary = adapt_bundle(b, shifted["adapt"], tmp_path / "b2", threads=1)
    assert summary["chain_samples"] == 0 and child.manifest.lineage["parent"] == Bundle.load(b).id


@pytest.mark.slow
def test_chain_bundle_adapts_with_chain_samples_without_torch(small_category, shifted, tmp_path):
    """A level-2 bundle ships chain_encode/decode.onnx; adapt runs chains from the new codes with torch blocked."""
    from linewatch.jobs.train import run_train
    from linewatch.training.config import config_from_dict

    from conftest import SMALL_CONFIG

    deep = tmp_path / "deep"
    run_train(small_category, deep, config_from_dict({**SMALL_CONFIG, "stack": {"widths": [32], "epochs": 5},
                                                     "density": {**SMALL_CONFIG["density"], "level": 2}}),
              checkpoint=False)
    m = Bundle.load(deep).manifest
    assert {"chain_encode.onnx", "chain_decode.onnx"} <= set(m.files) and m.chain["codec_parity_max_abs_diff"] < 1e-4
    out = tmp_path / "b2"
    summary = run_without_torch(f"""
        from linewatch.runtime.adapt import adapt_bundle
        _, summary = adapt_bundle({str(deep)!r}, {[str(p) for p in shifted["adapt"]]!r}, {str(out)!r},
                                  chain_samples=128, threads=1)
        print(json.dumps(summary))
    """)
    child = Bundle.load(out)
    assert summary["chain_samples"] == 128 == child.manifest.lineage["adapted_with"]["chain_samples"]
    assert read_bundle_density(child).kernel.shape == read_bundle_density(Bundle.load(deep)).kernel.shape
    good_before, good_after = _scores(deep, shifted["good"]), _scores(child, shifted["good"])
    assert np.median(good_after - good_before) < 0


def test_signed_parent_gives_a_signed_child(small_bundle, shifted, tmp_path, monkeypatch):
    """Where LINEWATCH_BUNDLE_KEY is set, the adapted bundle is signed like any bundle write_bundle writes."""
    import shutil

    from linewatch.runtime.adapt import adapt_bundle
    from linewatch.runtime.signing import KEY_ENV, VERIFIED, sign_bundle

    parent = tmp_path / "parent"
    shutil.copytree(small_bundle, parent)
    monkeypatch.setenv(KEY_ENV, "a-test-key-of-enough-bytes")
    sign_bundle(parent)
    child, _ = adapt_bundle(parent, shifted["adapt"][:2], tmp_path / "b2", threads=1)
    assert Bundle.load(tmp_path / "b2").signature == VERIFIED


def test_a_bundle_with_a_global_branch_is_refused_before_any_work(small_bundle):
    import dataclasses

    from linewatch.runtime.adapt import scoring_of
    from linewatch.runtime.bundle import Bundle

    b = Bundle.load(small_bundle)
    fused = dataclasses.replace(b, manifest=dataclasses.replace(
        b.manifest, scoring=dataclasses.replace(b.manifest.scoring, global_branch=True)))
    with pytest.raises(BundleError, match="global branch.*linewatch retrain"):
        scoring_of(fused)
