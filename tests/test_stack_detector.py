"""The deep path: CAE levels above the features, density at the top, chain samples, chain graph in the bundle."""

import numpy as np
import pytest

from linewatch.jobs.train import run_train
from linewatch.runtime.bundle import Bundle
from linewatch.runtime.chain import ChainRunner
from linewatch.runtime.inspect_run import run_inspection
from linewatch.runtime.inspector import Inspector
from linewatch.training.config import ConfigError, config_from_dict

from conftest import SMALL_CONFIG, run_without_torch

DEEP = {**SMALL_CONFIG, "stack": {"widths": [32], "epochs": 5}, "density": {**SMALL_CONFIG["density"], "level": 2},
        "sampling": {"chain_samples": 512, "n_chains": 64}}


@pytest.fixture(scope="module")
def deep_bundle(small_category, tmp_path_factory):
    out = tmp_path_factory.mktemp("deep") / "bundle"
    run_train(small_category, out, config_from_dict(DEEP))
    return out


def test_bundle_carries_the_chain_graph_and_level(deep_bundle):
    m = Bundle.load(deep_bundle).manifest
    assert m.density["level"] == 2 and m.density["code_dim"] == 32 and m.density["chain_samples"] == 512
    assert {"chain_step.onnx", "chain_start.npy"} <= set(m.files)
    assert m.chain["state_dim"] == m.density["feature_dim"] and m.chain["noise_dim"] == 32
    assert m.chain["parity_max_abs_diff"] < 1e-4


def test_top_level_bundle_inspects(deep_bundle, small_category, tmp_path):
    run = run_inspection(Inspector(deep_bundle), str(small_category / "test"), tmp_path)
    assert run.errors == 0 and run.inspected == 26


def test_runtime_chain_reproduces_the_torch_chain_step_by_step(deep_bundle):
    """The ONNX chain fed the same noise follows the torch ChainStep; the chain moves and stays finite."""
    import torch
    from linewatch.training.sampler import ChainStep
    from linewatch.training.cae import ContractiveAutoencoder

    runner = ChainRunner(Bundle.load(deep_bundle))
    spec = runner.spec
    import onnx
    from onnx import numpy_helper
    weights = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(deep_bundle / spec["file"])).graph.initializer}
    W = next(v for v in weights.values() if v.shape == (spec["noise_dim"], spec["state_dim"]))
    b = next(v for v in weights.values() if v.shape == (spec["noise_dim"],))
    c = next(v for v in weights.values() if v.shape == (spec["state_dim"],))
    layer = ContractiveAutoencoder(spec["state_dim"], spec["noise_dim"], decoder="linear")
    with torch.no_grad():
        layer.W.copy_(torch.tensor(W)), layer.b.copy_(torch.tensor(b)), layer.c.copy_(torch.tensor(c))
    step = ChainStep(layer, spec["sigma"])
    rng = np.random.default_rng(3)
    x_onnx = x_torch = runner.start_[:16]
    for _ in range(20):
        z = rng.standard_normal((16, spec["noise_dim"])).astype(np.float32)
        x_onnx = runner.step(x_onnx, z)
        x_torch = step(torch.from_numpy(x_torch), torch.from_numpy(z)).detach().numpy()
    np.testing.assert_allclose(x_onnx, x_torch, rtol=1e-3, atol=1e-3)
    assert np.all(np.isfinite(x_onnx)) and np.abs(x_onnx - runner.start_[:16]).mean() > 1e-3
    samples = runner.run(256, n_chains=32, seed=1)
    assert samples.shape == (256, spec["state_dim"])
    assert not np.allclose(runner.run(64, seed=1), runner.run(64, seed=2))
    np.testing.assert_array_equal(runner.run(64, seed=1), runner.run(64, seed=1))


def test_chain_runs_with_torch_unimportable(deep_bundle):
    out = run_without_torch(f"""
        from linewatch.runtime.bundle import Bundle
        from linewatch.runtime.chain import ChainRunner
        s = ChainRunner(Bundle.load({str(deep_bundle)!r})).run(100, n_chains=10)
        print(json.dumps({{"shape": list(s.shape), "torch": "torch" in sys.modules}}))
    """)
    assert out["shape"][0] == 100 and out["torch"] is False


def test_level_one_bundle_has_no_chain(small_bundle):
    with pytest.raises(Exception, match="no chain graph"):
        ChainRunner(Bundle.load(small_bundle))


def test_config_rules_for_levels():
    with pytest.raises(ConfigError, match="density.level"):
        config_from_dict({"density": {"level": 2}})
    with pytest.raises(ConfigError, match="chain_samples"):
        config_from_dict({"stack": {"widths": [16]}, "sampling": {"chain_samples": 10}})


def test_a_stack_density_fits_with_and_without_benign_copies():
    import numpy as np
    import torch

    from linewatch.training.config import config_from_dict
    from linewatch.training.fit import fit_on_maps

    maps = np.random.default_rng(0).normal(size=(12, 8, 4, 4)).astype(np.float32)
    cfg = config_from_dict({"stack": {"widths": [6], "epochs": 1}, "density": {"level": 2, "bank_size": 32,
                                                                                  "folds": 3}})
    for copies in (None, maps + 0.01):
        det = fit_on_maps(torch.nn.Identity(), maps, cfg, benign_maps=copies)
        assert np.isfinite(det.calibrator.threshold_)
