"""Cached gradient graphs across batches within a memory budget (``HessianOperator``).

Every product is checked against the dense float64 Hessian; "no graph is rebuilt" is checked by
counting the model's forward passes with a hook, never by timing.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from landscape.errors import ConfigError
from landscape.linalg import HessianOperator
from landscape.params import call
from landscape.probes.hessian import HessianConfig, hessian
from tests.hessian_cases import CASES, CE, dense_hessian

F64 = torch.float64


@pytest.fixture(params=list(CASES), scope="module")
def case(request):
    model, x, y = CASES[request.param]()
    return model, x, y, dense_hessian(model, x, y)


def quarter(x) -> int:
    """The batch size that cuts the case's data into 4 equal batches."""
    assert len(x) % 4 == 0
    return len(x) // 4


class Forwards:
    """Counts the model's forward passes (a forward hook on the root module)."""

    def __init__(self, model):
        self.n = 0
        self.handle = model.register_forward_hook(self._hook)

    def _hook(self, *_):
        self.n += 1

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.handle.remove()


def _vectors(size, k=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(size, generator=g, dtype=F64) for _ in range(k)]


def test_a_budget_covering_every_batch_builds_each_graph_once(case):
    model, x, y, H = case
    op = HessianOperator(model, CE, x, y, dtype=F64, batch_size=quarter(x))
    with Forwards(model) as fw:
        hv = [op.matvec(v) for v in _vectors(op.size)]
    assert fw.n == 4  # one forward per batch, at the first product only
    for v, h in zip(_vectors(op.size), hv, strict=True):
        torch.testing.assert_close(h, H @ v, rtol=1e-10, atol=1e-12)
    info = op.hvp_info()
    assert info["hvp_method"] == "cached_graph" and info["hvp_batches"] == 4 and info["hvp_cached_batches"] == 4
    assert info["hvp_graph_mb"] > 0 and info["memory_budget_mb"] == 1024.0


