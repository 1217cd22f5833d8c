"""Built-in demo dataset: real CC0 textures with synthetic defects, in MVTec-AD layout.

The "good" surfaces are the scikit-image sample photos ``brick``, ``gravel`` and ``grass`` (each a
512 x 512 uint8 grey image, CC0). Defects are drawn with the ``defect-synthesis`` package. One
texture becomes one MVTec-style category folder::

    OUT/<texture>/train/good/{left,right}/000.png    crops whose rows lie in [0, 256)   (top half),
                                                     columns in [0, 256) or [256, 512) (one subfolder each)
    OUT/<texture>/validation/good/000.png            more bottom-half crops (other positions): held-out good
                                                     images the threshold is calibrated on, never fitted
    OUT/<texture>/test/good/000.png                  crops whose rows lie in [256, 512) (bottom half)
    OUT/<texture>/test/<defect>/000.png              bottom-half crops with one defect drawn in
    OUT/<texture>/ground_truth/<defect>/000_mask.png uint8 mask in {0, 255}, same size as the image
    OUT/<texture>/dataset.json                       spec, sizes, counts, crop positions, defect metadata

Images are 8-bit PNGs of ``size x size`` pixels (BGR with ``color``, else grey). Train and test crops
come from disjoint row ranges of the texture, so no test pixel was ever seen in training.

The validation crops stand for the good production images a line calibrates its threshold on: they come
from the test region, because these photos are not stationary at this scale (one region of gravel scores
higher than another; see bench/results/accuracy.md), so a threshold calibrated on the training region
would not hold its false-alarm rate there. They are drawn at their own random positions and may overlap
test crops; the density never sees them.

Reproducibility: every file has its own seed derived from ``(spec.seed, texture, split, index)``, so
the same spec gives byte-identical files whatever order or subset of textures is built. defect-synthesis
has no seed argument and draws from the global ``random`` and ``np.random`` generators; they are
seeded before each defect draw and their previous states are restored after a build. (Consequently,
do not build from several threads of one process at the same time.)

Small crops: defect-synthesis sizes are absolute pixels, and pitting and burn fail on images under
~130 px. For ``size < 140`` *every* defect type is therefore drawn on the crop upscaled by the integer
factor ``k = ceil(140 / size)`` (nearest neighbour), then the result is shrunk back with
``cv2.INTER_AREA`` and the mask is re-thresholded at 127 (a pixel is defective if at least half of its
k x k block is). Nearest-neighbour up then area-down returns the original pixels exactly wherever the
generator changed nothing, so defect images carry no global resampling blur. Defects then cover about
the same fraction of a small crop as they would of a ``k * size`` crop. ``dataset.json`` records ``k``
as ``defect_draw_scale``; generator parameters in it (centres, radii) are in those upscaled pixels.

A defect draw is accepted only if its mask is non-empty and the image differs from the plain crop
somewhere inside the mask; otherwise it is redrawn with a new seed (at most ``MAX_ATTEMPTS`` times).
"""
from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import cv2
import numpy as np

TEXTURES = ("brick", "gravel", "grass")
DEFECT_TYPES = ("scratch", "crack", "pitting", "burn", "stain", "warp")
STAIN_TYPES = ("oil", "water", "rust", "chemical")  # stain images cycle through these by index

