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
