"""The Hessian probe ``landscape.probes.hessian.hessian`` against dense float64 Hessians and PyHessian.

References: the dense Hessian of the mean loss from ``torch.autograd.functional.hessian``
(``tests/hessian_cases.py``, ≤ 1,000 parameters) and PyHessian (Yao et al. 2020) run on the same
model and data.  Statistical estimates (Hutchinson, Hutch++, SLQ moments) are checked against
the exact quantity within a stated number of standard errors; every random draw is seeded, so the
tests are deterministic.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from landscape.errors import ConfigError
from landscape.linalg import HessianOperator
from landscape.params import call, layer_blocks, model_state, select_parameters
from landscape.probes.hessian import HessianConfig, fixed_subset, hessian
from tests.hessian_cases import CASES, CE, dense_hessian, trained_mlp_case

# PyHessian's constructor calls backward(create_graph=True) on the model's parameters.
pytestmark = pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True:UserWarning")

# One float64 run per case with everything switched on; the tests below read it.
# (6 SLQ steps: the quadrature is exact for polynomials of degree ≤ 11, enough for the moments.)
FULL = HessianConfig(
    dtype="float64", top_k=5, bottom_k=1, eigenvectors=True, trace_samples=30,
    density=True, density_vectors=16, density_steps=6, density_bins=2000, per_layer=True,
)
# A cheap configuration (every output, Lanczos stopped early) for the tests that compare runs.
SMALL = HessianConfig(dtype="float64", top_k=2, bottom_k=1, lanczos_steps=20, trace_samples=6,
                      density=True, density_vectors=2, density_steps=4, density_bins=500)
OUTPUT_KEYS = ("eigenvalues", "bottom_eigenvalues", "residuals", "lambda_ratio", "trace", "trace_se",
               "esd_nodes", "esd_weights", "density_grid", "density", "loss", "grad_norm")



@dataclass
class Case:
    name: str
    model: torch.nn.Module
    x: torch.Tensor
    y: torch.Tensor
    H: np.ndarray  # dense float64 Hessian of the mean loss
    evals: np.ndarray  # its eigenvalues, ascending

    @property
    def size(self) -> int:
        return len(self.H)


@functools.cache
def get_case(name: str) -> Case:
    model, x, y = trained_mlp_case() if name == "trained_mlp" else CASES[name]()
    H = dense_hessian(model, x, y).numpy()
    return Case(name, model, x, y, H, np.linalg.eigvalsh(H))


@pytest.fixture(scope="module", params=list(CASES))
def case(request) -> Case:
    return get_case(request.param)


@pytest.fixture(scope="module")
def mlp() -> Case:
    return get_case("mlp")


@pytest.fixture(scope="module")
def full(case):
    """``hessian(..., FULL)`` on the case, plus the model's state before and after the call."""
    before = copy.deepcopy(case.model.state_dict())
    training = case.model.training
    out = hessian(case.model, CE, case.x, case.y, FULL)
    return out, before, training


def assert_same_outputs(a: dict, b: dict, rtol: float = 0.0, atol: float = 0.0) -> None:
    for key in OUTPUT_KEYS:
        assert (key in a) == (key in b), key
        if key in a:
            np.testing.assert_allclose(a[key], b[key], rtol=rtol, atol=atol, err_msg=key)


def slq_moments(out: dict, p: int) -> np.ndarray:
    """Per-vector quadrature moments Σ_j w_vj θ_vj^p of the probe's SLQ nodes and weights."""
    return np.sum(out["esd_weights"] * out["esd_nodes"] ** p, axis=1)


def hutchinson_se(A: np.ndarray, samples: int) -> float:
    """Exact standard error of Hutchinson with Rademacher z: Var(zᵀAz) = 2 Σ_{i≠j} A_ij²."""
    return float(np.sqrt(2 * ((A**2).sum() - (np.diag(A) ** 2).sum()) / samples))


