"""Tests for bench/suite_data.py: the broad accuracy suite's categories and on-disk layout."""
from __future__ import annotations

import json
import random
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import suite_data as S  # noqa: E402

from linewatch.training.data import discover  # noqa: E402

TINY = S.SuiteSpec(size=96, n_train=4, n_validation=2, n_test_good=3, n_shifted=2, n_per_defect=2, seed=3)
NAMES = ("brick", "label", "digit-3")   # a photo, a rendered print with logical defects, MNIST


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("suite")
    lines: list[str] = []
    folders = S.build_suite(out, TINY, NAMES, progress=lines.append)
    return out, folders, lines


def record(folder: Path) -> dict:
    return json.loads((folder / "dataset.json").read_text())


def read(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image is not None, path
    return image


def all_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_registry_has_seven_dev_and_seven_confirm_with_every_family_in_both():
    assert len(S.CATEGORIES) >= 14
    for name, info in S.CATEGORIES.items():
        assert info.name == name and info.family and info.description
        assert info.half in ("dev", "confirm")
    assert Counter(c.half for c in S.CATEGORIES.values()) == {"dev": 7, "confirm": 7}
    halves: dict[str, set[str]] = {}
    for c in S.CATEGORIES.values():
        halves.setdefault(c.family, set()).add(c.half)
    assert all(h == {"dev", "confirm"} for h in halves.values()), halves


@pytest.mark.parametrize("name", list(S.CATEGORIES))
def test_every_category_has_three_defect_types_from_both_sources(name):
    defects = S.make_source(name, TINY).defects
    assert len(defects) >= 3
    assert any(d.startswith("own-") for d in defects)
    assert any(d.startswith("ds-") for d in defects) or name.startswith("digit-")
    assert all(d.startswith(("ds-", "own-")) or d == "other-digit" for d in defects)


def test_layout_is_read_by_discover(built):
    _, folders, _ = built
    for name, folder in folders.items():
        rec, ds = record(folder), discover(folder)
        counts = rec["counts"]
        assert ds.layout == "mvtec"
        assert len(ds.train) == counts["train/good"] == TINY.n_train
        assert len(set(ds.groups(ds.train))) >= 2
        assert len(ds.validation) == counts["validation/good"] == TINY.n_validation
        kinds = Counter(t.defect_type for t in ds.test)
        assert kinds == {k.split("/", 1)[1]: n for k, n in counts.items() if k.startswith("test/")}
        assert kinds["good"] == TINY.n_test_good
        for t in ds.test:     # masks exactly where dataset.json promises them
            has_masks = t.defect_type != "good" and rec["defects"][t.defect_type]["masks"]
            assert (t.mask is not None) == has_masks, t.path
        assert not any("shifted" in t.path.parts for t in ds.test)
        assert len(list((folder / "shifted" / "good").glob("*.png"))) == counts["shifted/good"] == TINY.n_shifted


def test_images_are_uint8_size_by_size_and_masks_non_empty(built):
    _, folders, _ = built
    for name, folder in folders.items():
        rec = record(folder)
        want = (TINY.size, TINY.size) + (() if rec["image"]["channels"] == 1 else (3,))
        for e in rec["files"]:
            image = read(folder / e["image"])
            assert image.shape == want and image.dtype == np.uint8, e["image"]
            if "mask" in e:
                mask = read(folder / e["mask"])
                assert mask.shape == (TINY.size, TINY.size) and mask.dtype == np.uint8
                assert set(np.unique(mask)) == {0, 255}, e["mask"]
                assert np.count_nonzero(mask) == e["mask_pixels"]
                assert e["mask_pixels"] < 0.3 * TINY.size ** 2, e["mask"]


def test_photo_shifted_images_come_from_another_region_and_are_degraded(built):
    import skimage.data

    _, folders, _ = built
    rec, tex, s = record(folders["brick"]), skimage.data.brick(), TINY.size
    split = rec["source"]["shifted_rows"][0]
    for e in (e for e in rec["files"] if e["split"] != "shifted"):     # inside one train half, like train
        assert e["params"]["row"] + s <= split
        assert e["params"]["col"] + s <= 256 or e["params"]["col"] >= 256
    for e in (e for e in rec["files"] if e["split"] == "shifted"):
        assert e["params"]["row"] >= split
        raw = tex[e["params"]["row"]:e["params"]["row"] + s, e["params"]["col"]:e["params"]["col"] + s]
        got = read(folders["brick"] / e["image"]).astype(np.float64)
        assert np.abs(got - raw).mean() > 1.0                        # differs from its source...
        assert np.corrcoef(got.ravel(), raw.ravel())[0, 1] > 0.6     # ...but is still the same surface


def test_digit_shifted_images_differ_from_their_test_good_source(built):
    _, folders, _ = built
    folder = folders["digit-3"]
    rows = {e["image"]: e["params"]["mnist_row"] for e in record(folder)["files"]}
    for i in range(TINY.n_shifted):
        shifted, source = f"shifted/good/{i:03d}.png", f"test/good/{i:03d}.png"
        assert rows[shifted] == rows[source]
        a, b = read(folder / shifted).astype(np.float64), read(folder / source).astype(np.float64)
        assert np.abs(a - b).mean() > 1.0 and np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.8


def test_shift_chain_translates_blurs_rescales_and_recompresses():
    img = np.zeros((64, 64), np.uint8)
    img[20:40, 20:40] = 200
    out, meta = S.shift_image(img, np.random.default_rng(0))
    assert out.shape == img.shape and out.dtype == np.uint8
    assert abs(meta["dx"]) + abs(meta["dy"]) == 2 and 0.9 <= meta["gain"] <= 1.1
    moved = np.roll(img, (meta["dy"], meta["dx"]), axis=(0, 1)).astype(np.float64)
    assert np.abs(out - moved * meta["gain"]).mean() < 6           # the moved square, brightness scaled
    assert np.abs(out.astype(np.float64) - img).mean() > 3          # not the original position


def test_logical_wrong_char_changes_one_character_and_nothing_outside_its_mask(built):
    _, folders, _ = built
    folder, source = folders["label"], S.make_source("label", TINY)
    entries = [e for e in record(folder)["files"] if e["label"] == "own-wrong-char"]
    assert entries
    for e in entries:
        lot = e["defect"]["changed"]["lot"]
        assert len(lot) == 4 and sum(a != b for a, b in zip(lot, "4711")) == 1
        good, bad, mask = source.render(e["params"]), read(folder / e["image"]), read(folder / e["mask"])
        assert np.array_equal(good[mask == 0], bad[mask == 0])
        assert np.abs(good.astype(int) - bad)[mask > 0].max() > 40


def test_build_is_deterministic_and_subset_independent(built, tmp_path):
    _, folders, _ = built
    again = S.build_suite(tmp_path, TINY, ["label", "brick"], progress=None)    # other subset and order
    for name in ("brick", "label"):
        assert all_bytes(again[name]) == all_bytes(folders[name]), name
    other = S.build_category(tmp_path / "seed4", "brick", replace(TINY, seed=4))
    assert all_bytes(other) != all_bytes(folders["brick"])


def test_current_category_is_reused_and_changed_spec_rebuilds(built):
    out, folders, _ = built
    stamp = (folders["digit-3"] / "dataset.json").stat().st_mtime_ns
    assert S.build_category(out, "digit-3", TINY) == folders["digit-3"]
    assert (folders["digit-3"] / "dataset.json").stat().st_mtime_ns == stamp
    bigger = replace(TINY, n_train=6)
    S.build_category(out, "digit-3", bigger)
    assert record(folders["digit-3"])["counts"]["train/good"] == 6
    assert not [p for p in out.iterdir() if p.name.startswith(".")]    # no leftover build folders
    S.build_category(out, "digit-3", TINY)                              # restore for other tests


def test_global_rngs_are_restored(tmp_path):
    random.seed(11)
    np.random.seed(11)
    py, npy = random.getstate(), np.random.get_state()
    S.build_category(tmp_path, "brick", S.SuiteSpec(64, 2, 0, 1, 1, 1, 0))
    assert random.getstate() == py
    assert np.array_equal(np.random.get_state()[1], npy[1])


def test_progress_prints_one_line_per_category(built):
    _, _, lines = built
    assert len(lines) == len(NAMES)
    assert all(name in line and line.endswith(" s") for name, line in zip(NAMES, lines))


def test_bad_inputs_say_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match="size"):
        S.SuiteSpec(20, 4, 2, 2, 2, 1, 0)
    with pytest.raises(ValueError, match="n_train"):
        S.SuiteSpec(96, 1, 2, 2, 2, 1, 0)
    with pytest.raises(ValueError, match="unknown categor"):
        S.build_suite(tmp_path, TINY, ["bricks"])
