"""Robustness report: bad images and damaged or tampered bundles -> ``bench/results/robustness.md``.

Every case here is also a test (``tests/test_bad_inputs.py``, ``tests/test_bundle_tamper.py`` load
this file), and the tables are written from what the code actually did, so they cannot drift from it:

* **bad images**: each case writes one file into a folder that also holds good images; the folder
  goes through ``linewatch inspect`` (:func:`run_inspection`) with a colour bundle, or with a grey
  one for the colour-for-grey case. The table shows each file's record: its ``error``, or its
  verdict and the documented conversion.
* **bundles**: each case damages a copy of a real bundle (or signs it, or sets a key) and loads it
  with ``Inspector``, as ``linewatch inspect`` does; the table shows the refusal message.

The crash-test and soak sections are filled by hand from other runs; re-running this script
replaces only the sections between its ``<!-- generated: NAME -->`` markers.

    python bench/robustness.py [--out bench/results/robustness.md] [--work DIR]

Without bundles given (``--colour-bundle``, ``--grey-bundle``) it trains two small ones on a 64 px
demo texture first (about a minute on one core).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import struct
import sys
import tempfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np

from linewatch.runtime.bundle import MANIFEST_NAME, Bundle, BundleError, seal_manifest, sha256_file
from linewatch.runtime.inspect_run import read_results, run_inspection
from linewatch.runtime.inspector import Inspector
from linewatch.runtime.preprocess import ImageError, decode_image
from linewatch.runtime.signing import KEY_ENV, SIGNATURE_NAME, write_signature

RESULTS = Path(__file__).resolve().parent / "results"
MAX_PIXELS = 4096 * 4096          # the --max-pixels the bad-image folders are inspected with
KEY = "hex:" + "5a" * 32          # the signing key of the signing cases
OTHER_KEY = "hex:" + "a5" * 32

# ---------------------------------------------------------------------------------------------------
# Bad images


def _rng_image(h: int, w: int, c: int | None = 3, dtype=np.uint8, seed: int = 0) -> np.ndarray:
    shape = (h, w) if c is None else (h, w, c)
    return np.random.default_rng(seed).integers(0, np.iinfo(dtype).max + 1, shape).astype(dtype)


def encode(img: np.ndarray, ext: str = ".png", params: tuple = ()) -> bytes:
    ok, buf = cv2.imencode(ext, img, list(params))
    assert ok, ext
    return buf.tobytes()


def _pil(mode_image, fmt: str = "PNG", **kw) -> bytes:
    b = io.BytesIO()
    mode_image.save(b, fmt, **kw)
    return b.getvalue()


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares ``width x height`` (8-bit RGB) followed by a few bytes of pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + _png_chunk(b"IEND", b""))


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real 16x16 JPEG whose frame header (SOF0) is rewritten to declare ``width x height``."""
    b = bytearray(encode(_rng_image(16, 16), ".jpg"))
    i = b.find(b"\xff\xc0")
    struct.pack_into(">HH", b, i + 5, height, width)
    return bytes(b)


def bmp_claiming(width: int, height: int) -> bytes:
    b = bytearray(encode(_rng_image(8, 8), ".bmp"))
    struct.pack_into("<ii", b, 18, width, height)
    return bytes(b)


def tiff_claiming(width: int, height: int) -> bytes:
    """A real 8x8 TIFF whose first directory's ImageWidth/ImageLength (LONG) are rewritten."""
    b = bytearray(encode(_rng_image(8, 8, None), ".tiff"))
    (ifd,) = struct.unpack("<I", b[4:8])
    (count,) = struct.unpack("<H", b[ifd:ifd + 2])
    for k in range(count):
        at = ifd + 2 + 12 * k
        tag, = struct.unpack("<H", b[at:at + 2])
        if tag in (256, 257):
            struct.pack_into("<HHII", b, at, tag, 4, 1, width if tag == 256 else height)
    return bytes(b)


