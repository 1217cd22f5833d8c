"""Shared fixtures: a small demo category and a bundle trained on it (built once per test session)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

_BLOCK_TRAINING_SIDE = """
import importlib.abc, sys, json
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("torch", "onnx", "onnxscript", "sklearn", "skimage"):
            raise ImportError("blocked for this test: " + name)
sys.meta_path.insert(0, Block())
"""


def run_without_torch(body: str) -> dict:
    """Run ``body`` in a fresh interpreter where importing torch, onnx, sklearn or skimage raises;
    ``body`` must print one JSON object as its last line, which is returned."""
    script = _BLOCK_TRAINING_SIDE + textwrap.dedent(body)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": ""})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])

SMALL_CONFIG = {
    "model": {"image_size": 64},
    "density": {"bank_size": 256, "max_candidates": 4000, "folds": 2},
    "export": {"parity_images": 8},
    "threads": 2,
}


@pytest.fixture(scope="session")
def small_category(tmp_path_factory):
    """Brick, 64 px crops: 24 training, 12 validation (calibration), 8 good and 3 of each defect type for testing."""
    from linewatch.training.demo_data import DemoSpec, build_texture

    return build_texture("brick", tmp_path_factory.mktemp("data"),
                         DemoSpec(size=64, n_train=24, n_test_good=8, n_test_per_defect=3, n_validation=12))


@pytest.fixture(scope="session")
def small_bundle(small_category, tmp_path_factory):
    """A real bundle trained by the train job on ``small_category`` (Lite0 at 64 px)."""
    from linewatch.jobs.train import run_train
    from linewatch.training.config import config_from_dict

    out = tmp_path_factory.mktemp("bundles") / "brick"
    run_train(small_category, out, config_from_dict(SMALL_CONFIG))
    return out
