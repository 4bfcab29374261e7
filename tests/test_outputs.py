"""Model outputs beyond a tensor (``landscape.outputs``): the rule of :func:`logits_of`, and every
probe giving the same numbers for a model that returns ``(logits, aux)``, ``{"logits": ...}`` or
an object with ``.logits`` as for the same model returning the plain logits tensor.

The reference is the plain-tensor model itself: the wrapped models share its class (a subclass
whose ``forward`` packs the parent's logits), its weights and its parameter names, so equal
results are a check that each probe reads the logits out of the output and nothing else; the
comparisons are exact (same seed, same arithmetic).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from landscape.datasets import load_dataset
from landscape.errors import ConfigError
from landscape.evaluate import evaluate
from landscape.features import extract_features
from landscape.models import build_model
from landscape.outputs import OutputError, logits_of
from landscape.probes.base import PROBES, ProbeContext, make_config
from landscape.train.losses import build_loss

try:
    from transformers.modeling_outputs import SequenceClassifierOutput
except ImportError:  # transformers is an optional test dependency
    SequenceClassifierOutput = None


@dataclass
class Output:
    """A ``ModelOutput``-like object: logits plus something else."""

    logits: torch.Tensor
    hidden: torch.Tensor | None = None


def pack(z: torch.Tensor, kind: str):
    aux = z.sum(-1)  # extra tensors in the output must be ignored
    if kind == "tuple":
        return z, aux
    if kind == "dict":
        return {"aux": aux, "logits": z}
    if kind == "object":
        return Output(logits=z, hidden=aux)
    if kind == "hf":
        return SequenceClassifierOutput(logits=z, hidden_states=(aux,))
    if kind == "str":
        return "not logits"
    if kind == "int":
        return 3
    raise AssertionError(kind)


def wrapped(model: nn.Module, kind: str) -> nn.Module:
    """A copy of ``model`` (same weights, same parameter names) whose forward returns ``pack(logits)``."""
    base = type(model)

    def forward(self, x):
        return pack(base.forward(self, x), kind)

    out = copy.deepcopy(model)
    out.__class__ = type(f"{kind.title()}{base.__name__}", (base,), {"forward": forward})
    return out


KINDS = ["tuple", "dict", "object"] + (["hf"] if SequenceClassifierOutput is not None else [])


# ---- the rule ----------------------------------------------------------------------------------


def test_logits_of_rule():
    z = torch.randn(4, 3)
    assert logits_of(z) is z
    for kind in KINDS:
        assert logits_of(pack(z, kind)) is z
    assert logits_of([z, 1]) is z
    assert logits_of({"logits": z}) is z
    assert logits_of(("anything", z), output_fn=lambda out: out[1]) is z


@pytest.mark.parametrize("bad, named", [
    ("not logits", "str"), (3, "int"), ((), "tuple"), (("a", torch.zeros(1)), "str"),
    ({"scores": torch.zeros(1)}, "dict"), (None, "NoneType"),
])
def test_logits_of_bad_output_is_one_config_line(bad, named):
    with pytest.raises(ConfigError) as err:
        logits_of(bad)
    msg = str(err.value)
    assert isinstance(err.value, OutputError)
    assert "\n" not in msg and named in msg and "output_fn" in msg


def test_output_fn_must_return_a_tensor():
    with pytest.raises(OutputError, match="output_fn .* is str, not a tensor"):
        logits_of(torch.zeros(2), output_fn=lambda out: "x")


# ---- every probe, every output kind ------------------------------------------------------------


@pytest.fixture(scope="module")
def problem():
    """A briefly trained MLP on 200 digits (so accuracy-based results are not trivial)."""
    data = load_dataset("digits", train_size=200)
    torch.manual_seed(0)
    model = build_model("mlp", data.input_shape, data.num_classes, width=16, depth=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    ce = build_loss("ce").per_sample
    for _ in range(60):
        opt.zero_grad()
        ce(model(data.train.x), data.train.y).mean().backward()
        opt.step()
    return model.eval(), ce, data


PROBE_SETTINGS = {
    "hessian": dict(top_k=3, bottom_k=1, lanczos_steps=20, trace_samples=8, density=True, density_steps=10,
                    per_layer=True, dtype="float64"),
    "surface": dict(x="-1:1:3", y="-0.5:0.5:3", splits="train,test"),
    "surface_vmap": dict(x="-1:1:3", y="-0.5:0.5:3", splits="train,test", vectorize="vmap"),
    "sharpness": dict(kind="worst", rhos=(0.01, 0.05), m=50, iters=5, subset=200, first_order_iters=3,
                      pac_bayes=True, pac_draws=2, pac_steps=6),
    "sharpness_average": dict(kind="average", norm="l2", rhos=(0.05,), m=100, samples_avg=4, subset=200,
                              first_order_rho=None, pac_bayes=False),
    "coherence": dict(subset=64, method="hooks"),
    "coherence_vmap": dict(subset=64, method="vmap"),
    "collapse": dict(samples=100),
    "rankme": dict(samples=100),
    "dse": dict(samples=100),
}


def run_probe(name: str, model: nn.Module, loss, data) -> dict:
    probe = name.split("_")[0]
    ctx = ProbeContext(model=model, loss=loss, data=data, device=torch.device("cpu"))
    torch.manual_seed(0)
    return PROBES[probe].run(ctx, make_config(probe, **PROBE_SETTINGS[name]))


def assert_same(a, b, where=""):
    if isinstance(a, dict):
        assert isinstance(b, dict) and sorted(a) == sorted(b), where
        for k in a:
            assert_same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (str, bytes)):
        assert a == b, where
    else:
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=where)


@pytest.fixture(scope="module")
def reference(problem):
    model, loss, data = problem
    return {name: run_probe(name, model, loss, data) for name in PROBE_SETTINGS}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", list(PROBE_SETTINGS))
def test_probe_reads_logits_from_any_output(problem, reference, name, kind):
    model, loss, data = problem
    out = run_probe(name, wrapped(model, kind), loss, data)
    assert_same(reference[name], out, name)


def test_reference_is_not_trivial(reference):
    """The compared results carry information: a curved surface, a finite PAC-Bayes σ, a spectrum."""
    surf = reference["surface"]["train_loss"]
    assert np.ptp(surf) > 0 and np.ptp(reference["surface"]["train_acc"]) > 0
    assert np.isfinite(reference["sharpness"]["pac_bayes"]["sigma"])
    assert reference["hessian"]["eigenvalues"][0] > 0


@pytest.mark.parametrize("kind", KINDS)
def test_evaluate_and_features_read_logits(problem, kind):
    model, loss, data = problem
    x, y = data.test.x, data.test.y
    assert evaluate(wrapped(model, kind), x, y, {"ce": loss}) == evaluate(model, x, y, {"ce": loss})
    f0, z0 = extract_features(model, x)
    f1, z1 = extract_features(wrapped(model, kind), x)
    assert torch.equal(f0, f1) and torch.equal(z0, z1)
    with torch.no_grad():
        assert torch.equal(z0, model(x))


def test_output_fn_reaches_the_probes(problem, reference):
    """A context's ``output_fn`` decides what the probes read (here: logits stored under 'scores')."""
    model, loss, data = problem
    odd = wrapped(model, "dict")
    odd.__class__.forward = lambda self, x: {"scores": type(model).forward(self, x)}
    for name in ("hessian", "surface", "sharpness_average", "coherence", "collapse"):
        probe = name.split("_")[0]
        ctx = ProbeContext(model=odd, loss=loss, data=data, device=torch.device("cpu"),
                           output_fn=lambda out: out["scores"])
        torch.manual_seed(0)
        assert_same(reference[name], PROBES[probe].run(ctx, make_config(probe, **PROBE_SETTINGS[name])), name)


@pytest.mark.parametrize("kind, named", [("str", "str"), ("int", "int")])
@pytest.mark.parametrize("name", ["hessian", "surface", "surface_vmap", "sharpness", "coherence",
                                  "coherence_vmap", "collapse", "rankme", "dse"])
def test_bad_output_is_one_config_line(problem, name, kind, named):
    model, loss, data = problem
    with pytest.raises(ConfigError) as err:
        run_probe(name, wrapped(model, kind), loss, data)
    msg = str(err.value)
    assert "\n" not in msg and f"type {named}" in msg and "output_fn" in msg
