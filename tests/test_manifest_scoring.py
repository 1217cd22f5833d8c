"""The manifest's typed scoring section: written by export, checked on load, derived once for older bundles."""
from __future__ import annotations

import json
import shutil

import pytest

from linewatch.runtime.adapt import scoring_of
from linewatch.runtime.bundle import Bundle, BundleError, Scoring, seal_manifest


def _rewritten(src, dst, change) -> Bundle:
    """A copy of bundle ``src`` at ``dst`` whose manifest dict went through ``change`` (digest re-sealed)."""
    shutil.copytree(src, dst)
    m = json.loads((dst / "manifest.json").read_text())
    change(m)
    (dst / "manifest.json").write_text(json.dumps(m))
    seal_manifest(dst)
    return Bundle.load(dst)


def test_export_writes_the_scoring_section(small_bundle):
    raw = json.loads((small_bundle / "manifest.json").read_text())
    s = Bundle.load(small_bundle).manifest.scoring
    h, w = raw["model"]["map_height"], raw["model"]["map_width"]
    cfg = raw["lineage"]["config"]
    assert raw["scoring"]["top_k"] == s.top_k == min(cfg["scoring"]["top_k"], h * w)
    assert s.image_score == ("max" if s.top_k == 1 else "top-k mean")
    assert s.feature_strides == cfg["model"]["feature_strides"] and s.patch_pool == cfg["model"]["patch_pool"]
    assert s.lite0_blocks == cfg["model"]["lite0_blocks"] and s.whiten is cfg["density"]["whiten"]
    assert s.bandwidth == raw["density"]["bandwidth"] and s.density_level == 1


def test_a_bundle_written_before_the_section_derives_the_same_one(small_bundle, tmp_path):
    want = Bundle.load(small_bundle).manifest.scoring
    old = _rewritten(small_bundle, tmp_path / "old", lambda m: m.pop("scoring"))
    assert old.manifest.scoring == want
    assert scoring_of(old).top_k == want.top_k


def test_a_configuration_older_than_its_keys_gives_what_the_model_was_trained_with(small_bundle, tmp_path):
    def first_version(m):
        m.pop("scoring")
        cfg = m["lineage"]["config"]
        cfg.pop("scoring")
        for key in ("feature_strides", "patch_pool", "lite0_blocks"):
            cfg["model"].pop(key)
        for key in ("whiten", "whiten_shrinkage", "level"):
            cfg["density"].pop(key)

    s = _rewritten(small_bundle, tmp_path / "first", first_version).manifest.scoring
    assert (s.top_k, s.image_score, s.feature_strides, s.patch_pool, s.lite0_blocks, s.whiten) == \
        (1, "max", [8, 16], 3, 11, False)


def test_adapt_reads_the_scoring_section_not_the_training_configuration(small_bundle, small_category, tmp_path):
    from linewatch.runtime.adapt import adapt_bundle

    def no_config(m):
        m["lineage"].pop("config")
        m["scoring"]["top_k"] = 1
        m["scoring"]["image_score"] = "max"

    parent = _rewritten(small_bundle, tmp_path / "parent", no_config)
    good = sorted((small_category / "validation/good").glob("*.png"))
    _, summary = adapt_bundle(parent, good[:2], tmp_path / "child", threads=1)
    child = Bundle.load(tmp_path / "child")
    assert child.manifest.scoring == parent.manifest.scoring
    assert "max" in child.manifest.scoring.image_score and summary["images"] == 2


def test_a_manifest_with_neither_section_nor_configuration_cannot_be_adapted(small_bundle, tmp_path):
    def bare(m):
        m.pop("scoring")
        m["lineage"].pop("config")

    old = _rewritten(small_bundle, tmp_path / "bare", bare)
    assert old.manifest.scoring is None
    with pytest.raises(BundleError, match="no scoring section.*re-export"):
        scoring_of(old)


GOOD = {"top_k": 20, "image_score": "top-k mean", "feature_strides": [16], "patch_pool": 3, "lite0_blocks": 8,
        "whiten": True, "whiten_shrinkage": 0.05, "density_level": 1, "bandwidth": 2.5}


@pytest.mark.parametrize("field,value", [
    ("top_k", "20"), ("top_k", 0), ("top_k", True), ("image_score", "mean"), ("image_score", "max"),
    ("feature_strides", []), ("feature_strides", [16, "8"]), ("patch_pool", 2), ("lite0_blocks", 8.0),
    ("whiten", "yes"), ("whiten_shrinkage", 1.5), ("density_level", 0), ("bandwidth", -1.0),
    ("bandwidth", float("nan")),
])
def test_a_wrong_field_is_refused_by_name(field, value):
    with pytest.raises(BundleError, match=rf"scoring\.{field}.*re-export"):
        Scoring.from_dict({**GOOD, field: value}, "m.json")


def test_missing_unknown_and_valid_sections():
    with pytest.raises(BundleError, match=r"scoring\.bandwidth is missing.*re-export"):
        Scoring.from_dict({k: v for k, v in GOOD.items() if k != "bandwidth"}, "m.json")
    with pytest.raises(BundleError, match=r"unknown field.*colour_weight"):
        Scoring.from_dict({**GOOD, "colour_weight": 0.5}, "m.json")
    with pytest.raises(BundleError, match="not a JSON object"):
        Scoring.from_dict([1, 2], "m.json")
    s = Scoring.from_dict({**GOOD, "whiten_shrinkage": 0, "lite0_blocks": None}, "m.json")
    assert isinstance(s.whiten_shrinkage, float) and s.lite0_blocks is None
    assert Scoring.from_dict({**GOOD, "top_k": 1, "image_score": "max"}, "m.json").image_score == "max"
