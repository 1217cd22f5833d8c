"""One density definition (``runtime/density.py``) in two forms: the numpy one the runtime uses and the
torch one the training code and the exported graph use. Both must compute the same numbers."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from linewatch.runtime import density
from linewatch.runtime.adapt import read_bundle_density
from linewatch.runtime.bundle import Bundle
from linewatch.runtime.inspector import Inspector
from linewatch.runtime.preprocess import decode_image, preprocess
from linewatch.training import parzen
from linewatch.training.coreset import coverage_weights, greedy_coreset, nearest_index
from linewatch.training.scorer import image_score

RTOL, ATOL = 1e-5, 1e-4          # nats


def _bank_and_rows(seed: int, m: int, d: int, weighted: bool):
    rng = np.random.default_rng(seed)
    bank = (rng.normal(size=(m, d)) * rng.uniform(0.3, 2.0, d)).astype(np.float32)
    z = (rng.normal(size=(64, d)) * 1.5).astype(np.float32)
    z[:8] += 60.0                                    # far from every centre: the floor clamps most terms
    z[8:16] = -bank[:8] * 25.0
    w = rng.uniform(0.2, 3.0, m) if weighted else None
    return bank, z, w


def _brute(z, bank, w, s):
    """The formula in float64, term by term (no floor, no expansion)."""
    w = np.full(len(bank), 1.0 / len(bank)) if w is None else w / w.sum()
    out = []
    for x in z.astype(np.float64):
        t = np.log(w) - np.sum((bank - x) ** 2, axis=1) / (2 * s * s)
        out.append(t.max() + math.log(np.exp(t - t.max()).sum()) - 0.5 * bank.shape[1] * math.log(2 * math.pi * s * s))
    return np.array(out)


def _floored_share(z, params):
    a = (z.astype(np.float64) @ params.kernel) + params.bias
    return np.mean(a - a.max(axis=1, keepdims=True) < density.EXP_FLOOR, axis=1)


@pytest.mark.parametrize("m,d,s,weighted", [(300, 16, 0.8, False), (300, 16, 0.8, True), (1024, 80, 2.5, True),
                                            (50, 3, 0.3, True)])
def test_numpy_and_torch_log_density_are_equal(m, d, s, weighted):
    bank, z, w = _bank_and_rows(m + d, m, d, weighted)
    params = density.parzen_params(bank, s, w)
    assert _floored_share(z[:8], params).min() > 0.5          # the far rows do exercise the floor
    ours = density.log_density(z, params)
    module = parzen.ParzenDensity(bank, s, w)
    with torch.no_grad():
        graph = module(torch.from_numpy(z)).numpy()
    grid = parzen.log_density_grid(z, bank, w, np.array([s, 2 * s]))
    assert np.all(np.isfinite(ours)) and np.all(np.isfinite(graph))
    np.testing.assert_allclose(graph, ours, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(parzen.log_density(module, z, block=10), ours, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(grid[:, 0], ours, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(grid[:, 1], density.log_density(z, density.parzen_params(bank, 2 * s, w)),
                               rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(ours, _brute(z, bank, w, s), rtol=RTOL, atol=ATOL)
    # the module's graph parameters are the runtime's
    np.testing.assert_array_equal(module.kernel.numpy(), params.kernel)
    np.testing.assert_array_equal(module.bias.numpy(), params.bias)


def test_both_forms_clamp_at_the_same_floor(monkeypatch):
    """With the floor raised to -1 (so that it changes the value), both forms still agree and both
    differ from the formula: each applies the same clamp, relative to the largest term."""
    bank, z, w = _bank_and_rows(3, 200, 8, True)
    monkeypatch.setattr(density, "EXP_FLOOR", -1.0)
    monkeypatch.setattr(parzen, "EXP_FLOOR", -1.0)
    ours = density.log_density(z, density.parzen_params(bank, 1.0, w))
    with torch.no_grad():
        graph = parzen.ParzenDensity(bank, 1.0, w)(torch.from_numpy(z)).numpy()
    grid = parzen.log_density_grid(z, bank, w, np.array([1.0]))[:, 0]
    np.testing.assert_allclose(graph, ours, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(grid, ours, rtol=RTOL, atol=ATOL)
    assert np.all(ours > _brute(z, bank, w, 1.0) + 1e-3)


def test_an_excluded_centre_leaves_the_sum():
    bank, z, w = _bank_and_rows(5, 40, 4, True)
    z = z[16:26]
    exclude = np.arange(10) % 3 - 1                     # -1 (none), 0, 1, -1, ...
    got = density.log_density(z, density.parzen_params(bank, 0.9, w), exclude=exclude)
    for i, j in enumerate(exclude):
        keep = np.arange(len(bank)) != j
        ww = w / w.sum()
        # the other centres keep their weights (not renormalised): log p minus centre j's term
        want = _brute(z[i:i + 1], bank[keep], ww[keep], 0.9)[0] + math.log(ww[keep].sum())
        assert abs(got[i] - want) < 1e-4 * max(1.0, abs(want))


@pytest.mark.parametrize("top_k", [1, 3, 16, 40])
def test_numpy_and_torch_image_scores_are_equal(top_k):
    patch = np.random.default_rng(top_k).normal(100.0, 20.0, size=(7, 4, 4)).astype(np.float32)
    ours = density.image_scores(patch, top_k)
    theirs = image_score(torch.from_numpy(patch), top_k).numpy()
    np.testing.assert_allclose(theirs, ours, rtol=1e-6)
    k = min(top_k, 16)
    np.testing.assert_allclose(ours, np.sort(patch.reshape(7, -1), axis=1)[:, ::-1][:, :k].mean(axis=1), rtol=1e-6)
    with pytest.raises(ValueError, match="top_k"):
        density.image_scores(patch, 0)


def _naive_kcenter(x, mass, m, projection_dim, seed):
    """The coreset rule, spelled out in float64 with explicit distances."""
    g = np.random.default_rng(seed).standard_normal((x.shape[1], projection_dim)).astype(np.float32)
    xp = (x @ (g / np.float32(math.sqrt(projection_dim)))).astype(np.float64)
    chosen = [int(np.argmax(mass))]
    dist = np.sum((xp - xp[chosen[0]]) ** 2, axis=1)
    while len(chosen) < m:
        chosen.append(int(np.argmax(dist)))
        dist = np.minimum(dist, np.sum((xp - xp[chosen[-1]]) ** 2, axis=1))
    return np.array(chosen)


def test_coreset_indices_and_masses_are_the_same_in_both_forms():
    rng = np.random.default_rng(2)
    x = (rng.normal(size=(3000, 24)) * rng.uniform(0.5, 2.0, 24)).astype(np.float32)
    ones = np.ones(len(x))
    idx = greedy_coreset(x, 64, projection_dim=8, seed=3)
    kept, mass = density.weighted_kcenter(x, ones, 64, projection_dim=8, seed=3)
    np.testing.assert_array_equal(idx, kept)
    assert idx[0] == 0 and len(set(idx.tolist())) == 64        # uniform mass: row 0 first
    np.testing.assert_array_equal(idx, _naive_kcenter(x, ones, 64, 8, 3))
    np.testing.assert_allclose(coverage_weights(x, x[idx]), mass / len(x), rtol=1e-12)
    assert np.all(mass >= 1) and mass.sum() == len(x)
    # weighted: the heaviest row comes first (the lowest index among ties)
    heavy = ones.copy()
    heavy[[700, 1200]] = 5.0
    assert density.weighted_kcenter(x, heavy, 64, projection_dim=8, seed=3)[0][0] == 700
    np.testing.assert_array_equal(density.kcenter_order(x, heavy, 64, 8, 3), _naive_kcenter(x, heavy, 64, 8, 3))


def test_nearest_rows_match_brute_force():
    rng = np.random.default_rng(4)
    x, c = rng.normal(size=(500, 10)).astype(np.float32), rng.normal(size=(70, 10)).astype(np.float32)
    d2 = ((x[:, None, :].astype(np.float64) - c[None]) ** 2).sum(axis=2)
    idx, got = nearest_index(x, c, block=64)
    np.testing.assert_array_equal(idx, d2.argmin(axis=1))
    np.testing.assert_allclose(got, d2.min(axis=1), rtol=1e-4, atol=1e-4)


def _graph_vs_definition(session, x, params, top_k):
    """(patch-score, image-score) max abs differences of an onnxruntime scoring graph against the
    definition applied to the graph's own patch_features."""
    scores, maps, z = session.run(["score", "patch_scores", "patch_features"], {"image": x})
    patch = -density.log_density(z.reshape(-1, z.shape[2]), params).reshape(maps.shape)
    np.testing.assert_allclose(maps, patch, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(scores, density.image_scores(patch, top_k), rtol=RTOL, atol=ATOL)
    return float(np.abs(maps - patch).max()), float(np.abs(scores - density.image_scores(patch, top_k)).max())


@pytest.mark.parametrize("top_k", [1, 3])
def test_an_exported_fitted_scorer_scores_as_the_runtime_definition(top_k, tmp_path):
    """The ONNX graph of a scorer fitted on small maps (whitening included), its density moved to density.bin
    as for a bundle: its patch and image scores are the definition's on its patch_features."""
    import onnxruntime as ort

    from linewatch.export.density_file import externalize_density
    from linewatch.export.onnx_export import export_scorer
    from linewatch.runtime.density_params import read_density_params
    from linewatch.training.config import config_from_dict
    from linewatch.training.fit import fit_on_maps

    rng = np.random.default_rng(top_k)
    maps = (rng.normal(size=(12, 8, 4, 4)) * np.linspace(3, 0.2, 8)[None, :, None, None]).astype(np.float32)
    cfg = config_from_dict({"density": {"bank_size": 64, "folds": 3}, "scoring": {"top_k": top_k}})
    det = fit_on_maps(torch.nn.Identity(), maps, cfg)
    path = tmp_path / "model.onnx"
    export_scorer(det.scorer, 8, 4, 4, path)
    bin_path, layout = externalize_density(path, density.kernel_c(det.bandwidth))
    params = read_density_params(bin_path.read_bytes(), layout)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = maps[:4].copy()
    x[0, :, 1, 1] += 8.0                                           # one patch far from the bank
    _graph_vs_definition(session, x, params, top_k)


def test_the_small_bundle_scores_as_the_runtime_definition(small_bundle, small_category):
    """model.onnx's patch scores and image scores equal runtime/density.py on its own patch_features, with
    the bundle's density.bin and manifest.scoring.top_k."""
    bundle = Bundle.load(small_bundle)
    insp = Inspector(bundle, threads=1)
    paths = sorted((small_category / "test").rglob("*.png"))[:8]
    x = np.stack([preprocess(decode_image(p.read_bytes(), str(p)), insp.spec) for p in paths])
    _graph_vs_definition(insp.session, x, read_bundle_density(bundle), bundle.manifest.scoring.top_k)