TEXTURE_SIZE = 512      # the scikit-image textures are 512 x 512 pixels
MIN_SIZE, MAX_SIZE = 32, 256
MIN_DRAW_SIZE = 140     # defects are drawn on an image at least this wide (pitting/burn need ~130 px)
MAX_ATTEMPTS = 20       # draws per defect image before giving up
# Training crops come from two disjoint column halves of the top half, written to one subfolder each:
# linewatch keeps a subfolder's images in one cross-fitting fold, so calibration scores come from
# surface the fold's density never saw (as test images do).
TRAIN_REGIONS = (("left", (0, TEXTURE_SIZE // 2)), ("right", (TEXTURE_SIZE // 2, TEXTURE_SIZE)))
FORMAT_VERSION = 4      # bump when the output for a given spec changes
_VALIDATION_CODE = 100  # seed key of validation crops (0: train, 1: test good, 2..: defect types)

_SEED_PURPOSE_CROP, _SEED_PURPOSE_DEFECT = 0, 1


@dataclass(frozen=True)
class DemoSpec:
    """What to generate for each texture.

    Attributes:
        size: crop height = width in pixels, 32..256 (train and test each have 256 texture rows).
        n_train: number of ``train/good`` crops.
        n_test_good: number of ``test/good`` crops.
        n_validation: number of ``validation/good`` crops (0 = none: calibration is cross-fitted).
        n_test_per_defect: number of ``test/<defect>`` crops for each defect type.
        defect_types: which of ``DEFECT_TYPES`` to generate.
        seed: non-negative integer; the same spec and seed give byte-identical files.
        color: write 3-channel BGR PNGs (the grey texture replicated, defects in their own colours,
            as a colour camera would see rust or burn marks); ``False`` writes single-channel grey.
    """

    size: int = 224
    n_train: int = 200
    n_test_good: int = 40
    n_test_per_defect: int = 10
    n_validation: int = 200
    defect_types: tuple[str, ...] = DEFECT_TYPES
    seed: int = 0
    color: bool = True

    def __post_init__(self) -> None:
        for name in ("size", "n_train", "n_test_good", "n_test_per_defect", "n_validation", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"DemoSpec.{name} must be a non-negative integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        if not MIN_SIZE <= self.size <= MAX_SIZE:
            raise ValueError(
                f"DemoSpec.size must be between {MIN_SIZE} and {MAX_SIZE} pixels, got {self.size}: "
                f"train and test crops come from separate {TEXTURE_SIZE // 2}-row halves of a "
                f"{TEXTURE_SIZE}x{TEXTURE_SIZE} texture")
        if isinstance(self.defect_types, str):
            raise ValueError(f"DemoSpec.defect_types must be a tuple of names, got the string "
                             f"{self.defect_types!r}")
        types = tuple(self.defect_types)
        unknown = [d for d in types if d not in DEFECT_TYPES]
        if unknown:
            raise ValueError(f"unknown defect type(s) {unknown}; choose from {DEFECT_TYPES}")
        if len(set(types)) != len(types):
            raise ValueError(f"DemoSpec.defect_types has duplicates: {types}")
        object.__setattr__(self, "defect_types", types)


def build_texture(texture: str, out_dir: str | Path, spec: DemoSpec = DemoSpec()) -> Path:
    """Write one texture's MVTec-style category folder ``out_dir/<texture>``; returns that folder.

    If the folder exists and its ``dataset.json`` records this exact spec (and all listed files
    exist), it is reused as is. Otherwise the category is built in a hidden sibling folder
    ``out_dir/.<texture>.building-*`` and renamed into place (replacing an older version), so an
    interrupted build never leaves a category that looks complete.
    """
    if texture not in TEXTURES:
        raise ValueError(f"unknown texture {texture!r}; choose from {TEXTURES}")
    if not isinstance(spec, DemoSpec):
        raise TypeError(f"spec must be a DemoSpec, got {type(spec).__name__}")
    out_dir = Path(out_dir)
    final = out_dir / texture
    if _is_current(final, spec):
        return final
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / _hidden_name(texture, "building")
    tmp.mkdir()
    try:
        with _global_rngs_preserved():
            _write_category(texture, tmp, spec)
        _move_into_place(tmp, final, spec)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def build_demo_dataset(out_dir: str | Path, textures: Iterable[str] = TEXTURES,
                       spec: DemoSpec = DemoSpec(),
                       progress: Callable[[str], Any] | None = None) -> dict[str, Path]:
    """Build (or reuse) every texture's category under ``out_dir``; returns texture -> folder.

    ``progress``, if given, is called with one human-readable status line per step.
    """
    textures = (textures,) if isinstance(textures, str) else tuple(textures)
    unknown = [t for t in textures if t not in TEXTURES]
    if unknown:
        raise ValueError(f"unknown texture(s) {unknown}; choose from {TEXTURES}")
    say = progress or (lambda line: None)
    folders = {}
    for texture in textures:
        if _is_current(Path(out_dir) / texture, spec):
            say(f"demo data: {texture}: up to date, reusing {Path(out_dir) / texture}")
        else:
            say(f"demo data: {texture}: building {_count_images(spec)} images of "
                f"{spec.size}x{spec.size} px")
        start = time.perf_counter()
        folders[texture] = build_texture(texture, out_dir, spec)
        say(f"demo data: {texture}: ready in {time.perf_counter() - start:.1f} s -> {folders[texture]}")
    return folders


# --------------------------------------------------------------------------------------------------
# Building one category


def _write_category(texture: str, root: Path, spec: DemoSpec) -> None:
    """Write all images, masks and finally dataset.json of one texture into ``root``."""
    tex = _load_texture(texture)
    half = TEXTURE_SIZE // 2
    train_rows, test_rows = (0, half), (half, TEXTURE_SIZE)
    groups = [("train", "good", spec.n_train, train_rows, 0),
              ("test", "good", spec.n_test_good, test_rows, 1)]
    groups += [("test", d, spec.n_test_per_defect, test_rows, 2 + DEFECT_TYPES.index(d))
               for d in spec.defect_types]
    if spec.n_validation:
        groups.append(("validation", "good", spec.n_validation, test_rows, _VALIDATION_CODE))

    files = []
    for split, label, count, rows, group_code in groups:
        (root / split / label).mkdir(parents=True)
        if label != "good":
            (root / "ground_truth" / label).mkdir(parents=True)
        width = max(3, len(str(count - 1)))
        for i in range(count):
            key = [spec.seed, TEXTURES.index(texture), group_code, i]
            if split == "train":   # alternate between two column halves, one subfolder (group) each
                region = TRAIN_REGIONS[i % len(TRAIN_REGIONS)]
                cols, folder = region[1], f"{split}/{label}/{region[0]}"
            else:
                cols, folder = (0, TEXTURE_SIZE), f"{split}/{label}"
            (root / folder).mkdir(parents=True, exist_ok=True)
            row, col = _crop_origin(key, rows, cols, spec.size)
            crop = tex[row:row + spec.size, col:col + spec.size]
            entry: dict[str, Any] = {"image": f"{folder}/{i:0{width}d}.png", "split": split,
                                     "label": label, "row": row, "col": col}
            image = cv2.cvtColor(crop, cv2.COLOR_GRAY2BGR) if spec.color else crop
            if label != "good":
                image, mask, info = _draw_defect(crop, label, i, key, spec.color)
                entry["mask"] = f"ground_truth/{label}/{i:0{width}d}_mask.png"
                entry["mask_pixels"] = int(np.count_nonzero(mask))
                entry.update(info)
                _write_png(root / entry["mask"], mask)
            _write_png(root / entry["image"], image)
            files.append(entry)

    record = {
        "format_version": FORMAT_VERSION,
        "texture": texture,
        "source": f"skimage.data.{texture}() ({TEXTURE_SIZE}x{TEXTURE_SIZE} uint8 grey photo, CC0)",
        "spec": _spec_record(spec),
        "image": {"height": spec.size, "width": spec.size, "channels": 3 if spec.color else 1, "dtype": "uint8"},
        "train_rows": list(train_rows),
        "test_rows": list(test_rows),
        "defect_draw_scale": _draw_scale(spec.size),
        "counts": {f"{s}/{lbl}": n for s, lbl, n, _, _ in groups},
        "versions": _versions(),
        "files": files,
    }
    (root / "dataset.json").write_text(json.dumps(record, indent=1) + "\n")


def _crop_origin(key: list[int], rows: tuple[int, int], cols: tuple[int, int], size: int) -> tuple[int, int]:
    """Top-left (row, col) in texture pixels of a size x size crop inside rows x cols (half-open ranges)."""
    rng = np.random.default_rng(np.random.SeedSequence(key + [_SEED_PURPOSE_CROP, 0]))
    row = int(rng.integers(rows[0], rows[1] - size + 1))
    col = int(rng.integers(cols[0], cols[1] - size + 1))
    return row, col


def _draw_scale(size: int) -> int:
    """Integer upscale factor k for drawing defects on a size x size crop (1 for size >= 140)."""
    return 1 if size >= MIN_DRAW_SIZE else math.ceil(MIN_DRAW_SIZE / size)


def _draw_defect(crop: np.ndarray, defect: str, index: int, key: list[int],
                 color: bool = False) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Draw one defect on a (S, S) uint8 grey crop.

    Returns the defect image ((S, S, 3) BGR with ``color``, else (S, S) grey; uint8), its
    (S, S) uint8 mask in {0, 255} (non-empty) and
    JSON-ready metadata (attempts used, generator parameters in drawing pixels).
    """
    import defect_synthesis as ds

    size, scale = crop.shape[0], _draw_scale(crop.shape[0])
    big = crop if scale == 1 else cv2.resize(crop, None, fx=scale, fy=scale,
                                             interpolation=cv2.INTER_NEAREST)
    bgr = cv2.cvtColor(big, cv2.COLOR_GRAY2BGR)  # crack, stain and burn crash on 2-D input
    for attempt in range(MAX_ATTEMPTS):
        words = np.random.SeedSequence(key + [_SEED_PURPOSE_DEFECT, attempt]).generate_state(2)
        random.seed(int(words[0]))
        np.random.seed(int(words[1]))
        result = _make_generator(ds, defect, index).apply(bgr)
        image = result.image if color else cv2.cvtColor(result.image, cv2.COLOR_BGR2GRAY)
        mask = result.anomaly_mask
        if scale > 1:
            image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
            mask = cv2.resize(mask, (size, size), interpolation=cv2.INTER_AREA)
        mask = np.where(mask > 127, 255, 0).astype(np.uint8)
        inside = mask > 0
        plain = cv2.cvtColor(crop, cv2.COLOR_GRAY2BGR) if color else crop
        if inside.any() and np.any(image[inside] != plain[inside]):
            return image, mask, {"attempts": attempt + 1, "params": _jsonable(result.metadata)}
    raise RuntimeError(f"defect-synthesis gave no usable {defect!r} defect in {MAX_ATTEMPTS} "
                       f"draws on a {size}x{size} crop (key {key})")


def _make_generator(ds: Any, defect: str, index: int) -> Any:
    """A defect-synthesis generator with its default parameters; stains cycle through STAIN_TYPES."""
    if defect == "stain":
        return ds.StainGenerator(stain_type=STAIN_TYPES[index % len(STAIN_TYPES)])
    return {"scratch": ds.ScratchGenerator, "crack": ds.CrackGenerator,
            "pitting": ds.PittingGenerator, "burn": ds.BurnGenerator,
            "warp": ds.TextureWarpGenerator}[defect]()


def _load_texture(texture: str) -> np.ndarray:
    """The (512, 512) uint8 grey texture photo from scikit-image (bundled with the wheel, offline)."""
    import skimage.data

    image = np.ascontiguousarray(getattr(skimage.data, texture)())
    if image.shape != (TEXTURE_SIZE, TEXTURE_SIZE) or image.dtype != np.uint8:
        raise RuntimeError(f"skimage.data.{texture}() is {image.shape} {image.dtype}; "
                           f"expected ({TEXTURE_SIZE}, {TEXTURE_SIZE}) uint8")
    return image


def _write_png(path: Path, image: np.ndarray) -> None:
    """Write a (H, W) uint8 array as an 8-bit single-channel PNG."""
    if not cv2.imwrite(str(path), image, [cv2.IMWRITE_PNG_COMPRESSION, 3]):
        raise OSError(f"could not write {path}")


# --------------------------------------------------------------------------------------------------
# Reuse and atomic replacement


def _spec_record(spec: DemoSpec) -> dict[str, Any]:
    """The spec as it is stored in (and read back from) dataset.json."""
    return json.loads(json.dumps(asdict(spec)))


def _is_current(folder: Path, spec: DemoSpec) -> bool:
    """True if ``folder`` is a finished category built with exactly this spec, all files present."""
    try:
        record = json.loads((folder / "dataset.json").read_text())
        if record.get("format_version") != FORMAT_VERSION or record.get("spec") != _spec_record(spec):
            return False
        names = [e["image"] for e in record["files"]] + [e["mask"] for e in record["files"] if "mask" in e]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return all((folder / name).is_file() for name in names)


def _move_into_place(tmp: Path, final: Path, spec: DemoSpec) -> None:
    """Rename the finished ``tmp`` folder to ``final``, replacing an existing (outdated) one."""
    stale = None
    if final.exists():
        stale = final.with_name(_hidden_name(final.name, "old"))
        os.rename(final, stale)
    try:
        os.rename(tmp, final)
    except OSError:
        if not _is_current(final, spec):  # not a concurrent build of the same spec that won the race
            raise
    finally:
        if stale is not None:
            shutil.rmtree(stale, ignore_errors=True)


def _hidden_name(texture: str, what: str) -> str:
    """A unique hidden sibling name such as ``.brick.building-1234-1a2b3c4d``."""
    return f".{texture}.{what}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


# --------------------------------------------------------------------------------------------------
# Small helpers


@contextmanager
def _global_rngs_preserved() -> Iterator[None]:
    """Restore the global ``random`` and ``np.random`` states that the defect draws reseed."""
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def _count_images(spec: DemoSpec) -> int:
    return spec.n_train + spec.n_test_good + spec.n_validation + spec.n_test_per_defect * len(spec.defect_types)


def _jsonable(value: Any) -> Any:
    """Generator metadata (tuples, numpy scalars) as plain JSON types."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _versions() -> dict[str, str]:
    import defect_synthesis
    import skimage

    return {"defect_synthesis": defect_synthesis.__version__, "opencv": cv2.__version__,
            "scikit_image": skimage.__version__, "numpy": np.__version__}
