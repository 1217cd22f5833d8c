"""The exported scoring graph: a plain ``nn.Module`` with no training logic.

``PatchDensityScorer(x)``: model input ``float32 (N, C, H, W)`` -> level-1 patch features -> (optional)
encoder to a higher representation level -> Parzen log-density ->
``score`` ``float32 (N,)``, ``patch_scores`` ``float32 (N, h, w)`` and ``patch_features``
``float32 (N, h*w, d)``, where a patch score is the negative log-density (nats) of the patch's
feature and the image score is the mean of the ``top_k`` largest patch scores (``top_k = 1``: the
largest), as ``linewatch.runtime.density`` defines them. ``patch_features`` are the patches'
coordinates in the density's space (the rows the Parzen bank is made of, row-major over the
``h x w`` map): the runtime uses them to adapt the bank and to find a flagged image's nearest
training examples without torch. With a global branch (``training/global_branch.py``), ``score`` also
includes what the patches' image-level statistics add; ``patch_scores`` stay the density's alone.
"""
from __future__ import annotations

import torch
from torch import nn

from .parzen import ParzenDensity


def image_score(patch_scores: torch.Tensor, top_k: int) -> torch.Tensor:
    """``(N, h, w)`` -> ``(N,)``: mean of each image's ``min(top_k, h*w)`` largest patch scores (the torch
    form of :func:`linewatch.runtime.density.image_scores`, part of the exported graph)."""
    flat = patch_scores.reshape(patch_scores.shape[0], -1)
    k = min(int(top_k), int(flat.shape[1]))
    return torch.amax(flat, dim=1) if k == 1 else torch.topk(flat, k, dim=1).values.mean(dim=1)


class PatchDensityScorer(nn.Module):
    def __init__(self, features: nn.Module, density: ParzenDensity, top_k: int, encoder: nn.Module | None = None,
                 global_branch: nn.Module | None = None, position: nn.Module | None = None):
        super().__init__()
        self.features = features
        self.encoder = encoder if encoder is not None else nn.Identity()
        self.density = density
        self.top_k = int(top_k)
        self.global_branch = global_branch
        self.position = position

    def head(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encoded rows ``(n, h*w, d)`` -> image scores ``(n,)``, patch scores ``(n, h*w)`` and the density's
        rows ``(n, h*w, d')`` (with the position code appended, when the scorer has one)."""
        # both attributes are absent on scorers pickled before they existed
        position, branch = getattr(self, "position", None), getattr(self, "global_branch", None)
        rows = z if position is None else position(z)
        patch_scores = -self.density(rows.reshape(-1, rows.shape[2])).reshape(z.shape[0], z.shape[1])
        score = image_score(patch_scores, self.top_k)
        if branch is not None:
            score = score + branch(z)
        return score, patch_scores, rows

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f = self.features(x)
        d, h, w = f.shape[1], f.shape[2], f.shape[3]
        z = self.encoder(f.permute(0, 2, 3, 1).reshape(-1, d))
        score, patch_scores, rows = self.head(z.reshape(-1, h * w, z.shape[1]))
        return score, patch_scores.reshape(-1, h, w), rows
