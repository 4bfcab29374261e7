"""The Hessian probe's spectral density: SLQ's vectors in lockstep (one k-vector product per
Lanczos step) give what one vector at a time gives, and engine='pyhessian' has no density."""

import copy
import importlib

import numpy as np
import pytest
import torch

from landscape.errors import ConfigError
from landscape.linalg import HessianOperator, stochastic_lanczos_quadrature
from landscape.probes.hessian import HessianConfig, hessian
from tests.hessian_cases import CASES, CE, trained_mlp_case

F64 = torch.float64
CFG = HessianConfig(top_k=2, bottom_k=1, trace=False, density=True, density_vectors=3, density_steps=12,
                    density_bins=300, dtype="float64", batch_size=16, memory_budget_mb=0.0, seed=4)
# memory_budget_mb=0: the first batch's graph is kept, the others' rebuilt per product (where lockstep pays)


@pytest.fixture
def blocks(monkeypatch):
    """The row counts of every HessianOperator.matmat call."""
    seen: list[int] = []
    inner = HessianOperator.matmat
    monkeypatch.setattr(HessianOperator, "matmat", lambda self, v, **kw: seen.append(len(v)) or inner(self, v, **kw))
    return seen


@pytest.mark.parametrize("name", list(CASES))
def test_probe_density_in_lockstep_equals_one_vector_at_a_time(name, blocks, monkeypatch):
    model, x, y = CASES[name]()
    lock = hessian(model, CE, x, y, CFG)
    assert blocks == [3] * CFG.density_steps  # one 3-vector product per step
    # the reference: linalg's SLQ one vector at a time on the same operator
    op = HessianOperator(model, CE, x, y, dtype=F64, batch_size=16, memory_budget_mb=0.0)
    ref = stochastic_lanczos_quadrature(op.matvec, op.size, vectors=3, steps=CFG.density_steps, seed=CFG.seed,
                                        dtype=F64)
    np.testing.assert_allclose(lock["esd_nodes"], ref.nodes, rtol=1e-10, atol=1e-10 * np.abs(ref.nodes).max())
    np.testing.assert_allclose(lock["esd_weights"], ref.weights, rtol=1e-10, atol=1e-12)
    # and the probe with lockstep switched off: the same results and HVP count
    monkeypatch.setattr("landscape.probes.hessian._slq_lockstep", lambda *a: False)
    blocks.clear()
    seq = hessian(model, CE, x, y, CFG)
    assert blocks == []
    assert seq["num_hvps"] == lock["num_hvps"]
    for key in ("eigenvalues", "bottom_eigenvalues", "esd_nodes", "esd_weights", "density_grid", "density"):
        np.testing.assert_allclose(lock[key], seq[key], rtol=1e-10, atol=1e-10 * np.abs(seq[key]).max())


def test_density_with_every_graph_cached_runs_one_vector_at_a_time(blocks):
    model, x, y = CASES["cnn_bn"]()
    cfg = HessianConfig(**{**CFG.to_dict(), "memory_budget_mb": 1024.0})
    cached = hessian(model, CE, x, y, cfg)
    assert cached["hvp_method"] == "cached_graph" and blocks == []
    lock = hessian(model, CE, x, y, CFG)
    assert lock["hvp_method"] == "cached_graph+double_backward" and blocks == [3] * CFG.density_steps
    np.testing.assert_allclose(lock["esd_nodes"], cached["esd_nodes"], rtol=1e-10, atol=1e-10)


def test_density_falls_back_to_one_vector_at_a_time_when_the_bases_do_not_fit(blocks, monkeypatch):
    model, x, y = CASES["mlp"]()
    one_basis = CFG.density_steps * 941 * 8  # steps × P float64 values
    monkeypatch.setattr("landscape.probes.hessian.memory_limit", lambda dev: 4 * one_basis)  # 3 > 4/2 bases
    out = hessian(model, CE, x, y, CFG)
    assert blocks == [] and out["esd_nodes"].shape == (3, CFG.density_steps)
    monkeypatch.setattr("landscape.probes.hessian.memory_limit", lambda dev: 6 * one_basis)  # 3 ≤ 6/2
    hessian(model, CE, x, y, CFG)
    assert blocks == [3] * CFG.density_steps


def test_engine_pyhessian_with_density_is_a_config_error():
    with pytest.raises(ConfigError, match="use engine='lanczos'") as err:
        HessianConfig(engine="pyhessian", density=True)
    assert "\n" not in str(err.value) and "torch.eig" in str(err.value)


def test_engine_pyhessian_leaves_torch_alone(monkeypatch):
    """No torch global is replaced, not even while PyHessian runs."""
    pytest.importorskip("pyhessian", reason="pip install pyhessian --no-deps")
    module = importlib.import_module("pyhessian.hessian")
    torch_names = lambda: {n: getattr(torch, n) for n in dir(torch) if not n.startswith("__")}  # noqa: E731
    model, x, y = trained_mlp_case()
    cfg = HessianConfig(engine="pyhessian", top_k=2, trace_samples=10, subset=30)
    hessian(copy.deepcopy(model), CE, x, y, cfg)  # once first: torch's own lazy imports rebind names
    before, during = torch_names(), []
    inner = module.hessian.eigenvalues
    monkeypatch.setattr(module.hessian, "eigenvalues", lambda self, *a, **kw: during.append(torch_names())
                        or inner(self, *a, **kw))
    out = hessian(copy.deepcopy(model), CE, x, y, cfg)
    assert out["engine"] == "pyhessian" and len(out["eigenvalues"]) == 2 and len(during) == 1
    for seen in (during[0], torch_names()):  # (torch may import submodules lazily: names only added)
        assert all(seen.get(k) is v for k, v in before.items()), [k for k, v in before.items() if seen.get(k) is not v]
