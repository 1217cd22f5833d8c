"""The position code: numpy and graph forms agree; a good patch in the wrong place is flagged only with it."""
from __future__ import annotations

import numpy as np
import torch

from linewatch.training.config import config_from_dict
from linewatch.training.fit import fit_on_maps, score_maps
from linewatch.training.position import PositionCode, grid, with_position


def test_graph_form_equals_the_numpy_form():
    rows = np.random.default_rng(0).normal(size=(3, 12, 5)).astype(np.float32)
    want = with_position(rows, 3, 4, 2.5)
    got = PositionCode(3, 4, 2.5)(torch.from_numpy(rows)).numpy()
    np.testing.assert_array_equal(got, want)
    assert grid(3, 4)[0].tolist() == [-1.0, -1.0] and grid(3, 4)[-1].tolist() == [1.0, 1.0]


def _part(n: int, hole_at: int, seed: int) -> np.ndarray:
    """Maps ``(n, 4, 6, 6)``: noise, plus a strong 'hole' feature in column ``hole_at``."""
    maps = np.random.default_rng(seed).normal(0, 0.3, (n, 4, 6, 6)).astype(np.float32)
    maps[:, 0, :, hole_at] += 3.0
    return maps


def test_a_feature_in_the_wrong_place_is_flagged_only_with_the_position_code():
    train, good, moved = _part(40, 1, 0), _part(20, 1, 1), _part(20, 4, 2)
    flagged = {}
    for weight in (0.0, 12.0):
        cfg = config_from_dict({"density": {"bank_size": 128, "whiten": False, "benign_copies": 0, "folds": 4},
                                "scoring": {"top_k": 3, "position_weight": weight}})
        det = fit_on_maps(torch.nn.Identity(), train, cfg)
        flagged[weight] = float(np.mean(score_maps(det.scorer, moved)[0] > det.calibrator.threshold_))
        good_share = float(np.mean(score_maps(det.scorer, good)[0] > det.calibrator.threshold_))
        assert good_share <= 0.15
        full = det.scorer(torch.from_numpy(moved))[0].numpy()          # the whole graph agrees
        np.testing.assert_allclose(full, score_maps(det.scorer, moved)[0], rtol=1e-4, atol=1e-3)
    assert flagged[0.0] < 0.3 and flagged[12.0] > 0.9