# ---- float64 against the dense Hessian ----------------------------------------------------------


def test_top_and_bottom_eigenvalues_match_dense(case, full):
    out, _, _ = full
    lam = case.evals
    assert out["converged"] and out["lanczos_steps"] <= FULL.lanczos_steps
    np.testing.assert_allclose(out["eigenvalues"], lam[::-1][:5], rtol=1e-6)
    np.testing.assert_allclose(out["bottom_eigenvalues"], lam[:1], rtol=1e-6)
    assert out["lambda_ratio"] == pytest.approx(abs(lam[0] / lam[-1]), rel=1e-6)
    assert lam[0] < 0 < lam[-1]  # an indefinite Hessian: the bottom eigenvalue is a real test
    # the Ritz residuals bound the eigenvalue errors (Bauer–Fike); converged means below tol·λmax
    assert np.all(out["residuals"] <= 1e-9 * abs(lam).max())
    assert out["num_params"] == case.size and out["num_samples"] == len(case.x)
    # loss and gradient norm at θ, from an independent float64 evaluation
    theta = select_parameters(case.model).flatten(model_state(case.model, torch.float64))
    layout = select_parameters(case.model)

    def f(t):
        state = model_state(case.model, torch.float64)
        state.update(layout.unflatten(t))
        return CE(call(case.model, state, case.x.double()), case.y).mean()

    theta.requires_grad_(True)
    value = f(theta)
    (grad,) = torch.autograd.grad(value, theta)
    assert out["loss"] == pytest.approx(float(value.detach()), rel=1e-12)
    assert out["grad_norm"] == pytest.approx(float(grad.norm()), rel=1e-10)


def test_eigenvectors_are_unit_norm_and_satisfy_hv_equals_lambda_v(case, full):
    out, _, _ = full
    vecs = out["eigenvectors"].astype(np.float64)  # (k, P), rows in the order of `eigenvalues`
    assert vecs.shape == (5, case.size)
    # the probe stores eigenvectors in float32 even for dtype="float64" (see the report), so the
    # tolerances are those of float32 rounding (eps 6e-8), not of the float64 Lanczos residuals
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-6)
    for lam, v in zip(out["eigenvalues"], vecs, strict=True):
        assert np.linalg.norm(case.H @ v - lam * v) <= 1e-6 * abs(case.evals).max()
    np.testing.assert_allclose(vecs @ vecs.T, np.eye(5), atol=1e-6)


def test_hutchinson_trace_within_three_standard_errors(case, full):
    out, _, _ = full
    exact = np.trace(case.H)
    assert abs(out["trace"] - exact) <= 3 * out["trace_se"], (out["trace"], exact, out["trace_se"])
    # the reported SE estimates the exact one, 2 Σ_{i≠j} H_ij² / n (within a factor 2 for n = 30)
    assert 0.5 < out["trace_se"] / hutchinson_se(case.H, FULL.trace_samples) < 2


def test_hutch_plus_plus_trace_within_three_standard_errors(case):
    cfg = HessianConfig(dtype="float64", top_k=1, bottom_k=0, trace_method="hutch++", trace_samples=30)
    out = hessian(case.model, CE, case.x, case.y, cfg)
    exact = np.trace(case.H)
    assert abs(out["trace"] - exact) <= 3 * out["trace_se"], (out["trace"], exact, out["trace_se"])
    assert out["num_hvps"] == out["lanczos_steps"] + 30  # 3k products, k = 10


