"""The CAE Markov chain at one level of a ``CAEStack`` (Rifai et al. 2012; Bengio et al. 2013, §3).

The chain at level k keeps its state at level k-1 and repeats

    h_k      = f_k(h_{k-1})
    h_k'     = h_k + J_k J_k^T eps,   eps ~ N(0, sigma^2 I_{D_k}),  J_k = d f_k / d h_{k-1}
    h_{k-1}' = g_k(h_k')                                           (the next state)

Level 1 runs in input space (pixels); level 2 runs on layer-1 codes, and its states are mapped to
pixels with ``g_1`` only for recording (they are not re-encoded through ``f_1(g_1(.))``).

``ChainStep`` is one step as a pure ``nn.Module`` with the Gaussian draw as an input (exportable to
ONNX); ``TopLayerSampler`` runs many chains with burn-in and thinning.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .cae import CAEStack, ContractiveAutoencoder, as_generator, as_tensor


class ChainStep(nn.Module):
    """One CAE chain step with frozen weights of one layer.

    ``forward(h_prev [N, D_in], z [N, D_h]) -> next state [N, D_in]`` where ``z`` is *standard*
    normal noise and ``sigma`` (fixed at construction) scales it: ``eps = sigma * z``. With the
    draw as an input the graph is deterministic, so an edge runtime can feed
    ``numpy.random.standard_normal`` noise to the exported ONNX model.
    """

    def __init__(self, layer: ContractiveAutoencoder, sigma: float = 1.0):
        super().__init__()
        self.register_buffer("W", layer.W.detach().clone())  # [D_h, D_in]
        self.register_buffer("b", layer.b.detach().clone())  # [D_h]
        self.register_buffer("c", layer.c.detach().clone())  # [D_in]
        self.sigmoid_decoder = layer.decoder == "sigmoid"
        self.sigma = float(sigma)

    def forward(self, h_prev: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        h = torch.sigmoid(h_prev @ self.W.t() + self.b)
        s = h * (1.0 - h)
        h_noisy = h + s * ((s * (self.sigma * z)) @ self.W @ self.W.t())
        a = h_noisy @ self.W + self.c
        return torch.sigmoid(a) if self.sigmoid_decoder else a


class TopLayerSampler:
    """Many parallel CAE chains at level ``level`` (1..L) of a fitted ``CAEStack``.

    Parameters
    ----------
    stack : the fitted stack (not modified).
    level : k, the layer whose encoder/decoder pair drives the chain; states live at level k-1.
    sigma : standard deviation of the hidden-space noise ``eps`` (in units of level-k codes).
    n_steps : number of recorded samples per chain.
    burn_in : chain steps discarded before the first record.
    thin : chain steps between consecutive records (1 = record every step); a chain therefore
        runs ``burn_in + n_steps * thin`` steps.
    seed : int or ``torch.Generator`` for the noise.

    Fitted attributes after ``sample``: ``last_state_`` [n_chains, D_{k-1}] (to continue the
    chains), ``n_chain_steps_`` (steps run per chain).
    """

    def __init__(self, stack: CAEStack, level: int = 1, sigma: float = 1.0, n_steps: int = 100,
                 burn_in: int = 100, thin: int = 1, seed: int | torch.Generator | None = 0):
        if not 1 <= level <= stack.n_levels:
            raise ValueError(f"level must be in 1..{stack.n_levels}, got {level}")
        if n_steps < 1 or thin < 1 or burn_in < 0:
            raise ValueError("need n_steps >= 1, thin >= 1, burn_in >= 0")
        self.stack, self.level, self.sigma = stack, int(level), float(sigma)
        self.n_steps, self.burn_in, self.thin, self.seed = int(n_steps), int(burn_in), int(thin), seed

    def step_module(self) -> ChainStep:
        """The ``ChainStep`` this sampler applies (weights of layer ``level``, noise scale ``sigma``)."""
        return ChainStep(self.stack.layers[self.level - 1], self.sigma)

    @torch.no_grad()
    def sample(self, start, callback: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
        """Run one chain per row of ``start`` [n_chains, D_{k-1}] (inputs already at level k-1).

        Returns the recorded states, ``[n_steps, n_chains, D_{k-1}]`` float32, in chain order
        (record t of chain i is ``out[t, i]``). ``callback(step, state)`` is called after every step.
        """
        gen = as_generator(self.seed)
        step = self.step_module()
        state = as_tensor(start).clone()
        d_code = self.stack.layers[self.level - 1].n_hidden
        out = torch.empty(self.n_steps, *state.shape)
        total = self.burn_in + self.n_steps * self.thin
        for t in range(1, total + 1):
            state = step(state, torch.randn(state.shape[0], d_code, generator=gen))
            if callback is not None:
                callback(t, state)
            r = t - self.burn_in
            if r > 0 and r % self.thin == 0:
                out[r // self.thin - 1] = state
        self.last_state_ = state
        self.n_chain_steps_ = total
        return out

    @torch.no_grad()
    def to_level(self, samples: torch.Tensor, to_level: int = 0) -> torch.Tensor:
        """Map samples ``[..., D_{k-1}]`` (as returned by ``sample``) down to ``to_level`` (< k):
        ``[..., D_to]``; ``to_level=0`` gives inputs (pixels)."""
        lead = samples.shape[:-1]
        flat = self.stack.decode(samples.reshape(-1, samples.shape[-1]), self.level - 1, to_level)
        return flat.reshape(*lead, flat.shape[-1])
