import pytest
import torch
from torch import nn

from landscape.errors import ConfigError
from landscape.models import MODELS, build_model, count_parameters, model_params
from landscape.registry import UnknownNameError

SHAPES = {"mlp": (1, 8, 8), "cnn": (3, 16, 16), "resnet20": (3, 32, 32), "transformer": (6,),
          "vit": (3, 16, 16)}
PARAMS = {"transformer": {"vocab": 11, "width": 16, "heads": 2}}  # token ids in [0, 11)


@pytest.mark.parametrize("name", MODELS.names())
def test_every_model_builds_runs_and_ends_in_a_classifier(name):
    torch.manual_seed(0)
    model = build_model(name, SHAPES[name], 7, **PARAMS.get(name, {}))
    x = torch.randn(5, *SHAPES[name])
    if "vocab" in PARAMS.get(name, {}):
        x = torch.randint(0, PARAMS[name]["vocab"], (5, *SHAPES[name]))
    out = model(x)
    assert out.shape == (5, 7)
    assert isinstance(model.classifier, nn.Linear) and model.classifier.out_features == 7
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_resnet20_has_the_published_parameter_count():
    # He et al. 2016, Table 6: ResNet-20 has 0.27M parameters.
    model = build_model("resnet20", (3, 32, 32), 10)
    assert 0.265e6 < count_parameters(model) < 0.275e6
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) + 1 == 20  # 19 3×3 convolutions + the classifier


def test_resnet_variants_drop_skips_and_batchnorm():
    plain = build_model("resnet20", (3, 32, 32), 10, skip=False, batchnorm=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert all(not b.skip for b in plain.modules() if b.__class__.__name__ == "BasicBlock")
    # with skips off, zeroing the residual branch kills the signal; with skips on it survives
    for skip, alive in ((True, True), (False, False)):
        m = build_model("resnet20", (3, 32, 32), 10, skip=skip, batchnorm=False, blocks=1)
        block = m.features[3]
        with torch.no_grad():
            block.conv2.weight.zero_()
            block.conv2.bias.zero_()
        x = torch.relu(torch.randn(2, 16, 8, 8))
        assert bool(block(x).abs().sum() > 0) is alive


def test_mlp_width_depth_activation():
    m = build_model("mlp", (4,), 3, width=5, depth=3, activation="tanh")
    linears = [mod for mod in m.modules() if isinstance(mod, nn.Linear)]
    assert [lin.out_features for lin in linears] == [5, 5, 5, 3]
    assert sum(isinstance(a, nn.Tanh) for a in m.modules()) == 3
    assert model_params("mlp")["width"] == 128


def test_bad_model_specs_fail_clearly():
    with pytest.raises(UnknownNameError, match="valid model names: cnn, mlp, resnet20"):
        build_model("vgg", (3, 32, 32), 10)
    with pytest.raises(ConfigError, match="unknown parameter.*widht.*accepted: width="):
        build_model("mlp", (4,), 3, widht=3)
    with pytest.raises(ConfigError, match="image inputs"):
        build_model("resnet20", (64,), 10)
    with pytest.raises(UnknownNameError, match="activation"):
        build_model("mlp", (4,), 3, activation="sigmoidd")
