"""Pixel decoder and `linewatch augment`: a level-1 bundle with a one-CAE stack, its chain and decoder.onnx."""

import json

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from linewatch.cli import main
from linewatch.jobs.train import run_train
from linewatch.runtime.augment import Augmenter, contact_sheet, nearest_maps
from linewatch.runtime.bundle import Bundle
from linewatch.runtime.preprocess import load_for_model
from linewatch.training.config import config_from_dict
from linewatch.training.data import discover

from conftest import SMALL_CONFIG, run_without_torch

# the stack sees only 24 x 16 patches here: small batches and more epochs so the CAE is trained at all
AUGMENT = {**SMALL_CONFIG, "threads": 1, "stack": {"widths": [32], "epochs": 100, "batch_size": 32},
           "decoder": {"enabled": True, "epochs": 60, "batch_size": 4, "width": 8, "learning_rate": 0.003,
                       "start_images": 8}}


@pytest.fixture(scope="module")
def aug_bundle(small_category, tmp_path_factory):
    out = tmp_path_factory.mktemp("augment") / "bundle"
    run_train(small_category, out, config_from_dict(AUGMENT), checkpoint=False)
    return out


def _model_features(bundle: Bundle, paths) -> tuple[np.ndarray, np.ndarray]:
    """Model inputs (N, C, H, W) of ``paths`` and model.onnx's patch_features (N, P, D)."""
    x = np.stack([load_for_model(p, bundle.manifest.input) for p in paths])
    sess = ort.InferenceSession(str(bundle.file("model.onnx")), providers=["CPUExecutionProvider"])
    return x, sess.run(["patch_features"], {"image": x})[0]


def _pixels(x: np.ndarray) -> np.ndarray:
    return np.clip(x * 0.5 + 0.5, 0, 1)   # the demo bundles' mean = std = 0.5


def test_manifest_lists_the_decoder_and_start_maps(aug_bundle):
    m = Bundle.load(aug_bundle).manifest
    d = m.decoder
    assert {"decoder.onnx", "augment_start.npz", "chain_step.onnx"} <= set(m.files)
    assert (d["map_height"], d["map_width"], d["feature_dim"]) == (4, 4, 80)      # Lite0 cut after block 7
    assert (d["image_height"], d["image_width"], d["channels"]) == (64, 64, 3)
    assert d["parity_max_abs_diff"] < 1e-4 and d["model_output"] == "patch_features"
    assert d["augment"]["n_start_maps"] == 8 and m.chain["state_level"] == 1
    assert m.density["level"] == 1 and m.density["code_dim"] == 80   # the stack does not change the density


def test_decoder_input_is_model_patch_features(aug_bundle, small_category):
    """The shipped start maps, mapped back from chain states, are model.onnx's patch_features of those
    training images: the documented route from an image to the decoder's input."""
    bundle = Bundle.load(aug_bundle)
    aug = Augmenter(bundle, threads=1)
    train = discover(small_category).train
    _, feats = _model_features(bundle, [train[i] for i in aug.start_images_])
    np.testing.assert_allclose(aug.start_rows_, feats, atol=2e-3, rtol=1e-3)


@pytest.mark.parametrize("which, factor", [("train", 0.7), ("held-out good", 0.9)])
def test_decoder_reconstructs_an_image_better_from_its_own_features(aug_bundle, small_category, which, factor):
    """Mean absolute pixel error of decode(features of image i) against image i, versus decoding another
    image's features (the maps rolled by one): the decoder must use what the features say."""
    bundle = Bundle.load(aug_bundle)
    aug = Augmenter(bundle, threads=1)
    ds = discover(small_category)
    paths = ds.train[:12] if which == "train" else [t.path for t in ds.test if t.defect_type == "good"]
    x, feats = _model_features(bundle, paths)
    target = _pixels(x)
    own = np.abs(aug.decode(feats) - target).mean()
    other = np.abs(aug.decode(np.roll(feats, 1, axis=0)) - target).mean()
    assert own < factor * other, (own, other)
    assert own < 0.5 * np.abs(np.random.default_rng(0).random(target.shape) - target).mean()


