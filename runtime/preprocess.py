"""The one implementation of image decoding and preprocessing.

Training calls these same functions, so the numbers a model sees in training and on the line are
the same bytes. Only numpy and OpenCV are used.

Conventions
-----------
* A *decoded* image is a numpy array as stored in the file: ``(H, W)`` grey, ``(H, W, 3)`` BGR or
  ``(H, W, 4)`` BGRA, dtype ``uint8`` or ``uint16`` (OpenCV's channel order).
* A *model input* is ``float32`` ``(C, H, W)`` in the bundle's colour order, resized to the bundle's
  size and normalised as ``(x - mean) / std`` where ``x`` is the pixel value scaled to ``[0, 1]``.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from .image_header import HeaderError, read_header

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

# Decoding more pixels than this is refused before the pixel data is decoded (a 16k x 16k frame).
DEFAULT_MAX_PIXELS = 16384 * 16384

# An image is refused when reaching the model input would enlarge it more than this on either side
# (a 4x4 thumbnail for a 64 px model, a 20 px crop for 224 px): its verdict would say nothing.
MAX_ENLARGEMENT = 8


class ImageError(ValueError):
    """An image that cannot be used; the message says which file, what is wrong and what to do."""


@dataclass(frozen=True)
class InputSpec:
    """What the model expects; stored in the bundle manifest under ``input``.

    Attributes:
        height, width: model input size in pixels.
        channels: 3 (colour, ``color_order``) or 1 (grey).
        color_order: ``"RGB"`` or ``"GRAY"``.
        mean, std: per-channel normalisation applied to pixel values scaled to ``[0, 1]``.
        resize: ``"area"`` when shrinking and ``"linear"`` when enlarging (OpenCV), always.
        alpha: what is done with an alpha channel: ``"drop"``.
    """

    height: int = 224
    width: int = 224
    channels: int = 3
    color_order: str = "RGB"
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    resize: str = "area-down-linear-up"
    alpha: str = "drop"
    layout: str = "NCHW"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"InputSpec.channels must be 1 or 3, got {self.channels}")
        want = "GRAY" if self.channels == 1 else "RGB"
        if self.color_order != want:
            raise ValueError(f"InputSpec.color_order must be {want!r} for {self.channels} channel(s)")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError("InputSpec.mean and .std need one value per channel")
        if min(self.std) <= 0:
            raise ValueError("InputSpec.std values must be positive")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "InputSpec":
        d = dict(d)
        d["mean"], d["std"] = tuple(d["mean"]), tuple(d["std"])
        return cls(**d)


def _describe(source: str | os.PathLike | None) -> str:
    return f"{source}" if source is not None else "<image>"


def decode_image(data: bytes | bytearray | memoryview, source: str | os.PathLike | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode encoded image bytes (PNG, JPEG, BMP, TIFF) into an array as stored.

    Returns ``(H, W)``, ``(H, W, 3)`` BGR or ``(H, W, 4)`` BGRA, ``uint8`` or ``uint16``.
    Raises :class:`ImageError` naming ``source`` for empty, unreadable or unsupported data.

    The format and size are read from the header first (:mod:`.image_header`): bytes of another
    format, a header cut off before the size, or a size over ``max_pixels`` are refused before any
    pixel is decoded. Palette images come out as BGR (BGRA with a transparency chunk), 1-bit images
    as 0/255 grey, CMYK JPEG as BGR; EXIF orientation is not applied (as in training).
    """
    name = _describe(source)
    if len(data) == 0:
        raise ImageError(f"{name}: the file is empty (0 bytes); check the camera or copy step that wrote it")
    try:
        header = read_header(data)
    except HeaderError as exc:
        raise ImageError(f"{name}: not a readable image: {exc}; check the camera or copy step that wrote it, "
                         "or re-export it as PNG or JPEG") from exc
    if header.pixels > max_pixels:
        raise ImageError(f"{name}: the {header.format} header declares {header.width}x{header.height} pixels, over "
                         f"the limit of {max_pixels} (refused before decoding); downscale it, or raise the limit "
                         "(--max-pixels of the command that reads it) if such frames are expected")
    buf = np.frombuffer(data, dtype=np.uint8)
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:      # e.g. OpenCV's own pixel limit (CV_IO_MAX_IMAGE_PIXELS)
        detail = str(exc).strip().splitlines()[-1][:200]
        raise ImageError(f"{name}: OpenCV refused the {header.format} image ({detail}); re-export it as PNG or "
                         "JPEG") from exc
    if img is None:
        raise ImageError(f"{name}: not a readable {header.format} image: {header.width}x{header.height} declared but "
                         f"the pixel data is truncated or damaged ({len(data)} bytes); check the camera or copy step "
                         "that wrote it, or re-export it as PNG or JPEG")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (3, 4)):
        raise ImageError(f"{name}: unsupported image shape {img.shape}; expected grey, BGR or BGRA; "
                         "re-export it as 8-bit grey, RGB or RGBA")
    if img.dtype not in (np.uint8, np.uint16):
        raise ImageError(f"{name}: unsupported pixel type {img.dtype}; expected 8- or 16-bit integer pixels; "
                         "re-export it as 8- or 16-bit PNG")
    if img.shape[0] * img.shape[1] > max_pixels:
        raise ImageError(f"{name}: {img.shape[1]}x{img.shape[0]} pixels is over the limit of {max_pixels}; "
                         "downscale it before inspection")
    return img


