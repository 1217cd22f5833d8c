"""Contractive autoencoders (Rifai et al. 2011) and their greedy stack (Bengio et al. 2013).

One layer (``ContractiveAutoencoder``) is

    h = f(x) = sigmoid(W x + b)                    encoder, W: [D_h, D_in]
    r = g(h) = sigmoid(W^T h + c)   (or W^T h + c)  tied-weight decoder ("sigmoid" | "linear")
    loss(x) = rec(x, r) + contraction * ||df/dx (x)||_F^2

with ``rec`` the binary cross-entropy summed over inputs (sigmoid decoder, targets in [0, 1]) or the
squared error summed over inputs (linear decoder, any real-valued target, e.g. CNN features), and
the Jacobian penalty in closed form ``sum_j (h_j (1 - h_j))^2 sum_i W_ji^2``. Losses are in nats (or
squared units) per example, averaged over the mini-batch.

``CAEStack`` trains such layers greedily: layer k is fitted on the codes of layer k-1. Levels are
numbered as in the paper: level 0 is the input, level k the code of layer k.

All tensors are ``[N, D]`` float32 rows. To use the stack per patch on a CNN feature map
``[B, C, H, W]`` (a 1x1 convolution), reshape to ``[B*H*W, C]``, encode, and reshape back:
``CAEStack.encode_patches`` / ``CAEStack.decode_patches`` do exactly that.

Only torch and numpy are used; the training loop is plain torch (Adam or SGD).

Speed (measured on the 2-core build VM, 784->1000 layer, 3,500 MNIST digits, batch 50): about
0.6-0.8 s per epoch with one torch thread. With ``torch.set_num_threads(2)`` while another process
kept one core busy, an epoch took ~30 s (OpenMP threads waiting on a shared core), so prefer one
thread on a shared machine. Denormals are flushed during training (``flush_denormals``).
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

DECODERS = ("sigmoid", "linear")


def as_generator(seed: int | torch.Generator | None) -> torch.Generator:
    """A CPU ``torch.Generator``: ``seed`` itself if it is one, else a new one seeded with it (0 if None)."""
    if isinstance(seed, torch.Generator):
        return seed
    g = torch.Generator()
    g.manual_seed(0 if seed is None else int(seed))
    return g


def as_tensor(x) -> torch.Tensor:
    """``x`` (numpy array or tensor) as a float32 CPU tensor, without copying when possible."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    return x.to(dtype=torch.float32)


