"""Defect drawing for the broad accuracy suite (``bench/suite_data.py``).

Two sources, kept apart from the training code's own synthetic-defect generator on purpose (a benchmark
that drew its defects with the code the product self-configures with would grade its own homework):

- :func:`ds_defect`: the ``defect-synthesis`` package (scratch, crack, pit, stain, burn) behind a seeded
  wrapper. That package has no seed argument and draws from the global ``random`` and ``np.random``;
  the wrapper seeds both from the caller's generator before every draw and restores their previous
  states afterwards. Images narrower than ``MIN_DRAW_SIZE`` are drawn on a nearest-neighbour upscale
  and shrunk back with ``INTER_AREA`` (pit and burn fail below ~130 px); grey images are drawn in BGR
  (crack, stain and burn crash on 2-D input) and converted back.
- own drawers (``own_*``): thin lines, spots, blobs, smudges, cracks and burrs drawn with OpenCV/numpy,
  plus :func:`diff_mask` for *logical* defects (a hole, tooth, word or character that is missing or
  wrong), which the category renders itself with one changed parameter.

Every drawer takes an image ((S, S) grey or (S, S, 3) BGR, uint8) and a ``numpy.random.Generator`` and
returns ``(image, mask, meta)``: the defect image (same shape and dtype), an (S, S) uint8 mask in
{0, 255} and JSON-ready parameters. Sizes given as fractions are fractions of the image side S.
:func:`draw_valid` redraws until the mask is non-empty, of a plausible area and the image changed
inside it.
"""
from __future__ import annotations

import math
import random
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import cv2
import numpy as np

DS_KINDS = ("scratch", "crack", "pit", "stain", "burn")
MIN_DRAW_SIZE = 140      # defect-synthesis pit/burn need images of roughly >= 130 px
MAX_ATTEMPTS = 20
REFERENCE_SIZE = 224     # ds_defect size parameters are given in pixels of a 224 px image
# defect-synthesis parameters that are lengths in pixels and are scaled with the drawing size
_DS_LENGTH_PARAMS = ("radius_range", "length_range", "base_length_range", "spread_radius", "pit_radius_range")

Drawn = tuple[np.ndarray, np.ndarray, dict[str, Any]]


# --------------------------------------------------------------------------------------------------
# defect-synthesis, seeded


@contextmanager
def global_rngs_seeded(words: np.ndarray) -> Iterator[None]:
    """Seed ``random`` and ``np.random`` with two integers; restore their previous states on exit."""
    py_state, np_state = random.getstate(), np.random.get_state()
    random.seed(int(words[0]))
    np.random.seed(int(words[1]))
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def ds_defect(image: np.ndarray, kind: str, rng: np.random.Generator, roi: np.ndarray | None = None,
              min_area: float = 0.001, max_area: float = 0.25, **params: Any) -> Drawn:
    """One defect-synthesis defect of ``kind`` (see ``DS_KINDS``) on ``image``.

    ``roi``: optional (S, S) mask (non-zero = allowed) the generator restricts its defect to.
    ``params``: generator arguments; lengths (``_DS_LENGTH_PARAMS``) are in pixels of a 224 px image
    and scaled to the drawing size. A draw is accepted if its mask covers ``min_area``..``max_area``
    of the image (a scratch clipped to a few pixels of a part is redrawn) and the image changed inside
    it (mean |change| >= 1 grey level).
    """
    import defect_synthesis as ds

    if kind not in DS_KINDS:
        raise ValueError(f"unknown defect-synthesis kind {kind!r}; choose from {DS_KINDS}")
    size = image.shape[0]
    k = 1 if size >= MIN_DRAW_SIZE else math.ceil(MIN_DRAW_SIZE / size)
    big = image if k == 1 else cv2.resize(image, None, fx=k, fy=k, interpolation=cv2.INTER_NEAREST)
    bgr = cv2.cvtColor(big, cv2.COLOR_GRAY2BGR) if big.ndim == 2 else big
    big_roi = None
    if roi is not None:
        big_roi = (roi > 0).astype(np.uint8) * 255
        if k > 1:
            big_roi = cv2.resize(big_roi, None, fx=k, fy=k, interpolation=cv2.INTER_NEAREST)
    scaled = _scale_ds_params(params, size * k / REFERENCE_SIZE)
    cls = {"scratch": ds.ScratchGenerator, "crack": ds.CrackGenerator, "pit": ds.PittingGenerator,
           "stain": ds.StainGenerator, "burn": ds.BurnGenerator}[kind]
    for attempt in range(MAX_ATTEMPTS):
        with global_rngs_seeded(rng.integers(0, 2**32, size=2)):
            result = cls(**scaled).apply(bgr, roi_mask=big_roi)
        out = cv2.cvtColor(result.image, cv2.COLOR_BGR2GRAY) if image.ndim == 2 else result.image
        mask = result.anomaly_mask
        if k > 1:
            out = cv2.resize(out, (size, size), interpolation=cv2.INTER_AREA)
            mask = cv2.resize(mask, (size, size), interpolation=cv2.INTER_AREA)
        mask = np.where(mask > 127, 255, 0).astype(np.uint8)
        if _acceptable(image, out, mask, min_area, max_area, 1.0):
            meta = {"generator": cls.__name__, "params": jsonable(scaled), "draw_scale": k,
                    "attempts": attempt + 1, "result": jsonable(result.metadata)}
            return out, mask, meta
    raise RuntimeError(f"defect-synthesis gave no usable {kind!r} defect in {MAX_ATTEMPTS} draws on a "
                       f"{size}x{size} image; loosen its parameters or the area limits")


