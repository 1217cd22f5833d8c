import math

import numpy as np
import torch

from linewatch.training.coreset import coverage_weights, greedy_coreset
from linewatch.training.parzen import ParzenDensity, log_density_grid


def brute_log_density(z, bank, w, s):
    d = bank.shape[1]
    out = []
    for x in z:
        k = np.log(w) - np.sum((bank - x) ** 2, axis=1) / (2 * s * s)
        m = k.max()
        out.append(m + math.log(np.exp(k - m).sum()) - 0.5 * d * math.log(2 * math.pi * s * s))
    return np.array(out)


def test_matches_the_formula_weighted_and_far_away():
    rng = np.random.default_rng(0)
    bank, z = rng.normal(size=(50, 6)), rng.normal(size=(20, 6)) * 3
    z[0] += 100.0                                            # far away: must stay finite
    w = rng.uniform(0.5, 2, 50)
    w /= w.sum()
    got = ParzenDensity(bank, 0.7, w)(torch.from_numpy(z.astype(np.float32))).numpy()
    want = brute_log_density(z, bank, w, 0.7)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)
    grid = log_density_grid(z, bank, w, np.array([0.7, 2.0]))
    np.testing.assert_allclose(grid[:, 0], want, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(grid[:, 1], brute_log_density(z, bank, w, 2.0), rtol=1e-4, atol=1e-3)


def test_density_integrates_to_one_in_1d():
    bank = np.array([[0.0], [1.0], [5.0]])
    xs = np.linspace(-10, 15, 20001)[:, None].astype(np.float32)
    p = np.exp(ParzenDensity(bank, 0.5)(torch.from_numpy(xs)).numpy())
    assert abs(np.trapezoid(p, xs[:, 0]) - 1.0) < 1e-3


def test_coreset_covers_every_cluster_and_weights_follow_mass():
    rng = np.random.default_rng(1)
    centres = np.array([[0, 0], [50, 0], [0, 50], [50, 50]], float)
    sizes = [1000, 300, 100, 10]
    x = np.concatenate([c + rng.normal(size=(n, 2)) for c, n in zip(centres, sizes)]).astype(np.float32)
    idx = greedy_coreset(x, 8, projection_dim=0, seed=0)
    picked = x[idx]
    for c in centres:                                        # even the 10-point cluster is covered
        assert np.min(np.linalg.norm(picked - c, axis=1)) < 6
    w = coverage_weights(x, picked)
    mass = [w[np.linalg.norm(picked - c, axis=1) < 6].sum() for c in centres]
    np.testing.assert_allclose(mass, np.array(sizes) / sum(sizes), atol=0.01)


def test_density_pickled_before_the_graph_parameters_existed_still_scores():
    """Checkpoints of earlier versions hold ParzenDensity objects without kernel/bias buffers."""
    import pickle

    rng = np.random.default_rng(0)
    dens = ParzenDensity(rng.normal(size=(20, 3)).astype(np.float32), 0.8)
    z = torch.from_numpy(rng.normal(size=(5, 3)).astype(np.float32))
    want = dens(z)
    del dens._buffers["kernel"], dens._buffers["bias"]
    old = pickle.loads(pickle.dumps(dens))
    assert torch.allclose(old(z), want)