def test_density_integrates_to_one_and_its_moments_estimate_the_spectrum(case, full):
    out, _, _ = full
    nodes, weights = out["esd_nodes"], out["esd_weights"]
    assert nodes.shape == weights.shape == (FULL.density_vectors, FULL.density_steps)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-12)  # Gauss weights of a unit vector
    assert np.all(weights >= 0)
    # all Ritz values lie in the spectrum's range
    assert nodes.min() >= case.evals[0] - 1e-10 and nodes.max() <= case.evals[-1] + 1e-10
    grid, dens = out["density_grid"], out["density"]
    assert len(grid) == len(dens) == FULL.density_bins and np.all(dens >= 0)
    assert dens.sum() * (grid[1] - grid[0]) == pytest.approx(1.0, rel=1e-10)
    # per-vector quadrature moments Σ_j w_j θ_j^p = zᵀH^p z / P (exact for p ≤ 2·steps − 1) are
    # i.i.d. unbiased samples of tr(H^p)/P: their mean is within 4 standard errors of it
    P = case.size
    for p, exact in ((1, np.trace(case.H) / P), (2, (case.H**2).sum() / P)):
        per_vector = np.sum(weights * nodes**p, axis=1)
        se = per_vector.std(ddof=1) / np.sqrt(len(per_vector))
        assert abs(per_vector.mean() - exact) <= 4 * se, (p, per_vector.mean(), exact, se)


def test_per_layer_results_are_those_of_the_dense_diagonal_blocks(case, full):
    out, _, _ = full
    layers = out["layers"]
    layout = select_parameters(case.model)
    slices = layout.slices()
    blocks = layer_blocks(case.model, layout)
    assert [n.decode() for n in layers["names"]] == list(blocks)
    assert layers["num_params"].sum() == case.size
    for i, params in enumerate(blocks.values()):
        idx = np.concatenate([np.arange(case.size)[slices[p]] for p in params])
        A = case.H[np.ix_(idx, idx)]
        assert layers["num_params"][i] == len(idx)
        assert layers["top_eigenvalue"][i] == pytest.approx(np.linalg.eigvalsh(A)[-1], rel=1e-6)
        se = hutchinson_se(A, FULL.trace_samples)  # the probe reports no per-layer SE: use the exact one
        assert abs(layers["trace"][i] - np.trace(A)) <= 3 * se, (params, layers["trace"][i], np.trace(A), se)


def test_float64_eigenvectors_keep_float64_precision(case, full):
    out, _, _ = full
    vecs = out["eigenvectors"]
    assert vecs.dtype == np.float64
    for lam, v in zip(out["eigenvalues"], vecs, strict=True):
        assert np.linalg.norm(case.H @ v - lam * v) <= 1e-9 * abs(case.evals).max()


def test_the_probe_does_not_touch_the_model(case, full):
    _, before, training = full
    after = case.model.state_dict()
    assert case.model.training == training
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in case.model.parameters())


def test_bn_train_mode_uses_batch_statistics():
    model, x, y = CASES["cnn_bn"]()
    lam = np.linalg.eigvalsh(dense_hessian(model, x, y, train_mode=True).numpy())
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    out = hessian(model, CE, x, y, HessianConfig(dtype="float64", top_k=3, bottom_k=1, bn_mode="train", trace=False))
    np.testing.assert_allclose(out["eigenvalues"], lam[::-1][:3], rtol=1e-6)
    np.testing.assert_allclose(out["bottom_eigenvalues"], lam[:1], rtol=1e-6)
    assert all(torch.equal(buffers[k], v) for k, v in model.named_buffers())
    assert not model.training


# ---- data selection, batching, precision, reproducibility --------------------------------------