def _scale_ds_params(params: dict[str, Any], factor: float) -> dict[str, Any]:
    """Length parameters (ints or (lo, hi) int ranges) multiplied by ``factor``, at least 1 px."""
    out = dict(params)
    for name in _DS_LENGTH_PARAMS:
        if name in out:
            v = out[name]
            out[name] = (tuple(max(1, round(x * factor)) for x in v) if isinstance(v, (tuple, list))
                         else max(1, round(v * factor)))
    return out


# --------------------------------------------------------------------------------------------------
# Acceptance


def draw_valid(fn: Callable[[np.ndarray, np.random.Generator], Drawn], image: np.ndarray,
               rng: np.random.Generator, min_area: float = 0.001, max_area: float = 0.06,
               min_change: float = 1.0) -> Drawn:
    """Call ``fn(image, rng)`` until its mask covers ``min_area``..``max_area`` of the image and the mean
    absolute change inside the mask is >= ``min_change`` grey levels; ``meta["attempts"]`` says how often."""
    for attempt in range(MAX_ATTEMPTS):
        out, mask, meta = fn(image, rng)
        if _acceptable(image, out, mask, min_area, max_area, min_change):
            return out, mask, {**meta, "attempts": attempt + 1}
    raise RuntimeError(f"{getattr(fn, '__name__', fn)} drew no acceptable defect in {MAX_ATTEMPTS} tries "
                       f"on a {image.shape} image (area {min_area}..{max_area}, change >= {min_change})")


def _acceptable(before: np.ndarray, after: np.ndarray, mask: np.ndarray, min_area: float,
                max_area: float, min_change: float) -> bool:
    inside = mask > 0
    area = inside.mean()
    if not (area >= min_area and area <= max_area and inside.any()):
        return False
    change = np.abs(after.astype(np.int16) - before.astype(np.int16))[inside]
    return float(change.mean()) >= min_change


# --------------------------------------------------------------------------------------------------
# Own drawers


