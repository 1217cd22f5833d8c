"""Level-1 patch features: two backbone taps, aligned to the finer grid, locally averaged.

``PatchFeatures`` is part of the exported graph: ``(N, C, H, W)`` model input ->
``(N, D, H/s, W/s)`` features, ``s`` = the finer tap's stride, ``D`` = sum of the taps' channels.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .backbones.lite0 import TAP_CHANNELS, TAP_STRIDE8, TAP_STRIDE16, TAP_STRIDES, load_lite0


class PatchFeatures(nn.Module):
    """Backbone taps -> upsample coarse to fine (bilinear) -> concat -> 3x3 average (neighbourhood context)."""

    def __init__(self, backbone: nn.Module, channels: tuple[int, int], stride: int):
        super().__init__()
        self.backbone = backbone
        self.dim = int(sum(channels))
        self.stride = int(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fine, coarse = self.backbone.features(x)
        coarse = F.interpolate(coarse, size=fine.shape[-2:], mode="bilinear", align_corners=False)
        f = torch.cat([fine, coarse], dim=1)
        return F.avg_pool2d(f, 3, stride=1, padding=1, count_include_pad=False)


def lite0_patch_features() -> PatchFeatures:
    """Frozen ImageNet Lite0, taps at strides 8 (40 ch) and 16 (112 ch): D = 152, map = H/8."""
    return PatchFeatures(load_lite0(), (TAP_CHANNELS[TAP_STRIDE8], TAP_CHANNELS[TAP_STRIDE16]),
                         TAP_STRIDES[TAP_STRIDE8])


@torch.no_grad()
def extract(module: nn.Module, images: np.ndarray, batch_size: int = 16,
            progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Run ``module`` over ``images`` ``float32 (N, C, H, W)`` in batches -> ``float32 (N, ...)``."""
    outs = []
    n = images.shape[0]
    for i in range(0, n, batch_size):
        outs.append(module(torch.from_numpy(images[i:i + batch_size])).numpy())
        if progress:
            progress(min(i + batch_size, n), n)
    return np.concatenate(outs, axis=0)


def to_patches(maps: np.ndarray) -> np.ndarray:
    """``(N, D, h, w)`` -> ``(N, h*w, D)`` (row-major over the map)."""
    n, d, h, w = maps.shape
    return np.ascontiguousarray(maps.reshape(n, d, h * w).transpose(0, 2, 1))
