"""Tests for linewatch.training.sampler: the chain step, the sampler's bookkeeping, mixing, ONNX."""
import numpy as np
import pytest
import torch

from linewatch.training.cae import CAEStack, ContractiveAutoencoder
from linewatch.training.sampler import ChainStep, TopLayerSampler

torch.set_num_threads(1)

D = 12
MODE_A = (torch.arange(D) < D // 2).float() * 0.8 + 0.1  # [D] first half bright
MODE_B = 1.0 - MODE_A                                      # [D] second half bright


def _two_modes(n=400, seed=0):
    """[n, D] data in [0, 1]: alternately near MODE_A and MODE_B (noise std 0.15, clipped)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.stack([MODE_A, MODE_B])[torch.arange(n) % 2]
    return (centres + 0.15 * torch.randn(n, D, generator=g)).clamp(0, 1)


@pytest.fixture(scope="module")
def stack():
    return CAEStack().fit_greedy(_two_modes(), [12, 6], epochs=60, lr=1e-2, batch_size=20,
                                 contraction=0.3, seed=0)


def _random_stack(seed=0):
    g = torch.Generator().manual_seed(seed)
    layers = [ContractiveAutoencoder(9, 7, seed=g), ContractiveAutoencoder(7, 5, seed=g)]
    with torch.no_grad():
        for layer in layers:
            layer.b.normal_(generator=g)
            layer.c.normal_(generator=g)
    return CAEStack(layers)


def test_chain_step_is_the_paper_step():
    stack = _random_stack()
    layer = stack.layers[1]
    g = torch.Generator().manual_seed(1)
    h1 = torch.rand(4, 7, generator=g)
    z = torch.randn(4, 5, generator=g)
    step = ChainStep(layer, sigma=0.3)
    h2 = layer.encode(h1)
    expected = layer.decode(h2 + layer.jacobian_noise(h2, 0.3 * z))
    torch.testing.assert_close(step(h1, z), expected)
    # linear decoder: no output sigmoid
    lin = ContractiveAutoencoder(7, 5, decoder="linear", seed=3)
    torch.testing.assert_close(ChainStep(lin)(h1, z), lin.decode(lin.encode(h1) + lin.jacobian_noise(lin.encode(h1), z)))


def test_sampler_records_burn_in_and_thinning():
    stack = _random_stack()
    start = torch.rand(3, 7, generator=torch.Generator().manual_seed(2))
    seen = {}
    sampler = TopLayerSampler(stack, level=2, sigma=0.5, n_steps=4, burn_in=5, thin=3, seed=7)
    out = sampler.sample(start, callback=lambda t, s: seen.__setitem__(t, s.clone()))
    assert out.shape == (4, 3, 7)
    assert sampler.n_chain_steps_ == 5 + 4 * 3 == max(seen)
    for r in range(4):
        torch.testing.assert_close(out[r], seen[5 + 3 * (r + 1)])
    torch.testing.assert_close(sampler.last_state_, seen[17])
    pixels = sampler.to_level(out, 0)
    assert pixels.shape == (4, 3, 9)
    torch.testing.assert_close(pixels[2, 1], stack.layers[0].decode(out[2, 1][None])[0])
    with pytest.raises(ValueError):
        TopLayerSampler(stack, level=3)


def test_sampler_is_deterministic_given_a_seed():
    stack = _random_stack()
    start = torch.rand(6, 9, generator=torch.Generator().manual_seed(3))
    run = lambda seed: TopLayerSampler(stack, level=1, sigma=1.0, n_steps=5, burn_in=2, seed=seed).sample(start)
    assert torch.equal(run(11), run(11))
    assert torch.equal(run(11), run(torch.Generator().manual_seed(11)))
    assert not torch.allclose(run(11), run(12))


def _mode_shares(stack, level, sigma):
    """Chains started in MODE_A -> (share of samples within 1.0 of a mode, share nearer MODE_B)."""
    start = _two_modes(40, seed=1)[0::2]                # 20 chains, all started in mode A
    sampler = TopLayerSampler(stack, level=level, sigma=sigma, n_steps=200, burn_in=20, seed=0)
    pixels = sampler.to_level(sampler.sample(stack.encode(start, level - 1)), 0).reshape(-1, D)
    dist = torch.cdist(pixels, torch.stack([MODE_A, MODE_B]))  # [n, 2]; the modes are 2.8 apart
    return float((dist.min(1).values < 1.0).float().mean()), float((dist.argmin(1) == 1).float().mean())


def test_chains_visit_both_modes(stack):
    near, in_b = _mode_shares(stack, level=1, sigma=3.0)
    assert near > 0.75, f"only {near:.2f} of the samples are near a mode"
    assert 0.2 < in_b < 0.8, f"share of samples in mode B: {in_b:.2f}"
    # control: with little noise the same chains stay in the mode they started in
    near, in_b = _mode_shares(stack, level=1, sigma=0.1)
    assert near > 0.99 and in_b == 0.0
    # the level-2 chain stays on the data too
    assert _mode_shares(stack, level=2, sigma=3.0)[0] > 0.9


def test_chain_step_onnx_export_matches_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    stack = _random_stack(seed=4)
    step = ChainStep(stack.layers[1], sigma=0.7).eval()
    path = tmp_path / "chain_step.onnx"
    torch.onnx.export(step, (torch.rand(2, 7), torch.randn(2, 5)), str(path), dynamo=False, opset_version=17,
                      input_names=["h", "z"], output_names=["h_next"],
                      dynamic_axes={"h": {0: "n"}, "z": {0: "n"}, "h_next": {0: "n"}})
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for n in (1, 33):                                   # batch sizes other than the traced one
        h = rng.random((n, 7), dtype=np.float32)
        z = rng.standard_normal((n, 5), dtype=np.float32)
        (got,) = sess.run(None, {"h": h, "z": z})
        want = step(torch.from_numpy(h), torch.from_numpy(z)).detach().numpy()
        assert got.shape == (n, 7)
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
