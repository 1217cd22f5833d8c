"""Reading an image's format and pixel size from its header, without decoding any pixels.

:func:`linewatch.runtime.preprocess.decode_image` uses this to refuse an image that claims too many
pixels *before* OpenCV allocates memory for them (OpenCV has no header-only API). Only the four
formats linewatch accepts are recognised, by their first bytes (not by the file name):

* PNG: the ``IHDR`` chunk, which the PNG standard puts first (bytes 16-24: width, height, big-endian).
* JPEG: the first start-of-frame segment (``SOF0``-``SOF15`` except ``DHT``/``JPG``/``DAC``), found by
  walking the marker segments the way libjpeg does (bytes between segments are skipped up to the
  next ``0xFF``, as libjpeg does with a warning).
* BMP: the DIB header (``BITMAPCOREHEADER``: 16-bit sizes; all later headers: 32-bit, height
  negative for top-down images).
* TIFF and BigTIFF: tags 256 (ImageWidth) and 257 (ImageLength) of the first image file directory,
  the page OpenCV decodes.

Anything else (WebP, GIF, PNM, text, random bytes) is "not a supported image": OpenCV could decode
some of those, but not with a size check first, and the training side never sees them either.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

SUPPORTED = "PNG, JPEG, BMP or TIFF"

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Start-of-frame markers: 0xC0-0xCF except 0xC4 (DHT), 0xC8 (JPG, reserved) and 0xCC (DAC).
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_STANDALONE = frozenset([0x01, *range(0xD0, 0xD8)])       # TEM and RST0-7 carry no length


class HeaderError(ValueError):
    """The header is missing, truncated or unsupported; the message says what (without the file name)."""


@dataclass(frozen=True)
class ImageHeader:
    """``format``: ``"PNG"``, ``"JPEG"``, ``"BMP"`` or ``"TIFF"``; ``width``, ``height`` in pixels."""

    format: str
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def sniff_format(data: bytes | bytearray | memoryview) -> str | None:
    """The format named by the first bytes, or ``None`` when it is none of the supported four."""
    head = bytes(data[:8])
    if head.startswith(_PNG_SIGNATURE):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"BM"):
        return "BMP"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    return None


def read_header(data: bytes | bytearray | memoryview) -> ImageHeader:
    """Format and size from the header of encoded image bytes.

    Raises :class:`HeaderError` when the bytes are not one of the supported formats, when the
    header is cut off before the size, or when the size is zero.
    """
    fmt = sniff_format(data)
    if fmt is None:
        shown = bytes(data[:8]).hex(" ")
        raise HeaderError(f"not a {SUPPORTED} image (it starts with bytes {shown or 'none'})")
    buf = data if isinstance(data, bytes) else bytes(data)
    try:
        width, height = _READERS[fmt](buf)
    except (struct.error, IndexError) as exc:
        raise HeaderError(f"truncated {fmt} file: the header ends before the image size "
                          f"({len(data)} bytes)") from exc
    if width <= 0 or height <= 0:
        raise HeaderError(f"the {fmt} header declares a {width}x{height} image, which has no pixels")
    return ImageHeader(fmt, width, height)


def _png_size(b: bytes) -> tuple[int, int]:
    if b[12:16] != b"IHDR":
        if len(b) < 16:
            raise IndexError("short")
        raise HeaderError("damaged PNG file: the first chunk is not IHDR")
    return struct.unpack(">II", b[16:24])


def _jpeg_size(b: bytes) -> tuple[int, int]:
    i = 2
    n = len(b)
    while True:
        i = b.find(b"\xff", i)                 # bytes before a marker: libjpeg skips them
        if i < 0:
            raise IndexError("no start-of-frame segment")
        while i < n and b[i] == 0xFF:          # fill bytes
            i += 1
        if i >= n:
            raise IndexError("no start-of-frame segment")
        marker = b[i]
        i += 1
        if marker in _JPEG_STANDALONE:
            continue
        if marker in (0xD9, 0xDA):              # EOI or start of scan before any frame header
            raise HeaderError("damaged JPEG file: no frame header (SOF) before the image data")
        (length,) = struct.unpack(">H", b[i:i + 2])
        if marker in _JPEG_SOF:
            height, width = struct.unpack(">HH", b[i + 3:i + 7])
            return width, height
        if length < 2:
            raise HeaderError("damaged JPEG file: a segment length is below 2")
        i += length


def _bmp_size(b: bytes) -> tuple[int, int]:
    (dib,) = struct.unpack("<I", b[14:18])
    if dib == 12:                               # BITMAPCOREHEADER (OS/2 1.x)
        width, height = struct.unpack("<HH", b[18:22])
        return width, height
    width, height = struct.unpack("<ii", b[18:26])
    return width, abs(height)


_TIFF_TYPES = {3: ("H", 2), 4: ("I", 4), 16: ("Q", 8)}         # SHORT, LONG, LONG8 (BigTIFF)


def _tiff_size(b: bytes) -> tuple[int, int]:
    e = "<" if b[:2] == b"II" else ">"
    big = struct.unpack(e + "H", b[2:4])[0] == 43
    if big:
        (ifd,) = struct.unpack(e + "Q", b[8:16])
        (count,) = struct.unpack(e + "Q", b[ifd:ifd + 8])
        first, entry, value_at, value_len = ifd + 8, 20, 12, 8
    else:
        (ifd,) = struct.unpack(e + "I", b[4:8])
        (count,) = struct.unpack(e + "H", b[ifd:ifd + 2])
        first, entry, value_at, value_len = ifd + 2, 12, 8, 4
    size: dict[int, int] = {}
    for k in range(min(count, 4096)):
        at = first + k * entry
        tag, typ = struct.unpack(e + "HH", b[at:at + 4])
        if tag in (256, 257):
            if typ not in _TIFF_TYPES or _TIFF_TYPES[typ][1] > value_len:
                raise HeaderError(f"damaged TIFF file: tag {tag} has type {typ}, not an integer")
            code, nbytes = _TIFF_TYPES[typ]
            (size[tag],) = struct.unpack(e + code, b[at + value_at:at + value_at + nbytes])
            if len(size) == 2:
                return size[256], size[257]
    if len(b) < first + count * entry:
        raise IndexError("short")
    raise HeaderError("damaged TIFF file: the first directory has no ImageWidth/ImageLength")


_READERS = {"PNG": _png_size, "JPEG": _jpeg_size, "BMP": _bmp_size, "TIFF": _tiff_size}

__all__ = ["SUPPORTED", "HeaderError", "ImageHeader", "sniff_format", "read_header"]
