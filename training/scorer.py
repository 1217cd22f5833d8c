"""The exported scoring graph: a plain ``nn.Module`` with no training logic.

``PatchDensityScorer(x)``: model input ``float32 (N, C, H, W)`` -> level-1 patch features -> (optional)
encoder to a higher representation level -> Parzen log-density ->
``score`` ``float32 (N,)``, ``patch_scores`` ``float32 (N, h, w)`` and ``patch_features``
``float32 (N, h*w, d)``, where a patch score is the negative log-density (nats) of the patch's
feature and the image score is the mean of the ``top_k`` largest patch scores (``top_k = 1``: the
largest). ``patch_features`` are the patches' coordinates in the density's space (the rows the
Parzen bank is made of, row-major over the ``h x w`` map): the runtime uses them to adapt the bank
and to find a flagged image's nearest training examples without torch.
"""
from __future__ import annotations

import torch
from torch import nn

from .parzen import ParzenDensity


def image_score(patch_scores: torch.Tensor, top_k: int) -> torch.Tensor:
    """``(N, h, w)`` -> ``(N,)``: mean of each image's ``top_k`` largest patch scores."""
    flat = patch_scores.reshape(patch_scores.shape[0], -1)
    return torch.amax(flat, dim=1) if top_k == 1 else torch.topk(flat, top_k, dim=1).values.mean(dim=1)


class PatchDensityScorer(nn.Module):
    def __init__(self, features: nn.Module, density: ParzenDensity, top_k: int, encoder: nn.Module | None = None):
        super().__init__()
        self.features = features
        self.encoder = encoder if encoder is not None else nn.Identity()
        self.density = density
        self.top_k = int(top_k)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f = self.features(x)
        d, h, w = f.shape[1], f.shape[2], f.shape[3]
        z = self.encoder(f.permute(0, 2, 3, 1).reshape(-1, d))
        patch_scores = -self.density(z).reshape(-1, h, w)
        return image_score(patch_scores, self.top_k), patch_scores, z.reshape(-1, h * w, z.shape[1])
