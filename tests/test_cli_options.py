"""The shared options' text → values (landscape_cli.options): probe settings of tuple and union
types, and the specs of a foreign checkpoint, its missing shapes taken from the named dataset."""

import pytest

from landscape.errors import ConfigError
from landscape_cli.options import foreign_specs, parse_setting


@pytest.mark.parametrize("tp, text, value", [
    (tuple[float, ...], "0.1, 0.2,", (0.1, 0.2)),
    (tuple[float, float], "0.5,0.05", (0.5, 0.05)),
    (float | None, "none", None),
    (float | str, "2.5", 2.5),
    (float | str, "median", "median"),
    (bool | None, "true", True),
    (bool | None, "0", False),
])
def test_parse_setting(tp, text, value):
    assert parse_setting(tp, "--x", text) == value


@pytest.mark.parametrize("tp, text, message", [
    (tuple[float, float], "0.5", "--x must be 2 comma-separated float values (e.g. 0.1,0.2), got '0.5'"),
    (tuple[float, ...], "a,b", "--x must be comma-separated float values (e.g. 0.1,0.2), got 'a,b'"),
    (int | None, "x", "--x must be int or none, got 'x'"),
])
def test_parse_setting_mistakes(tp, text, message):
    with pytest.raises(ConfigError) as info:
        parse_setting(tp, "--x", text)
    assert str(info.value) == message


def _specs(**given):
    args = dict(model=None, model_param=None, num_classes=None, input_shape=None, factory=None, dataset=None,
                dataset_param=None, loss=None)
    return foreign_specs(**{**args, **given})


def test_a_registered_model_gets_its_shapes_from_the_named_dataset():
    model, data = _specs(model="mlp", model_param=["width=8"], dataset="digits")
    # sklearn's digits: 8×8 one-channel images of 10 classes
    assert (model.name, model.input_shape, model.num_classes, model.params) == ("mlp", (1, 8, 8), 10, {"width": 8})
    assert (data.dataset, data.loss, data.task) == ("digits", "ce", "classification")
    given, _ = _specs(model="mlp", input_shape="64", dataset="digits")
    assert (given.input_shape, given.num_classes) == ((64,), 10)  # only what is missing is filled in


def test_without_a_dataset_or_with_a_factory_nothing_is_inferred():
    model, data = _specs(model="mlp")
    assert model.input_shape is None and model.num_classes is None and not data.named
    model, _ = _specs(factory="pkg.mod:fn", dataset="digits")
    assert model.factory == "pkg.mod:fn" and model.input_shape is None
    assert _specs() == (None, _specs()[1])


@pytest.mark.parametrize("given, message", [
    (dict(input_shape="3,x"), "--input-shape takes integers like 3,32,32, got '3,x'"),
    (dict(dataset="digits", data_factory="m:f"), "give --dataset or --data-factory, not both"),
    (dict(model="mlp", model_param=["width"]), "--model-param takes KEY=VALUE, got 'width'"),
])
def test_foreign_option_mistakes(given, message):
    with pytest.raises(ConfigError) as info:
        _specs(**given)
    assert str(info.value) == message