def flip_byte(data: bytes, at: int) -> bytes:
    b = bytearray(data)
    b[at] ^= 0xFF
    return bytes(b)


def _palette(transparency: bool = False) -> bytes:
    from PIL import Image   # scikit-image depends on Pillow; the runtime itself never uses it
    img = Image.fromarray(_rng_image(64, 64, None) // 4).convert("P")
    return _pil(img, transparency=0) if transparency else _pil(img)


def _pil_mode(mode: str, fmt: str = "PNG") -> bytes:
    from PIL import Image
    if mode == "LA":
        return _pil(Image.fromarray(_rng_image(64, 64, 2), "LA"), fmt)
    if mode == "1":
        return _pil(Image.fromarray(_rng_image(64, 64, None) > 127).convert("1"), fmt)
    return _pil(Image.fromarray(_rng_image(64, 64, 4)).convert(mode) if mode == "CMYK" else
                Image.fromarray(_rng_image(64, 64, None).astype(np.int32)), fmt)


_PNG = encode(_rng_image(64, 64))
_JPEG = encode(_rng_image(64, 64), ".jpg", (cv2.IMWRITE_JPEG_QUALITY, 90))


@dataclass(frozen=True)
class ImageCase:
    """One input: ``make()`` -> the file's bytes, written as ``name``.

    ``expect`` is ``"error"`` (the record's error must contain the file name and every one of
    ``words``) or ``"verdict"`` (a score; ``conversion`` says what was done to the pixels).
    ``model`` is the bundle it goes to: ``"colour"`` or ``"grey"``.
    """

    name: str
    what: str
    make: Callable[[], bytes]
    expect: str
    words: tuple[str, ...] = ()
    conversion: str = ""
    model: str = "colour"


_WHAT_TO_DO = ("re-export", "check the camera", "downscale")


def _cuts(kind: str, data: bytes, points: dict[str, int]) -> list[ImageCase]:
    return [ImageCase(f"truncated_{kind.lower()}_{label}.{'png' if kind == 'PNG' else 'jpg'}",
                      f"{kind} cut after {n} of {len(data)} bytes ({label})", (lambda n=n: data[:n]), "error",
                      ("not a readable",))
            for label, n in points.items()]


BAD_IMAGES: list[ImageCase] = [
    ImageCase("empty.png", "empty file (0 bytes)", lambda: b"", "error", ("empty", "check the camera")),
    *_cuts("PNG", _PNG, {"signature": 8, "in_ihdr": 20, "header_only": 33, "half": len(_PNG) // 2,
                         "no_iend": len(_PNG) - 12, "last_byte": len(_PNG) - 1}),
    *_cuts("JPEG", _JPEG, {"soi": 3, "before_sof": 100, "half": len(_JPEG) // 2, "no_eoi": len(_JPEG) - 2}),
    ImageCase("random.png", "4 kB of random bytes named .png",
              lambda: np.random.default_rng(1).integers(0, 256, 4096).astype(np.uint8).tobytes(), "error",
              ("not a PNG, JPEG, BMP or TIFF", "re-export")),
    ImageCase("html.jpg", "an HTML error page saved as .jpg", lambda: b"<html><body>404 Not Found</body></html>",
              "error", ("not a PNG, JPEG, BMP or TIFF",)),
    ImageCase("webp.png", "a WebP image named .png (OpenCV could decode it)",
              lambda: encode(_rng_image(64, 64), ".webp"), "error", ("not a PNG, JPEG, BMP or TIFF",)),
    ImageCase("huge_png.png", "PNG header claiming 100000x100000", lambda: png_claiming(100_000, 100_000), "error",
              ("header declares 100000x100000", "refused before decoding")),
    ImageCase("huge_jpeg.jpg", "JPEG frame header claiming 60000x60000", lambda: jpeg_claiming(60_000, 60_000),
              "error", ("header declares 60000x60000", "refused before decoding")),
    ImageCase("huge_bmp.bmp", "BMP header claiming 100000x100000", lambda: bmp_claiming(100_000, 100_000), "error",
              ("header declares 100000x100000", "refused before decoding")),
    ImageCase("huge_tiff.tif", "TIFF directory claiming 100000x100000", lambda: tiff_claiming(100_000, 100_000),
              "error", ("header declares 100000x100000", "refused before decoding")),
    ImageCase("over_limit.png", f"a valid 4200x4200 grey PNG, over --max-pixels {MAX_PIXELS}",
              lambda: encode(np.zeros((4200, 4200), np.uint8)), "error",
              ("header declares 4200x4200", "--max-pixels")),
    ImageCase("zero_width.png", "PNG header declaring 0x64", lambda: png_claiming(0, 64), "error", ("no pixels",)),
    ImageCase("flipped_idat.png", "PNG with one byte of compressed pixel data flipped (CRC fails)",
              lambda: flip_byte(_PNG, len(_PNG) // 2), "error", ("truncated or damaged",)),
    ImageCase("float32.tif", "32-bit float TIFF", lambda: encode(np.random.default_rng(2).random((64, 64), np.float32),
                                                                 ".tiff"), "error", ("unsupported pixel type float32",)),
    ImageCase("int32.tif", "32-bit integer TIFF", lambda: _pil_mode("I", "TIFF"), "error",
              ("unsupported pixel type int32",)),
    ImageCase("tiny_4x4.png", "4x4 image for a 64x64 model", lambda: encode(_rng_image(4, 4)), "error",
              ("far smaller than the model input", "region of interest")),
    # Accepted, with a documented conversion:
    ImageCase("small_8x8.png", "8x8 image for a 64x64 model (the 8x limit)", lambda: encode(_rng_image(8, 8)),
              "verdict", conversion="enlarged bilinearly to 64x64 (at most 8x per side is accepted)"),
    ImageCase("wide_256x32.png", "256x32 image (other aspect ratio)", lambda: encode(_rng_image(32, 256)),
              "verdict", conversion="resized to 64x64 without keeping the aspect ratio (area down, bilinear up)"),
    ImageCase("gray16.png", "16-bit grey PNG", lambda: encode(_rng_image(64, 64, None, np.uint16)), "verdict",
              conversion="16-bit scaled by 1/65535; grey replicated to R, G, B"),
    ImageCase("rgb16.png", "16-bit RGB PNG", lambda: encode(_rng_image(64, 64, 3, np.uint16)), "verdict",
              conversion="16-bit scaled by 1/65535"),
    ImageCase("rgb16.tif", "16-bit RGB TIFF", lambda: encode(_rng_image(64, 64, 3, np.uint16), ".tiff"), "verdict",
              conversion="16-bit scaled by 1/65535"),
    ImageCase("rgba.png", "8-bit RGBA PNG", lambda: encode(_rng_image(64, 64, 4)), "verdict",
              conversion="alpha dropped (not composited)"),
    ImageCase("rgba16.png", "16-bit RGBA PNG", lambda: encode(_rng_image(64, 64, 4, np.uint16)), "verdict",
              conversion="alpha dropped; 16-bit scaled by 1/65535"),
    ImageCase("grey_alpha.png", "grey + alpha PNG", lambda: _pil_mode("LA"), "verdict",
              conversion="OpenCV decodes it as BGRA; alpha dropped"),
    ImageCase("palette.png", "palette PNG", lambda: _palette(), "verdict",
              conversion="OpenCV expands the palette to BGR"),
    ImageCase("palette_trns.png", "palette PNG with a transparent entry", lambda: _palette(True), "verdict",
              conversion="OpenCV expands the palette to BGRA; alpha dropped"),
    ImageCase("bilevel.png", "1-bit PNG", lambda: _pil_mode("1"), "verdict",
              conversion="OpenCV expands it to 0/255 grey; replicated to R, G, B"),
    ImageCase("cmyk.jpg", "CMYK JPEG", lambda: _pil_mode("CMYK", "JPEG"), "verdict",
              conversion="libjpeg converts CMYK to BGR"),
    ImageCase("trailing_garbage.jpg", "JPEG with 1 kB of junk after its end marker",
              lambda: _JPEG + b"\0junk" * 200, "verdict", conversion="bytes after the end-of-image marker are ignored"),
    ImageCase("grey_for_colour.png", "grey image for a colour model", lambda: encode(_rng_image(64, 64, None)),
              "verdict", conversion="grey replicated to R, G, B"),
    ImageCase("colour_for_grey.png", "colour image for a grey model", lambda: encode(_rng_image(64, 64)),
              "verdict", conversion="BT.601 luma (OpenCV COLOR_BGR2GRAY)", model="grey"),
]


@dataclass
class ImageOutcome:
    case: ImageCase
    record: dict
    decoded: str          # shape and dtype OpenCV gave, or "-"


def _decoded(data: bytes) -> str:
    try:
        img = decode_image(data, max_pixels=MAX_PIXELS)
    except ImageError:
        return "-"
    return f"{tuple(img.shape)} {img.dtype}"


def inspect_bad_images(colour_bundle: Path, grey_bundle: Path, good: dict[str, list[Path]], work: Path,
                       workers: int = 1) -> tuple[list[ImageOutcome], dict[str, dict]]:
    """Write every case next to ``good[model]`` images in ``work/<model>/images`` and inspect each folder.

    Returns the outcomes in case order and each folder's run summary plus its good images' records.
    """
    outcomes: dict[str, ImageOutcome] = {}
    runs: dict[str, dict] = {}
    for model, bundle in (("colour", colour_bundle), ("grey", grey_bundle)):
        folder = work / model / "images"
        if folder.parent.exists():
            shutil.rmtree(folder.parent)
        folder.mkdir(parents=True)
        goods = []
        for i, p in enumerate(good[model]):
            goods.append(folder / f"good_{i:02d}{p.suffix}")
            shutil.copyfile(p, goods[-1])
        cases = [c for c in BAD_IMAGES if c.model == model]
        for c in cases:
            (folder / c.name).write_bytes(c.make())
        inspector = Inspector(bundle, threads=1, max_pixels=MAX_PIXELS)
        summary = run_inspection(inspector, str(folder), work / model / "out", batch_size=4, workers=workers)
        records = {r["source"]: r for r in read_results(summary.results)}
        for c in cases:
            outcomes[c.name] = ImageOutcome(c, records.get(str(folder / c.name), {}), _decoded((folder / c.name).read_bytes()))
        runs[model] = {"summary": summary.to_dict(), "good": [records.get(str(g), {}) for g in goods],
                       "n_records": len(records), "n_files": len(goods) + len(cases), "folder": str(folder)}
    return [outcomes[c.name] for c in BAD_IMAGES], runs


# ---------------------------------------------------------------------------------------------------
# Damaged and tampered bundles


def _edit_manifest(path: Path, edit: Callable[[dict], None], reseal: bool = True) -> None:
    m = json.loads((path / MANIFEST_NAME).read_text())
    edit(m)
    (path / MANIFEST_NAME).write_text(json.dumps(m, indent=2))
    if reseal:
        seal_manifest(path)


def _flip_in(name: str) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        f = path / name
        f.write_bytes(flip_byte(f.read_bytes(), f.stat().st_size // 2))
    return damage


def _flip_threshold_digit(path: Path) -> None:
    """Change one digit of the threshold in manifest.json: still valid JSON, still a valid manifest."""
    raw = (path / MANIFEST_NAME).read_bytes()
    m = re.search(rb'"threshold": -?\d+\.(\d)', raw)
    at = m.start(1)
    digit = raw[at:at + 1]
    (path / MANIFEST_NAME).write_bytes(raw[:at] + (b"1" if digit != b"1" else b"2") + raw[at + 1:])


def _swap_graph(path: Path) -> None:
    """Replace model.onnx by another valid graph (the same graph with another producer name) and update
    its checksum and the manifest digest, as someone who knows the format would."""
    onnx_path = path / "model.onnx"
    data = onnx_path.read_bytes()
    assert b"pytorch" in data, "expected a graph exported by torch (producer name 'pytorch')"
    onnx_path.write_bytes(data.replace(b"pytorch", b"pytorcx", 1))
    _edit_manifest(path, lambda m: m["files"]["model.onnx"].update(
        sha256=sha256_file(onnx_path), bytes=onnx_path.stat().st_size))


def _swap_density(path: Path) -> None:
    """Rewrite density.bin with another bank of the same size (every parameter halved) and update its
    checksum and the manifest digest: the graph is unchanged, the detector is not."""
    f = path / "density.bin"
    f.write_bytes((np.frombuffer(f.read_bytes(), dtype="<f4") * np.float32(0.5)).astype("<f4").tobytes())
    _edit_manifest(path, lambda m: m["files"]["density.bin"].update(sha256=sha256_file(f), bytes=f.stat().st_size))


def _sign(key: str) -> Callable[[Path], None]:
    def sign(path: Path) -> None:
        write_signature(path, key_bytes(key))
    return sign


def key_bytes(key: str) -> bytes:
    return bytes.fromhex(key[4:]) if key.startswith("hex:") else key.encode()


def _then(*steps: Callable[[Path], None]) -> Callable[[Path], None]:
    def run(path: Path) -> None:
        for s in steps:
            s(path)
    return run


@dataclass(frozen=True)
class BundleCase:
    """``damage(copy)`` changes a copy of a good bundle; it is then loaded with ``env`` set.

    ``words``: what the refusal must say (``expect="refused"``); ``expect="loads"``: it must load
    (``signature`` is then the expected :attr:`Bundle.signature`).
    """

    name: str
    damage: Callable[[Path], None]
    words: tuple[str, ...] = ()
    env: dict = field(default_factory=dict)
    expect: str = "refused"
    signature: str = ""


def bundle_cases(files: list[str]) -> list[BundleCase]:
    """The cases for a bundle whose manifest lists ``files``."""
    cases = [BundleCase(f"one byte flipped in {name}", _flip_in(name), (name, "checksum mismatch", "copy the bundle"))
             for name in files]
    cases += [
        BundleCase("one byte flipped in manifest.json (a threshold digit: still valid JSON)", _flip_threshold_digit,
                   ("manifest.json", "checksum mismatch with manifest.sha256", "copy the bundle")),
        BundleCase("one byte flipped in manifest.json (breaks the JSON)", _flip_in(MANIFEST_NAME),
                   ("manifest.json", "copy")),
        BundleCase("manifest.sha256 damaged", lambda p: (p / "manifest.sha256").write_text("0" * 64),
                   ("checksum mismatch with manifest.sha256",)),
        BundleCase("model.onnx deleted", lambda p: (p / "model.onnx").unlink(), ("'model.onnx'", "missing",
                                                                                 "copy the whole bundle")),
        BundleCase("manifest.json deleted", lambda p: (p / MANIFEST_NAME).unlink(), ("manifest.json is missing",)),
        BundleCase("manifest of a newer schema (schema_version + 1)",
                   lambda p: _edit_manifest(p, lambda m: m.update(schema_version=m["schema_version"] + 1)),
                   ("newer than this linewatch understands", "upgrade linewatch")),
        BundleCase("made by another linewatch major version (99.0.0)",
                   lambda p: _edit_manifest(p, lambda m: m.update(linewatch_version="99.0.0")),
                   ("major versions differ", "re-export the bundle")),
        BundleCase("manifest input name differs from the graph's ('pixels')",
                   lambda p: _edit_manifest(p, lambda m: m["model"].update(input_name="pixels")),
                   ("model.onnx", "graph inputs ['image'] do not match", "'pixels'", "re-export")),
        BundleCase("manifest input size differs from the graph's (96x96)",
                   lambda p: _edit_manifest(p, lambda m: m["input"].update(height=96, width=96)),
                   ("model.onnx", "graph input shape", "does not match", "re-export")),
        BundleCase("manifest input channels differ from the graph's (grey)",
                   lambda p: _edit_manifest(p, lambda m: m["input"].update(channels=1, color_order="GRAY", mean=[0.5],
                                                                           std=[0.5])),
                   ("model.onnx", "graph input shape", "does not match")),
        BundleCase("manifest score output name not in the graph",
                   lambda p: _edit_manifest(p, lambda m: m["model"].update(score_output="verdict")),
                   ("model.onnx", "lack ['verdict']", "re-export")),
        BundleCase("a listed file name leaves the bundle folder ('../model.onnx')",
                   lambda p: _edit_manifest(p, lambda m: m["files"].update({"../model.onnx": {"sha256": "0", "bytes": 0}})),
                   ("'../model.onnx'", "outside the bundle folder")),
        BundleCase("model.onnx swapped for another graph, checksums updated (no key set)", _swap_graph,
                   expect="loads", signature="none"),
        # Signing (LINEWATCH_BUNDLE_KEY)
        BundleCase("signed, key set: verified", _sign(KEY), env={KEY_ENV: KEY}, expect="loads", signature="verified"),
        BundleCase("signed, no key set: loads, signature not checked", _sign(KEY), expect="loads",
                   signature="present, not checked (LINEWATCH_BUNDLE_KEY is not set)"),
        BundleCase("unsigned, key set", lambda p: None, ("not signed", SIGNATURE_NAME, "linewatch sign"),
                   env={KEY_ENV: KEY}),
        BundleCase("signed with another key", _sign(OTHER_KEY), ("signature does not match", "another key"),
                   env={KEY_ENV: KEY}),
        BundleCase("signed, then model.onnx swapped and checksums updated", _then(_sign(KEY), _swap_graph),
                   ("signature does not match", "changed after signing"), env={KEY_ENV: KEY}),
        BundleCase("signed, then a threshold digit changed and manifest.sha256 updated",
                   _then(_sign(KEY), _flip_threshold_digit, seal_manifest), ("signature does not match",),
                   env={KEY_ENV: KEY}),
        BundleCase("signed, then manifest.sig damaged", _then(_sign(KEY), _flip_in(SIGNATURE_NAME)),
                   ("signature does not match",), env={KEY_ENV: KEY}),
        BundleCase("key set but too short", lambda p: None, (KEY_ENV, "fewer than 16"), env={KEY_ENV: "short"}),
        BundleCase("key set but empty", lambda p: None, (KEY_ENV, "0 bytes"), env={KEY_ENV: ""}),
        BundleCase("key 'hex:' with non-hex digits", _sign(KEY), (KEY_ENV, "not hex digits"),
                   env={KEY_ENV: "hex:zz" + "0" * 40}),
    ]
    if "density.bin" in files:
        cases += [BundleCase("density.bin swapped for another bank, checksums updated (no key set)", _swap_density,
                             expect="loads", signature="none"),
                  BundleCase("signed, then density.bin swapped and checksums updated", _then(_sign(KEY), _swap_density),
                             ("signature does not match",), env={KEY_ENV: KEY})]
    return cases


@contextmanager
def environment(env: dict) -> Iterator[None]:
    """Set ``env`` (and unset the signing key unless ``env`` sets it) for the duration."""
    saved = {k: os.environ.get(k) for k in (*env, KEY_ENV)}
    os.environ.pop(KEY_ENV, None)
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@dataclass
class BundleOutcome:
    case: BundleCase
    refused: bool
    message: str          # the BundleError's text, or the signature status when it loaded


def try_bundle_case(case: BundleCase, bundle: Path, work: Path) -> BundleOutcome:
    """Copy ``bundle`` to ``work``, apply the case and load it with ``Inspector`` (as ``linewatch inspect``)."""
    copy = work / "bundle"
    if copy.exists():
        shutil.rmtree(copy)
    shutil.copytree(bundle, copy)
    with environment({}):               # damage is done without a key in the environment
        case.damage(copy)
    with environment(case.env):
        try:
            inspector = Inspector(copy, threads=1)
        except BundleError as exc:
            return BundleOutcome(case, True, str(exc))
    return BundleOutcome(case, False, inspector.bundle.signature)


def tamper_bundles(bundle: Path, work: Path) -> list[BundleOutcome]:
    files = sorted(Bundle.load(bundle, check_signature=False).manifest.files)
    return [try_bundle_case(c, bundle, work) for c in bundle_cases(files)]


# ---------------------------------------------------------------------------------------------------
# The report


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _short(message: str, folder: str) -> str:
    return message.replace(folder + os.sep, "").replace(folder, "DIR")


def image_table(outcomes: list[ImageOutcome], runs: dict[str, dict]) -> str:
    lines = [f"Each file below sits in one folder with good images, inspected with `--max-pixels {MAX_PIXELS}` by a "
             "colour bundle (Lite0, 64x64 input) or a grey one (conv_ae, 32x32). Messages are the records' `error` "
             "with the folder name removed. The accepted inputs are random noise, so \"flagged\" is the expected "
             "verdict; what matters is that they are scored, after the stated conversion.", "",
             "| file | input | model | decoded as | outcome | error, or the documented conversion |",
             "|---|---|---|---|---|---|"]
    for o in outcomes:
        r, c = o.record, o.case
        folder = runs[c.model]["folder"]
        if not r:
            outcome, text = "**no record**", ""
        elif r.get("error"):
            outcome, text = "error", _short(r["error"], folder)
        else:
            outcome = f"verdict (score {r['score']:.2f}, {'flagged' if r['anomalous'] else 'good'})"
            text = c.conversion
        lines.append(f"| `{c.name}` | {_cell(c.what)} | {c.model} | {_cell(o.decoded)} | {outcome} | {_cell(text)} |")
    lines.append("")
    for model, run in runs.items():
        s = run["summary"]
        good_ok = sum(1 for g in run["good"] if g.get("score") is not None)
        lines.append(f"- {model} bundle: {run['n_files']} files ({len(run['good'])} good images) -> "
                     f"{run['n_records']} records; summary: inspected {s['inspected']}, errors {s['errors']}, "
                     f"flagged {s['flagged']}; good images scored: {good_ok}/{len(run['good'])}.")
    return "\n".join(lines)


def bundle_table(outcomes: list[BundleOutcome], folder: str) -> str:
    lines = ["Each case damages a copy of the colour bundle, then loads it as `linewatch inspect` does "
             f"(`Inspector`). \"key set\" is `{KEY_ENV}` at load time. Without a key, someone who rewrites the "
             "checksums can swap the graph or the density bank (the rows that load with status `none`); with a key, "
             "every such change is refused.", "",
             "| case | key set | outcome | message (refusal) or signature status (loaded) |", "|---|---|---|---|"]
    for o in outcomes:
        env = o.case.env.get(KEY_ENV)
        key = "-" if env is None else ("yes" if env == KEY else f"`{env[:12]}...`" if len(env) > 12 else f"`{env!r}`")
        outcome = "refused" if o.refused else "loads"
        lines.append(f"| {_cell(o.case.name)} | {key} | {outcome} | {_cell(_short(o.message, folder))} |")
    return "\n".join(lines)


SKELETON = """# Robustness: bad input, broken bundles, crashes and load

Issue 8. What linewatch does with inputs and bundles that are wrong, and that it keeps working and
loses nothing. The tables between `generated` markers are written by `bench/robustness.py`
(`make bench-robustness`) from what the code did; every row is also a test
(`tests/test_bad_inputs.py`, `tests/test_bundle_tamper.py`) that fails if the behaviour changes.

## Bad images

<!-- generated: bad-images -->
<!-- end generated -->

## Bundle damage and tampering

<!-- generated: bundles -->
<!-- end generated -->

## Crash tests

Filled in from the crash-test runs (SIGKILL at random moments, then a re-run; counts of records
lost, duplicated and torn).

### `linewatch inspect` killed with SIGKILL

_To be filled._

### `adapt` killed with SIGKILL

_To be filled._

### `retrain` killed with SIGKILL

_To be filled._

## Soak

_To be filled: hours run, images, throughput over time, resident memory over time, file handles,
errors._
"""


def replace_section(text: str, name: str, body: str) -> str:
    start, end = f"<!-- generated: {name} -->", "<!-- end generated -->"
    i = text.index(start) + len(start)
    j = text.index(end, i)
    return text[:i] + "\n" + body.strip() + "\n" + text[j:]


def render(previous: str | None, images: str, bundles: str) -> str:
    text = previous if previous and "<!-- generated: bundles -->" in previous else SKELETON
    return replace_section(replace_section(text, "bad-images", images), "bundles", bundles)


def _train_bundles(work: Path) -> tuple[Path, Path, Path]:
    from linewatch.jobs.train import run_train
    from linewatch.training.config import config_from_dict
    from linewatch.training.demo_data import DemoSpec, build_texture

    data = build_texture("brick", work / "data", DemoSpec(size=64, n_train=24, n_test_good=8, n_test_per_defect=3,
                                                          n_validation=12))
    small = {"density": {"bank_size": 256, "max_candidates": 4000, "folds": 2}, "export": {"parity_images": 8},
             "threads": 1}
    colour, grey = work / "colour_bundle", work / "grey_bundle"
    if not (colour / MANIFEST_NAME).is_file():
        print("training the colour bundle (Lite0, 64 px)", file=sys.stderr)
        run_train(data, colour, config_from_dict({**small, "model": {"image_size": 64}}), overwrite=True)
    if not (grey / MANIFEST_NAME).is_file():
        print("training the grey bundle (conv_ae, 32 px)", file=sys.stderr)
        run_train(data, grey, config_from_dict({**small, "model": {"backbone": "conv_ae", "image_size": 32,
                                                                    "channels": 1, "feature_strides": [2, 4]},
                                                "conv_ae": {"epochs": 3}}), overwrite=True)
    return data, colour, grey


def good_images(data: Path, n: int = 4) -> list[Path]:
    return sorted((data / "test" / "good").glob("*.png"))[:n]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(RESULTS / "robustness.md"))
    ap.add_argument("--work", help="working folder (default: a temporary one, removed afterwards)")
    ap.add_argument("--colour-bundle", help="a colour bundle with 64x64 input (default: train one)")
    ap.add_argument("--grey-bundle", help="a grey bundle (default: train one)")
    ap.add_argument("--good", nargs="+", help="good images for the colour bundle (default: the demo texture's)")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    tmp = None if args.work else tempfile.mkdtemp(prefix="linewatch-robustness-")
    work = Path(args.work or tmp)
    work.mkdir(parents=True, exist_ok=True)
    try:
        if args.colour_bundle and args.grey_bundle and args.good:
            colour, grey, goods = Path(args.colour_bundle), Path(args.grey_bundle), [Path(p) for p in args.good]
        else:
            data, colour, grey = _train_bundles(work)
            goods = good_images(data)
        print("inspecting the bad images", file=sys.stderr)
        images, runs = inspect_bad_images(colour, grey, {"colour": goods, "grey": goods}, work / "images")
        print("damaging bundles", file=sys.stderr)
        bundles = tamper_bundles(colour, work / "tamper")
        out = Path(args.out)
        previous = out.read_text() if out.is_file() else None
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(render(previous, image_table(images, runs), bundle_table(bundles, str(work / "tamper" / "bundle"))))
        print(f"wrote {out}", file=sys.stderr)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
