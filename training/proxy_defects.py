"""Synthetic defects and benign shifts drawn on good images: the self-configuration's proxy validation
uses both, and training adds benign-shifted copies of its images to the density's bank.

Training sees good images only, so to compare candidate configurations ``train`` needs anomalies it can
make itself. These are deliberately generic, not modelled on any benchmark's defects (the accuracy suite
draws its own with ``defect-synthesis`` and ``bench/suite_defects.py``, which this module never uses):

* ``cut-paste``: a rectangle of another good image (or another place of the same one), possibly
  flipped, pasted with a soft edge: a local texture or structure that is plausible but out of place;
* ``blend``: a smooth random blob (low-frequency noise, thresholded) in which the image is blended
  towards another image or a contrast-changed version of itself;
* ``thin-line``: a 1-2 px polyline a little darker or brighter than its surroundings (scratches, hairs);
* ``colour-spot``: a soft ellipse whose colour is shifted in a random direction (stains, tints);
* ``tint``: the whole image's colour balance or contrast changed beyond what a lamp does (a wrong
  material, ink or coating), the kind of defect no single patch shows.

Benign shifts are what a line sees without any defect: brightness x U(0.9, 1.1), a slight blur, a shift
of up to two pixels, JPEG re-encoding; all at once, each at a random strength. Images are display images
``float32 (H, W, C)`` in [0, 1] (C = 1 or 3); sizes scale with the image side, so any resolution works.
"""
from __future__ import annotations

import cv2
import numpy as np

KINDS = ("cut-paste", "blend", "thin-line", "colour-spot", "tint")


def _soft(mask: np.ndarray, side: int) -> np.ndarray:
    """A {0,1} mask ``(H, W)`` -> float32 weights with a blurred edge (about 1 % of the side)."""
    sigma = max(0.6, side / 150.0)
    return cv2.GaussianBlur(mask.astype(np.float32), (0, 0), sigma)


def _mix(image: np.ndarray, other: np.ndarray, weight: np.ndarray) -> np.ndarray:
    w = weight[..., None]
    return np.clip(image * (1.0 - w) + other * w, 0.0, 1.0).astype(np.float32)


