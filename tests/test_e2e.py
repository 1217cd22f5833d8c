"""train -> bundle -> inspect on small real data, through the jobs and the command line."""
import json
import subprocess
import sys

import numpy as np
import pytest

from linewatch.jobs.demo import evaluate_results
from linewatch.runtime.inspect_run import read_results, run_inspection
from linewatch.runtime.inspector import Inspector

FIELDS = {"source", "score", "threshold", "anomalous", "p_value", "error", "latency_ms", "bundle", "heatmap"}


def run_cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "linewatch", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def inspected(small_bundle, small_category, tmp_path_factory):
    out = tmp_path_factory.mktemp("inspect")
    proc = run_cli("inspect", "--bundle", str(small_bundle), "--source", str(small_category / "test"),
                   "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return out, json.loads(proc.stdout)


def test_defective_images_score_above_good_ones(inspected, small_category):
    out, _ = inspected
    auroc, far, detected, n_good, n_defect = evaluate_results(small_category, out / "results.jsonl")
    assert (n_good, n_defect) == (8, 18)
    # 64-px crops and 24 training images: far from the full demo, but clearly better than chance
    assert auroc > 0.75, auroc
    recs = read_results(out / "results.jsonl")
    good = np.median([r["score"] for r in recs if "/test/good/" in r["source"]])
    crack = np.median([r["score"] for r in recs if "/test/crack/" in r["source"]])
    assert crack > good


def test_results_file_has_one_complete_record_per_image_and_heatmaps_for_flagged(inspected, small_category):
    out, summary = inspected
    recs = read_results(out / "results.jsonl")
    assert len(recs) == summary["inspected"] == len(list((small_category / "test").rglob("*.png")))
    for r in recs:
        assert FIELDS <= set(r) and r["error"] is None
        assert 0 < r["p_value"] <= 1 and r["anomalous"] == (r["score"] > r["threshold"])
        assert (r["heatmap"] is not None) == r["anomalous"]
    assert summary["flagged"] == sum(r["anomalous"] for r in recs) > 0
    flagged = [r for r in recs if r["anomalous"]]
    import cv2
    heat = cv2.imread(flagged[0]["heatmap"])
    assert heat.shape == (64, 64, 3)


def test_unreadable_files_become_error_records_and_the_run_goes_on(small_bundle, small_category, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a_empty.png").write_bytes(b"")
    (src / "b_garbage.jpg").write_bytes(b"this is not a jpeg")
    good = sorted((small_category / "test" / "good").glob("*.png"))[:2]
    for p in good:
        (src / p.name).write_bytes(p.read_bytes())
    summary = run_inspection(Inspector(small_bundle), str(src), tmp_path / "out")
    recs = {r["source"].split("/")[-1]: r for r in read_results(tmp_path / "out" / "results.jsonl")}
    assert summary.errors == 2 and summary.inspected == 4
    assert "empty" in recs["a_empty.png"]["error"] and recs["a_empty.png"]["score"] is None
    assert "b_garbage.jpg" in recs["b_garbage.jpg"]["error"]
    assert all(recs[p.name]["error"] is None for p in good)


def test_rerun_resumes_without_duplicates_and_refuses_another_bundle(small_bundle, small_category, tmp_path):
    inspector = Inspector(small_bundle)
    first = run_inspection(inspector, str(small_category / "test" / "good"), tmp_path)
    with open(tmp_path / "results.jsonl", "a") as f:
        f.write('{"source": "torn')                                # a crash mid-record
    again = run_inspection(inspector, str(small_category / "test"), tmp_path)
    assert again.skipped_already_recorded == first.inspected
    sources = [r["source"] for r in read_results(tmp_path / "results.jsonl")]
    assert len(sources) == len(set(sources)) == len(list((small_category / "test").rglob("*.png")))
    (tmp_path / "results.jsonl").write_text(json.dumps({"source": "x", "bundle": "someotherbundle"}) + "\n")
    with pytest.raises(RuntimeError, match="another bundle"):
        run_inspection(inspector, str(small_category / "test"), tmp_path)


def test_scores_match_between_batch_and_single_image(small_bundle, small_category):
    from linewatch.runtime.preprocess import read_image
    inspector = Inspector(small_bundle)
    paths = sorted((small_category / "test" / "crack").glob("*.png"))
    batch = [v.score for v, _, _ in inspector.inspect_paths(paths, batch_size=8)]
    single = [inspector.inspect_image(read_image(p))[0].score for p in paths]
    np.testing.assert_allclose(batch, single, rtol=1e-5)


@pytest.mark.slow
def test_full_demo_on_brick_meets_the_accuracy_target(tmp_path):
    """The README's figures: the default config on the full-size brick demo (several minutes)."""
    from linewatch.jobs.demo import run_demo
    report, = run_demo(tmp_path, ("brick",))
    assert report.image_auroc >= 0.98


def test_source_can_be_one_image_or_a_glob(small_bundle, small_category, tmp_path):
    one = sorted((small_category / "test" / "crack").glob("*.png"))[0]
    p = run_cli("inspect", "--bundle", str(small_bundle), "--source", str(one), "--out", str(tmp_path / "a"))
    assert p.returncode == 0, p.stderr
    assert [r["source"] for r in read_results(tmp_path / "a" / "results.jsonl")] == [str(one)]
    pattern = str(small_category / "test" / "*" / "00[01].png")
    p = run_cli("inspect", "--bundle", str(small_bundle), "--source", pattern, "--out", str(tmp_path / "b"))
    assert p.returncode == 0, p.stderr
    assert len(read_results(tmp_path / "b" / "results.jsonl")) == 2 * 7          # good + 6 defect folders
    p = run_cli("inspect", "--bundle", str(small_bundle), "--source", str(tmp_path / "no" / "*.png"),
                "--out", str(tmp_path / "c"))
    assert p.returncode == 1 and "matches no image files" in p.stderr


def test_threshold_is_calibrated_on_the_validation_images_under_the_final_model(small_bundle, small_category):
    from linewatch.runtime.bundle import Bundle

    bundle = Bundle.load(small_bundle)
    cal = bundle.manifest.calibration
    assert cal.method.startswith("split-conformal")
    assert len(cal.scores) == 12 == bundle.manifest.training_data["validation"]["n_images"]
    # the stored calibration scores are the shipped graph's scores of validation/good
    val = sorted((small_category / "validation" / "good").glob("*.png"))
    scores = [v.score for v, _, _ in Inspector(bundle).inspect_paths(val)]
    assert np.allclose(sorted(scores), cal.scores, rtol=1e-4, atol=1e-3)
    # 12 images cannot reach 1 %: the threshold is the highest validation score
    assert cal.target_reachable is False
    assert bundle.manifest.decision.threshold == pytest.approx(max(cal.scores))
