"""Lite0 patch features: where the stride-16 tap sits (model.lite0_blocks) and what the graph then runs."""
import numpy as np
import onnx
import pytest
import torch

from linewatch.training.backbones.lite0 import load_lite0
from linewatch.training.features import lite0_patch_features


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("blocks, channels", [(11, 112), (8, 80), (6, 80)])
def test_the_tap_is_the_last_kept_block_of_the_full_network(images, blocks, channels):
    """The truncated feature module computes exactly what the full ImageNet network holds after that block."""
    feats = lite0_patch_features([16], pool=1, blocks=blocks).eval()
    assert len(feats.backbone.blocks) == blocks and feats.dim == channels
    full = load_lite0(truncate_after=None)
    with torch.no_grad():
        y = full.stem(images)
        for block in full.blocks[:blocks]:
            y = block(y)
        got = feats(images)
    assert got.shape == (2, channels, 4, 4)
    torch.testing.assert_close(got, y)


@pytest.mark.parametrize("blocks", [5, 12])
def test_blocks_outside_the_stride16_stages_are_refused(blocks):
    with pytest.raises(ValueError, match="lite0_blocks"):
        lite0_patch_features([16], pool=3, blocks=blocks)


def test_a_bundle_trained_on_8_blocks_runs_none_of_the_later_ones(small_category, tmp_path):
    from linewatch.jobs.train import run_train
    from linewatch.runtime.bundle import Bundle
    from linewatch.runtime.inspector import Inspector
    from linewatch.training.config import config_from_dict

    from conftest import SMALL_CONFIG

    out = tmp_path / "b8"
    run_train(small_category, out, config_from_dict({**SMALL_CONFIG, "model": {"image_size": 64, "lite0_blocks": 8}, "autoconfig": {"enabled": False}}))
    man = Bundle.load(out).manifest
    assert man.density["feature_dim"] == 80
    names = [n.name for n in onnx.load(str(out / "model.onnx"), load_external_data=False).graph.node]
    assert any("blocks.7/" in n for n in names) and not any("blocks.8/" in n for n in names)
    paths = sorted((small_category / "test").rglob("*.png"))
    verdicts = [v for v, _, _ in Inspector(out, threads=1).inspect_paths(paths)]
    assert len(verdicts) == len(paths) and all(v.error is None and np.isfinite(v.score) for v in verdicts)