def _cut_paste(image: np.ndarray, donor: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    h, w = image.shape[:2]
    ph, pw = (np.array([h, w]) * rng.uniform(0.08, 0.22, 2)).astype(int) + 2
    sy, sx = rng.integers(0, h - ph + 1), rng.integers(0, w - pw + 1)
    ty, tx = rng.integers(0, h - ph + 1), rng.integers(0, w - pw + 1)
    patch = donor[sy:sy + ph, sx:sx + pw]
    if rng.random() < 0.5:
        patch = patch[::-1]
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    canvas, mask = image.copy(), np.zeros((h, w), np.float32)
    canvas[ty:ty + ph, tx:tx + pw] = patch
    mask[ty:ty + ph, tx:tx + pw] = 1.0
    return _mix(image, canvas, _soft(mask, min(h, w))), mask


def _blob(h: int, w: int, rng: np.random.Generator, area: float) -> np.ndarray:
    """A smooth random blob covering about ``area`` of the image: {0,1} float32 ``(H, W)``."""
    cells = int(rng.integers(3, 7))
    noise = cv2.resize(rng.random((cells, cells)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
    yy, xx = np.mgrid[0:h, 0:w]
    focus = np.exp(-(((yy - cy) / (0.25 * h)) ** 2 + ((xx - cx) / (0.25 * w)) ** 2))
    field = noise * focus
    return (field >= np.quantile(field, 1.0 - area)).astype(np.float32)


def _blend(image: np.ndarray, donor: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    h, w = image.shape[:2]
    mask = _blob(h, w, rng, rng.uniform(0.01, 0.06))
    if rng.random() < 0.5:
        other = donor
    else:   # the image itself with its contrast and level changed
        other = (image - image.mean()) * rng.uniform(0.3, 1.8) + image.mean() + rng.uniform(-0.25, 0.25)
    weight = _soft(mask, min(h, w)) * rng.uniform(0.6, 1.0)
    return _mix(image, np.clip(other, 0, 1), weight), mask


def _thin_line(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    h, w = image.shape[:2]
    n = int(rng.integers(2, 5))
    start = rng.uniform([0.1 * w, 0.1 * h], [0.9 * w, 0.9 * h])
    steps = rng.normal(0, 0.12 * min(h, w), (n, 2))
    pts = np.clip(np.cumsum(np.vstack([start, steps]), axis=0), 0, [w - 1, h - 1]).astype(np.int32)
    mask = np.zeros((h, w), np.uint8)
    cv2.polylines(mask, [pts.reshape(-1, 1, 2)], False, 1, thickness=int(rng.integers(1, 3)), lineType=cv2.LINE_8)
    delta = rng.choice([-1.0, 1.0]) * rng.uniform(0.1, 0.35)
    other = np.clip(image + delta, 0, 1)
    return _mix(image, other, mask.astype(np.float32)), mask.astype(np.float32)


def _colour_spot(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    h, w = image.shape[:2]
    mask = np.zeros((h, w), np.uint8)
    centre = (int(rng.uniform(0.15, 0.85) * w), int(rng.uniform(0.15, 0.85) * h))
    axes = tuple(int(a) + 1 for a in rng.uniform(0.03, 0.08, 2) * min(h, w))
    cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    direction = rng.normal(size=image.shape[2])
    direction = direction / (np.linalg.norm(direction) or 1.0)
    shift = (direction * rng.uniform(0.12, 0.35)).astype(np.float32)
    return _mix(image, np.clip(image + shift, 0, 1), _soft(mask, min(h, w))), mask.astype(np.float32)


def _tint(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    out = image.copy()
    if image.shape[2] == 3 and rng.random() < 0.5:   # one channel's gain: a colour cast
        c = int(rng.integers(3))
        out[..., c] = out[..., c] * (1.0 + rng.choice([-1.0, 1.0]) * rng.uniform(0.12, 0.25))
    else:                                             # contrast around the mean: faded or harsh
        m = image.mean()
        out = (image - m) * rng.choice([rng.uniform(0.55, 0.75), rng.uniform(1.3, 1.6)]) + m
    return np.clip(out, 0, 1).astype(np.float32), np.ones(image.shape[:2], np.float32)


def draw_defect(image: np.ndarray, donor: np.ndarray, kind: str, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray]:
    """One ``kind`` of :data:`KINDS` drawn on ``image`` ``float32 (H, W, C)`` in [0, 1] (``donor``: another
    good image of the same shape, for ``cut-paste`` and ``blend``) -> (image, mask ``float32 (H, W)``)."""
    if kind == "cut-paste":
        return _cut_paste(image, donor, rng)
    if kind == "blend":
        return _blend(image, donor, rng)
    if kind == "thin-line":
        return _thin_line(image, rng)
    if kind == "colour-spot":
        return _colour_spot(image, rng)
    if kind == "tint":
        return _tint(image, rng)
    raise ValueError(f"unknown proxy defect kind {kind!r}; known: {KINDS}")


def benign_shift(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``image`` ``float32 (H, W, C)`` in [0, 1] with the shifts a good part sees on a line, all at once, each at
    a random strength up to a plausible limit: brightness x U(0.9, 1.1), a blur of sigma U(0, 0.9) px, a shift
    of up to 2 px, JPEG at quality U(70, 100) (a new lamp, a softer focus, a moved fixture, a camera that
    compresses). Drawing every one each time covers their combinations, which is what a new day looks like."""
    out = image * rng.uniform(0.9, 1.1)
    sigma = rng.uniform(0.0, 0.9)
    if sigma > 0.2:
        out = cv2.GaussianBlur(out, (0, 0), sigma).reshape(image.shape)
    dy, dx = rng.integers(-2, 3, 2)
    if dy or dx:
        m = np.float32([[1, 0, dx], [0, 1, dy]])
        out = cv2.warpAffine(out, m, (image.shape[1], image.shape[0]),
                             borderMode=cv2.BORDER_REFLECT).reshape(image.shape)
    quality = int(rng.integers(70, 101))
    if quality < 98:
        u8 = (np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8)
        ok, buf = cv2.imencode(".jpg", u8, [cv2.IMWRITE_JPEG_QUALITY, quality])
        out = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED).astype(np.float32).reshape(image.shape) / 255.0
    return np.clip(out, 0, 1).astype(np.float32)


def proxy_images(images: np.ndarray, donors: np.ndarray, per_image: int, seed: int
                 ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Held-out good display images ``(N, H, W, C)`` -> (defective ``(N * per_image, H, W, C)``, benign-shifted
    ``(N, H, W, C)``, the defect kind of each defective image). ``donors`` ``(K, H, W, C)``: other good images
    that cut-paste and blend take content from. Kinds cycle through :data:`KINDS`."""
    rng = np.random.default_rng(seed)
    defects, kinds = [], []
    for i, img in enumerate(images):
        for j in range(per_image):
            kind = KINDS[(i * per_image + j) % len(KINDS)]
            donor = donors[int(rng.integers(len(donors)))]
            defects.append(draw_defect(img, donor, kind, rng)[0])
            kinds.append(kind)
    benign = np.stack([benign_shift(img, rng) for img in images])
    return np.stack(defects), benign, kinds


def _channel_stats(mean, std) -> tuple[np.ndarray, np.ndarray]:
    return (np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1),
            np.asarray(std, dtype=np.float32).reshape(1, -1, 1, 1))


def to_display(inputs: np.ndarray, mean, std) -> np.ndarray:
    """Model inputs ``float32 (N, C, H, W)`` (normalised by ``mean`` and ``std``) -> display images
    ``float32 (N, H, W, C)`` in [0, 1], as the functions above take them."""
    m, s = _channel_stats(mean, std)
    return np.clip(inputs * s + m, 0.0, 1.0).astype(np.float32, copy=False).transpose(0, 2, 3, 1)


def to_model_inputs(display: np.ndarray, mean, std) -> np.ndarray:
    """Display images ``(N, H, W, C)`` in [0, 1] -> model inputs ``float32 (N, C, H, W)``: :func:`to_display`
    undone (up to its clipping)."""
    m, s = _channel_stats(mean, std)
    return np.ascontiguousarray((display.transpose(0, 3, 1, 2) - m) / s, dtype=np.float32)


def benign_copies(inputs: np.ndarray, mean, std, copies: int, seed: int) -> np.ndarray:
    """``copies`` benign-shifted copies of each model input ``float32 (N, C, H, W)`` (normalised by ``mean``
    and ``std``): ``(N * copies, C, H, W)``, image ``i``'s copies at rows ``i*copies .. i*copies+copies-1``."""
    rng = np.random.default_rng(seed)
    out = np.stack([benign_shift(img, rng) for img in to_display(inputs, mean, std) for _ in range(copies)])
    return to_model_inputs(out, mean, std)