def test_subset_is_fixed_by_the_seed_and_equals_a_direct_call(mlp):
    cfg = HessianConfig(dtype="float64", top_k=3, bottom_k=1, trace_samples=6, density=True,
                        density_vectors=2, density_steps=4, density_bins=500, subset=40, seed=1)
    a = hessian(mlp.model, CE, mlp.x, mlp.y, cfg)
    b = hessian(mlp.model, CE, mlp.x, mlp.y, cfg)
    assert a["num_samples"] == 40
    assert_same_outputs(a, b)  # same seed: same subset, bit for bit the same results
    idx = fixed_subset(len(mlp.x), 40, 1)
    assert len(set(idx.tolist())) == 40 and torch.equal(idx, idx.sort().values)
    assert torch.equal(idx, fixed_subset(len(mlp.x), 40, 1))
    direct = hessian(mlp.model, CE, mlp.x[idx], mlp.y[idx], HessianConfig(**{**cfg.to_dict(), "subset": None}))
    assert_same_outputs(a, direct)
    # and the subset's Hessian is the dense Hessian of those points
    lam = np.linalg.eigvalsh(dense_hessian(mlp.model, mlp.x[idx], mlp.y[idx]).numpy())
    np.testing.assert_allclose(a["eigenvalues"], lam[::-1][:3], rtol=1e-6)
    # another seed draws another subset; a subset as large as the data is all of it
    other = hessian(mlp.model, CE, mlp.x, mlp.y, HessianConfig(**{**SMALL.to_dict(), "subset": 40, "seed": 2}))
    assert other["num_samples"] == 40 and not np.allclose(other["loss"], a["loss"], rtol=1e-3)
    everything = hessian(mlp.model, CE, mlp.x, mlp.y, HessianConfig(**{**SMALL.to_dict(), "subset": 60}))
    assert_same_outputs(everything, hessian(mlp.model, CE, mlp.x, mlp.y, SMALL))


def test_batch_size_does_not_change_the_results(case):
    whole = hessian(case.model, CE, case.x, case.y, SMALL)
    batched = hessian(case.model, CE, case.x, case.y, HessianConfig(**{**SMALL.to_dict(), "batch_size": 16}))
    assert_same_outputs(whole, batched, rtol=1e-10, atol=1e-12)


def test_float32_is_close_to_float64(case, full):
    out64, _, _ = full
    cfg = HessianConfig(top_k=5, bottom_k=1, trace_samples=FULL.trace_samples)  # float32 is the default
    out32 = hessian(case.model, CE, case.x, case.y, cfg)
    lam_max = abs(case.evals).max()
    # float32 Lanczos stops at residual 1e-4·λmax; the Ritz values are then far more accurate
    np.testing.assert_allclose(out32["eigenvalues"][0], out64["eigenvalues"][0], rtol=1e-3)
    np.testing.assert_allclose(out32["eigenvalues"], out64["eigenvalues"], rtol=1e-3)
    np.testing.assert_allclose(out32["bottom_eigenvalues"], out64["bottom_eigenvalues"], atol=1e-3 * lam_max)
    # the same Rademacher vectors: the estimates differ by float32 rounding only
    assert out32["trace"] == pytest.approx(out64["trace"], rel=1e-4)


def test_repeated_calls_give_identical_results(case):
    first = hessian(case.model, CE, case.x, case.y, SMALL)
    second = hessian(case.model, CE, case.x, case.y, SMALL)
    assert_same_outputs(first, second)
    assert first["num_hvps"] == second["num_hvps"]


def test_on_hvp_is_called_once_per_hvp(mlp, monkeypatch):
    cfg = HessianConfig(**{**SMALL.to_dict(), "batch_size": 25, "per_layer": True})
    batch_hvps = []
    inner, inner_block = HessianOperator._batch_hvp, HessianOperator._batch_hmm
    monkeypatch.setattr(HessianOperator, "_batch_hvp",
                        lambda self, *a: batch_hvps.append(1) or inner(self, *a))
    monkeypatch.setattr(HessianOperator, "_batch_hmm",  # k products on a batch (SLQ's vectors in lockstep)
                        lambda self, i, v, *a: batch_hvps.extend([1] * len(v)) or inner_block(self, i, v, *a))
    calls: list[int] = []
    out = hessian(mlp.model, CE, mlp.x, mlp.y, cfg, on_hvp=calls.append)
    n = out["num_hvps"]
    assert calls == list(range(1, n + 1))  # once per HVP, with the running count
    assert len(batch_hvps) == n * 3  # 60 points in batches of 25: 3 batch products per HVP
    per_layer = n - (out["lanczos_steps"] + cfg.trace_samples + cfg.density_vectors * cfg.density_steps)
    assert per_layer >= len(out["layers"]["names"]) * (2 + cfg.trace_samples)
    assert per_layer <= len(out["layers"]["names"]) * (cfg.lanczos_steps + cfg.trace_samples)


