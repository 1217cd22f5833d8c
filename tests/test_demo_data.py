"""Tests for linewatch.training.demo_data (the built-in MVTec-style demo dataset)."""
from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from linewatch.training import demo_data
from linewatch.training.demo_data import (DEFECT_TYPES, TEXTURES, DemoSpec, build_demo_dataset,
                                          build_texture)

# size 64 draws defects on a 3x upscaled crop; size 160 draws them at native resolution.
SMALL = DemoSpec(size=64, n_train=4, n_test_good=2, n_test_per_defect=2, n_validation=3, seed=7)
NATIVE = DemoSpec(size=160, n_train=2, n_test_good=1, n_test_per_defect=1, n_validation=0, seed=3)
TINY = DemoSpec(size=32, n_train=2, n_test_good=1, n_test_per_defect=1, n_validation=0, seed=1)


@pytest.fixture(scope="module", params=[SMALL, NATIVE], ids=["size64", "size160"])
def built(request, tmp_path_factory):
    spec = request.param
    textures = TEXTURES if spec is SMALL else ("brick",)
    out = tmp_path_factory.mktemp("demo")
    return spec, out, build_demo_dataset(out, textures, spec)


def read(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image is not None, path
    return image


def texture(name: str) -> np.ndarray:
    import skimage.data

    return getattr(skimage.data, name)()


def records(folders):
    for name, folder in folders.items():
        yield name, folder, json.loads((folder / "dataset.json").read_text())


def all_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_layout_and_counts(built):
    spec, out, folders = built
    assert sorted(p.name for p in out.iterdir()) == sorted(folders)  # no leftover hidden build folders
    for name, folder, rec in records(folders):
        assert folder == out / name
        assert sorted(p.name for p in folder.iterdir()) == ["dataset.json", "ground_truth", "test", "train"] + (
            ["validation"] if spec.n_validation else [])
        assert len(list((folder / "validation" / "good").glob("*.png")) if spec.n_validation else []) == spec.n_validation
        assert sorted(p.relative_to(folder / "train" / "good").as_posix()
                      for p in (folder / "train" / "good").rglob("*.png")) == sorted(
            f"{('left', 'right')[i % 2]}/{i:03d}.png" for i in range(spec.n_train))
        assert len(list((folder / "test" / "good").iterdir())) == spec.n_test_good
        assert sorted(p.name for p in (folder / "test").iterdir()) == sorted(("good",) + DEFECT_TYPES)
        for defect in DEFECT_TYPES:
            assert sorted(p.name for p in (folder / "test" / defect).iterdir()) == [
                f"{i:03d}.png" for i in range(spec.n_test_per_defect)]
            assert sorted(p.name for p in (folder / "ground_truth" / defect).iterdir()) == [
                f"{i:03d}_mask.png" for i in range(spec.n_test_per_defect)]
        assert rec["spec"]["size"] == spec.size and rec["spec"]["seed"] == spec.seed
        assert rec["counts"]["train/good"] == spec.n_train
        assert len(rec["files"]) == spec.n_train + spec.n_test_good + spec.n_validation + 6 * spec.n_test_per_defect
        assert rec["defect_draw_scale"] == (3 if spec.size == 64 else 1)


def test_images_colour_and_masks_binary_nonempty(built):
    spec, _, folders = built
    for _, folder, rec in records(folders):
        for entry in rec["files"]:
            image = read(folder / entry["image"])
            assert image.shape == (spec.size, spec.size, 3) and image.dtype == np.uint8
            if entry["label"] == "good":
                assert "mask" not in entry
                continue
            mask = read(folder / entry["mask"])
            assert mask.shape == image.shape[:2] and mask.dtype == np.uint8
            assert set(np.unique(mask)) <= {0, 255}
            assert np.count_nonzero(mask) == entry["mask_pixels"] > 0


def test_train_and_test_come_from_separate_rows(built):
    spec, _, folders = built
    for name, folder, rec in records(folders):
        tex = texture(name)
        assert rec["train_rows"] == [0, 256] and rec["test_rows"] == [256, 512]
        for entry in rec["files"]:
            row, col = entry["row"], entry["col"]
            if entry["split"] == "train":
                assert 0 <= row and row + spec.size <= 256
            else:
                assert 256 <= row and row + spec.size <= 512
            assert 0 <= col and col + spec.size <= 512
            if entry["label"] == "good":  # the recorded position is where the pixels really come from
                plain = tex[row:row + spec.size, col:col + spec.size]
                assert np.array_equal(read(folder / entry["image"]), np.repeat(plain[:, :, None], 3, axis=2))


def test_defect_images_differ_from_plain_crop_inside_mask(built):
    spec, _, folders = built
    for name, folder, rec in records(folders):
        tex = texture(name)
        for entry in rec["files"]:
            if entry["label"] == "good":
                continue
            plain = tex[entry["row"]:entry["row"] + spec.size, entry["col"]:entry["col"] + spec.size]
            inside = read(folder / entry["mask"]) > 0
            image = read(folder / entry["image"])
            assert np.any(image[inside] != plain[inside][:, None]), entry["image"]
            if entry["label"] in ("crack", "pitting", "burn"):  # defects that darken the surface
                assert image[inside].mean() < plain[inside].mean(), entry["image"]


def test_reproducible_byte_identical_and_order_independent(built, tmp_path):
    spec, _, folders = built
    # Another folder, textures in reverse order (and for size 64 only two of them), and the global
    # RNGs (which defect-synthesis draws from) in another state: the build must seed them itself.
    random.random()
    np.random.random()
    again = build_demo_dataset(tmp_path, tuple(reversed(list(folders)))[:2], spec)
    for name, folder in again.items():
        first, second = all_bytes(folders[name]), all_bytes(folder)
        assert first.keys() == second.keys()
        assert all(first[k] == second[k] for k in first), name


def test_different_seed_gives_different_images(tmp_path):
    a = build_texture("gravel", tmp_path / "a", TINY)
    b = build_texture("gravel", tmp_path / "b", replace(TINY, seed=2))
    assert (a / "train/good/left/000.png").read_bytes() != (b / "train/good/left/000.png").read_bytes()


def test_reuse_when_spec_equal_rebuild_when_different(tmp_path, monkeypatch):
    folder = build_texture("grass", tmp_path, TINY)
    inode = folder.stat().st_ino

    def must_not_build(*args, **kwargs):
        raise AssertionError("category was rebuilt although the spec is the same")

    with monkeypatch.context() as m:
        m.setattr(demo_data, "_write_category", must_not_build)
        assert build_texture("grass", tmp_path, replace(TINY)) == folder
        assert build_demo_dataset(tmp_path, ("grass",), TINY) == {"grass": folder}
    assert folder.stat().st_ino == inode

    changed = replace(TINY, n_train=3)
    assert build_texture("grass", tmp_path, changed) == folder
    rec = json.loads((folder / "dataset.json").read_text())
    assert rec["spec"]["n_train"] == 3 and len(list((folder / "train" / "good").rglob("*.png"))) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["grass"]  # no hidden build/old folders left


def test_interrupted_build_leaves_no_complete_looking_category(tmp_path, monkeypatch):
    calls = []
    real_write = demo_data._write_png

    def failing_write(path, image):
        calls.append(path)
        if len(calls) == 5:
            raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of a build
        real_write(path, image)

    monkeypatch.setattr(demo_data, "_write_png", failing_write)
    with pytest.raises(KeyboardInterrupt):
        build_texture("brick", tmp_path, TINY)
    assert list(tmp_path.iterdir()) == []

    # An interrupted rebuild keeps the previous finished category untouched.
    monkeypatch.setattr(demo_data, "_write_png", real_write)
    folder = build_texture("brick", tmp_path, TINY)
    before = all_bytes(folder)
    calls.clear()
    monkeypatch.setattr(demo_data, "_write_png", failing_write)
    with pytest.raises(KeyboardInterrupt):
        build_texture("brick", tmp_path, replace(TINY, seed=5))
    assert [p.name for p in tmp_path.iterdir()] == ["brick"]
    assert all_bytes(folder) == before


@pytest.mark.parametrize("size", [0, 16, 31, 257, 512])
def test_invalid_size_raises(size):
    with pytest.raises(ValueError, match="size"):
        DemoSpec(size=size)


def test_other_invalid_arguments_raise(tmp_path):
    with pytest.raises(ValueError, match="defect type"):
        DemoSpec(defect_types=("scratch", "dent"))
    with pytest.raises(ValueError, match="n_train"):
        DemoSpec(n_train=-1)
    with pytest.raises(ValueError, match="texture"):
        build_texture("marble", tmp_path, TINY)
    with pytest.raises(ValueError, match="texture"):
        build_demo_dataset(tmp_path, ("brick", "wood"), TINY)
    assert list(tmp_path.iterdir()) == []  # nothing built before the argument check


def test_subset_of_defect_types_and_global_rng_untouched(tmp_path):
    random.seed(123)
    np.random.seed(456)
    py_state, np_state = random.getstate(), np.random.get_state()
    spec = DemoSpec(size=48, n_train=1, n_test_good=1, n_test_per_defect=2, n_validation=0, defect_types=("burn", "pitting"))
    folder = build_texture("brick", tmp_path, spec)
    assert random.getstate() == py_state
    assert np.array_equal(np.random.get_state()[1], np_state[1])
    assert sorted(p.name for p in (folder / "test").iterdir()) == ["burn", "good", "pitting"]
    assert sorted(p.name for p in (folder / "ground_truth").iterdir()) == ["burn", "pitting"]
