import json

import pytest

from landscape.errors import ConfigError
from landscape.train.config import TrainConfig, checkpoint_steps, parse_checkpoint_schedule


def test_json_round_trip(tmp_path):
    cfg = TrainConfig(model="cnn", model_params={"channels": 8}, optimizer="sam",
                      optimizer_params={"rho": 0.1}, lr=0.2, flooding=0.01, train_size=100)
    path = tmp_path / "c.json"
    path.write_text(cfg.to_json())
    assert TrainConfig.from_json(path) == cfg
    # a run's config.json (wrapped) reads back too
    path.write_text(json.dumps({"config": cfg.to_dict(), "versions": {}}))
    assert TrainConfig.from_json(path) == cfg


def test_frozen_and_replace_and_diff():
    cfg = TrainConfig()
    with pytest.raises(AttributeError):
        cfg.lr = 1.0  # type: ignore[misc]
    other = cfg.replace(lr=0.5, epochs=3)
    assert cfg.diff(other) == {"lr": (cfg.lr, 0.5), "epochs": (cfg.epochs, 3)}
    assert other.replace(lr=1).lr == 1.0 and isinstance(other.replace(lr=1).lr, float)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"lrr": 0.1}, "unknown config key\\(s\\) lrr; valid keys: model, "),
        ({"lr": "fast"}, "'lr' must be float"),
        ({"epochs": 2.5}, "'epochs' must be int"),
        ({"epochs": True}, "'epochs' must be int"),
        ({"model_params": [1]}, "'model_params' must be dict"),
        ({"lr": -1}, "lr must be a positive number"),
        ({"label_noise": 1.5}, "label_noise must be in \\[0, 1\\]"),
        ({"checkpoints": "sometimes"}, "bad checkpoint schedule 'sometimes'"),
        ({"model": None}, "'model' must not be null"),
    ],
)
def test_malformed_configs_fail_with_one_line(data, message):
    with pytest.raises(ConfigError, match=message) as info:
        TrainConfig.from_dict(data)
    assert "\n" not in str(info.value)


def test_bad_json_file(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"lr": 0.1,,}')
    with pytest.raises(ConfigError, match="not valid JSON \\(line 1, column 12"):
        TrainConfig.from_json(path)
    with pytest.raises(ConfigError, match="cannot read config file"):
        TrainConfig.from_json(tmp_path / "missing.json")
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="must be a JSON object"):
        TrainConfig.from_json(path)


def test_checkpoint_schedules():
    assert checkpoint_steps("every:2", 10, 50) == [0, 20, 40, 50]
    assert checkpoint_steps("epochs:1,2.5", 10, 50) == [0, 10, 25, 50]
    assert checkpoint_steps("steps:3,7,999", 10, 50) == [0, 3, 7, 50]
    assert checkpoint_steps("none", 10, 50) == [0, 50]
    log = checkpoint_steps("log:5", 10, 10_000)
    assert log == [0, 1, 10, 100, 1000, 10_000]
    assert parse_checkpoint_schedule("every:3") == ("every", [3.0])
    for bad in ("every:0", "every:", "log:x", "epochs:-1", "weekly"):
        with pytest.raises(ConfigError):
            parse_checkpoint_schedule(bad)
