import cv2
import numpy as np
import pytest

from linewatch.runtime.preprocess import (ImageError, InputSpec, convert_channels, decode_image, preprocess,
                                          read_image, resize_to)

RGB = InputSpec(32, 32, 3, "RGB", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
GRAY = InputSpec(32, 32, 1, "GRAY", (0.5,), (0.5,))


def encode(img, ext=".png"):
    ok, buf = cv2.imencode(ext, img)
    assert ok
    return buf.tobytes()


def test_grey_rgb_rgba_and_16bit_give_the_same_input_for_a_grey_picture():
    grey = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (32, 1))
    bgr = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    bgra = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGRA)
    g16 = grey.astype(np.uint16) * 257
    ref = preprocess(decode_image(encode(grey)), RGB)
    assert ref.shape == (3, 32, 32) and ref.dtype == np.float32
    for img in (bgr, bgra, g16):
        np.testing.assert_allclose(preprocess(decode_image(encode(img)), RGB), ref, atol=1e-6)
    assert ref.min() == pytest.approx(-1.0) and ref.max() == pytest.approx(248 / 255 * 2 - 1, abs=1e-6)


def test_colour_order_is_rgb_and_grey_models_get_luma():
    bgr = np.zeros((32, 32, 3), np.uint8)
    bgr[:, :, 2] = 255                                       # pure red in OpenCV's BGR
    x = preprocess(bgr, RGB)
    assert x[0].min() == pytest.approx(1.0) and x[2].max() == pytest.approx(-1.0)
    g = preprocess(bgr, GRAY)
    assert g.shape == (1, 32, 32)
    assert g[0, 0, 0] == pytest.approx(round(0.299 * 255) / 255 * 2 - 1, abs=2 / 255)


def test_palette_png_and_jpeg_decode(tmp_path):
    from PIL import Image  # scikit-image depends on Pillow; the runtime itself does not use it
    pal = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).convert("P")
    p = tmp_path / "pal.png"
    pal.save(p)
    assert read_image(p).shape[:2] == (8, 8)
    jpg = decode_image(encode(np.full((16, 16, 3), 128, np.uint8), ".jpg"))
    assert jpg.shape == (16, 16, 3)


def test_resize_area_when_shrinking_and_linear_when_enlarging():
    img = np.zeros((64, 64), np.float32)
    img[::2] = 1.0                                           # stripes average to 0.5 under area
    assert np.allclose(resize_to(img, 32, 32), 0.5)
    assert resize_to(img[:8, :8], 16, 16).shape == (16, 16)


@pytest.mark.parametrize("data, words", [
    (b"", "empty"),
    (b"not an image at all", "not a readable"),
    (encode(np.zeros((40, 40), np.uint8))[:60], "not a readable"),
])
def test_bad_bytes_name_the_file_and_say_what_to_do(data, words):
    with pytest.raises(ImageError) as exc:
        decode_image(data, source="cam1/0001.png")
    assert "cam1/0001.png" in str(exc.value) and words in str(exc.value)


def test_missing_file_and_pixel_limit(tmp_path):
    with pytest.raises(ImageError, match="cannot be read"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="over the limit"):
        decode_image(encode(np.zeros((100, 100), np.uint8)), "big.png", max_pixels=99 * 99)


def test_convert_channels_drops_alpha():
    bgra = np.zeros((4, 4, 4), np.uint8)
    bgra[..., 3] = 255
    assert convert_channels(bgra, "RGB").shape == (4, 4, 3)


def test_input_spec_round_trip_and_validation():
    assert InputSpec.from_dict(RGB.to_dict()) == RGB
    with pytest.raises(ValueError):
        InputSpec(32, 32, 1, "RGB", (0.5,), (0.5,))


@pytest.mark.parametrize("spec", [RGB, GRAY, InputSpec(24, 40, 3, "RGB", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
@pytest.mark.parametrize("shape", [(32, 32), (32, 32, 3), (32, 32, 4), (50, 45, 3), (20, 20)])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_fast_path_is_bit_identical_to_the_stated_formula(spec, shape, dtype):
    """preprocess works per channel plane for speed; the numbers must be exactly the documented ones."""
    from linewatch.runtime.preprocess import to_unit_float
    img = np.random.default_rng(0).integers(0, np.iinfo(dtype).max + 1, shape).astype(dtype)
    x = resize_to(to_unit_float(convert_channels(img, spec.color_order)), spec.height, spec.width)
    x = x[:, :, None] if x.ndim == 2 else x
    inv_std = (1.0 / np.asarray(spec.std, dtype=np.float32)).astype(np.float32)
    want = np.transpose((x - np.asarray(spec.mean, dtype=np.float32)) * inv_std, (2, 0, 1))
    got = preprocess(img, spec)
    assert got.dtype == np.float32 and got.flags.c_contiguous and np.array_equal(got, want)
    buf = np.full((2, *want.shape), np.nan, np.float32)
    out = preprocess(img, spec, out=buf[1])                  # one row of a reused batch buffer
    assert np.shares_memory(out, buf) and np.array_equal(buf[1], want) and np.isnan(buf[0]).all()
