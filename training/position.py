"""Where a patch is: its map coordinates appended to its density row, for parts that sit in a fixture.

A Parzen density over patches alone asks "has a patch like this been seen anywhere?". On a texture that
is the right question. On a fixtured part, a printed label or a digit it is not: a hole is good in one
place and a defect in another. Appending ``weight x (y, x)``, with ``y, x`` in [-1, 1] over the map, to
each row makes the kernel compare a patch mostly with training patches at nearby positions; ``weight``
(``scoring.position_weight``, in the units of the density's rows) sets how near: between neighbouring
patches the squared distance grows by ``(2 weight / (map side - 1))^2`` per step. 0 turns it off.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


def grid(h: int, w: int) -> np.ndarray:
    """Map coordinates ``float32 (h*w, 2)`` (row-major, as the rows are laid out), each in [-1, 1]."""
    ys, xs = np.meshgrid(np.linspace(-1, 1, h) if h > 1 else [0.0], np.linspace(-1, 1, w) if w > 1 else [0.0],
                         indexing="ij")
    return np.stack([ys.ravel(), xs.ravel()], axis=1).astype(np.float32)


def with_position(rows: np.ndarray, h: int, w: int, weight: float) -> np.ndarray:
    """Rows ``(n, h*w, d)`` -> ``float32 (n, h*w, d + 2)`` with ``weight`` x their coordinates appended."""
    coords = np.broadcast_to(weight * grid(h, w), (rows.shape[0], h * w, 2))
    return np.concatenate([rows, coords], axis=2).astype(np.float32)


class PositionCode(nn.Module):
    """The exported form of :func:`with_position`: ``(n, h*w, d)`` -> ``(n, h*w, d + 2)``."""

    def __init__(self, h: int, w: int, weight: float):
        super().__init__()
        self.register_buffer("coords", torch.from_numpy(weight * grid(h, w)))
        self.weight = float(weight)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return torch.cat([rows, self.coords.expand(rows.shape[0], -1, -1)], dim=2)
