"""Scale-out with Ray in local mode: the same results as the single-process paths, on the same data.

One local Ray instance (2 CPUs, no dashboard, no usage reporting) serves the whole module. Skipped when
the optional ``scale`` extra (ray) is not installed.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import SMALL_CONFIG
from linewatch.runtime.inspect_run import read_results

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_local():
    from linewatch.jobs.distributed import import_ray

    import_ray()                                              # sets RAY_USAGE_STATS_ENABLED=0 first
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


def test_archive_scoring_on_ray_workers_equals_the_single_process_records(ray_local, small_bundle, small_category,
                                                                         tmp_path):
    from linewatch.jobs.score_archive import run_score_archive

    src = str(small_category / "test")
    local = run_score_archive(small_bundle, src, tmp_path / "local", "local", workers=1, batch_size=4, threads=1)
    dist = run_score_archive(small_bundle, src, tmp_path / "ray", "ray", workers=2, batch_size=4)
    a, b = read_results(tmp_path / "local" / "results.jsonl"), read_results(tmp_path / "ray" / "results.jsonl")
    assert local["inspected"] == dist["inspected"] == len(a) == len(b) == 26
    assert [r["source"] for r in a] == [r["source"] for r in b]
    assert set(a[0]) == set(b[0])
    for x, y in zip(a, b):
        assert {k: v for k, v in x.items() if k != "latency_ms"} == {k: v for k, v in y.items() if k != "latency_ms"}
    again = run_score_archive(small_bundle, src, tmp_path / "ray", "ray", workers=2, batch_size=4)
    assert again["skipped_already_recorded"] == 26 and again["inspected"] == 0


def test_level1_maps_from_ray_actors_equal_the_single_process_maps(ray_local, small_category):
    import torch

    from linewatch.jobs.distributed import RayFeatureExtractor
    from linewatch.training.config import config_from_dict
    from linewatch.training.data import discover, load_images
    from linewatch.training.features import extract, lite0_features_for
    from linewatch.training.fit import input_spec_for

    cfg = config_from_dict({**SMALL_CONFIG, "batch_size": 4})
    paths = discover(small_category).train
    torch.set_num_threads(1)
    images, _, _ = load_images(paths, input_spec_for(cfg))
    want = extract(lite0_features_for(cfg.model).eval(), images, 4)
    got, used, errors = RayFeatureExtractor(cfg, workers=2).maps(paths)
    assert used == paths and errors == []
    assert got.shape == want.shape and float(np.abs(got - want).max()) == 0.0


@pytest.mark.slow
def test_retrain_with_the_ray_engine_writes_the_same_bundle_scores_as_local(ray_local, small_bundle, small_category,
                                                                           tmp_path):
    from linewatch.jobs.retrain import run_retrain
    from linewatch.jobs.verdicts import write_verdicts
    from linewatch.runtime.bundle import Bundle

    bid = Bundle.load(small_bundle).id
    goods = sorted((small_category / "validation" / "good").glob("*.png"))[:3]
    v = write_verdicts(tmp_path / "v.jsonl", [{"source": str(p), "label": "good", "score": 1.0, "bundle": bid,
                                               "reviewed_utc": "2026-12-01T08:00:00Z"} for p in goods])
    runs = {}
    for engine in ("local", "ray"):
        runs[engine] = run_retrain(small_bundle, small_category, v, tmp_path / engine, force=True, engine=engine,
                                   workers=2, holdout_reviewed=0.0)
    for who in ("champion", "challenger"):
        for k in ("threshold", "image_auroc", "false_alarm_rate", "reviewed_false_alarm_rate"):
            assert runs["local"][who][k] == pytest.approx(runs["ray"][who][k], rel=1e-6, abs=1e-6), (who, k)


@pytest.mark.slow
def test_score_archive_cli_runs_offline_with_the_ray_engine(small_bundle, small_category, tmp_path):
    """A fresh process: the CLI starts (and stops) its own local Ray instance."""
    proc = subprocess.run([sys.executable, "-m", "linewatch", "score-archive", "--bundle", str(small_bundle),
                           "--source", str(small_category / "test" / "good"), "--out", str(tmp_path),
                           "--engine", "ray", "--workers", "2"], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "RAY_ADDRESS": ""})
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["engine"] == "ray" and summary["inspected"] == 8 and summary["errors"] == 0
