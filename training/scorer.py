"""The exported scoring graph: a plain ``nn.Module`` with no training logic.

``PatchDensityScorer(x)``: model input ``float32 (N, C, H, W)`` ->
``score`` ``float32 (N,)`` and ``patch_scores`` ``float32 (N, h, w)``, where a patch score is the
negative log-density (nats) of the patch's feature and the image score is the largest patch score.
"""
from __future__ import annotations

import torch
from torch import nn

from .parzen import ParzenDensity


def image_score(patch_scores: torch.Tensor) -> torch.Tensor:
    """``(N, h, w)`` -> ``(N,)``: the most anomalous patch decides."""
    return torch.amax(patch_scores, dim=(1, 2))


class PatchDensityScorer(nn.Module):
    def __init__(self, features: nn.Module, density: ParzenDensity):
        super().__init__()
        self.features = features
        self.density = density

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x)
        d, h, w = f.shape[1], f.shape[2], f.shape[3]
        z = f.permute(0, 2, 3, 1).reshape(-1, d)
        patch_scores = -self.density(z).reshape(-1, h, w)
        return image_score(patch_scores), patch_scores
