"""The accuracy benchmark's baselines (bench/baselines.py) compute what they claim, on small arrays."""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from baselines import (KnnPatchDistance, PixelIsolationForest, PixelOCSVM, PixelParzen, PixelPCA,  # noqa: E402
                       PositionGaussian)


def test_knn_patch_distance_is_the_exact_nearest_neighbour_distance():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(5, 8, 3, 4)).astype(np.float32)
    test = rng.normal(size=(2, 8, 3, 4)).astype(np.float32)
    scores, maps = KnnPatchDistance().fit(train).score(test)
    bank = train.transpose(0, 2, 3, 1).reshape(-1, 8)
    for i in range(2):
        for r in range(3):
            for c in range(4):
                want = np.sqrt(((bank - test[i, :, r, c]) ** 2).sum(axis=1).min())
                assert maps[i, r, c] == pytest.approx(want, rel=1e-4, abs=1e-4)
        assert scores[i] == pytest.approx(maps[i].max())
    # a training image scores zero everywhere
    assert np.allclose(KnnPatchDistance().fit(train).score(train[:1])[1], 0.0, atol=1e-2)


def test_position_gaussian_is_mahalanobis_per_position():
    rng = np.random.default_rng(1)
    train = rng.normal(size=(40, 3, 2, 2))
    train[:, 0, 0, 0] *= 10.0               # position (0, 0) varies a lot along feature 0
    model = PositionGaussian(ridge=0.0).fit(train.astype(np.float32))
    x = np.zeros((1, 3, 2, 2), np.float32)
    x[0, 0] = 5.0                            # 5 units along feature 0 at every position
    _, maps = model.score(x)
    assert maps[0, 0, 0] < 0.3 * maps[0, 1, 1]          # less unusual where the spread is large
    p = train[:, :, 1, 1]
    d = x[0, :, 1, 1] - p.mean(axis=0)
    want = np.sqrt(d @ np.linalg.inv(np.cov(p.T)) @ d)
    assert maps[0, 1, 1] == pytest.approx(want, rel=1e-4)


@pytest.mark.parametrize("make", [PixelParzen, PixelPCA, PixelOCSVM, PixelIsolationForest])
def test_pixel_baselines_rank_an_outlier_above_inliers(make):
    rng = np.random.default_rng(2)
    base, pattern = rng.uniform(0.3, 0.7, size=(2, 8, 8))

    def draw(n):                             # good images: one pattern at random strength, little noise
        a = rng.uniform(-0.2, 0.2, size=(n, 1, 1))
        return (base + a * pattern + 0.01 * rng.normal(size=(n, 8, 8))).astype(np.float32)

    train, good = draw(60), draw(5)
    bad = good.copy()
    bad[:, 2:6, 2:6] = 1.0 - bad[:, 2:6, 2:6]
    model = make().fit(train)
    s_good, s_bad = model.score(good)[0], model.score(bad)[0]
    assert s_bad.min() > s_good.max()
    maps = model.score(bad)[1]
    if maps is not None:                     # PCA: the error map points at the changed square
        assert maps[:, 2:6, 2:6].mean() > 5 * maps[:, :2, :].mean()
