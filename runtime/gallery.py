"""The bundle's optional gallery: small thumbnails of good training images with their representations.

``linewatch audit`` shows, next to each flagged image, the good training images nearest to it in the
density's representation space, so a reviewer can compare the part with good parts the model knows.
The exporter (:mod:`linewatch.export.gallery`) writes ``gallery.npz`` into the bundle and describes it
in the manifest's optional ``gallery`` section; bundles without one simply have no gallery.

``gallery.npz`` (``numpy.load(..., allow_pickle=False)``):

* ``jpeg``: ``uint8 (B,)`` the JPEG files of all thumbnails, concatenated;
* ``offsets``: ``int64 (K + 1,)`` thumbnail ``i`` is ``jpeg[offsets[i]:offsets[i + 1]]``;
* ``names``: ``str (K,)`` each image's path relative to the training data folder;
* ``embeddings``: ``float16 (K, d)`` each image's representation (:func:`embed`).
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from .bundle import Bundle, BundleError

GALLERY_FILE = "gallery.npz"
EMBEDDING_DEFINITION = ("mean over the patch map of model.onnx's patch_features output (the patches in the "
                        "density's space), float16 (count, d); nearest = smallest Euclidean distance")


def embed(patch_features: np.ndarray) -> np.ndarray:
    """Patch features ``(N, h*w, d)`` -> image representations ``float32 (N, d)``: the mean over patches."""
    f = np.asarray(patch_features, dtype=np.float32)
    if f.ndim != 3:
        raise ValueError(f"patch features must be (N, h*w, d), got shape {f.shape}")
    return f.mean(axis=1)


def pack(thumbnails: list[bytes], names: list[str], embeddings: np.ndarray) -> bytes:
    """The ``gallery.npz`` file's bytes for ``K`` JPEG thumbnails, names and embeddings ``(K, d)``."""
    if not (len(thumbnails) == len(names) == len(embeddings)):
        raise ValueError("gallery: thumbnails, names and embeddings must have the same length")
    offsets = np.zeros(len(thumbnails) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(t) for t in thumbnails])
    jpeg = np.frombuffer(b"".join(thumbnails), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, jpeg=jpeg, offsets=offsets, names=np.asarray(names, dtype=str),
             embeddings=np.asarray(embeddings, dtype=np.float16).reshape(len(thumbnails), -1))
    return buf.getvalue()


@dataclass
class Gallery:
    """Thumbnails (JPEG bytes), names and representations ``float32 (K, d)`` of good training images."""

    thumbnails: list[bytes]
    names: list[str]
    embeddings: np.ndarray
    section: dict[str, Any]

    @classmethod
    def load(cls, bundle: Bundle) -> "Gallery | None":
        """The bundle's gallery, or ``None`` when its manifest has no ``gallery`` section."""
        section = dict(getattr(bundle.manifest, "gallery", None) or {})
        if not section:
            return None
        path = bundle.file(section.get("file", GALLERY_FILE))
        try:
            with np.load(path, allow_pickle=False) as z:
                jpeg, offsets = z["jpeg"], z["offsets"]
                names = [str(n) for n in z["names"]]
                emb = z["embeddings"].astype(np.float32)
        except (OSError, KeyError, ValueError) as exc:
            raise BundleError(f"{path}: the bundle's gallery cannot be read ({exc}); re-export the bundle") from exc
        thumbs = [jpeg[offsets[i]:offsets[i + 1]].tobytes() for i in range(len(offsets) - 1)]
        if not (len(thumbs) == len(names) == len(emb)):
            raise BundleError(f"{path}: the gallery's arrays disagree in length; re-export the bundle")
        return cls(thumbs, names, emb, section)

    def __len__(self) -> int:
        return len(self.thumbnails)

    def nearest(self, query: np.ndarray, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` gallery images nearest to ``query`` ``(d,)``: indices ``int (k,)`` and Euclidean distances
        ``float (k,)``, nearest first."""
        q = np.asarray(query, dtype=np.float32).ravel()
        if q.shape[0] != self.embeddings.shape[1]:
            raise ValueError(f"query has {q.shape[0]} dimensions, the gallery {self.embeddings.shape[1]}")
        d = np.sqrt(((self.embeddings - q) ** 2).sum(axis=1))
        idx = np.argsort(d, kind="stable")[:max(0, int(k))]
        return idx, d[idx]


def shrunk_jpeg(image_bgr: np.ndarray, max_side: int, quality: int) -> bytes:
    """``uint8 (H, W, 3)`` BGR -> JPEG bytes, shrunk (area interpolation) so its longer side is at most
    ``max_side`` px. Gallery thumbnails and the audit report's pictures both use it."""
    h, w = image_bgr.shape[:2]
    s = max_side / max(h, w)
    if s < 1:
        image_bgr = cv2.resize(image_bgr, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", image_bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()
