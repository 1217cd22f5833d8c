import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from linewatch.training.metrics import aupro, auroc, pixel_auroc


def test_auroc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    s = np.round(rng.normal(size=500) + y, 1)
    assert auroc(y, s) == pytest.approx(roc_auc_score(y, s))
    assert np.isnan(auroc(np.zeros(5), np.arange(5)))


def test_aupro_hand_computed_case():
    # one 1x6 image: a 2-pixel defect region [x x . . . .], 4 normal pixels
    masks = np.array([[[1, 1, 0, 0, 0, 0]]])
    maps = np.array([[[0.9, 0.5, 0.7, 0.3, 0.2, 0.1]]])
    # thresholds (descending): 0.9 -> PRO 1/2, FPR 0 ; 0.7 -> PRO 1/2, FPR 1/4 ; 0.5 -> PRO 1, FPR 1/4 ;
    # 0.3 -> FPR 2/4 ... Up to FPR 0.3: area = 0.25 * 0.5 (flat at 1/2 until FPR 0.25, vertical jump to 1)
    # + 0.05 * 1 (from FPR 0.25 to 0.3 the curve moves toward (0.5, 1), interpolated: PRO stays 1)
    # = 0.125 + 0.05 = 0.175 ; normalised by 0.3 -> 0.58333...
    assert aupro(masks, maps, fpr_limit=0.3) == pytest.approx(0.175 / 0.3)
    # a perfect map has AUPRO 1, and two regions count equally whatever their sizes
    perfect = masks.astype(float)
    assert aupro(masks, perfect) == pytest.approx(1.0)
    two = np.array([[[1, 0, 0, 0, 1, 1, 1]]])
    half = np.array([[[1.0, 0, 0, 0, 0, 0, 0]]])      # finds the small region only; the rest tie at 0
    # curve: (0, 0) -> (0, 1/2) at t = 1 -> (1, 1) at t = 0 (all tied pixels at once); up to FPR 0.3
    # PRO rises linearly from 0.5 to 0.65: area 0.3 * (0.5 + 0.65) / 2 = 0.1725 -> 0.575
    assert aupro(two, half, fpr_limit=0.3) == pytest.approx(0.575)


def test_pixel_auroc_and_shape_check():
    masks = np.zeros((2, 4, 4), bool)
    masks[0, :2, :2] = True
    maps = masks.astype(float) + 0.1
    assert pixel_auroc(masks, maps) == 1.0
    with pytest.raises(ValueError):
        aupro(masks[0], maps[0])
