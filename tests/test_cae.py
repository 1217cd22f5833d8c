"""Tests for linewatch.training.cae: closed forms against autograd, training, determinism, shapes."""
import numpy as np
import pytest
import torch

from linewatch.training.cae import CAEStack, ContractiveAutoencoder, fit_layer

torch.set_num_threads(1)


def _layer(n_in=7, n_hidden=5, decoder="sigmoid", seed=0):
    """A float64 layer with non-zero biases, so the tests see a generic point."""
    layer = ContractiveAutoencoder(n_in, n_hidden, decoder=decoder, seed=seed).double()
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        layer.b.copy_(torch.randn(n_hidden, generator=g, dtype=torch.float64))
        layer.c.copy_(torch.randn(n_in, generator=g, dtype=torch.float64))
    return layer


def _encoder_jacobian(layer, x):
    """df/dx at one point x [D_in] by autograd: [D_h, D_in]."""
    return torch.autograd.functional.jacobian(lambda v: layer.encode(v[None])[0], x)


def _two_blobs(n=400, d=12, seed=0):
    """[n, d] data in [0, 1]: half near one binary pattern, half near its complement."""
    g = torch.Generator().manual_seed(seed)
    proto = (torch.arange(d) < d // 2).float()
    centres = torch.stack([proto, 1 - proto])[torch.arange(n) % 2]
    return (centres * 0.8 + 0.1 + 0.05 * torch.randn(n, d, generator=g)).clamp(0, 1)


def test_contraction_penalty_equals_autograd_frobenius_norm():
    layer = _layer()
    x = torch.rand(4, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    closed = layer.contraction_penalty(layer.encode(x))
    brute = torch.stack([(_encoder_jacobian(layer, xi) ** 2).sum() for xi in x])
    torch.testing.assert_close(closed, brute, rtol=1e-10, atol=1e-12)
    # and the loss uses it with the contraction weight
    layer.contraction = 0.7
    h = layer.encode(x)
    expected = (layer.reconstruction_error(x, h) + 0.7 * brute).mean()
    torch.testing.assert_close(layer.loss(x), expected)


def test_jacobian_noise_equals_J_JT_eps_autograd_and_finite_differences():
    layer = _layer()
    g = torch.Generator().manual_seed(2)
    x = torch.rand(3, 7, dtype=torch.float64, generator=g)
    eps = torch.randn(3, 5, dtype=torch.float64, generator=g)
    got = layer.jacobian_noise(layer.encode(x), eps)
    for i in range(3):
        J = _encoder_jacobian(layer, x[i])
        torch.testing.assert_close(got[i], J @ J.T @ eps[i], rtol=1e-10, atol=1e-12)
        # central finite differences of the encoder
        step = 1e-6
        J_fd = torch.stack([(layer.encode((x[i] + step * e)[None])[0] - layer.encode((x[i] - step * e)[None])[0])
                            / (2 * step) for e in torch.eye(7, dtype=torch.float64)], dim=1)
        torch.testing.assert_close(J_fd, J, rtol=1e-6, atol=1e-8)
        torch.testing.assert_close(got[i], J_fd @ J_fd.T @ eps[i], rtol=1e-5, atol=1e-7)


def test_linear_decoder_uses_squared_error_and_real_outputs():
    layer = _layer(decoder="linear")
    x = 3.0 * torch.randn(5, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    h = layer.encode(x)
    r = layer.decode(h)
    torch.testing.assert_close(r, h @ layer.W + layer.c)
    torch.testing.assert_close(layer.reconstruction_error(x, h), ((r - x) ** 2).sum(1))
    with pytest.raises(ValueError):
        ContractiveAutoencoder(3, 2, decoder="relu")


def test_trained_stack_reconstructs_better_than_untrained():
    X = _two_blobs()
    untrained = CAEStack().fit_greedy(X, [8, 4], epochs=0, seed=0)
    trained = CAEStack().fit_greedy(X, [8, 4], epochs=40, lr=1e-2, batch_size=32, contraction=0.1, seed=0)
    with torch.no_grad():
        for level in (1, 2):
            err_u = ((untrained.decode(untrained.encode(X, level), level) - X) ** 2).mean()
            err_t = ((trained.decode(trained.encode(X, level), level) - X) ** 2).mean()
            assert err_t < 0.25 * err_u, (level, float(err_t), float(err_u))
    # the loss went down in every layer
    assert all(h[-1] < h[0] for h in trained.loss_history_)


def test_fit_greedy_is_deterministic_given_a_seed():
    X = _two_blobs(n=200)
    kwargs = dict(widths=[6, 3], epochs=3, lr=1e-2, batch_size=16, contraction=0.2)
    a = CAEStack().fit_greedy(X, seed=5, **kwargs)
    b = CAEStack().fit_greedy(X, seed=torch.Generator().manual_seed(5), **kwargs)
    c = CAEStack().fit_greedy(X, seed=6, **kwargs)
    for pa, pb, pc in zip(a.parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb)
    assert not all(torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters()))
    assert a.loss_history_ == b.loss_history_


def test_fit_greedy_callback_levels_and_shapes():
    X = np.random.default_rng(0).random((64, 10)).astype(np.float32)  # numpy input is accepted
    calls = []
    stack = CAEStack().fit_greedy(X, [6, 4], epochs=[2, 3], batch_size=16, contraction=[0.1, 0.5],
                                  callback=lambda k, e, v: calls.append((k, e)))
    assert calls == [(1, 0), (1, 1), (2, 0), (2, 1), (2, 2)]
    assert stack.widths() == [10, 6, 4] and stack.n_levels == 2
    assert [layer.contraction for layer in stack.layers] == [0.1, 0.5]
    x = torch.from_numpy(X)
    assert stack.encode(x, 0) is x
    assert stack.encode(x, 2).shape == (64, 4)
    assert stack.decode(stack.encode(x, 2), 2).shape == (64, 10)
    assert stack.decode(stack.encode(x, 2), 2, to_level=1).shape == (64, 6)
    with pytest.raises(ValueError):
        stack.encode(x, 3)
    with pytest.raises(ValueError):
        stack.decode(stack.encode(x, 1), 1, to_level=2)


def test_patch_helpers_are_a_reshape_of_the_row_maps():
    g = torch.Generator().manual_seed(4)
    stack = CAEStack([ContractiveAutoencoder(5, 4, decoder="linear", seed=1), ContractiveAutoencoder(4, 3, seed=2)])
    fmap = torch.randn(2, 5, 3, 4, generator=g)  # [B, C, H, W]
    codes = stack.encode_patches(fmap, 2)
    assert codes.shape == (2, 3, 3, 4)
    # pixel (b, :, i, j) of the code map is the code of the feature vector at (b, :, i, j)
    torch.testing.assert_close(codes[1, :, 2, 3], stack.encode(fmap[1, :, 2, 3][None], 2)[0])
    back = stack.decode_patches(codes, 2)
    assert back.shape == fmap.shape
    torch.testing.assert_close(back[0, :, 1, 0], stack.decode(codes[0, :, 1, 0][None], 2)[0])
    with pytest.raises(ValueError):
        stack.encode_patches(fmap[0], 1)


def test_fit_layer_sgd_decreases_loss():
    X = _two_blobs(n=128)
    layer = ContractiveAutoencoder(12, 6, contraction=0.1, seed=0)
    hist = fit_layer(layer, X, epochs=20, lr=0.05, batch_size=16, optimizer="sgd", seed=0)
    assert hist[-1] < 0.9 * hist[0]
    assert not layer.training  # left in eval mode
