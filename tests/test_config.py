import re
from pathlib import Path

import pytest

from linewatch.training.config import ConfigError, TrainConfig, config_from_dict, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_default_yaml_states_the_defaults():
    assert load_config(CONFIGS / "default.yaml") == TrainConfig()


def test_every_shipped_config_loads():
    for path in CONFIGS.glob("*.yaml"):
        load_config(path)


@pytest.mark.parametrize("data, key", [
    ({"modle": {}}, "modle"),
    ({"density": {"bank_sise": 3}}, "bank_sise"),
    ({"model": {"backbone": "resnet"}}, "backbone"),
    ({"model": {"backbone": "lite0", "channels": 1}}, "channels"),
    ({"model": {"image_size": 100}}, "image_size"),
    ({"model": {"lite0_blocks": 12}}, "lite0_blocks"),
    ({"calibration": {"target_false_alarm_rate": 0.7}}, "target_false_alarm_rate"),
])
def test_bad_values_name_the_key(data, key):
    with pytest.raises(ConfigError, match=key):
        config_from_dict(data)


def test_a_stored_config_without_lite0_blocks_keeps_the_11_blocks_it_was_trained_with():
    """Checkpoints and bundle lineages written before `model.lite0_blocks` existed ran all 11 blocks;
    retraining them must rebuild those features, not today's default."""
    from linewatch.training.config import config_from_stored

    assert config_from_dict({}).model.lite0_blocks == 8
    assert config_from_stored({"model": {"image_size": 64}}, "old").model.lite0_blocks == 11
    assert config_from_stored({}, "old").model.lite0_blocks == 11
    assert config_from_stored({"model": {"lite0_blocks": 8}}, "new").model.lite0_blocks == 8


@pytest.mark.parametrize("bad, says", [
    ({"density": {"bank_size": "lots"}}, "config.density.bank_size must be a whole number, got 'lots'"),
    ({"density": {"whiten": 1}}, "config.density.whiten must be true or false"),
    ({"scoring": {"top_k": 2.5}}, "config.scoring.top_k must be a whole number"),
    ({"model": {"feature_strides": [8, "x"]}}, "config.model.feature_strides must be a list"),
    ({"model": {"feature_strides": 16}}, "config.model.feature_strides must be a list"),
])
def test_a_value_of_the_wrong_kind_is_named(bad, says):
    with pytest.raises(ConfigError, match=re.escape(says)):
        config_from_dict(bad)


def test_whole_numbers_are_fine_where_a_number_is_asked():
    assert config_from_dict({"density": {"bandwidth_factors": [1, 0.5], "whiten_shrinkage": 0}}).density.whiten_shrinkage == 0
