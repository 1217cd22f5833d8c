"""Level-1 patch features: backbone taps, aligned to the finest tap's grid, locally averaged.

``PatchFeatures`` is part of the exported graph: ``(N, C, H, W)`` model input ->
``(N, D, H/s, W/s)`` features, ``s`` = the finest tap's stride, ``D`` = sum of the taps' channels.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .backbones.conv_ae import ConvAutoencoder
from .backbones.lite0 import STRIDE16_BLOCKS, TAP_CHANNELS, TAP_STRIDE8, TAP_STRIDES, load_lite0

if TYPE_CHECKING:
    from .config import ModelConfig


class PatchFeatures(nn.Module):
    """Backbone taps (finest first) -> coarser ones upsampled bilinearly -> concat -> ``pool`` x ``pool`` average.

    The average gives each patch its neighbourhood's context (``pool=1`` turns it off).
    """

    def __init__(self, backbone: nn.Module, taps: tuple[int, ...], channels: int, stride: int, pool: int = 3):
        super().__init__()
        self.backbone = backbone
        self.taps = tuple(taps)
        self.dim = int(channels)
        self.stride = int(stride)
        self.pool = int(pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return combine_taps(self.backbone.features(x, self.taps), self.pool)


def combine_taps(maps: list[torch.Tensor], pool: int) -> torch.Tensor:
    """Tap maps (finest first, each ``(N, C_t, h_t, w_t)``) -> ``(N, sum C_t, h_0, w_0)`` patch features:
    coarser taps upsampled bilinearly to the finest grid, concatenated, then ``pool`` x ``pool`` averaged."""
    size = maps[0].shape[-2:]
    f = maps[0] if len(maps) == 1 else torch.cat(
        [maps[0]] + [F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps[1:]], dim=1)
    if pool > 1:
        f = F.avg_pool2d(f, pool, stride=1, padding=pool // 2, count_include_pad=False)
    return f


def _taps_for(strides: list[int], by_stride: dict[int, int], what: str) -> tuple[int, ...]:
    unknown = sorted(set(strides) - set(by_stride))
    if unknown or not strides:
        raise ValueError(f"model.feature_strides {strides} not available for {what}; choose from {sorted(by_stride)}")
    return tuple(by_stride[s] for s in sorted(set(strides)))


def lite0_patch_features(strides: list[int], pool: int, blocks: int) -> PatchFeatures:
    """Frozen ImageNet Lite0 taps at the given strides (8: 40 ch, 16: the output of the last of the
    ``blocks`` blocks kept, ``model.lite0_blocks``: 112 ch for 9-11 blocks, 80 ch for 6-8)."""
    if blocks - 1 not in STRIDE16_BLOCKS:
        raise ValueError(f"model.lite0_blocks must be in {STRIDE16_BLOCKS.start + 1}..{STRIDE16_BLOCKS.stop}, got {blocks}")
    taps = _taps_for(strides, {8: TAP_STRIDE8, 16: blocks - 1}, "lite0")
    return PatchFeatures(load_lite0(truncate_after=max(taps)), taps, sum(TAP_CHANNELS[t] for t in taps),
                         TAP_STRIDES[taps[0]], pool)


def lite0_features_for(model: "ModelConfig") -> PatchFeatures:
    """:func:`lite0_patch_features` as ``model`` (the ``model`` section of a configuration) sets it."""
    return lite0_patch_features(model.feature_strides, model.patch_pool, model.lite0_blocks)


def conv_ae_patch_features(ae: ConvAutoencoder, strides: list[int], pool: int) -> PatchFeatures:
    """A trained :class:`ConvAutoencoder`'s encoder taps at the given strides (2: w ch, 4: 2w ch)."""
    taps = _taps_for(strides, {s: i for i, s in enumerate(ae.tap_strides)}, "conv_ae")
    return PatchFeatures(ae, taps, sum(ae.tap_channels[t] for t in taps), ae.tap_strides[taps[0]], pool)


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
