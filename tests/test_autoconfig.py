"""Self-configuration: shared taps give the exported features exactly; proxy defects; the search and its record."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from linewatch.training import autoconfig
from linewatch.training.autoconfig import Candidate, lite0_taps, maps_for, select_configuration
from linewatch.training.config import TrainConfig, config_from_dict, config_from_stored
from linewatch.training.features import extract, lite0_features_for
from linewatch.training.fit import input_spec_for
from linewatch.training.proxy_defects import KINDS, benign_copies, benign_shift, draw_defect, proxy_images


def _texture_inputs(n: int, size: int = 64, seed: int = 0) -> np.ndarray:
    """Normalised model inputs ``(n, 3, size, size)`` of a striped texture with noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    base = 0.5 + 0.3 * np.sin(xx / 3.0)
    imgs = [np.clip(base + rng.normal(0, 0.05, base.shape), 0, 1) for _ in range(n)]
    x = np.stack([np.repeat(i[None], 3, axis=0) for i in imgs]).astype(np.float32)
    return (x - 0.5) / 0.5


@pytest.mark.parametrize("cand", [Candidate("a", (8, 16), 3, 11), Candidate("b", (16,), 1, 8),
                                  Candidate("c", (8,), 3, 8)])
def test_shared_taps_give_the_exported_features(cand):
    images = _texture_inputs(3)
    taps = lite0_taps(images, 2, lambda _m: None)
    cfg = cand.applied_to(TrainConfig())
    want = extract(lite0_features_for(cfg.model).eval(), images, 2)
    got = maps_for(taps, cand)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_each_proxy_defect_changes_pixels_mostly_inside_its_mask(kind):
    rng = np.random.default_rng(1)
    img = np.clip(rng.normal(0.5, 0.05, (64, 64, 3)), 0, 1).astype(np.float32)
    donor = np.clip(rng.normal(0.3, 0.2, (64, 64, 3)), 0, 1).astype(np.float32)
    out, mask = draw_defect(img, donor, kind, np.random.default_rng(2))
    changed = np.abs(out - img).max(axis=2) > 0.02
    assert out.shape == img.shape and mask.any() and changed.any()
    near = torch.nn.functional.max_pool2d(torch.from_numpy(mask)[None, None], 7, 1, 3)[0, 0].numpy() > 0
    assert not (changed & ~near).sum() > 0.01 * (~near).sum()    # nothing far from the mask changes


def test_proxy_images_and_benign_shift_shapes():
    rng = np.random.default_rng(0)
    imgs = rng.random((3, 32, 32, 1)).astype(np.float32)
    defects, benign, kinds = proxy_images(imgs, imgs, 4, seed=0)
    assert defects.shape == (12, 32, 32, 1) and benign.shape == imgs.shape
    assert sorted(set(kinds)) == sorted(KINDS)
    assert benign_shift(imgs[0], rng).shape == imgs[0].shape


def test_selection_records_every_candidate_and_resolves_the_config():
    images = _texture_inputs(16)
    groups = [str(i % 4) for i in range(16)]
    cfg = config_from_dict({"model": {"image_size": 64}, "density": {"bank_size": 64, "max_candidates": 2000}})
    spec = input_spec_for(cfg)
    copies = benign_copies(images, spec.mean, spec.std, 1, seed=0)
    resolved, record, maps, copy_maps = select_configuration(images, groups, cfg, spec, copies)
    names = [c["candidate"] for c in record["candidates"]]
    assert len(names) >= len(autoconfig.FEATURE_OPTIONS) + 2 + 2
    assert all(0.0 <= c["proxy_auroc"] <= 1.0 for c in record["candidates"])
    chosen = record["chosen_settings"]
    assert resolved.autoconfig.enabled is False
    assert (list(resolved.model.feature_strides), resolved.model.patch_pool, resolved.scoring.top_k) == \
        (list(chosen["feature_strides"]), chosen["patch_pool"], chosen["top_k"])
    module = lite0_features_for(resolved.model).eval()
    np.testing.assert_allclose(maps, extract(module, images, 8), atol=1e-4)   # batch sizes differ: rounding
    np.testing.assert_allclose(copy_maps, extract(module, copies, 8), atol=1e-4)


def test_the_incumbent_stays_unless_beaten_by_the_margin():
    table: list[dict] = []
    a, b = Candidate("a"), Candidate("b", patch_pool=1)
    figs = {"a": 0.80, "b": 0.80 + autoconfig.MIN_GAIN / 2}
    pick = lambda c: {"proxy_auroc": figs[c.name], "auroc_vs_good": 0.0, "benign_vs_good_auroc": 0.5}  # noqa: E731
    assert autoconfig._stage([a, b], pick, "s", table, lambda _m: None) is a
    figs["b"] = 0.80 + 2 * autoconfig.MIN_GAIN
    assert autoconfig._stage([a, b], pick, "s", table, lambda _m: None) is b


def test_too_few_images_or_one_group_skip_with_a_reason():
    images = _texture_inputs(4)
    cfg = TrainConfig()
    resolved, record, maps, copy_maps = select_configuration(images, ["a"] * 4, cfg, input_spec_for(cfg))
    assert maps is None and copy_maps is None and resolved is cfg and "skipped" in record


def test_stored_configs_from_before_self_configuration_keep_their_settings():
    assert config_from_stored({"model": {"lite0_blocks": 8}}, "x").autoconfig.enabled is False
    assert config_from_dict({}).autoconfig.enabled is True


def test_near_duplicates_share_a_group_and_distinct_images_do_not():
    from linewatch.training.folds import merge_near_duplicates

    rng = np.random.default_rng(0)
    distinct = rng.normal(size=(20, 3, 32, 32)).astype(np.float32)
    groups = [str(i) for i in range(30)]
    copies = distinct[:10] + rng.normal(0, 0.05, (10, 3, 32, 32)).astype(np.float32)
    merged, joined = merge_near_duplicates(np.concatenate([distinct, copies]), groups)
    assert joined == 10 and all(merged[20 + i] == merged[i] for i in range(10))
    assert len(set(merged[:20])) == 20
    assert merge_near_duplicates(distinct, groups[:20]) == (groups[:20], 0)


def test_the_trained_bundle_records_the_selection_and_scores_as_chosen(small_bundle):
    from linewatch.runtime.bundle import Bundle

    m = Bundle.load(small_bundle).manifest
    sel, sc = m.selection, m.scoring
    assert sel["chosen"] and len(sel["candidates"]) >= len(autoconfig.FEATURE_OPTIONS)
    chosen = sel["chosen_settings"]
    assert (sc.feature_strides, sc.patch_pool, sc.top_k, sc.whiten, sc.global_branch, sc.position_weight) == \
        (list(chosen["feature_strides"]), chosen["patch_pool"], chosen["top_k"], chosen["whiten"],
         chosen["global_branch"], chosen["position_weight"])
    assert m.lineage["config"]["autoconfig"]["enabled"] is False     # the stored config is the resolved one