# ---- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"top_k": 0}, {"bottom_k": -1}, {"lanczos_steps": 1}, {"trace_method": "girard"},
        {"trace_samples": 1}, {"density_vectors": 0}, {"density_steps": 1}, {"subset": 0},
        {"batch_size": 0}, {"bn_mode": "frozen"}, {"dtype": "float16"}, {"engine": "scipy"},
    ],
)
def test_bad_config_values_raise_config_error(bad):
    with pytest.raises(ConfigError):
        HessianConfig(**bad)


@pytest.mark.parametrize("bad", [{"tol": -1.0}, {"sigma_squared": 0.0}, {"density_bins": 1},
                                 {"trace_method": "hutch++", "trace_samples": 4}])
def test_unvalidated_config_values_raise_config_error(bad):
    with pytest.raises(ConfigError):
        HessianConfig(**bad)


# ---- PyHessian as an oracle --------------------------------------------------------------------


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    """PyHessian draws its vectors with the default dtype: float64 runs need it set."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def _eig_shim(T: torch.Tensor, eigenvectors: bool = False):
    """``torch.eig`` (removed in torch 2.0) for the symmetric tridiagonal T of PyHessian's SLQ."""
    vals, vecs = torch.linalg.eigh(T)
    return torch.stack([vals, torch.zeros_like(vals)], dim=1), vecs


def _torch_eig_missing() -> bool:
    try:
        torch.eig(torch.eye(1), eigenvectors=True)
    except (AttributeError, RuntimeError):
        return True
    return False


@pytest.fixture(scope="module")
def pyhessian():
    return pytest.importorskip(
        "pyhessian", reason="PyHessian is the oracle: pip install pyhessian --no-deps (extra 'pyhessian')"
    )


@pytest.fixture(scope="module")
def trained(pyhessian) -> Case:
    return get_case("trained_mlp")


def criterion(out, target):
    return CE(out, target).mean()


@pytest.fixture(scope="module")
def pyhessian64(pyhessian, trained):
    """PyHessian on the trained MLP in float64: eigenvalues (tol 1e-8), trace and SLQ."""
    module = importlib.import_module("pyhessian.hessian")
    count = {"hvps": 0}
    inner = module.hessian_vector_product

    def counted(*args):
        count["hvps"] += 1
        return inner(*args)

    model = copy.deepcopy(trained.model).double()
    with default_dtype(torch.float64), pytest.MonkeyPatch.context() as mp:
        mp.setattr(module, "hessian_vector_product", counted)
        mp.setattr(torch, "eig", _eig_shim, raising=False)
        torch.manual_seed(0)
        hc = pyhessian.hessian(model, criterion, data=(trained.x.double(), trained.y), cuda=False)
        top, _ = hc.eigenvalues(maxIter=1000, tol=1e-8, top_n=3)
        eig_hvps = count["hvps"]
        trace = hc.trace(maxIter=100, tol=1e-3)
        nodes, weights = hc.density(iter=6, n_v=16)
    return {"top": np.array(top), "eig_hvps": eig_hvps, "trace": np.array(trace),
            "nodes": np.array(nodes), "weights": np.array(weights)}


