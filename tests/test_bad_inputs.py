"""Bad images through `linewatch inspect`: each gets a record with a clear error or a documented
conversion, good images still get verdicts, the summary counts the errors (bench/robustness.py's cases)."""
import importlib.util
import json
import math
import struct
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from linewatch.runtime.image_header import read_header
from linewatch.runtime.preprocess import ImageError, decode_image

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load_robustness():
    """bench/robustness.py as the module ``robustness_bench`` (registered: its dataclasses need it)."""
    if "robustness_bench" not in sys.modules:
        spec = importlib.util.spec_from_file_location("robustness_bench", BENCH / "robustness.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules["robustness_bench"] = mod
        spec.loader.exec_module(mod)
    return sys.modules["robustness_bench"]


rb = load_robustness()
CASES = {c.name: c for c in rb.BAD_IMAGES}


@pytest.fixture(scope="module")
def grey_bundle(small_category, tmp_path_factory):
    """A grey conv_ae bundle (32 px), trained in a few seconds on the small category."""
    from linewatch.jobs.train import run_train
    from linewatch.training.config import config_from_dict

    out = tmp_path_factory.mktemp("grey") / "bundle"
    cfg = {"model": {"backbone": "conv_ae", "image_size": 32, "channels": 1, "feature_strides": [2, 4]},
           "conv_ae": {"epochs": 2}, "density": {"bank_size": 128, "max_candidates": 2000, "folds": 2},
           "export": {"parity_images": 4}, "threads": 1}
    run_train(small_category, out, config_from_dict(cfg))
    return out


@pytest.fixture(scope="module")
def inspected(small_bundle, grey_bundle, small_category, tmp_path_factory):
    goods = rb.good_images(small_category, 3)
    outcomes, runs = rb.inspect_bad_images(small_bundle, grey_bundle, {"colour": goods, "grey": goods},
                                           tmp_path_factory.mktemp("bad_inputs"))
    return {o.case.name: o for o in outcomes}, runs


@pytest.mark.parametrize("name", list(CASES))
def test_each_bad_image_gets_a_clear_error_or_a_documented_conversion(inspected, name):
    outcomes, runs = inspected
    o = outcomes[name]
    rec, case = o.record, o.case
    assert rec, f"{name}: no record in results.jsonl"
    path = str(Path(runs[case.model]["folder"]) / name)
    assert rec["source"] == path
    if case.expect == "error":
        assert rec["error"] and rec["score"] is None and rec["anomalous"] is None
        assert rec["error"].startswith(path + ": "), rec["error"]          # which file
        for w in case.words:                                               # what is wrong
            assert w in rec["error"], (w, rec["error"])
        assert any(w in rec["error"] for w in rb._WHAT_TO_DO + ("region of interest",)), rec["error"]   # what to do
    else:
        assert rec["error"] is None and math.isfinite(rec["score"]) and isinstance(rec["anomalous"], bool)
        assert case.conversion


def test_the_run_goes_on_and_the_summary_counts_the_errors(inspected):
    outcomes, runs = inspected
    for model, run in runs.items():
        assert run["n_records"] == run["n_files"]                          # every file recorded, once
        assert all(g.get("error") is None and math.isfinite(g["score"]) for g in run["good"])
        want = sum(1 for c in rb.BAD_IMAGES if c.model == model and c.expect == "error")
        assert run["summary"]["errors"] == want and run["summary"]["inspected"] == run["n_files"]


def test_parallel_workers_give_the_same_records(inspected, small_bundle, grey_bundle, small_category, tmp_path):
    outcomes, _ = inspected
    goods = rb.good_images(small_category, 3)
    again, _ = rb.inspect_bad_images(small_bundle, grey_bundle, {"colour": goods, "grey": goods}, tmp_path, workers=2)
    for o in again:
        first = outcomes[o.case.name].record
        assert (o.record["error"] is None) == (first["error"] is None), o.case.name
        if o.record["score"] is not None:
            assert o.record["score"] == pytest.approx(first["score"], rel=1e-5, abs=1e-4)


def test_the_report_table_lists_every_case(inspected):
    outcomes, runs = inspected
    table = rb.image_table([outcomes[n] for n in CASES], runs)
    for name in CASES:
        assert f"`{name}`" in table
    md = rb.render(None, table, "| bundle table |")
    assert md.count("<!-- generated:") == 2 and "## Crash tests" in md and "## Soak" in md
    filled = md.replace("_To be filled._", "42 kills, 0 lost", 1)
    assert "42 kills, 0 lost" in rb.render(filled, "new table", "new bundles")      # hand-written parts are kept


@pytest.mark.parametrize("fmt", ["png", "jpeg", "bmp", "tiff"])
def test_huge_headers_are_refused_before_any_pixel_is_decoded(fmt, monkeypatch):
    width, height = (60_000, 50_000) if fmt == "jpeg" else (100_000, 50_000)     # JPEG sizes are 16-bit
    data = getattr(rb, f"{fmt}_claiming")(width, height)

    def no_decode(*a, **k):
        raise AssertionError("cv2.imdecode was called")
    monkeypatch.setattr(cv2, "imdecode", no_decode)
    with pytest.raises(ImageError, match="refused before decoding") as exc:
        decode_image(data, source=f"cam/big.{fmt}")
    assert str(exc.value).startswith(f"cam/big.{fmt}: the {read_header(data).format} header declares {width}x{height}")


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp", ".tiff"])
@pytest.mark.parametrize("shape", [(1, 1), (37, 5), (5, 301), (64, 48, 3), (20, 30, 4)])
def test_header_sizes_match_what_opencv_decodes(ext, shape):
    if ext in (".jpg", ".bmp") and len(shape) == 3 and shape[2] == 4:
        shape = shape[:2] + (3,)
    img = np.random.default_rng(0).integers(0, 256, shape).astype(np.uint8)
    data = rb.encode(img, ext)
    h = read_header(data)
    assert (h.height, h.width) == decode_image(data).shape[:2] == shape[:2]


def test_header_sizes_of_pillow_files_big_endian_tiff_and_bigtiff():
    from PIL import Image
    import io
    for kw in ({"format": "TIFF"}, {"format": "TIFF", "compression": "tiff_lzw"}, {"format": "BMP"},
               {"format": "JPEG", "progressive": True}, {"format": "PNG"}):
        b = io.BytesIO()
        Image.fromarray(np.zeros((13, 29, 3), np.uint8)).save(b, **kw)
        assert (read_header(b.getvalue()).width, read_header(b.getvalue()).height) == (29, 13), kw
    # big-endian classic TIFF and a BigTIFF, each with one directory holding SHORT width and LONG8 height
    mm = b"MM\x00*" + struct.pack(">I", 8) + struct.pack(">H", 2) + struct.pack(">HHIHH", 256, 3, 1, 77, 0) \
        + struct.pack(">HHII", 257, 4, 1, 99) + b"\0\0\0\0"
    assert (read_header(mm).width, read_header(mm).height) == (77, 99)
    big = b"II+\x00" + struct.pack("<HHQ", 8, 0, 16) + struct.pack("<Q", 2) \
        + struct.pack("<HHQQ", 256, 16, 1, 12345) + struct.pack("<HHQQ", 257, 3, 1, 678) + b"\0" * 8
    assert (read_header(big).width, read_header(big).height) == (12345, 678)


def test_cli_max_pixels_flag_refuses_larger_images(small_bundle, tmp_path, capsys):
    from linewatch.cli import main

    src = tmp_path / "images"
    src.mkdir()
    cv2.imwrite(str(src / "a_small.png"), np.zeros((64, 64, 3), np.uint8))
    cv2.imwrite(str(src / "b_large.png"), np.zeros((128, 128, 3), np.uint8))
    assert main(["inspect", "--bundle", str(small_bundle), "--source", str(src), "--out", str(tmp_path / "out"),
                 "--threads", "1", "--max-pixels", str(100 * 100)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["inspected"] == 2 and summary["errors"] == 1
    recs = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert recs[0]["error"] is None and "128x128 pixels, over the limit of 10000" in recs[1]["error"]
    with pytest.raises(SystemExit):
        main(["inspect", "--bundle", str(small_bundle), "--source", str(src), "--out", str(tmp_path / "o2"),
              "--max-pixels", "0"])
