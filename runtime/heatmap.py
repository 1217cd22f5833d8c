"""Heat-map overlays of patch scores for people reviewing flagged images."""
from __future__ import annotations

import cv2
import numpy as np


def overlay(image_bgr: np.ndarray, patch_map: np.ndarray, low: float, threshold: float,
            strength: float = 0.6) -> np.ndarray:
    """Colour the image by how anomalous each region is.

    Args:
        image_bgr: ``uint8 (H, W, 3)`` as decoded (see ``preprocess.display_bgr``).
        patch_map: ``float (h, w)`` patch scores (nats), any resolution; resized to ``(H, W)``.
        low: score shown as no colour (a typical good patch, from calibration).
        threshold: the image threshold; regions at or above it are fully red and outlined.
    Returns ``uint8 (H, W, 3)``.

    Only flagged images get an overlay. The blend ``image * (1 - a) + colour * a`` is one
    ``cv2.blendLinear`` with per-pixel weights (rounded to the nearest level), about twice as fast as
    the same arithmetic broadcast by numpy over ``(H, W, 3)`` (``bench/results/latency.md``).
    """
    h, w = image_bgr.shape[:2]
    s = cv2.resize(patch_map.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    v = np.clip((s - np.float32(low)) * np.float32(1.0 / max(threshold - low, 1e-6)), 0.0, 1.0)
    colour = cv2.applyColorMap((v * 255).astype(np.uint8), cv2.COLORMAP_JET)
    a = v * np.float32(strength)
    out = cv2.blendLinear(np.ascontiguousarray(image_bgr), colour, 1.0 - a, a)
    contours, _ = cv2.findContours((s >= threshold).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, (255, 255, 255), 1)
    return out