def test_top3_agree_with_pyhessian_power_iteration(trained, pyhessian64):
    lam = trained.evals[::-1]
    gaps = lam[:3] - lam[1:4]
    # the spectrum PyHessian needs: top eigenvalues positive and dominant, so the largest-magnitude
    # ones (power iteration) are the largest ones (λ ≈ 1.72, 1.41, 1.22, 1.04, λmin ≈ −0.02)
    assert lam[2] > 10 * abs(trained.evals[0]) and np.all(gaps > 0.1 * lam[:3])
    ours = hessian(trained.model, CE, trained.x, trained.y,
                   HessianConfig(dtype="float64", top_k=3, bottom_k=0, trace=False))
    np.testing.assert_allclose(ours["eigenvalues"], lam[:3], rtol=1e-9)
    py = pyhessian64["top"]
    # (1) PyHessian normalizes v ← v/(‖v‖ + 1e-6), so its Rayleigh quotients vᵀHv carry a factor
    #     ‖v‖² = (1 + 1e-6)⁻² (a relative bias of −2e-6 at ‖Hv‖ ≈ 1), which we undo;
    # (2) power iteration's Rayleigh quotient converges like r^{2k}, r = |λ_{i+1}/λ_i|, and stops
    #     when the relative change is < tol: the remaining error is ≈ tol·r²/(1 − r²) (≈ 2–3e-8
    #     here, r ≈ 0.82–0.87); we allow 10× that for the deflation against inexact eigenvectors.
    ratio = np.abs(lam[1:4] / lam[:3])
    bound = 10 * 1e-8 * ratio**2 / (1 - ratio**2)
    err = np.abs(py * (1 + 1e-6) ** 2 / ours["eigenvalues"] - 1)
    print(f"gaps {gaps}, ratios {ratio}, PyHessian rel. error after bias {err}, bound {bound}, "
          f"HVPs: PyHessian {pyhessian64['eig_hvps']}, ours {ours['num_hvps']}")
    assert np.all(err <= bound), (err, bound)
    np.testing.assert_allclose(py, ours["eigenvalues"], rtol=3e-6)  # without the bias correction
    assert ours["num_hvps"] < pyhessian64["eig_hvps"]


def test_trace_ours_and_pyhessian_within_three_standard_errors(trained, pyhessian64):
    exact = np.trace(trained.H)
    ours = hessian(trained.model, CE, trained.x, trained.y,
                   HessianConfig(dtype="float64", top_k=1, bottom_k=0, trace_samples=50))
    assert abs(ours["trace"] - exact) <= 3 * ours["trace_se"]
    values = pyhessian64["trace"]  # PyHessian stops early once the running mean changes < 0.1 %
    assert 2 <= len(values) <= 100
    se = values.std(ddof=1) / np.sqrt(len(values))
    assert abs(values.mean() - exact) <= 3 * se, (values.mean(), exact, se, len(values))


def test_pyhessian_slq_moments_estimate_the_spectrum(trained, pyhessian64):
    nodes, weights = pyhessian64["nodes"], pyhessian64["weights"]
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-9)
    P = trained.size
    for p, exact in ((1, np.trace(trained.H) / P), (2, (trained.H**2).sum() / P)):
        per_vector = np.sum(weights * nodes**p, axis=1)
        se = per_vector.std(ddof=1) / np.sqrt(len(per_vector))
        assert abs(per_vector.mean() - exact) <= 4 * se, (p, per_vector.mean(), exact, se)
    ours = hessian(trained.model, CE, trained.x, trained.y,
                   HessianConfig(dtype="float64", top_k=1, bottom_k=0, trace=False, density=True,
                                 density_vectors=16, density_steps=6))
    for p in (1, 2):  # both SLQs estimate the same moments: within 4 SE of their difference
        a = np.sum(weights * nodes**p, axis=1)
        b = slq_moments(ours, p)
        se = np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
        assert abs(a.mean() - b.mean()) <= 4 * se


