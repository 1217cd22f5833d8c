"""A conv decoder from level-1 patch-feature maps back to pixels.

Input space ("level-1 features", the same rows the density sees at level 1): the backbone's pooled patch
features ``PatchFeatures(image)``, sphered by the fitted whitening when ``density.whiten`` is set (else
as they are), laid out as rows ``(N, P, D)`` with ``P = h * w`` in row-major map order
(``training.features.to_patches``). The chain's states are these rows standardised by the stack
(``(x - mean_) / std_``, ``training.levels``); augmentation maps them back before decoding.

Output: the image ``(N, C, H, W)`` in display units, pixel values in ``[0, 1]`` in the bundle's colour
order (the model input times ``std`` plus ``mean``, i.e. before normalisation).

Architecture: a 3x3 convolution on the ``(D, h, w)`` map, then ``log2(H / h) - 1`` stages of
(bilinear x2 upsampling, 3x3 convolution, batch norm, ReLU) with channels halving towards ``width``, a 3x3
convolution to ``C`` channels with a sigmoid at half the image size, and a last bilinear x2 upsampling.
Pooled stride-16 features do not hold full-resolution detail, and the full-resolution convolutions
would cost most of the training time (on 2 CPU cores: the last stage alone was ~2/3 of it). Trained with an L1 pixel loss (Adam), with Gaussian noise
of std ``input_noise`` added to the input features so that the decoder tolerates states slightly off
the training features (chain states).
"""
from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class PixelDecoder(nn.Module):
    """``forward(rows float32 (N, P, D)) -> image float32 (N, C, H, W)`` in ``[0, 1]``.

    ``map_shape`` ``(h, w)`` fixes how the ``P = h * w`` rows are laid out (row-major); the output is
    ``(H, W) = (h, w) * 2**k`` pixels. Batch norm (folded into the convolutions in eval mode) makes
    the few hundred optimiser steps of a small training set go further.
    """

    def __init__(self, dim: int, map_shape: tuple[int, int], image_shape: tuple[int, int], channels: int,
                 width: int = 16):
        super().__init__()
        h, w = map_shape
        factor = image_shape[0] // h
        if factor * h != image_shape[0] or factor * w != image_shape[1] or factor & (factor - 1):
            raise ValueError(f"the image {image_shape} must be the map {map_shape} times a power of two")
        self.dim, self.map_shape, self.image_shape, self.channels = int(dim), (int(h), int(w)), \
            (int(image_shape[0]), int(image_shape[1])), int(channels)
        n_up = max(int(math.log2(factor)) - 1, 0)     # conv stages; the last x2 is a plain upsampling
        self.final_up = factor > 1
        widths = [width * min(2 ** (n_up - i), 8) for i in range(n_up + 1)]   # e.g. 64, 32, 16, 8 for width 8
        self.stem = nn.Sequential(nn.Conv2d(dim, widths[0], 3, padding=1), nn.BatchNorm2d(widths[0]))
        self.stages = nn.ModuleList(nn.Sequential(nn.Conv2d(widths[i], widths[i + 1], 3, padding=1),
                                                  nn.BatchNorm2d(widths[i + 1])) for i in range(n_up))
        self.head = nn.Conv2d(widths[-1], channels, 3, padding=1)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        n = rows.shape[0]
        h, w = self.map_shape
        x = rows.transpose(1, 2).reshape(n, self.dim, h, w)
        x = F.relu(self.stem(x))
        for conv in self.stages:
            x = F.relu(conv(F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)))
        x = torch.sigmoid(self.head(x))
        return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False) if self.final_up else x


def display_images(model_inputs: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """Model inputs ``float32 (N, C, H, W)`` (normalised) -> pixel values in ``[0, 1]``, same shape."""
    m = np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(1, -1, 1, 1)
    return np.clip(model_inputs * s + m, 0.0, 1.0).astype(np.float32)


def fit_pixel_decoder(rows: np.ndarray, map_shape: tuple[int, int], targets: np.ndarray, width: int = 16,
                      epochs: int = 60, lr: float = 2e-3, batch_size: int = 16, input_noise: float = 0.1,
                      seed: int = 0, progress: Callable[[str], None] | None = None) -> tuple[PixelDecoder, dict]:
    """Train a :class:`PixelDecoder` on level-1 rows ``(N, P, D)`` and their images ``(N, C, H, W)`` in
    ``[0, 1]``. Returns the decoder (eval mode) and figures: final training L1 (mean absolute pixel error
    in [0, 1] units, without input noise), epochs, seconds."""
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(int(seed))
    torch.manual_seed(int(seed))
    n, _, dim = rows.shape
    dec = PixelDecoder(dim, map_shape, targets.shape[-2:], targets.shape[1], width)
    x_all = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))
    y_all = torch.from_numpy(np.ascontiguousarray(targets, dtype=np.float32))
    opt = torch.optim.Adam(dec.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
    dec.train()
    for epoch in range(epochs):
        order = torch.randperm(n, generator=gen)
        total = 0.0
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size]
            x = x_all[idx]
            if input_noise > 0:
                x = x + input_noise * torch.randn(x.shape, generator=gen)
            loss = (dec(x) - y_all[idx]).abs().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        sched.step()
        if progress and (epoch + 1 == epochs or (epoch + 1) % 10 == 0):
            progress(f"pixel decoder: epoch {epoch + 1}/{epochs}, L1 {total / n:.4f}")
    dec.eval()
    train_l1 = float(np.mean(np.abs(decode(dec, rows) - targets)))
    return dec, {"train_l1": round(train_l1, 5), "epochs": int(epochs), "width": int(width),
                 "input_noise": float(input_noise), "seconds": round(time.perf_counter() - t0, 1)}


@torch.no_grad()
def decode(decoder: PixelDecoder, rows: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """``rows`` ``(N, P, D)`` -> ``float32 (N, C, H, W)`` in ``[0, 1]``."""
    x = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))
    return torch.cat([decoder(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)]).numpy()
