"""Expanding an inspection source (an image, a folder, or a glob) into image paths."""
from __future__ import annotations

import glob
import os
from pathlib import Path

from .preprocess import IMAGE_EXTENSIONS


def is_image_path(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files below ``folder`` (recursive, hidden files skipped), sorted by path."""
    root = Path(folder)
    return sorted(p for p in root.rglob("*") if p.is_file() and is_image_path(p)
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def expand_source(src: str | os.PathLike) -> list[Path]:
    """An image file, a folder (recursive) or a glob pattern -> sorted image paths.

    Raises ``FileNotFoundError`` with a message that says what was looked for.
    """
    s = str(src)
    p = Path(s)
    if p.is_dir():
        found = list_images(p)
        if not found:
            raise FileNotFoundError(f"{p}: folder has no images ({', '.join(IMAGE_EXTENSIONS)})")
        return found
    if p.is_file():
        return [p]
    if any(ch in s for ch in "*?["):
        found = sorted(Path(m) for m in glob.glob(s, recursive=True) if Path(m).is_file() and is_image_path(Path(m)))
        if not found:
            raise FileNotFoundError(f"{s}: the pattern matches no image files")
        return found
    raise FileNotFoundError(f"{s}: no such file, folder or glob pattern")
