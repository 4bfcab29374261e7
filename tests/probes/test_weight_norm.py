"""The weight-norm probe against torch's own norms, stored and used as a measure."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from landscape.analyze import MEASURES, analyze
from landscape.probes import PROBES
from landscape.probes.weight_norm import weight_norms
from landscape.store import Store
from landscape.study import collect_runs, measure_family


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(7, 5), nn.ReLU(), nn.Linear(5, 3, bias=False)).double()


def test_total_and_per_layer_norms_equal_torch_norms():
    model = _mlp()
    out = weight_norms(model)
    everything = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert out["weight_norm"] == pytest.approx(float(torch.linalg.vector_norm(everything)), rel=1e-14)
    assert out["num_params"] == 7 * 5 + 5 + 5 * 3
    assert [n.decode() for n in out["layers"]["names"]] == ["0", "2"]
    first = torch.cat([model[0].weight.reshape(-1), model[0].bias]).detach()
    np.testing.assert_allclose(out["layers"]["norm"],
                               [float(torch.linalg.vector_norm(first)), float(torch.linalg.norm(model[2].weight.detach(), "fro"))],
                               rtol=1e-14)
    np.testing.assert_array_equal(out["layers"]["num_params"], [40, 15])
    assert "layers" not in weight_norms(model, per_layer=False)


def test_a_tied_tensor_counts_once_and_frozen_parameters_not_at_all():
    model = _mlp()
    model.add_module("tied", nn.Linear(5, 3, bias=False))
    model.tied.weight = model[2].weight  # the same tensor under two names
    model[0].bias.requires_grad_(False)
    out = weight_norms(model)
    trainable = torch.cat([model[0].weight.reshape(-1), model[2].weight.reshape(-1)]).detach()
    assert out["weight_norm"] == pytest.approx(float(torch.linalg.vector_norm(trainable)), rel=1e-14)
    assert out["num_params"] == 35 + 15


def test_the_probe_stores_the_norms_of_each_checkpoint_and_declares_a_measure(run_copy):
    assert PROBES["weight_norm"].default is None  # opt-in, not among analyze's defaults
    assert MEASURES["weight_norm"] == ("weight_norm", "weight_norm") and measure_family("weight_norm") == "norm-based"
    assert analyze(run_copy, "weight_norm", checkpoints="all", device="cpu").failures == {}
    store = Store(run_copy / "analysis.h5")
    files = sorted((run_copy / "checkpoints").glob("*.safetensors"))
    assert sorted(store.groups()) == [f"{f.stem}/weight_norm" for f in files]
    for f in files:  # the MLP's tensors are its parameters: features.1 and classifier, weight and bias
        tensors = load_file(f)
        arrays, attrs = store.read(f"{f.stem}/weight_norm")
        everything = torch.cat([t.double().reshape(-1) for t in tensors.values()])
        assert arrays["weight_norm"] == pytest.approx(float(torch.linalg.vector_norm(everything)), rel=1e-12)
        assert arrays["num_params"] == everything.numel()
        assert list(arrays["layers"]["names"]) == ["features.1", "classifier"]
        layer = torch.cat([tensors["classifier.weight"].double().reshape(-1), tensors["classifier.bias"].double()])
        assert arrays["layers"]["norm"][1] == pytest.approx(float(torch.linalg.vector_norm(layer)), rel=1e-12)
        assert attrs["settings"] == {"per_layer": True}
    last = store.read(f"{files[-1].stem}/weight_norm")[0]["weight_norm"]
    assert collect_runs([run_copy])[0]["weight_norm"] == pytest.approx(float(last), rel=1e-15)