class ContractiveAutoencoder(nn.Module):
    """One CAE layer with tied weights.

    Parameters
    ----------
    n_in, n_hidden : input width D_in and code width D_h.
    decoder : "sigmoid" (outputs in (0, 1), cross-entropy loss; inputs must lie in [0, 1]) or
        "linear" (real-valued outputs, squared-error loss).
    contraction : weight alpha of the squared Frobenius norm of the encoder Jacobian in ``loss``.
    seed : int or ``torch.Generator`` for the initial weights,
        ``W ~ U(+-4 sqrt(6 / (D_in + D_h)))`` (the sigmoid Glorot range), ``b = c = 0``.
    """

    def __init__(self, n_in: int, n_hidden: int, decoder: str = "sigmoid", contraction: float = 0.1,
                 seed: int | torch.Generator | None = 0):
        super().__init__()
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        self.n_in, self.n_hidden = int(n_in), int(n_hidden)
        self.decoder = decoder
        self.contraction = float(contraction)
        bound = 4.0 * math.sqrt(6.0 / (self.n_in + self.n_hidden))
        w = (torch.rand(self.n_hidden, self.n_in, generator=as_generator(seed)) * 2 - 1) * bound
        self.W = nn.Parameter(w)                          # [D_h, D_in]
        self.b = nn.Parameter(torch.zeros(self.n_hidden))  # [D_h] encoder bias
        self.c = nn.Parameter(torch.zeros(self.n_in))      # [D_in] decoder bias

    def extra_repr(self) -> str:
        return f"n_in={self.n_in}, n_hidden={self.n_hidden}, decoder={self.decoder!r}, contraction={self.contraction}"

    # --- maps -------------------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, D_in] -> [N, D_h]`` codes in (0, 1)."""
        return torch.sigmoid(F.linear(x, self.W, self.b))

    def decode_preactivation(self, h: torch.Tensor) -> torch.Tensor:
        """``[N, D_h] -> [N, D_in]``: ``W^T h + c`` (the logits for the sigmoid decoder)."""
        return F.linear(h, self.W.t(), self.c)

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        """``[N, D_h] -> [N, D_in]`` reconstruction ``g(h)``."""
        a = self.decode_preactivation(h)
        return torch.sigmoid(a) if self.decoder == "sigmoid" else a

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, D_in] -> [N, D_in]`` reconstruction ``g(f(x))``."""
        return self.decode(self.encode(x))

    # --- loss -------------------------------------------------------------------------------------
    def contraction_penalty(self, h: torch.Tensor) -> torch.Tensor:
        """``||df/dx||_F^2`` at the points whose codes are ``h`` [N, D_h] -> [N] (closed form)."""
        s = h * (1.0 - h)
        return (s * s) @ (self.W * self.W).sum(dim=1)

    def reconstruction_error(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """Per-example reconstruction loss [N]: cross-entropy (nats) or squared error, summed over inputs."""
        a = self.decode_preactivation(h)
        if self.decoder == "sigmoid":
            return F.binary_cross_entropy_with_logits(a, x, reduction="none").sum(dim=1)
        return ((a - x) ** 2).sum(dim=1)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """Scalar training loss: mean over the batch of reconstruction + contraction * penalty."""
        h = self.encode(x)
        return (self.reconstruction_error(x, h) + self.contraction * self.contraction_penalty(h)).mean()

    # --- sampling ---------------------------------------------------------------------------------
    def jacobian_noise(self, h: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """``J J^T eps`` with ``J = df/dx`` [D_h, D_in] at the point whose code is ``h``.

        ``h``, ``eps``: [N, D_h] -> [N, D_h]. Uses ``J = diag(s) W`` with ``s = h (1 - h)``, so
        ``J J^T eps = s * (W (W^T (s * eps)))``: O(D_in D_h) per row, ``J J^T`` is never formed.
        """
        s = h * (1.0 - h)
        return s * ((s * eps) @ self.W @ self.W.t())


@contextlib.contextmanager
def flush_denormals() -> Iterator[None]:
    """Flush denormal floats to zero inside the block, then restore torch's default (off).

    Saturated sigmoids make denormal activations and gradients; on x86 CPUs they slow the GEMMs
    of CAE training several-fold (measured here: 2.6 s -> 0.6 s per epoch of a 784-1000 layer).
    """
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def fit_layer(layer: ContractiveAutoencoder, X: torch.Tensor, epochs: int = 30, lr: float = 1e-3,
              batch_size: int = 50, optimizer: str = "adam", seed: int | torch.Generator | None = 0,
              callback: Callable[[int, float], None] | None = None) -> list[float]:
    """Train one layer in place by mini-batch gradient descent on ``layer.loss``.

    ``X``: [N, D_in] float32. ``optimizer``: "adam" or "sgd". The mini-batch order is drawn from
    ``seed`` (int or ``torch.Generator``), so the run is deterministic for a fixed thread count.
    ``callback(epoch, mean_loss)`` is called after every epoch. Returns the per-epoch mean losses.
    Runs inside ``flush_denormals()`` (denormals are flushed to zero during training only).
    """
    gen = as_generator(seed)
    X = as_tensor(X)
    params = list(layer.parameters())
    if optimizer == "adam":
        opt = torch.optim.Adam(params, lr=lr)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr)
    else:
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    history = []
    layer.train()
    with flush_denormals():
        for epoch in range(epochs):
            order = torch.randperm(X.shape[0], generator=gen)
            total = 0.0
            for start in range(0, X.shape[0], batch_size):
                xb = X[order[start:start + batch_size]]
                loss = layer.loss(xb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * xb.shape[0]
            history.append(total / X.shape[0])
            if callback is not None:
                callback(epoch, history[-1])
    layer.eval()
    return history


class CAEStack(nn.Module):
    """Greedily trained stack of ``ContractiveAutoencoder`` layers.

    ``layers[k-1]`` maps level k-1 to level k (level 0 = input). Fitted attributes:
    ``loss_history_`` (per layer, per-epoch mean training loss) after ``fit_greedy``.
    """

    def __init__(self, layers: Sequence[ContractiveAutoencoder] = ()):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    @property
    def n_levels(self) -> int:
        """Number of layers L (the top level)."""
        return len(self.layers)

    def widths(self) -> list[int]:
        """``[D_0, D_1, ..., D_L]``."""
        return [self.layers[0].n_in] + [layer.n_hidden for layer in self.layers] if self.layers else []

    def fit_greedy(self, X, widths: Sequence[int], epochs: int | Sequence[int] = 30, lr: float = 1e-3,
                   batch_size: int = 50, contraction: float | Sequence[float] = 0.1,
                   decoder: str = "sigmoid", optimizer: str = "adam",
                   seed: int | torch.Generator | None = 0,
                   callback: Callable[[int, int, float], None] | None = None) -> "CAEStack":
        """Replace the layers by ``len(widths)`` new ones trained greedily on ``X`` [N, D_0].

        ``widths``: code widths ``[D_1, ..., D_L]``. ``epochs`` and ``contraction`` may be given per
        layer. ``decoder`` applies to layer 1 only ("linear" for real-valued inputs such as CNN
        features); upper layers reconstruct sigmoid codes in (0, 1) and always use "sigmoid".
        ``seed`` (int or ``torch.Generator``) drives initialisation and batch order: the same seed
        gives the same weights. ``callback(layer_index, epoch, mean_loss)`` reports progress
        (``layer_index`` counts from 1). Returns ``self``.
        """
        gen = as_generator(seed)
        L = len(widths)
        epochs_k = list(epochs) if isinstance(epochs, Sequence) else [int(epochs)] * L
        alpha_k = list(contraction) if isinstance(contraction, Sequence) else [float(contraction)] * L
        if len(epochs_k) != L or len(alpha_k) != L:
            raise ValueError("epochs and contraction must be scalars or have one entry per layer")
        H = as_tensor(X)
        layers, self.loss_history_ = [], []
        for k, width in enumerate(widths):
            layer = ContractiveAutoencoder(H.shape[1], int(width), decoder=decoder if k == 0 else "sigmoid",
                                           contraction=alpha_k[k], seed=gen)
            report = None if callback is None else (lambda e, v, k=k: callback(k + 1, e, v))
            self.loss_history_.append(fit_layer(layer, H, epochs=epochs_k[k], lr=lr, batch_size=batch_size,
                                                optimizer=optimizer, seed=gen, callback=report))
            layers.append(layer)
            with torch.no_grad():
                H = layer.encode(H)
        self.layers = nn.ModuleList(layers)
        self.eval()
        return self

    def encode(self, x: torch.Tensor, level: int) -> torch.Tensor:
        """Map level-0 inputs ``x`` [N, D_0] to level ``level`` (0..L): [N, D_level]."""
        self._check_level(level)
        for layer in self.layers[:level]:
            x = layer.encode(x)
        return x

    def decode(self, h: torch.Tensor, from_level: int, to_level: int = 0) -> torch.Tensor:
        """Map codes ``h`` [N, D_from] down through the decoders to ``to_level``: [N, D_to]."""
        self._check_level(from_level)
        self._check_level(to_level)
        if to_level > from_level:
            raise ValueError(f"to_level={to_level} is above from_level={from_level}")
        for k in range(from_level, to_level, -1):
            h = self.layers[k - 1].decode(h)
        return h

    def encode_patches(self, feature_map: torch.Tensor, level: int) -> torch.Tensor:
        """Per-patch (1x1 convolution) encoding: ``[B, D_0, H, W] -> [B, D_level, H, W]``."""
        return _per_patch(lambda rows: self.encode(rows, level), feature_map)

    def decode_patches(self, code_map: torch.Tensor, from_level: int, to_level: int = 0) -> torch.Tensor:
        """Per-patch decoding: ``[B, D_from, H, W] -> [B, D_to, H, W]``."""
        return _per_patch(lambda rows: self.decode(rows, from_level, to_level), code_map)

    def _check_level(self, level: int) -> None:
        if not 0 <= level <= self.n_levels:
            raise ValueError(f"level must be in 0..{self.n_levels}, got {level}")


def _per_patch(fn: Callable[[torch.Tensor], torch.Tensor], fmap: torch.Tensor) -> torch.Tensor:
    """Apply a row map ``[M, C] -> [M, C']`` to every pixel of ``[B, C, H, W]``, giving ``[B, C', H, W]``."""
    if fmap.dim() != 4:
        raise ValueError(f"expected a [B, C, H, W] map, got shape {tuple(fmap.shape)}")
    B, C, H, W = fmap.shape
    rows = fn(fmap.permute(0, 2, 3, 1).reshape(B * H * W, C))
    return rows.reshape(B, H, W, -1).permute(0, 3, 1, 2)
