"""The global branch: numpy and graph forms agree, fused scores calibrate, a global change is caught."""
from __future__ import annotations

import numpy as np
import torch

from linewatch.training.config import config_from_dict
from linewatch.training.fit import fit_on_maps, score_maps
from linewatch.training.global_branch import Fusion, GlobalBranch, GlobalGaussian, descriptors


def _maps(n: int, shift: float = 0.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(0, 1, (n, 6, 5, 5)) + shift).astype(np.float32)


def test_graph_form_equals_the_numpy_form():
    rows = np.random.default_rng(0).normal(size=(40, 25, 6)).astype(np.float32)
    g = GlobalGaussian().fit(descriptors(rows[:30]))
    fusion = Fusion.from_good(g.score_samples(descriptors(rows[:30])), np.arange(30.0))
    want = fusion.added(g.score_samples(descriptors(rows[30:])))
    got = GlobalBranch(g, fusion)(torch.from_numpy(rows[30:])).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_a_shift_of_every_patch_is_caught_only_with_the_branch():
    cfg = {"density": {"bank_size": 64, "whiten": False, "folds": 4}, "scoring": {"top_k": 5}}
    train, good, shifted = _maps(60), _maps(40, seed=1), _maps(40, shift=0.35, seed=2)
    scores = {}
    for on in (False, True):
        c = config_from_dict({**cfg, "scoring": {**cfg["scoring"], "global_branch": on}})
        det = fit_on_maps(torch.nn.Identity(), train, c)
        g, s = score_maps(det.scorer, good)[0], score_maps(det.scorer, shifted)[0]
        scores[on] = float(np.mean(s > det.calibrator.threshold_)), float(np.mean(g > det.calibrator.threshold_))
        if on:   # the whole graph (features -> density -> fused score) gives what score_maps gives
            rows = torch.from_numpy(good)
            full = det.scorer(rows)[0].numpy()
            np.testing.assert_allclose(full, g, rtol=1e-4, atol=1e-3)
    assert scores[True][0] > scores[False][0] + 0.3      # flagged share of the shifted images
    assert scores[True][1] < 0.15                        # good images stay below the fused threshold
