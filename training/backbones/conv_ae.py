"""A small convolutional autoencoder trained from scratch, for tiny (grey) images.

Its encoder gives level-1 patch features at strides 2 and 4, like the two Lite0 taps, so the rest
of the detector is the same for both backbones.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn


class ConvAutoencoder(nn.Module):
    """``(N, C, H, W)`` -> reconstruction of the same shape; H and W multiples of 4.

    ``features(x, taps)`` returns the chosen of ``[(N, w, H/2, W/2), (N, 2w, H/4, W/4)]`` (taps 0, 1).
    """

    tap_strides = (2, 4)

    def __init__(self, channels: int = 1, width: int = 32):
        super().__init__()
        self.tap_channels = (width, 2 * width)
        self.enc1 = nn.Sequential(nn.Conv2d(channels, width, 3, 2, 1), nn.ReLU(),
                                  nn.Conv2d(width, width, 3, 1, 1), nn.ReLU())
        self.enc2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, 2, 1), nn.ReLU(),
                                  nn.Conv2d(2 * width, 2 * width, 3, 1, 1), nn.ReLU())
        self.dec = nn.Sequential(nn.ConvTranspose2d(2 * width, width, 4, 2, 1), nn.ReLU(),
                                 nn.ConvTranspose2d(width, channels, 4, 2, 1))

    def features(self, x: torch.Tensor, taps: tuple[int, ...] = (0, 1)) -> list[torch.Tensor]:
        a = self.enc1(x)
        both = [a, self.enc2(a)] if max(taps) > 0 else [a]
        return [both[t] for t in taps]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dec(self.enc2(self.enc1(x)))


def train_conv_ae(images: np.ndarray, channels: int, width: int, epochs: int, learning_rate: float,
                  batch_size: int, seed: int, progress: Callable[[str], None] | None = None) -> ConvAutoencoder:
    """Fit a :class:`ConvAutoencoder` to ``images`` ``float32 (N, C, H, W)`` (model inputs) by MSE.

    Returns the model in eval mode with frozen parameters.
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = ConvAutoencoder(channels, width)
    opt = torch.optim.Adam(model.parameters(), lr=learning_rate)
    x_all = torch.from_numpy(images)
    n = x_all.shape[0]
    for epoch in range(epochs):
        order = torch.randperm(n, generator=gen)
        total = 0.0
        for i in range(0, n, batch_size):
            x = x_all[order[i:i + batch_size]]
            loss = torch.mean((model(x) - x) ** 2)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * x.shape[0]
        if progress and (epoch + 1) % max(1, epochs // 5) == 0:
            progress(f"conv autoencoder epoch {epoch + 1}/{epochs}: reconstruction MSE {total / n:.4f}")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
