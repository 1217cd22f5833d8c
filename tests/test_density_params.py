"""The density's parameters live in ``density.bin``: the runtime can read them and swap the bank."""
from __future__ import annotations

import copy

import numpy as np

from linewatch.runtime.bundle import Bundle, write_bundle
from linewatch.runtime.density_params import DENSITY_FILE, DensityParams, read_density_params
from linewatch.runtime.inspector import Inspector
from linewatch.runtime.preprocess import decode_image, preprocess


def _params(bundle: Bundle) -> DensityParams:
    layout = bundle.manifest.density["parameters"]
    return read_density_params(bundle.file(layout["file"]).read_bytes(), layout)


def _with_density(bundle: Bundle, params: DensityParams, out) -> Bundle:
    files = {name: bundle.file(name) for name in bundle.manifest.files}
    files[DENSITY_FILE] = params.to_bytes()
    return write_bundle(out, copy.deepcopy(bundle.manifest), files)


def test_bank_round_trips_through_the_parameters():
    rng = np.random.default_rng(0)
    bank, w = rng.normal(size=(30, 5)), rng.uniform(0.1, 1.0, 30)
    p = DensityParams.from_bank(bank, w, c=0.7)
    assert np.allclose(p.bank, bank, atol=1e-5)
    assert np.allclose(np.exp(p.log_weights), w / w.sum(), atol=1e-5)
    q = read_density_params(p.to_bytes(), p.layout())
    assert np.array_equal(q.kernel, p.kernel) and np.array_equal(q.bias, p.bias)


def test_swapping_density_bin_changes_the_scores_without_touching_the_graph(small_bundle, small_category, tmp_path):
    bundle = Bundle.load(small_bundle)
    insp = Inspector(bundle, threads=1)
    paths = sorted((small_category / "test").rglob("*.png"))[:4]
    x = np.stack([preprocess(decode_image(p.read_bytes(), str(p)), insp.spec) for p in paths])
    scores, _ = insp.score_batch(x)
    feats = insp.patch_features(x)
    assert feats.shape[:2] == (4, bundle.manifest.model.map_height * bundle.manifest.model.map_width)

    p = _params(bundle)
    # the same bank written back from centres and weights: the same scores
    same = _with_density(bundle, DensityParams.from_bank(p.bank, np.exp(p.log_weights), p.c), tmp_path / "same")
    assert np.allclose(Inspector(same, threads=1).score_batch(x)[0], scores, atol=1e-2)
    assert same.file("model.onnx").read_bytes() == bundle.file("model.onnx").read_bytes()

    # a bank made of these very images' patches: each image's patches now sit on a centre -> lower scores
    mine = feats.reshape(-1, feats.shape[2])
    idx = np.random.default_rng(0).choice(len(mine), p.bank.shape[0], replace=len(mine) < p.bank.shape[0])
    moved = _with_density(bundle, DensityParams.from_bank(mine[idx], np.ones(len(idx)), p.c), tmp_path / "moved")
    assert np.all(Inspector(moved, threads=1).score_batch(x)[0] < scores - 1.0)
