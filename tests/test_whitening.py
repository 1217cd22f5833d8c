"""Sphering of level-1 features (training/whitening.py) and its place in the fitted graph."""
import numpy as np
import pytest
import torch

from linewatch.training.config import config_from_dict
from linewatch.training.fit import fit_on_maps, score_maps
from linewatch.training.whitening import fit_whitening


def test_whitened_training_patches_have_identity_covariance():
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(6, 6)) * np.array([10.0, 3.0, 1.0, 0.3, 0.1, 0.1])
    x = rng.normal(size=(5000, 6)) @ mix + 7.0
    w = fit_whitening(x, shrinkage=0.0)
    z = w.transform(x.astype(np.float32))
    assert np.allclose(z.mean(axis=0), 0.0, atol=1e-3)
    assert np.allclose(np.cov(z, rowvar=False), np.eye(6), atol=1e-2)
    # shrinkage 1: only centred and divided by the root of the average variance
    s = fit_whitening(x, shrinkage=1.0)
    scale = np.sqrt(np.trace(np.cov(x, rowvar=False)) / 6)
    assert np.allclose(s.matrix.numpy(), np.eye(6) / scale, rtol=1e-4)
    with pytest.raises(ValueError, match="whiten_shrinkage"):
        fit_whitening(x, shrinkage=1.5)


def test_whitening_is_part_of_the_scorer_graph():
    rng = np.random.default_rng(1)
    maps = (rng.normal(size=(12, 8, 4, 4)) * np.linspace(5, 0.1, 8)[None, :, None, None]).astype(np.float32)
    cfg = config_from_dict({"density": {"whiten": True, "bank_size": 64, "folds": 3}, "scoring": {"top_k": 3}})
    det = fit_on_maps(torch.nn.Identity(), maps, cfg)
    scores, patch = score_maps(det.scorer, maps[:2])
    with torch.no_grad():
        direct = det.scorer(torch.from_numpy(maps[:2]))     # Identity "features": maps are the input
    assert np.allclose(direct[0].numpy(), scores, rtol=1e-5, atol=1e-4)
    assert np.allclose(direct[1].numpy(), patch, rtol=1e-5, atol=1e-4)
    # a patch off along a low-variance channel is unusual once sphered
    odd = maps[:1].copy()
    odd[0, 7, 0, 0] += 3.0
    assert score_maps(det.scorer, odd)[1][0, 0, 0] > score_maps(det.scorer, maps[:1])[1][0, 0, 0] + 1.0
