"""Build the bundle's gallery (``gallery.npz``, see :mod:`linewatch.runtime.gallery`) at export time.

The thumbnails are JPEGs of up to ``export.gallery_images`` training images (spread over the images
the training checkpoint stored), shrunk to fit ``thumbnail_px`` pixels; their representations come from
the bundle's own ``model.onnx`` (run by onnxruntime), so they are in exactly the space the audit
compares flagged images in, fp32 or int8. Images are added until the file would exceed
``export.gallery_max_bytes``; the manifest's ``gallery`` section says what it holds and costs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnxruntime as ort

from ..runtime.gallery import EMBEDDING_DEFINITION, GALLERY_FILE, embed, pack, shrunk_jpeg
from ..runtime.preprocess import ImageError, InputSpec, decode_image, display_bgr, preprocess

THUMBNAIL_PX = 64
JPEG_QUALITY = 80


def thumbnail_jpeg(image: np.ndarray, size: int = THUMBNAIL_PX, quality: int = JPEG_QUALITY) -> bytes:
    """A decoded image -> JPEG bytes of it shrunk (area interpolation) so its longer side is ``size`` px."""
    return shrunk_jpeg(display_bgr(image), size, quality)


def build_gallery(images: Sequence[tuple[str, bytes]], spec: InputSpec, onnx_path: str | Path, input_name: str,
                  features_output: str, max_images: int, max_bytes: int, thumbnail_px: int = THUMBNAIL_PX,
                  quality: int = JPEG_QUALITY) -> tuple[bytes, dict[str, Any]] | None:
    """``gallery.npz`` bytes and the manifest's ``gallery`` section, or ``None`` when nothing fits.

    Args:
        images: ``(name, encoded file bytes)`` of good training images.
        onnx_path: the bundle's scoring graph (its external data beside it).
        max_images, max_bytes: at most this many thumbnails, and a file of at most this many bytes.
    """
    if max_images <= 0 or max_bytes <= 0 or not images:
        return None
    pick = np.unique(np.linspace(0, len(images) - 1, min(len(images), max_images)).round().astype(int))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    thumbs, names, embs, skipped = [], [], [], 0
    for i in pick:
        name, data = images[i]
        try:
            img = decode_image(data, source=name)
            x = preprocess(img, spec, source=name)[None]
        except ImageError:
            skipped += 1
            continue
        thumbs.append(thumbnail_jpeg(img, thumbnail_px, quality))
        names.append(name)
        embs.append(embed(session.run([features_output], {input_name: x})[0])[0])
    # Drop images from the end until the packed file fits the budget (npz headers included).
    n = len(thumbs)
    while n and len(blob := pack(thumbs[:n], names[:n], np.stack(embs[:n]))) > max_bytes:
        per = len(blob) / n
        n = min(n - 1, int(max_bytes / per))
    if n == 0:
        return None
    section = {
        "file": GALLERY_FILE, "count": n, "bytes": len(blob), "max_bytes": int(max_bytes),
        "thumbnail_px": int(thumbnail_px), "jpeg_quality": int(quality),
        "embedding": EMBEDDING_DEFINITION, "embedding_dim": int(embs[0].shape[0]),
        "source": f"{n} of the {len(images)} training images stored in the training checkpoint, spread over "
                  "the training list" + (f" ({skipped} could not be decoded)" if skipped else ""),
        "purpose": "linewatch audit shows the nearest good training images beside each flagged image; the "
                   "edge runtime never reads this file while inspecting",
    }
    return blob, section


def attach_gallery(files: dict[str, Any], manifest: Any, images: Sequence[tuple[str, bytes]], onnx_path: Path,
                   config: Any, say: Any = None) -> None:
    """Build the gallery for a bundle being written: add ``gallery.npz`` to ``files`` (name -> bytes) and
    ``manifest.gallery``. ``config``: the training config (``export.gallery_images``/``gallery_max_bytes``)."""
    built = build_gallery(images, manifest.input, onnx_path, manifest.model.input_name, manifest.model.features_output,
                          config.export.gallery_images, config.export.gallery_max_bytes)
    if built is None:
        return
    blob, manifest.gallery = built
    files[GALLERY_FILE] = blob
    if say:
        say(f"gallery: {manifest.gallery['count']} thumbnails, {len(blob) / 1000:.0f} kB")