def test_a_tiny_budget_falls_back_to_double_backward_with_the_same_product(case):
    model, x, y, H = case
    op = HessianOperator(model, CE, x, y, dtype=F64, batch_size=quarter(x), memory_budget_mb=0)
    reference = HessianOperator(model, CE, x, y, dtype=F64, batch_size=quarter(x), method="double_backward")
    with Forwards(model) as fw:
        hv = [op.matvec(v) for v in _vectors(op.size)]
    assert fw.n == 4 + 3 + 3  # the first batch's graph is kept; the other three rebuilt per product
    for v, h in zip(_vectors(op.size), hv, strict=True):
        torch.testing.assert_close(h, H @ v, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(h, reference.matvec(v), rtol=1e-12, atol=1e-14)
    info = op.hvp_info()
    assert info["hvp_method"] == "cached_graph+double_backward" and info["hvp_cached_batches"] == 1


def test_a_budget_for_two_graphs_keeps_two_measured_graphs(case):
    model, x, y, H = case
    full = HessianOperator(model, CE, x, y, dtype=F64, batch_size=quarter(x))
    full.matvec(torch.ones(full.size, dtype=F64))
    per_graph_mb = full.hvp_info()["hvp_graph_mb"] / 4  # equal batches: equal graphs
    op = HessianOperator(model, CE, x, y, dtype=F64, batch_size=quarter(x), memory_budget_mb=2.5 * per_graph_mb)
    with Forwards(model) as fw:
        hv = [op.matvec(v) for v in _vectors(op.size)]
    assert fw.n == 4 + 2 + 2  # graphs of batches 0 and 1 kept, 2 and 3 rebuilt
    assert op.hvp_info()["hvp_cached_batches"] == 2
    assert op.hvp_info()["hvp_graph_mb"] == pytest.approx(2 * per_graph_mb)
    for v, h in zip(_vectors(op.size), hv, strict=True):
        torch.testing.assert_close(h, H @ v, rtol=1e-10, atol=1e-12)


def test_the_measured_graph_memory_holds_at_least_the_activations_it_must_save():
    model, x, y = CASES["mlp"]()  # 8 → 24 → 24 → 5, tanh: each tanh output is saved (60 × 24 values)
    op = HessianOperator(model, CE, x, y, dtype=F64)
    op.matvec(torch.ones(op.size, dtype=F64))
    held = op.hvp_info()["hvp_graph_mb"] * 2**20
    activations = 2 * 60 * 24 * 8  # two tanh outputs, float64
    gradient = op.size * 8  # the flat gradient the graph ends in
    assert activations + gradient <= held <= 40 * (activations + gradient)
    # and it grows with the batch: twice the samples, more than 1.5× the memory
    x2, y2 = torch.cat([x, x]), torch.cat([y, y])
    op2 = HessianOperator(model, CE, x2, y2, dtype=F64)
    op2.matvec(torch.ones(op.size, dtype=F64))
    assert op2.hvp_info()["hvp_graph_mb"] * 2**20 > 1.5 * held - gradient


@pytest.mark.parametrize("name", list(CASES))
def test_the_measured_graph_memory_is_what_building_it_leaves_allocated(name):
    """Reference: torch.profiler's net CPU allocations while the graphs are built (allocated − freed)."""
    model, x, y = CASES[name]()
    op = HessianOperator(model, CE, x, y, dtype=F64, batch_size=quarter(x))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        op.loss_and_gradient(keep_graphs=True)  # its returned values are freed inside the window
    net = sum(e.self_cpu_memory_usage for e in prof.key_averages())
    assert op.hvp_info()["hvp_cached_batches"] == 4
    assert op.hvp_info()["hvp_graph_mb"] * 2**20 == pytest.approx(net, rel=1e-3)


def test_loss_and_gradient_can_build_the_graphs_the_products_reuse(case):
    model, x, y, H = case
    op = HessianOperator(model, CE, x, y, dtype=F64, batch_size=quarter(x))
    plain = HessianOperator(model, CE, x, y, dtype=F64, batch_size=quarter(x))
    with Forwards(model) as fw:
        loss, grad = op.loss_and_gradient(keep_graphs=True)
        assert fw.n == 4
        hv = op.matvec(_vectors(op.size)[0])
        assert fw.n == 4  # the products reuse the graphs built with the gradient
    loss0, grad0 = plain.loss_and_gradient()
    # independent reference: autograd on the model's own parameters
    model64 = [p.detach().double().requires_grad_(True) for p in model.parameters()]
    names = [n for n, _ in model.named_parameters()]
    state = {n: t.detach().double() for n, t in model.state_dict().items()}
    value = CE(call(model, {**state, **dict(zip(names, model64, strict=True))}, x.double()), y).mean()
    expected = torch.cat([g.reshape(-1) for g in torch.autograd.grad(value, model64)])
    assert loss == pytest.approx(float(value.detach()), rel=1e-12) and loss0 == pytest.approx(float(value.detach()), rel=1e-12)
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad0, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(hv, H @ _vectors(op.size)[0], rtol=1e-10, atol=1e-12)


def test_released_graphs_are_rebuilt(case):
    model, x, y, H = case
    op = HessianOperator(model, CE, x, y, dtype=F64, batch_size=quarter(x))
    v = _vectors(op.size)[0]
    op.matvec(v)
    op.release_graphs()
    with Forwards(model) as fw:
        torch.testing.assert_close(op.matvec(v), H @ v, rtol=1e-10, atol=1e-12)
        op.matvec(v)
    assert fw.n == 4


def test_the_probe_builds_every_graph_once_and_matches_the_dense_spectrum():
    model, x, y = CASES["mlp"]()
    evals = np.linalg.eigvalsh(dense_hessian(model, x, y).numpy())
    cfg = HessianConfig(top_k=3, bottom_k=1, trace=False, dtype="float64", batch_size=quarter(x))
    with Forwards(model) as fw:
        out = hessian(model, CE, x, y, cfg)
    assert fw.n == 4  # loss and gradient build the four graphs; no HVP runs a forward pass
    assert out["num_hvps"] >= 3 and out["hvp_cached_batches"] == 4 and out["hvp_method"] == "cached_graph"
    np.testing.assert_allclose(out["eigenvalues"], evals[::-1][:3], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(out["bottom_eigenvalues"], evals[:1], rtol=1e-8, atol=1e-10)
    tiny = hessian(model, CE, x, y, HessianConfig(**{**cfg.to_dict(), "memory_budget_mb": 0.0}))
    assert tiny["hvp_method"] == "cached_graph+double_backward" and tiny["hvp_cached_batches"] == 1
    np.testing.assert_allclose(tiny["eigenvalues"], out["eigenvalues"], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("budget", [-1.0, float("nan")])
def test_a_negative_budget_is_refused(budget):
    model, x, y = CASES["mlp"]()
    with pytest.raises(ConfigError, match="memory_budget_mb"):
        HessianOperator(model, CE, x, y, memory_budget_mb=budget)
    with pytest.raises(ConfigError, match="memory_budget_mb"):
        HessianConfig(memory_budget_mb=budget)


def test_the_first_product_imports_nothing_more():
    """The first HVP once cost 0.6–1.3 s: autograd's ``grad_outputs`` shape check imports
    ``torch.fx.experimental.symbolic_shapes`` (and sympy). Our products never pass grad_outputs."""
    script = (
        "import sys, torch\n"
        "from landscape.linalg import HessianOperator\n"
        "from tests.hessian_cases import CASES, CE\n"
        "model, x, y = CASES['cnn_bn']()\n"
        "op = HessianOperator(model, CE, x, y, batch_size=16)\n"
        "op.loss_and_gradient(keep_graphs=True)\n"
        "op.matvec(torch.ones(op.size))\n"
        "HessianOperator(model, CE, x, y, method='double_backward').matvec(torch.ones(op.size))\n"
        "print(sorted(m for m in ('sympy', 'torch.fx.experimental.symbolic_shapes') if m in sys.modules))\n"
    )
    before = subprocess.run([sys.executable, "-c", "import sys, torch, landscape.linalg, tests.hessian_cases; "
                             "print('sympy' in sys.modules)"], capture_output=True, text=True, check=True)
    assert before.stdout.strip() == "False"  # not imported by the package itself
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
