"""The from-scratch option: a conv autoencoder's features for tiny grey images, through the same path."""
import numpy as np

from linewatch.jobs.demo import evaluate_results
from linewatch.jobs.train import run_train
from linewatch.runtime.bundle import Bundle
from linewatch.runtime.inspect_run import run_inspection
from linewatch.runtime.inspector import Inspector
from linewatch.training.config import config_from_dict
from linewatch.training.demo_data import DemoSpec, build_texture


def test_conv_ae_bundle_on_tiny_grey_images(tmp_path):
    data = build_texture("brick", tmp_path / "data",
                         DemoSpec(size=64, n_train=24, n_test_good=8, n_test_per_defect=3, n_validation=0, color=False,
                                  defect_types=("crack", "pitting", "burn")))
    cfg = config_from_dict({"model": {"backbone": "conv_ae", "image_size": 32, "channels": 1, "feature_strides": [2, 4]},
                            "conv_ae": {"epochs": 15}, "density": {"bank_size": 256, "folds": 2}, "threads": 2})
    bundle, summary = run_train(data, tmp_path / "bundle", cfg)
    m = Bundle.load(tmp_path / "bundle").manifest
    assert m.input.channels == 1 and m.input.color_order == "GRAY" and m.model.backbone == "conv_ae"
    assert (m.model.map_height, m.model.map_width) == (16, 16)
    run = run_inspection(Inspector(bundle), str(data / "test"), tmp_path / "out")
    assert run.errors == 0
    auroc, *_ = evaluate_results(data, run.results)
    assert auroc > 0.7, auroc
    # a colour image is accepted by a grey model (converted with BT.601 weights)
    rgb = np.zeros((40, 40, 3), np.uint8)
    verdict, pmap = Inspector(bundle).inspect_image(rgb)
    assert verdict.error is None and pmap.shape == (16, 16)
