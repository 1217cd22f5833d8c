"""Shared fixtures: a small demo category and a bundle trained on it (built once per test session)."""
from __future__ import annotations

import pytest

SMALL_CONFIG = {
    "model": {"image_size": 64},
    "density": {"bank_size": 256, "max_candidates": 4000, "folds": 2},
    "export": {"parity_images": 8},
    "threads": 2,
}


@pytest.fixture(scope="session")
def small_category(tmp_path_factory):
    """Brick, 64 px crops: 24 training, 8 good and 3 of each defect type for testing."""
    from linewatch.training.demo_data import DemoSpec, build_texture

    return build_texture("brick", tmp_path_factory.mktemp("data"),
                         DemoSpec(size=64, n_train=24, n_test_good=8, n_test_per_defect=3))


@pytest.fixture(scope="session")
def small_bundle(small_category, tmp_path_factory):
    """A real bundle trained by the train job on ``small_category`` (Lite0 at 64 px)."""
    from linewatch.jobs.train import run_train
    from linewatch.training.config import config_from_dict

    out = tmp_path_factory.mktemp("bundles") / "brick"
    run_train(small_category, out, config_from_dict(SMALL_CONFIG))
    return out
