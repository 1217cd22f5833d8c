"""Cross-fitting folds: images of one group (a subfolder: one part, batch or camera session) share a fold."""
from __future__ import annotations

import numpy as np


def assign_folds(groups: list[str], folds: int, seed: int) -> np.ndarray:
    """Fold index ``int (N,)`` of each image; images of one group share a fold. Groups are shuffled,
    then dealt to the fold with the fewest images so far (largest groups first)."""
    names, inverse, sizes = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True,
                                      return_counts=True)
    k = min(folds, len(names))
    order = np.random.default_rng(seed).permutation(len(names))
    order = order[np.argsort(-sizes[order], kind="stable")]
    load, fold_of_group = np.zeros(k), np.empty(len(names), dtype=np.int64)
    for g in order:
        fold_of_group[g] = int(np.argmin(load))
        load[fold_of_group[g]] += sizes[g]
    return fold_of_group[inverse]


NEAR_DUPLICATE_RATIO = 0.25   # linked when closer than this x the median distance between two training images
THUMB_SIDE = 16


def thumbnails(images: np.ndarray) -> np.ndarray:
    """Model inputs ``(N, C, H, W)`` -> ``float32 (N, C * 16 * 16)``: area-averaged 16 x 16 thumbnails."""
    n, c, h, w = images.shape
    fy, fx = max(1, h // THUMB_SIDE), max(1, w // THUMB_SIDE)
    x = images[:, :, : fy * (h // fy), : fx * (w // fx)]
    x = x.reshape(n, c, h // fy, fy, w // fx, fx).mean(axis=(3, 5))
    return x.reshape(n, -1).astype(np.float32)


def merge_near_duplicates(images: np.ndarray, groups: list[str]) -> tuple[list[str], int]:
    """Groups with near-duplicate images merged (video frames of one still, a part shot twice), so that
    cross-fitting never scores an image against its own copy: that would make the calibration scores lower
    than a new part's and the threshold too low. Two images are near duplicates when their thumbnails are
    closer than :data:`NEAR_DUPLICATE_RATIO` x the median distance between two training images.
    Returns the new group of each image and how many images joined another group. The merge is skipped
    (unchanged groups, 0) for fewer than 3 images or when it would leave fewer than two groups."""
    n = len(groups)
    if n < 3:
        return list(groups), 0
    t = thumbnails(images)
    sq = np.einsum("ij,ij->i", t, t)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (t @ t.T), 0.0)
    limit = NEAR_DUPLICATE_RATIO ** 2 * float(np.median(d2[np.triu_indices(n, 1)]))
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    by_group: dict[str, int] = {}
    for i, g in enumerate(groups):              # images of one group start joined
        parent[root(i)] = root(by_group.setdefault(g, i))
    for i, j in zip(*np.nonzero(np.triu(d2 < limit, 1))):
        parent[root(int(i))] = root(int(j))
    roots = [root(i) for i in range(n)]
    if len(set(roots)) < 2:
        return list(groups), 0
    merged = [groups[r] for r in roots]
    return merged, sum(a != b for a, b in zip(merged, groups))
