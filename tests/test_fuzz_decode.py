"""Property tests: any bytes into decode + preprocess give a model input or an ImageError, nothing else."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from strategies import image_payloads, mutated_images, valid_images

from linewatch.runtime.image_header import HeaderError, read_header
from linewatch.runtime.preprocess import ImageError, InputSpec, decode_image, preprocess

RGB = InputSpec(32, 32, 3, "RGB", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
GRAY = InputSpec(16, 16, 1, "GRAY", (0.5,), (0.5,))
MAX_PIXELS = 1 << 20           # a mutated header may claim gigapixels; the limit is what stops them
# Per example: far above a decode of these small payloads (milliseconds), so it only fails on a decode that
# runs away (a header claiming gigapixels that slipped past the limit), not on a busy 2-core CI machine.
DEADLINE_MS = 10_000
FUZZ = settings(max_examples=200, deadline=DEADLINE_MS, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def decode_and_preprocess(payload: bytes) -> list[np.ndarray] | None:
    """None when refused with an ImageError (which must name the source); any other exception fails."""
    try:
        img = decode_image(payload, source="cam/fuzz.png", max_pixels=MAX_PIXELS)
        return [preprocess(img, spec, source="cam/fuzz.png") for spec in (RGB, GRAY)]
    except ImageError as exc:
        assert str(exc).startswith("cam/fuzz.png: ")
        return None


def check_model_inputs(xs: list[np.ndarray]) -> None:
    for x, spec in zip(xs, (RGB, GRAY)):
        assert x.shape == (spec.channels, spec.height, spec.width) and x.dtype == np.float32
        assert np.isfinite(x).all()
        lo = (0 - max(spec.mean)) / min(spec.std)
        hi = (1 - min(spec.mean)) / min(spec.std)
        assert lo - 1e-4 <= x.min() and x.max() <= hi + 1e-4


@FUZZ
@given(image_payloads())
def test_any_bytes_give_a_model_input_or_an_image_error(payload):
    xs = decode_and_preprocess(payload)
    if xs is not None:
        check_model_inputs(xs)


@FUZZ
@given(mutated_images())
def test_mutated_images_never_escape_as_another_exception(payload):
    xs = decode_and_preprocess(payload)
    if xs is not None:
        check_model_inputs(xs)


@settings(max_examples=60, deadline=DEADLINE_MS, database=None)
@given(valid_images(max_side=48))
def test_valid_images_decode_to_their_header_size(payload):
    header = read_header(payload)
    img = decode_image(payload, source="ok.png")
    assert img.shape[:2] == (header.height, header.width)
    if min(img.shape[:2]) * 8 >= 32:                       # within the enlargement limit of RGB's 32 px
        check_model_inputs([preprocess(img, RGB), preprocess(img, GRAY)])


@settings(max_examples=200, deadline=DEADLINE_MS, database=None)
@given(image_payloads())
def test_header_reader_raises_only_header_error(payload):
    try:
        h = read_header(payload)
    except HeaderError:
        return
    assert h.width > 0 and h.height > 0 and h.format in ("PNG", "JPEG", "BMP", "TIFF")


@pytest.mark.parametrize("payload", [b"\x89PNG\r\n\x1a\n" + b"\x00" * 8, b"\xff\xd8\xff\xe0\x00", b"BM" + b"\x00" * 12,
                                     b"II*\x00\xff\xff\xff\x7f", b"II+\x00\x08\x00\x00\x00" + b"\xff" * 8])
def test_headers_cut_short_are_image_errors(payload):
    with pytest.raises(ImageError, match="not a readable image"):
        decode_image(payload, source="x.png")
