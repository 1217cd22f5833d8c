"""Training and evaluation data: a folder of good images, or an MVTec-AD-style category folder.

MVTec layout::

    ROOT/train/good/*.png                         good training images
    ROOT/test/<type>/*.png                        test images; <type> == "good" for good ones
    ROOT/ground_truth/<type>/<stem>_mask.png      defect masks (optional)

Any other folder is read as good training images, recursively. Images in the same first-level
subfolder of the training folder form a *group* (one part, one batch, one camera session...) that
cross-fitting keeps together, so calibration scores come from images unlike those in the density;
images directly in the training folder are groups of their own. Images are decoded and preprocessed
by :mod:`linewatch.runtime.preprocess`, the same code the edge runtime runs.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..runtime.bundle import sha256_file
from ..runtime.preprocess import ImageError, InputSpec, load_for_model
from ..runtime.sources import list_images


class DataError(ValueError):
    """A dataset that cannot be used; the message says which folder and what to do."""


@dataclass
class TestImage:
    path: Path
    defect_type: str                 # "good" or the defect folder name
    mask: Path | None = None

    @property
    def label(self) -> int:
        return 0 if self.defect_type == "good" else 1


@dataclass
class Dataset:
    root: Path
    layout: str                      # "mvtec" or "folder"
    train: list[Path]
    test: list[TestImage] = field(default_factory=list)
    train_root: Path | None = None
    validation: list[Path] = field(default_factory=list)   # held-out good images for calibration

    def groups(self, paths: list[Path]) -> list[str]:
        """Group of each training image: its first-level subfolder, or the file itself."""
        base = self.train_root or self.root
        return [rel.parts[0] if len(rel.parts) > 1 else rel.as_posix()
                for rel in (p.relative_to(base) for p in paths)]


def discover(root: str | Path) -> Dataset:
    """Find the training images (and, for MVTec layout, the labelled test images) under ``root``."""
    root = Path(root)
    if root.is_file():
        raise DataError(f"{root}: is a file; --data takes the folder that holds the good images (e.g. {root.parent})")
    if not root.is_dir():
        raise DataError(f"{root}: no such folder; pass a folder of good images or an MVTec-style category")
    good = root / "train" / "good"
    if good.is_dir():
        train = list_images(good)
        test: list[TestImage] = []
        test_root = root / "test"
        if test_root.is_dir():
            for sub in sorted(p for p in test_root.iterdir() if p.is_dir()):
                for img in list_images(sub):
                    mask = root / "ground_truth" / sub.name / f"{img.stem}_mask.png"
                    test.append(TestImage(img, sub.name, mask if mask.is_file() else None))
        val = root / "validation" / "good"
        ds = Dataset(root, "mvtec", train, test, train_root=good,
                     validation=list_images(val) if val.is_dir() else [])
    else:
        ds = Dataset(root, "folder", list_images(root), train_root=root)
    if not ds.train:
        where = good if ds.layout == "mvtec" else root
        raise DataError(f"{where}: no training images found (png, jpg, bmp, tif); put good images there")
    return ds


def load_images(paths: list[Path], spec: InputSpec, progress: Callable[[int, int], None] | None = None
                ) -> tuple[np.ndarray, list[Path], list[str]]:
    """Decode and preprocess ``paths`` -> (``float32 (N, C, H, W)``, paths used, errors of skipped files)."""
    arrays, used, errors = [], [], []
    for i, p in enumerate(paths):
        try:
            arrays.append(load_for_model(p, spec))
            used.append(p)
        except ImageError as exc:
            errors.append(str(exc))
        if progress:
            progress(i + 1, len(paths))
    if not arrays:
        raise DataError("none of the images could be read:\n  " + "\n  ".join(errors[:10]))
    return np.stack(arrays), used, errors


def fingerprint(paths: list[Path], root: Path) -> str:
    """sha256 over (relative path, file sha256) of every image, in path order: ``"sha256:<hex>"``."""
    h = hashlib.sha256()
    for p in sorted(paths):
        rel = p.relative_to(root).as_posix() if p.is_relative_to(root) else p.name
        h.update(f"{rel}\0{sha256_file(p)}\n".encode())
    return "sha256:" + h.hexdigest()