def test_engine_pyhessian_returns_what_pyhessian_returns(pyhessian, trained):
    cfg = HessianConfig(engine="pyhessian", top_k=3, trace_samples=50, subset=40, seed=3)
    out = hessian(copy.deepcopy(trained.model), CE, trained.x, trained.y, cfg)
    idx = fixed_subset(len(trained.x), 40, 3)
    torch.manual_seed(3)
    hc = pyhessian.hessian(copy.deepcopy(trained.model), criterion, data=(trained.x[idx], trained.y[idx]), cuda=False)
    top, _ = hc.eigenvalues(maxIter=cfg.lanczos_steps, tol=1e-3, top_n=3)
    trace = hc.trace(maxIter=50, tol=1e-3)
    assert out["num_samples"] == 40
    np.testing.assert_array_equal(out["eigenvalues"], sorted(top, reverse=True))
    assert out["trace"] == np.mean(trace)
    assert out["trace_se"] == pytest.approx(np.std(trace, ddof=1) / np.sqrt(len(trace)), rel=1e-12)
    # and (float32, tol 1e-3) close to our Lanczos on the same subset
    ours = hessian(trained.model, CE, trained.x, trained.y,
                   HessianConfig(top_k=3, bottom_k=0, trace=False, subset=40, seed=3))
    np.testing.assert_allclose(out["eigenvalues"], ours["eigenvalues"], rtol=1e-2)


@pytest.mark.parametrize("bad", [{"dtype": "float64"}, {"bn_mode": "train"}, {"per_layer": True}])
def test_engine_pyhessian_rejects_what_it_cannot_do(pyhessian, trained, bad):
    with pytest.raises(ConfigError):
        hessian(trained.model, CE, trained.x, trained.y, HessianConfig(engine="pyhessian", **bad))


def test_engine_pyhessian_leaves_the_model_and_the_global_rng_alone(pyhessian, trained):
    model = copy.deepcopy(trained.model).train()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    hessian(model, CE, trained.x, trained.y, HessianConfig(engine="pyhessian", top_k=1, trace=False))
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.rand(3), expected)


# ---- CUDA --------------------------------------------------------------------------------------


@pytest.mark.cuda
def test_probe_on_cuda_matches_cpu_float64(case, full):
    out_cpu, _, _ = full
    out = hessian(case.model, CE, case.x, case.y, FULL, device="cuda")  # the model stays on the CPU
    # same seeds, vectors drawn on the CPU: the results differ by rounding only
    np.testing.assert_allclose(out["eigenvalues"], out_cpu["eigenvalues"], rtol=1e-8)
    np.testing.assert_allclose(out["bottom_eigenvalues"], out_cpu["bottom_eigenvalues"], rtol=1e-8)
    assert out["trace"] == pytest.approx(out_cpu["trace"], rel=1e-8)
    np.testing.assert_allclose(out["layers"]["top_eigenvalue"], out_cpu["layers"]["top_eigenvalue"], rtol=1e-8)
    np.testing.assert_allclose(out["layers"]["trace"], out_cpu["layers"]["trace"], rtol=1e-8)
    for p in (1, 2):
        assert slq_moments(out, p).mean() == pytest.approx(slq_moments(out_cpu, p).mean(), rel=1e-8)
    assert out["num_hvps"] == out_cpu["num_hvps"]
    assert next(case.model.parameters()).device.type == "cpu"


@pytest.mark.cuda
def test_probe_on_cuda_float32_and_basis_on_cpu(case, full):
    out_cpu, _, _ = full
    cfg = HessianConfig(top_k=5, bottom_k=1, trace=False, basis_device="cpu")
    out = hessian(case.model, CE, case.x, case.y, cfg, device="cuda")
    np.testing.assert_allclose(out["eigenvalues"], out_cpu["eigenvalues"], rtol=1e-3)


@pytest.mark.cuda
def test_engine_pyhessian_on_cuda(pyhessian, trained):
    cfg = HessianConfig(engine="pyhessian", top_k=3, trace=False)
    out = hessian(copy.deepcopy(trained.model).cuda(), CE, trained.x, trained.y, cfg, device="cuda")
    np.testing.assert_allclose(out["eigenvalues"], trained.evals[::-1][:3], rtol=1e-2)