def read_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read and decode one image file; see :func:`decode_image`."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ImageError(f"{path}: cannot be read ({exc.strerror or exc}); check the path and permissions") from exc
    return decode_image(data, source=path, max_pixels=max_pixels)


def to_unit_float(img: np.ndarray) -> np.ndarray:
    """Scale ``uint8`` / ``uint16`` pixels to ``float32`` in ``[0, 1]``; same shape."""
    scale = 1.0 / (65535.0 if img.dtype == np.uint16 else 255.0)
    return img.astype(np.float32) * np.float32(scale)


def convert_channels(img: np.ndarray, color_order: str) -> np.ndarray:
    """Convert a decoded image (grey, BGR or BGRA) to ``"RGB"`` ``(H, W, 3)`` or ``"GRAY"`` ``(H, W)``.

    Alpha is dropped; grey is replicated to three channels for colour models; colour is converted to
    grey with OpenCV's BT.601 weights for grey models.
    """
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[:, :, :3]
    if color_order == "RGB":
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB) if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if color_order == "GRAY":
        return img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    raise ValueError(f"unknown color_order {color_order!r}")


def resize_to(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize with area interpolation when shrinking and bilinear when enlarging (never both per axis)."""
    h, w = img.shape[:2]
    if (h, w) == (height, width):
        return img
    interp = cv2.INTER_AREA if height * width <= h * w else cv2.INTER_LINEAR
    return cv2.resize(img, (width, height), interpolation=interp)


def preprocess(img: np.ndarray, spec: InputSpec, out: np.ndarray | None = None,
               source: str | os.PathLike | None = None) -> np.ndarray:
    """Turn a decoded image into the model input ``float32 (C, H, W)`` described by ``spec``.

    Args:
        img: decoded image from :func:`decode_image` (any size, grey/BGR/BGRA, 8 or 16 bit).
        spec: the bundle's input specification.
        out: optional preallocated ``float32 (C, H, W)`` array to write into (e.g. one row of a batch
            buffer that is reused from batch to batch).
        source: the file name to put in error messages.

    Raises :class:`ImageError` when the image is more than :data:`MAX_ENLARGEMENT` times smaller
    than the model input on either side.

    The arithmetic is, per pixel and in float32: ``x = pixel * (1 / 255)`` (``1 / 65535`` for 16 bit),
    resized if the size differs, then ``(x - mean) * (1 / std)``. It is done one channel plane at a
    time, straight into the ``(C, H, W)`` output: numpy's broadcasting over an ``(H, W, 3)`` array
    runs an inner loop of length 3 and was ~15x slower (``bench/results/latency.md``).
    """
    shape = (spec.channels, spec.height, spec.width)
    if out is None:
        out = np.empty(shape, dtype=np.float32)
    elif out.shape != shape or out.dtype != np.float32:
        raise ValueError(f"preprocess: out must be float32 {shape}, got {out.dtype} {out.shape}")
    h, w = img.shape[:2]
    if h * MAX_ENLARGEMENT < spec.height or w * MAX_ENLARGEMENT < spec.width:
        raise ImageError(f"{_describe(source)}: {w}x{h} pixels is far smaller than the model input "
                         f"{spec.width}x{spec.height} (more than {MAX_ENLARGEMENT}x enlargement); check the camera's "
                         "region of interest or crop, or use a bundle trained at a smaller image_size")
    x = convert_channels(img, spec.color_order)
    scale: np.float32 | None = np.float32(1.0 / (65535.0 if x.dtype == np.uint16 else 255.0))
    if x.shape[:2] != (spec.height, spec.width):
        x = resize_to(to_unit_float(x), spec.height, spec.width)
        scale = None
    planes = cv2.split(x) if x.ndim == 3 else [x]
    inv_std = np.float32(1.0) / np.asarray(spec.std, dtype=np.float32)
    for c, plane in enumerate(planes):
        o = out[c]
        if scale is None:
            np.copyto(o, plane)
        else:
            np.multiply(plane, scale, out=o, dtype=np.float32)    # == plane.astype(float32) * scale
        o -= np.float32(spec.mean[c])
        o *= inv_std[c]
    return out


def load_for_model(path: str | os.PathLike, spec: InputSpec, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """``read_image`` then ``preprocess``: ``float32 (C, H, W)``."""
    return preprocess(read_image(path, max_pixels=max_pixels), spec, source=path)


def display_bgr(img: np.ndarray) -> np.ndarray:
    """A decoded image as ``uint8 (H, W, 3)`` BGR for drawing overlays (16-bit is scaled, alpha dropped)."""
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    return np.ascontiguousarray(img[:, :, :3])


__all__ = [
    "IMAGE_EXTENSIONS", "DEFAULT_MAX_PIXELS", "MAX_ENLARGEMENT", "ImageError", "InputSpec", "decode_image", "read_image",
    "to_unit_float", "convert_channels", "resize_to", "preprocess", "load_for_model", "display_bgr",
]