def own_line(image: np.ndarray, rng: np.random.Generator, length=(0.3, 0.7), width=(1, 2),
             delta=None, colour=None, opacity=1.0, angle=None, curvature=0.15, blur=0.0,
             roi: np.ndarray | None = None, start=None) -> Drawn:
    """A thin, slightly curved line (quadratic Bezier).

    ``length``: (lo, hi) fraction of S; ``width``: (lo, hi) px; ``delta``: signed grey-level change
    (scalar or (lo, hi) magnitude with random sign) or ``colour`` (BGR or grey) painted at ``opacity``;
    ``angle``: (lo, hi) degrees (image x axis, y down), any if None; ``blur``: Gaussian sigma in px of
    the stroke (soft strokes, e.g. MNIST); ``start``: (x, y) px, else a random point (inside ``roi``).
    """
    size = image.shape[0]
    x0, y0 = start if start is not None else pick_point(rng, image.shape, roi)
    theta = math.radians(rng.uniform(*angle) if angle is not None else rng.uniform(0, 360))
    ell = rng.uniform(*length) * size
    pts = bezier((x0, y0), theta, ell, rng.uniform(-curvature, curvature))
    w = int(rng.integers(width[0], width[1] + 1))
    alpha = polyline_alpha(image.shape[:2], pts, w)
    if blur:
        alpha = cv2.GaussianBlur(alpha, (0, 0), blur)
        alpha = alpha / max(float(alpha.max()), 1e-6)
    d = _signed(rng, delta)
    out = blend(image, alpha, delta=d, colour=colour, opacity=opacity)
    mask = grow(alpha > 0.25, 1)
    return out, mask, {"start": [float(x0), float(y0)], "angle_deg": math.degrees(theta), "length_px": ell,
                       "width_px": w, "delta": d, "colour": jsonable(colour), "opacity": opacity}


def own_spot(image: np.ndarray, rng: np.random.Generator, radius=(0.015, 0.035), delta=None, colour=None,
             opacity=(0.6, 0.9), softness=0.35, roi: np.ndarray | None = None) -> Drawn:
    """A round spot with a soft edge: ``radius`` (lo, hi) fraction of S, edge blur ``softness`` x radius,
    either a grey-level ``delta`` (scalar / signed (lo, hi)) or a ``colour`` at ``opacity`` (lo, hi)."""
    size = image.shape[0]
    x, y = pick_point(rng, image.shape, roi)
    r = rng.uniform(*radius) * size
    disc = np.zeros(image.shape[:2], np.float32)
    cv2.circle(disc, (round(x * 16), round(y * 16)), max(16, round(r * 16)), 1.0, -1, cv2.LINE_AA, shift=4)
    alpha = cv2.GaussianBlur(disc, (0, 0), max(0.5, softness * r))
    alpha = alpha / max(float(alpha.max()), 1e-6)
    a = float(rng.uniform(*opacity))
    d = _signed(rng, delta)
    out = blend(image, alpha, delta=None if d is None else d * a, colour=colour, opacity=a)
    mask = grow(alpha > 0.3, 0)
    return out, mask, {"center": [float(x), float(y)], "radius_px": r, "opacity": a, "delta": d,
                       "colour": jsonable(colour)}


def own_blob(image: np.ndarray, rng: np.random.Generator, radius=(0.02, 0.045), colour=None, delta=None,
             roughness=0.35, texture=6.0, blur=0.7, roi: np.ndarray | None = None, center=None) -> Drawn:
    """An irregular filled blob (foreign matter): a perturbed circle of ``radius`` (lo, hi) fraction of S
    filled with ``colour`` (or shifted by ``delta`` grey levels) plus noise of ``texture`` grey levels."""
    size = image.shape[0]
    x, y = center if center is not None else pick_point(rng, image.shape, roi)
    r = rng.uniform(*radius) * size
    alpha = blob_alpha(image.shape[:2], (x, y), r, roughness, rng, blur)
    noise = rng.normal(0, texture, image.shape[:2]).astype(np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), 1.0) * 2
    d = _signed(rng, delta)
    out = blend(image, alpha, delta=d, colour=colour, opacity=1.0, noise=noise)
    mask = grow(alpha > 0.5, 0)
    return out, mask, {"center": [float(x), float(y)], "radius_px": r, "colour": jsonable(colour), "delta": d}


