"""Trace estimators (Hutchinson, Hutch++, Krylov-sketched Hutch++) and the k-vector product
``HessianOperator.matmat``, against dense float64 references."""

import math

import numpy as np
import pytest
import torch

from landscape.errors import ConfigError
from landscape.linalg import (
    HessianOperator,
    _rademacher,
    estimate_trace,
    hutch_plus_plus,
    hutchinson,
    krylov_hutch_plus_plus,
)
from tests.hessian_cases import CASES, CE, dense_hessian

F64 = torch.float64
ESTIMATORS = {"hutchinson": lambda mv, n, m, **kw: hutchinson(mv, n, samples=m, **kw),
              "hutch++": lambda mv, n, m, **kw: hutch_plus_plus(mv, n, matvecs=m, **kw),
              "krylov++": lambda mv, n, m, **kw: krylov_hutch_plus_plus(mv, n, matvecs=m, **kw)}


@pytest.fixture(params=list(CASES), scope="module")
def case(request):
    model, x, y = CASES[request.param]()
    return model, x, y, dense_hessian(model, x, y)


def decaying_matrix(n: int = 120, seed: int = 0) -> torch.Tensor:
    """A fixed symmetric matrix with a few large eigenvalues over a flat bulk (both signs)."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    lam = np.concatenate([np.geomspace(50, 2, 8), rng.uniform(-0.3, 1.0, n - 8)])
    return torch.tensor((q * lam) @ q.T)


# ---- matmat ------------------------------------------------------------------------------------


@pytest.mark.parametrize("method,batch_size,batched", [
    ("cached_graph", None, False), ("cached_graph", None, True), ("cached_graph", 16, False),
    ("double_backward", 16, False), ("double_backward", 16, True), ("forward_over_reverse", None, False)])
def test_matmat_equals_dense_hessian_and_stacked_matvecs(case, method, batch_size, batched):
    model, x, y, H = case
    op = HessianOperator(model, CE, x, y, dtype=F64, batch_size=batch_size, method=method)
    V = torch.randn(5, op.size, generator=torch.Generator().manual_seed(2), dtype=F64)
    out = op.matmat(V, batched=batched)
    assert op.num_matvecs == 5
    torch.testing.assert_close(out, V @ H, rtol=1e-10, atol=1e-12)  # H symmetric: rows (H v_i)ᵀ
    looped = torch.stack([op.matvec(v) for v in V])
    torch.testing.assert_close(out, looped, rtol=1e-12, atol=1e-13)


def test_matmat_rejects_a_block_of_the_wrong_width(case):
    model, x, y, _ = case
    op = HessianOperator(model, CE, x, y, dtype=F64)
    with pytest.raises(ConfigError, match="k × "):
        op.matmat(torch.zeros(2, op.size + 1, dtype=F64))


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_the_matmat_path_equals_the_matvec_path(case, name):
    model, x, y, _ = case
    op = HessianOperator(model, CE, x, y, dtype=F64)
    a = ESTIMATORS[name](op.matvec, op.size, 30, dtype=F64, seed=4)
    b = ESTIMATORS[name](op.matvec, op.size, 30, dtype=F64, seed=4, matmat=op.matmat, block=7)
    assert a.matvecs == b.matvecs
    assert b.estimate == pytest.approx(a.estimate, rel=1e-10)
    assert b.standard_error == pytest.approx(a.standard_error, rel=1e-8)


# ---- regression: the values before batching (the old code, verbatim) ---------------------------


def old_hutchinson(matvec, size, samples, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    z = _rademacher(size, samples, g, dtype, "cpu")
    values = np.array([float(torch.dot(zi, matvec(zi))) for zi in z])
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(samples))


def old_hutch_plus_plus(matvec, size, matvecs, seed, dtype):
    k = max(matvecs // 3, 1)
    g = torch.Generator().manual_seed(seed)
    s = _rademacher(size, k, g, dtype, "cpu")
    hs = torch.stack([matvec(si) for si in s], dim=1)
    q, _ = torch.linalg.qr(hs)
    hq = torch.stack([matvec(qi) for qi in q.T], dim=1)
    exact = float(torch.trace(q.T @ hq))
    gs = _rademacher(size, k, g, dtype, "cpu")
    values = []
    for gi in gs:
        p = gi - q @ (q.T @ gi)
        values.append(float(torch.dot(p, matvec(p))))
    values_np = np.array(values)
    return exact + float(values_np.mean()), float(values_np.std(ddof=1) / math.sqrt(k))


@pytest.mark.parametrize("dtype,rel", [(torch.float32, 1e-5), (F64, 1e-12)])
def test_same_seed_same_trace_as_before(case, dtype, rel):
    model, x, y, _ = case
    op = HessianOperator(model, CE, x, y, dtype=dtype)
    for seed in (0, 3):
        new = hutchinson(op.matvec, op.size, samples=40, seed=seed, dtype=dtype, matmat=op.matmat)
        old = old_hutchinson(op.matvec, op.size, 40, seed, dtype)
        assert new.estimate == pytest.approx(old[0], rel=rel)
        assert new.standard_error == pytest.approx(old[1], rel=rel * 10)
        new = hutch_plus_plus(op.matvec, op.size, matvecs=30, seed=seed, dtype=dtype, matmat=op.matmat)
        old = old_hutch_plus_plus(op.matvec, op.size, 30, seed, dtype)
        assert new.estimate == pytest.approx(old[0], rel=rel)
        assert new.standard_error == pytest.approx(old[1], rel=max(rel * 1e3, 1e-9))


# ---- standard errors ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_reported_standard_error_matches_the_spread_over_seeds(name):
    """On a fixed matrix: the estimates over 300 seeds are centred on tr(A) and spread as the
    reported standard errors say (their RMS within 25% of the empirical standard deviation)."""
    A = decaying_matrix()
    exact = float(torch.trace(A))
    ests = [ESTIMATORS[name](lambda v: A @ v, len(A), 24, dtype=F64, seed=s) for s in range(300)]
    values = np.array([e.estimate for e in ests])
    reported = math.sqrt(np.mean([e.standard_error**2 for e in ests]))
    empirical = values.std(ddof=1)
    assert 0.75 < reported / empirical < 1.25, (reported, empirical)
    assert abs(values.mean() - exact) <= 4 * empirical / math.sqrt(len(values))


def test_hutchinson_standard_error_has_its_closed_form():
    A = decaying_matrix()
    exact_se = math.sqrt(2 * (float((A**2).sum()) - float((A.diagonal() ** 2).sum())) / 50)
    se = [hutchinson(lambda v: A @ v, len(A), samples=50, dtype=F64, seed=s).standard_error for s in range(200)]
    assert math.sqrt(np.mean(np.square(se))) == pytest.approx(exact_se, rel=0.1)


def test_deflated_estimators_beat_hutchinson_on_a_decaying_spectrum():
    A = decaying_matrix()
    se = {name: np.median([ESTIMATORS[name](lambda v: A @ v, len(A), 24, dtype=F64, seed=s).standard_error
                           for s in range(20)]) for name in ESTIMATORS}
    assert max(se["krylov++"], se["hutch++"]) < se["hutchinson"] / 2, se


def test_krylov_is_exact_when_its_lanczos_spans_the_space():
    A = decaying_matrix(n=30)
    est = krylov_hutch_plus_plus(lambda v: A @ v, 30, matvecs=200, dtype=F64, seed=1, lanczos_fraction=0.5)
    assert est.estimate == pytest.approx(float(torch.trace(A)), rel=1e-9)
    assert est.standard_error == 0.0
    assert est.matvecs == 30  # no remainder products once the space is spanned


def test_estimate_trace_dispatches_and_rejects_unknown_methods():
    A = decaying_matrix(n=40)
    a = estimate_trace("krylov++", lambda v: A @ v, 40, matvecs=20, dtype=F64, seed=2)
    b = krylov_hutch_plus_plus(lambda v: A @ v, 40, matvecs=20, dtype=F64, seed=2)
    assert (a.estimate, a.standard_error, a.matvecs) == (b.estimate, b.standard_error, b.matvecs)
    with pytest.raises(ConfigError, match="trace method must be one of"):
        estimate_trace("xtrace?", lambda v: v, 4, matvecs=10)


# ---- the probe ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["hutchinson", "hutch++", "krylov++"])
def test_probe_trace_with_rebuilt_graphs_uses_matmat_and_equals_the_cached_one(case, method, monkeypatch):
    from landscape.probes.hessian import HessianConfig, hessian

    model, x, y, H = case
    base = dict(dtype="float64", top_k=1, bottom_k=0, trace_method=method, trace_samples=24, batch_size=16,
                per_layer=True)
    cached = hessian(model, CE, x, y, HessianConfig(**base))
    blocks = []
    inner = HessianOperator.matmat
    monkeypatch.setattr(HessianOperator, "matmat", lambda self, v, **kw: blocks.append(len(v)) or inner(self, v, **kw))
    calls: list[int] = []
    rebuilt = hessian(model, CE, x, y, HessianConfig(**base, memory_budget_mb=0.0), on_hvp=calls.append)
    assert "double_backward" in rebuilt["hvp_method"] and blocks  # the batched path ran
    assert calls == list(range(1, rebuilt["num_hvps"] + 1))  # on_hvp once per product still
    assert rebuilt["num_hvps"] == cached["num_hvps"]
    assert rebuilt["trace"] == pytest.approx(cached["trace"], rel=1e-10)
    assert rebuilt["trace_se"] == pytest.approx(cached["trace_se"], rel=1e-8)
    np.testing.assert_allclose(rebuilt["layers"]["trace"], cached["layers"]["trace"], rtol=1e-10)
    np.testing.assert_allclose(rebuilt["layers"]["trace_se"], cached["layers"]["trace_se"], rtol=1e-8)
    assert abs(cached["trace"] - float(torch.trace(H))) <= 4 * cached["trace_se"]
    se = cached["layers"]["trace_se"]
    assert np.all(np.isfinite(se) & (se >= 0))  # 0: krylov++'s Lanczos spans a small block (exact)


def test_krylov_at_the_smallest_budget_gives_an_estimate_without_standard_error():
    A = decaying_matrix(n=40)
    est = krylov_hutch_plus_plus(lambda v: A @ v, 40, matvecs=2, dtype=F64, seed=0)  # 1 step + 1 sample
    assert est.matvecs == 2 and np.isfinite(est.estimate) and math.isnan(est.standard_error)


def test_results_stored_without_trace_method_mean_hutchinson():
    """The default is now krylov++; results stored before the setting existed were Hutchinson's."""
    from landscape.analyze import _same_settings
    from landscape.probes.hessian import HessianConfig

    old = HessianConfig(trace_method="hutchinson").to_dict()
    stored = {k: v for k, v in old.items() if k != "trace_method"}
    assert HessianConfig().trace_method == "krylov++"
    assert _same_settings("hessian", stored, old)
    assert not _same_settings("hessian", stored, HessianConfig().to_dict())
