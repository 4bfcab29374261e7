import pytest
import torch
from torch import nn

from landscape.errors import ConfigError, LandscapeError
from landscape.features import extract_features, find_classifier
from landscape.models import build_model


@pytest.mark.parametrize(
    ("name", "shape", "params"),
    [
        ("mlp", (1, 6, 6), {"width": 16, "depth": 2}),
        ("cnn", (3, 8, 8), {"channels": 4, "width": 12}),
        ("cnn", (3, 8, 8), {"channels": 4, "width": 12, "batchnorm": True}),
        ("mlp", (10,), {"width": 16, "norm": "batchnorm"}),
    ],
)
def test_default_features_are_the_classifier_input_in_eval_mode(name, shape, params):
    torch.manual_seed(0)
    model = build_model(name, shape, 5, **params)
    x = torch.randn(37, *shape)
    model.train()
    model(torch.randn(8, *shape))  # non-trivial BatchNorm running statistics
    state = {k: v.clone() for k, v in model.state_dict().items()}

    feats, logits = extract_features(model, x, batch_size=10)

    assert model.training  # mode restored
    assert not model.classifier._forward_pre_hooks  # hook removed
    for k, v in model.state_dict().items():  # eval(): running statistics untouched
        assert torch.equal(v, state[k]), k
    model.eval()
    with torch.no_grad():
        ref_feats, ref_logits = model.features(x), model(x)
    model.train()
    assert feats.shape == (37, ref_feats.shape[1]) and logits.shape == (37, 5)
    torch.testing.assert_close(feats, ref_feats, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-6, atol=1e-6)
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        with torch.no_grad():
            train_feats = model.features(x)
        assert not torch.allclose(train_feats, feats, atol=1e-4)  # batch statistics differ


def test_eval_model_stays_in_eval_and_named_layer_is_flattened():
    torch.manual_seed(0)
    model = build_model("cnn", (3, 8, 8), 4, channels=2, width=6).eval()
    x = torch.randn(9, 3, 8, 8)
    feats, _ = extract_features(model, x, layer="features.6")  # the Flatten's input
    assert not model.training
    with torch.no_grad():
        ref = model.features[:6](x)
    assert ref.ndim == 4
    torch.testing.assert_close(feats, ref.reshape(9, -1))


def test_find_classifier_returns_the_last_linear_or_a_named_one():
    model = build_model("mlp", (4,), 3, width=5, depth=2)
    w, b = find_classifier(model)
    assert w.shape == (3, 5) and b.shape == (3,)
    assert torch.equal(w, model.classifier.weight) and not w.requires_grad
    w0, _ = find_classifier(model, "features.1")
    assert w0.shape == (5, 4)
    nobias = build_model("mlp", (4,), 3, width=5, bias=False)
    assert find_classifier(nobias)[1] is None
    with pytest.raises(ConfigError, match="not an nn.Linear"):
        find_classifier(model, "features.2")


def test_bad_layer_name_lists_valid_names():
    model = build_model("mlp", (4,), 3, width=5)
    with pytest.raises(
        ConfigError,
        match=r"unknown layer 'clasifier'.*did you mean 'classifier'.*valid module names",
    ):
        extract_features(model, torch.randn(2, 4), layer="clasifier")
    with pytest.raises(ConfigError, match="batch_size"):
        extract_features(model, torch.randn(2, 4), batch_size=0)
    assert model.training and not model.classifier._forward_pre_hooks


def test_module_called_twice_is_an_error_and_cleans_up():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = nn.Linear(3, 3)
            self.classifier = nn.Linear(3, 2)

        def forward(self, x):
            return self.classifier(self.block(self.block(x)))

    model = Twice()
    with pytest.raises(LandscapeError, match="ran 2 times"):
        extract_features(model, torch.randn(4, 3), layer="block")
    assert not model.block._forward_pre_hooks and model.training