def own_smudge(image: np.ndarray, rng: np.random.Generator, radius=(0.05, 0.09), streak=(0.03, 0.06),
               darken=(10, 22), roi: np.ndarray | None = None) -> Drawn:
    """Smeared ink: inside a soft ellipse the image is motion-blurred (``streak`` (lo, hi) fraction of S
    along a random direction) and darkened by ``darken`` (lo, hi) grey levels."""
    size = image.shape[0]
    x, y = pick_point(rng, image.shape, roi)
    a, b = rng.uniform(*radius) * size, rng.uniform(*radius) * size * 0.6
    angle = rng.uniform(0, 180)
    ell = np.zeros(image.shape[:2], np.float32)
    cv2.ellipse(ell, (round(x * 16), round(y * 16)), (round(a * 16), round(b * 16)), angle, 0, 360, 1.0, -1,
                cv2.LINE_AA, shift=4)
    alpha = cv2.GaussianBlur(ell, (0, 0), max(1.0, 0.3 * b))
    n = max(3, int(rng.uniform(*streak) * size) | 1)
    kernel = np.zeros((n, n), np.float32)
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    for t in np.linspace(-(n // 2), n // 2, 2 * n):
        kernel[int(round(n // 2 + t * s)), int(round(n // 2 + t * c))] = 1
    smeared = cv2.filter2D(image.astype(np.float32), -1, kernel / kernel.sum(), borderType=cv2.BORDER_REFLECT)
    dark = float(rng.uniform(*darken))
    a3 = alpha[..., None] if image.ndim == 3 else alpha
    out = image.astype(np.float32) * (1 - a3) + (smeared - dark) * a3
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    mask = grow(alpha > 0.35, 0)
    return out, mask, {"center": [float(x), float(y)], "axes_px": [a, b], "angle_deg": angle,
                       "streak_px": n, "darken": dark}


def own_gel(image: np.ndarray, rng: np.random.Generator, radius=(0.012, 0.025), contrast=(5, 10),
            roi: np.ndarray | None = None) -> Drawn:
    """A gel / fish-eye inclusion in film: a bright core of 0.6 x radius inside a darker ring, each
    ``contrast`` (lo, hi) grey levels; ``radius`` (lo, hi) fraction of S; mask = disc of 1.3 x radius."""
    size = image.shape[0]
    x, y = pick_point(rng, image.shape, roi)
    r = max(2.0, rng.uniform(*radius) * size)
    c = float(rng.uniform(*contrast))
    yy, xx = np.mgrid[0:image.shape[0], 0:image.shape[1]].astype(np.float32)
    rho = np.hypot(xx - x, yy - y)
    core = np.clip(0.6 * r - rho + 0.5, 0, 1)
    ring = np.exp(-((rho - r) / (0.25 * r)) ** 2)
    out = blend(image, np.clip(core - ring, -1, 1), delta=c)
    mask = grow(rho <= 1.3 * r, 0)
    return out, mask, {"center": [float(x), float(y)], "radius_px": r, "contrast": c}


def own_crack(image: np.ndarray, rng: np.random.Generator, start, angle_deg: float, length_px: float,
              width=(1, 2), darkness=(0.3, 0.5), roi: np.ndarray | None = None) -> Drawn:
    """A jagged dark crack: a random walk from ``start`` (x, y px) heading ``angle_deg`` for ``length_px``;
    pixels are multiplied by ``darkness`` (lo, hi) under the stroke; mask and stroke clipped to ``roi``."""
    n = max(6, int(length_px / 4))
    theta, (x, y) = math.radians(angle_deg), start
    pts = [(x, y)]
    for _ in range(n):
        theta += rng.uniform(-0.35, 0.35)
        x += math.cos(theta) * length_px / n + rng.uniform(-0.8, 0.8)
        y += math.sin(theta) * length_px / n + rng.uniform(-0.8, 0.8)
        pts.append((x, y))
    w = int(rng.integers(width[0], width[1] + 1))
    alpha = polyline_alpha(image.shape[:2], np.array(pts), w)
    if roi is not None:
        alpha = alpha * (roi > 0)
    k = float(rng.uniform(*darkness))
    a3 = alpha[..., None] if image.ndim == 3 else alpha
    out = np.clip(np.rint(image.astype(np.float32) * (1 - a3 * (1 - k))), 0, 255).astype(np.uint8)
    mask = grow(alpha > 0.25, 1)
    if roi is not None:
        mask = np.where(roi > 0, mask, 0).astype(np.uint8)
    return out, mask, {"start": [float(start[0]), float(start[1])], "angle_deg": angle_deg,
                       "length_px": length_px, "width_px": w, "darkness": k}


def own_burr(image: np.ndarray, rng: np.random.Generator, part_mask: np.ndarray, radius=(0.02, 0.035),
             gain=(0.9, 1.15)) -> Drawn:
    """Excess material on a part's outline: an irregular blob centred just outside a random point of the
    outer contour of ``part_mask`` ((S, S), non-zero = part), in the part's local grey/colour x ``gain``."""
    size = image.shape[0]
    part = (part_mask > 0).astype(np.uint8)
    contours, _ = cv2.findContours(part, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    outline = max(contours, key=len)[:, 0, :].astype(np.float64)
    px, py = outline[rng.integers(len(outline))]
    cy, cx = np.argwhere(part).mean(axis=0)
    normal = np.array([px - cx, py - cy]) / max(1e-6, math.hypot(px - cx, py - cy))
    r = rng.uniform(*radius) * size
    center = (px + normal[0] * 0.5 * r, py + normal[1] * 0.5 * r)
    alpha = blob_alpha(image.shape[:2], center, r, 0.4, rng, 0.6) * (1 - part)
    near = np.zeros_like(part)
    cv2.circle(near, (int(px), int(py)), max(2, int(3 * r)), 1, -1)
    local = image[(near > 0) & (part > 0)]
    colour = np.median(local, axis=0) * rng.uniform(*gain)
    out = blend(image, alpha, colour=np.clip(colour, 0, 255), opacity=1.0,
                noise=cv2.GaussianBlur(rng.normal(0, 5, image.shape[:2]).astype(np.float32), (0, 0), 1.0))
    mask = grow(alpha > 0.5, 0)
    return out, mask, {"contour_point": [float(px), float(py)], "radius_px": r, "colour": jsonable(colour)}


def diff_mask(good: np.ndarray, bad: np.ndarray, threshold: float = 10.0, grow_px: int = 1) -> np.ndarray:
    """Mask of a logical defect: pixels where two renders of the same part/surface differ by more than
    ``threshold`` grey levels (max over channels), closed and grown by ``grow_px``; (S, S) uint8 {0, 255}."""
    d = np.abs(good.astype(np.int16) - bad.astype(np.int16))
    if d.ndim == 3:
        d = d.max(axis=2)
    m = (d > threshold).astype(np.uint8)
    m = cv2.morphologyEx(m, cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8))
    return grow(m > 0, grow_px)


# --------------------------------------------------------------------------------------------------
# Drawing primitives (also used by suite_data's renderers)


def pick_point(rng: np.random.Generator, shape, roi: np.ndarray | None = None, margin: float = 0.1):
    """A random (x, y) pixel position at least ``margin`` x S from the border (and inside ``roi``)."""
    h, w = shape[:2]
    lo_y, hi_y, lo_x, hi_x = int(margin * h), int((1 - margin) * h), int(margin * w), int((1 - margin) * w)
    if roi is not None:
        ys, xs = np.nonzero(roi[lo_y:hi_y, lo_x:hi_x])
        if len(ys):
            i = rng.integers(len(ys))
            return float(xs[i] + lo_x), float(ys[i] + lo_y)
    return float(rng.uniform(lo_x, hi_x)), float(rng.uniform(lo_y, hi_y))


def bezier(start, theta: float, length: float, bend: float, n: int = 32) -> np.ndarray:
    """(n, 2) points of a quadratic Bezier from ``start`` (x, y px) heading ``theta`` (radians) for
    ``length`` px, its control point pushed sideways by ``bend`` x length."""
    p0 = np.asarray(start, np.float64)
    p2 = p0 + length * np.array([math.cos(theta), math.sin(theta)])
    p1 = (p0 + p2) / 2 + bend * length * np.array([-math.sin(theta), math.cos(theta)])
    t = np.linspace(0, 1, n)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2


def polyline_alpha(shape, pts: np.ndarray, width: int) -> np.ndarray:
    """(H, W) float32 coverage in [0, 1] of an anti-aliased open polyline through ``pts`` ((N, 2) x, y px)."""
    canvas = np.zeros(shape, np.uint8)
    cv2.polylines(canvas, [np.round(np.asarray(pts) * 16).astype(np.int32).reshape(-1, 1, 2)], False, 255,
                  thickness=max(1, int(width)), lineType=cv2.LINE_AA, shift=4)
    return canvas.astype(np.float32) / 255.0


def blob_alpha(shape, center, radius: float, roughness: float, rng: np.random.Generator,
               blur: float = 0.7) -> np.ndarray:
    """(H, W) float32 coverage of an irregular blob: a circle whose radius varies smoothly by +-roughness."""
    n = 28
    phase = rng.uniform(0, 2 * np.pi, 3)
    amps = rng.uniform(0, roughness, 3) / 2
    ang = np.linspace(0, 2 * np.pi, n, endpoint=False)
    rad = radius * (1 + sum(a * np.sin((k + 2) * ang + p) for k, (a, p) in enumerate(zip(amps, phase))))
    pts = np.stack([center[0] + rad * np.cos(ang), center[1] + rad * np.sin(ang)], axis=1)
    canvas = np.zeros(shape, np.uint8)
    cv2.fillPoly(canvas, [np.round(pts * 16).astype(np.int32)], 255, cv2.LINE_AA, shift=4)
    alpha = canvas.astype(np.float32) / 255.0
    return cv2.GaussianBlur(alpha, (0, 0), blur) if blur else alpha


def blend(image: np.ndarray, alpha: np.ndarray, delta=None, colour=None, opacity: float = 1.0,
          noise: np.ndarray | None = None) -> np.ndarray:
    """``image`` changed under ``alpha`` ((S, S) in [0, 1]): + ``delta`` grey levels (scalar or per
    channel), or towards ``colour`` (BGR triple, or scalar grey; BGR on a grey image is converted) at
    ``opacity``; ``noise`` ((S, S) grey levels) is added under the alpha too. Returns uint8."""
    img = image.astype(np.float32)
    a = alpha[..., None] if img.ndim == 3 else alpha
    if colour is not None:
        col = np.asarray(colour, np.float32)
        if img.ndim == 2 and col.size == 3:
            col = np.float32(col @ np.array([0.114, 0.587, 0.299], np.float32))
        target = col if noise is None else col + (noise[..., None] if img.ndim == 3 else noise)
        img = img * (1 - a * opacity) + target * a * opacity
    else:
        if delta is not None:
            img = img + a * np.asarray(delta, np.float32)
        if noise is not None:
            img = img + a * (noise[..., None] if img.ndim == 3 else noise)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def grow(mask: np.ndarray, px: int) -> np.ndarray:
    """A boolean/0-1 mask dilated by ``px`` pixels (3x3 steps) as uint8 {0, 255}."""
    m = (np.asarray(mask) > 0).astype(np.uint8)
    if px > 0:
        m = cv2.dilate(m, np.ones((3, 3), np.uint8), iterations=px)
    return m * 255


def _signed(rng: np.random.Generator, delta):
    """A (lo, hi) range -> a value: uniform in it, with a random sign if both ends are positive (a
    magnitude); scalars and per-channel lists pass through."""
    if delta is None:
        return None
    if isinstance(delta, tuple) and len(delta) == 2 and all(np.isscalar(v) for v in delta):
        value = float(rng.uniform(*delta))
        return value * float(rng.choice([-1.0, 1.0])) if min(delta) > 0 else value
    return delta


def jsonable(value: Any) -> Any:
    """Tuples, numpy arrays and numpy scalars as plain JSON types."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value
