"""Hypothesis strategies for image payloads: random bytes, valid encoded images and mutations of them.

Reusable by any test that feeds bytes to linewatch (the decode path, the HTTP endpoint):

    from strategies import image_payloads
    @given(image_payloads())
    def test_x(payload): ...

Every strategy draws ``bytes``. Valid images are small (at most 48x48) so that a test stays fast;
mutations keep their headers often enough to reach the pixel decoders.
"""
from __future__ import annotations

import struct

import cv2
import numpy as np
from hypothesis import strategies as st

FORMATS = (".png", ".jpg", ".bmp", ".tiff")


@st.composite
def valid_images(draw, max_side: int = 48) -> bytes:
    """A small image encoded by OpenCV: grey, BGR or BGRA; 8 or 16 bit (16 only where the format has it)."""
    ext = draw(st.sampled_from(FORMATS))
    h = draw(st.integers(1, max_side))
    w = draw(st.integers(1, max_side))
    channels = draw(st.sampled_from([1, 3] if ext in (".jpg", ".bmp") else [1, 3, 4]))
    dtype = np.uint16 if ext in (".png", ".tiff") and draw(st.booleans()) else np.uint8
    seed = draw(st.integers(0, 2**32 - 1))
    img = np.random.default_rng(seed).integers(0, np.iinfo(dtype).max + 1, (h, w, channels)).astype(dtype)
    ok, buf = cv2.imencode(ext, img[:, :, 0] if channels == 1 else img)
    assert ok
    return buf.tobytes()


@st.composite
def mutated_images(draw, max_side: int = 48) -> bytes:
    """A valid image changed by one to four mutations: bytes flipped or overwritten, cut short,
    bytes inserted or deleted, a slice repeated, a 32-bit field set to a large number, or the
    header's width or height set to 0, 1 or a large number."""
    data = bytearray(draw(valid_images(max_side)))
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        kind = draw(st.sampled_from(["flip", "set", "cut", "insert", "delete", "repeat", "big", "size"]))
        at = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "set":
            data[at] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80]))
        elif kind == "cut":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[at:at + draw(st.integers(1, 16))]
        elif kind == "repeat":
            n = draw(st.integers(1, 64))
            data[at:at] = data[at:at + n]
        elif kind == "size":
            _set_size_field(data, draw(st.sampled_from([0, 1, 0xFFFF, 0x10000, 0x7FFFFFFF, 0xFFFFFFFF])),
                            draw(st.booleans()))
        elif kind == "big" and at + 4 <= len(data):
            data[at:at + 4] = struct.pack(">I", draw(st.sampled_from([0, 1, 0xFFFF, 0x10000, 0x7FFFFFFF,
                                                                      0xFFFFFFFF])))
    return bytes(data)


def _set_size_field(data: bytearray, value: int, height: bool) -> None:
    """Overwrite the width or height in the header (PNG IHDR, JPEG SOF, BMP, TIFF tag 256/257), if found."""
    try:
        if data[:4] == b"\x89PNG":
            struct.pack_into(">I", data, 20 if height else 16, value)
        elif data[:2] == b"\xff\xd8":
            i = data.find(b"\xff\xc0")
            if i > 0:
                struct.pack_into(">H", data, i + (5 if height else 7), value & 0xFFFF)
        elif data[:2] == b"BM":
            struct.pack_into("<I", data, 22 if height else 18, value)
        elif data[:4] in (b"II*\x00", b"MM\x00*"):
            e = "<" if data[:2] == b"II" else ">"
            (ifd,) = struct.unpack_from(e + "I", data, 4)
            (count,) = struct.unpack_from(e + "H", data, ifd)
            for k in range(count):
                at = ifd + 2 + 12 * k
                if struct.unpack_from(e + "H", data, at)[0] == (257 if height else 256):
                    struct.pack_into(e + "HHII", data, at, 257 if height else 256, 4, 1, value)
    except struct.error:
        pass


def random_bytes(max_size: int = 4096) -> st.SearchStrategy[bytes]:
    """Arbitrary bytes, sometimes behind a real image signature so the format-specific code runs."""
    signatures = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"II*\x00", b"MM\x00*", b"II+\x00"]
    return st.builds(lambda sig, rest: sig + rest, st.sampled_from(signatures), st.binary(max_size=max_size))


def image_payloads(max_side: int = 48) -> st.SearchStrategy[bytes]:
    """Random bytes, valid images and mutated images, in about equal shares."""
    return st.one_of(random_bytes(), valid_images(max_side), mutated_images(max_side))