def test_samples_are_deterministic_move_and_look_like_training_images(aug_bundle, small_category):
    bundle = Bundle.load(aug_bundle)
    aug = Augmenter(bundle, threads=1)
    s = aug.sample(6, steps=5, seed=1)
    assert s.images.shape == (6, 64, 64, 3) and s.images.dtype == np.uint8
    np.testing.assert_array_equal(s.images, aug.sample(6, steps=5, seed=1).images)
    assert not np.array_equal(s.images, aug.sample(6, steps=5, seed=2).images)
    unmoved = (aug.decode(aug.start_rows_[s.start]) * 255).round().clip(0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
    assert np.abs(s.images.astype(float) - unmoved).mean() > 1.0          # the chain changed the images
    train = discover(small_category).train
    x, _ = _model_features(bundle, [train[i] for i in s.nearest_training_image])
    to_nearest = np.abs(s.images / 255.0 - _pixels(x).transpose(0, 2, 3, 1)).mean()
    noise = np.abs(np.random.default_rng(0).random(s.images.shape) - _pixels(x).transpose(0, 2, 3, 1)).mean()
    assert to_nearest < 0.5 * noise, (to_nearest, noise)


def test_augment_cli_runs_without_torch(aug_bundle, tmp_path):
    out = tmp_path / "aug"
    res = run_without_torch(f"""
        import contextlib, io
        from linewatch.cli import main
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            rc = main(["augment", "--bundle", {str(aug_bundle)!r}, "--count", "5", "--out", {str(out)!r},
                       "--steps", "3", "--threads", "1"])
        print(json.dumps({{"rc": rc, "summary": json.loads(buf.getvalue()), "torch": "torch" in sys.modules}}))
    """)
    assert res["rc"] == 0 and res["torch"] is False
    s = res["summary"]
    assert len(s["files"]) == 5 and len(s["nearest_training_image"]) == 5
    assert 1 <= s["distinct_nearest_training_images"] <= min(5, s["n_start_maps"])
    for f in s["files"]:
        assert cv2.imread(f).shape == (64, 64, 3)
    assert cv2.imread(s["contact_sheet"]).shape == (2 * 66 + 2, 3 * 66 + 2, 3)


def test_augment_refuses_a_bundle_without_chain_or_decoder(small_bundle, tmp_path, capsys):
    assert main(["augment", "--bundle", str(small_bundle), "--count", "2", "--out", str(tmp_path)]) == 1
    assert "configs/augment.yaml" in capsys.readouterr().err


def test_nearest_maps_and_contact_sheet():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((5, 4, 3))
    rows = ref[[3, 0]] + 0.01 * rng.standard_normal((2, 4, 3))
    idx, dist = nearest_maps(rows, ref)
    assert idx.tolist() == [3, 0] and np.all(dist < 0.05)
    ims = np.stack([np.full((2, 3, 3), i, np.uint8) for i in range(5)])
    sheet = contact_sheet(ims, columns=2, pad=1)
    assert sheet.shape == (3 * 3 + 1, 2 * 4 + 1, 3)
    assert sheet[1, 1, 0] == 0 and sheet[1, 5, 0] == 1 and sheet[4, 1, 0] == 2 and sheet[7, 1, 0] == 4
    assert sheet[7, 5, 0] == 255   # the empty cell


def test_json_summary_is_valid_json_on_stdout(aug_bundle, tmp_path, capsys):
    assert main(["augment", "--bundle", str(aug_bundle), "--count", "2", "--out", str(tmp_path), "--steps", "0",
                 "--threads", "1"]) == 0
    captured = capsys.readouterr()
    s = json.loads(captured.out)
    assert s["steps"] == 0 and s["moved_to_another_image"] == 0   # without steps each sample is its start image
    assert "distinct training images" in captured.err


def test_two_level_stack_chain_runs_on_level_2_states_and_decodes_through_the_cae(tmp_path):
    """widths [8, 4] at density level 1: the chain runs on the top CAE (level-2 states); the runtime takes
    states back to level-1 rows through the first CAE's decoder exactly as training does."""
    import torch

    from linewatch.export.bundle_export import export_bundle
    from linewatch.training.fit import fit_on_maps

    rng = np.random.default_rng(0)
    maps = np.tanh(rng.normal(size=(8, 3, 16, 16))).astype(np.float32)   # Identity "features": maps = images
    cfg = config_from_dict({"model": {"image_size": 16}, "threads": 1,
                            "density": {"bank_size": 64, "max_candidates": 1000, "folds": 2},
                            "stack": {"widths": [8, 4], "epochs": 3}, "export": {"parity_images": 4},
                            "decoder": {"enabled": True, "epochs": 2, "start_images": 4}})
    det = fit_on_maps(torch.nn.Identity(), maps, cfg, images=maps)
    assert det.chain.level == 3 and det.decoder.state_level == 2 and det.decoder.start_maps.shape == (4, 256, 8)
    export_bundle(det, tmp_path / "b", maps[:4], cfg, {})
    aug = Augmenter(tmp_path / "b", threads=1)
    assert Bundle.load(tmp_path / "b").manifest.decoder["augment"]["n_down_layers"] == 1
    np.testing.assert_allclose(aug.start_rows_, det.decoder.rows_from_states(det.decoder.start_maps), atol=1e-5)
    assert det.chain.step.W.shape == (4, 8)             # the chain's CAE is the top layer (8 -> 4)
    up = aug.to_states(aug.start_rows_)                 # level-2 codes: sigmoid outputs
    assert up.shape == (4, 256, 8) and up.min() >= 0 and up.max() <= 1 and up.std() > 0.01
    s = aug.sample(3, steps=2, seed=0)
    assert s.images.shape == (3, 16, 16, 3) and np.all(s.nearest < 4)
