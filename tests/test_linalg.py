import numpy as np
import pytest
import torch

from landscape.linalg import (
    HessianOperator,
    hutch_plus_plus,
    hutchinson,
    lanczos,
    ritz_errors,
    smoothed_density,
    stochastic_lanczos_quadrature,
)
from tests.hessian_cases import CASES, CE, dense_hessian

F64 = torch.float64


@pytest.fixture(params=list(CASES), scope="module")
def case(request):
    model, x, y = CASES[request.param]()
    return model, x, y, dense_hessian(model, x, y)


@pytest.mark.parametrize("batch_size", [None, 7])
def test_hvp_equals_dense_hessian_times_vectors(case, batch_size):
    model, x, y, H = case
    before = {k: v.clone() for k, v in model.state_dict().items()}
    op = HessianOperator(model, CE, x, y, dtype=F64, batch_size=batch_size)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        v = torch.randn(op.size, generator=g, dtype=F64)
        torch.testing.assert_close(op.matvec(v), H @ v, rtol=1e-10, atol=1e-12)
    assert op.num_matvecs == 3
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the model is never mutated


@pytest.mark.parametrize("method", ["cached_graph", "double_backward", "forward_over_reverse"])
@pytest.mark.parametrize("batch_size", [None, 16])
def test_every_hvp_method_agrees_with_dense(case, method, batch_size):
    model, x, y, H = case
    op = HessianOperator(model, CE, x, y, dtype=F64, method=method, batch_size=batch_size)
    for _ in range(2):  # the cached graph is reused
        v = torch.randn(op.size, dtype=F64)
        torch.testing.assert_close(op.matvec(v), H @ v, rtol=1e-10, atol=1e-12)


def test_auto_method_caches_graphs_in_memory_and_double_backwards_the_rest(case):
    model, x, y, _ = case
    assert HessianOperator(model, CE, x, y).method == "cached_graph"
    op = HessianOperator(model, CE, x, y, batch_size=len(x) // 2)  # in memory: cached within the budget
    assert op.method == "cached_graph"
    op.matvec(torch.ones(op.size))
    assert op.hvp_info()["hvp_cached_batches"] == 2
    op = HessianOperator(model, CE, x, y, batch_size=len(x) // 2, memory_budget_mb=0)
    op.matvec(torch.ones(op.size))  # only the first graph kept
    assert op.hvp_info()["hvp_method"] == "cached_graph+double_backward"
    assert HessianOperator(model, CE, x, y, method="forward_over_reverse", bn_mode="train").method == "double_backward"


def test_bn_train_mode_uses_batch_statistics_without_touching_buffers():
    model, x, y = CASES["cnn_bn"]()
    H = dense_hessian(model, x, y, train_mode=True)
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    op = HessianOperator(model, CE, x, y, dtype=F64, bn_mode="train")
    v = torch.randn(op.size, dtype=F64)
    torch.testing.assert_close(op.matvec(v), H @ v, rtol=1e-9, atol=1e-11)
    assert not torch.allclose(H, dense_hessian(model, x, y))  # eval and train Hessians differ
    assert all(torch.equal(buffers[k], v) for k, v in model.named_buffers())


def test_parameter_block_is_the_dense_diagonal_block(case):
    model, x, y, H = case
    names = [n for n, _ in model.named_parameters()]
    block = names[-2:]  # the classifier
    op = HessianOperator(model, CE, x, y, params=block, dtype=F64)
    n_block = op.size
    dense_block = dense_hessian(model, x, y, params=block)
    torch.testing.assert_close(dense_block, H[-n_block:, -n_block:], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(op.dense(), dense_block, rtol=1e-10, atol=1e-12)


def test_lanczos_top_and_bottom_eigenvalues_match_dense(case):
    model, x, y, H = case
    op = HessianOperator(model, CE, x, y, dtype=F64)
    res = lanczos(op.matvec, op.size, max_steps=op.size, top_k=5, bottom_k=1, dtype=F64, eigenvectors=True)
    ref = np.linalg.eigvalsh(H.numpy())
    ours = res.eigenvalues.numpy()
    np.testing.assert_allclose(ours[-5:], ref[-5:], rtol=1e-6)
    np.testing.assert_allclose(ours[0], ref[0], rtol=1e-6)
    assert res.converged and res.steps < op.size  # stopped on the residuals, long before P steps
    vecs = res.eigenvectors  # columns: bottom-1 then top-5, ascending
    lam = torch.tensor([ours[0], *ours[-5:]], dtype=F64)
    torch.testing.assert_close(H @ vecs, vecs * lam, atol=1e-7, rtol=0)


def test_lanczos_on_matrices_with_known_spectra():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((300, 300)))
    lam = np.concatenate([[50.0, 20.0, 10.0, 5.0], rng.uniform(-1, 1, 295), [-8.0]])
    A = torch.tensor((q * lam) @ q.T)
    res = lanczos(lambda v: A @ v, 300, max_steps=300, top_k=4, bottom_k=1, dtype=F64)
    np.testing.assert_allclose(res.eigenvalues.numpy()[-4:], [5, 10, 20, 50], rtol=1e-9)
    np.testing.assert_allclose(res.eigenvalues.numpy()[0], -8.0, rtol=1e-9)
    # a rank-3 matrix: Lanczos finds the invariant subspace after 4 steps and stops with exact values
    B = torch.tensor((q[:, :3] * [3.0, 2.0, 1.0]) @ q[:, :3].T)
    res = lanczos(lambda v: B @ v, 300, max_steps=100, top_k=3, dtype=F64)
    assert res.steps <= 4 and res.converged
    np.testing.assert_allclose(res.eigenvalues.numpy()[-3:], [1, 2, 3], rtol=1e-10)


def _dense(lam: np.ndarray, seed: int) -> torch.Tensor:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((len(lam), len(lam))))
    return torch.tensor((q * lam) @ q.T)


class _Counted:
    def __init__(self, a: torch.Tensor) -> None:
        self.a, self.n = a, 0

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        self.n += 1
        return self.a @ v


SPECTRA = {
    "spd": np.concatenate([[40.0, 25.0, 12.0, 6.0], np.geomspace(3.0, 1e-3, 196)]),
    "indefinite": np.concatenate([[30.0, 18.0, 9.0], np.random.default_rng(3).uniform(-2, 2, 196), [-11.0]]),
}


@pytest.mark.parametrize("kind", list(SPECTRA))
@pytest.mark.parametrize(("dtype", "tol"), [(F64, None), (torch.float32, None), (F64, 1e-5)])
def test_checking_every_step_gives_the_every_5_result_sooner(kind, dtype, tol):
    """Regression (per-step checks): the same Ritz values as checking every 5 steps (the old
    default), to the stopping tolerance, both equal to numpy's eigh, in no more steps."""
    A = _dense(SPECTRA[kind], seed=7)
    ref = np.linalg.eigvalsh(A.numpy())
    a = A.to(dtype)
    every, each = _Counted(a), _Counted(a)
    old = lanczos(every, 200, max_steps=200, top_k=3, bottom_k=1, tol=tol, dtype=dtype, check_every=5)
    new = lanczos(each, 200, max_steps=200, top_k=3, bottom_k=1, tol=tol, dtype=dtype)
    assert old.converged and new.converged
    assert old.steps % 5 == 0 and new.steps <= old.steps and each.n == new.steps and every.n == old.steps
    assert new.steps > old.steps - 5  # the every-5 run would have stopped at the step it checked
    t = tol if tol is not None else (1e-9 if dtype == F64 else 1e-4)
    scale = np.abs(ref).max()
    # the residual bounds the distance to an eigenvalue: both runs within tol·max|λ| of eigh
    for res in (old, new):
        got = res.eigenvalues.numpy()
        np.testing.assert_allclose(got[-3:], ref[-3:], rtol=0, atol=t * scale + 1e-5 * (dtype != F64) * scale)
        np.testing.assert_allclose(got[0], ref[0], rtol=0, atol=t * scale + 1e-5 * (dtype != F64) * scale)
        assert np.all(res.residuals.numpy()[[0, -3, -2, -1]] <= t * scale * (1 + 1e-9))
    np.testing.assert_allclose(new.eigenvalues.numpy()[[0, -3, -2, -1]], old.eigenvalues.numpy()[[0, -3, -2, -1]],
                               rtol=0, atol=2 * t * scale + 1e-5 * (dtype != F64) * scale)


def test_top_1_with_a_clear_gap_stops_before_5_steps():
    """λ₁ = 100 over a spectrum in [0, 1]: the residual falls ~400× per step (Kaniel–Paige), so
    per-step checks stop after 4 HVPs at tol 1e-6; checking every 5 steps always paid 5."""
    lam = np.concatenate([[100.0], np.linspace(0.0, 1.0, 299)])
    A = _dense(lam, seed=2)
    each, every = _Counted(A), _Counted(A)
    res = lanczos(each, 300, max_steps=50, top_k=1, tol=1e-6, dtype=F64)
    lanczos(every, 300, max_steps=50, top_k=1, tol=1e-6, dtype=F64, check_every=5)
    assert res.converged and each.n == res.steps < 5
    assert every.n == 5
    assert float(res.residuals[-1]) <= 1e-6 * 100
    assert float(res.eigenvalues[-1]) == pytest.approx(np.linalg.eigvalsh(A.numpy())[-1], rel=1e-9)


def test_error_rule_reaches_its_tolerance_on_the_eigenvalue_in_fewer_steps():
    A = _dense(SPECTRA["spd"], seed=11)
    ref = np.linalg.eigvalsh(A.numpy())
    res = lanczos(lambda v: A @ v, 200, max_steps=200, top_k=1, tol=1e-6, dtype=F64)
    err = lanczos(lambda v: A @ v, 200, max_steps=200, top_k=1, tol=1e-6, dtype=F64, rule="error")
    assert err.converged and err.steps < res.steps
    assert abs(float(err.eigenvalues[-1]) - ref[-1]) <= 1e-6 * ref[-1]
    assert float(err.errors[-1]) <= 1e-6 * ref[-1] < float(err.residuals[-1])
    # the Ritz value approaches λ₁ from below (Cauchy interlacing), by no more than the residual
    assert 0 <= ref[-1] - float(err.eigenvalues[-1]) <= float(err.residuals[-1])


def test_ritz_errors_are_the_quadratic_bound_with_the_nearest_gap():
    evals = torch.tensor([1.0, 4.0, 10.0], dtype=F64)
    r = torch.tensor([0.5, 0.3, 0.2], dtype=F64)
    np.testing.assert_allclose(ritz_errors(evals, r).numpy(), [0.25 / 3, 0.09 / 3, 0.04 / 6])
    np.testing.assert_allclose(ritz_errors(evals, r, gap=2.0).numpy(), [0.25 / 2, 0.09 / 2, 0.04 / 2])
    big = torch.tensor([5.0, 5.0, 5.0], dtype=F64)  # r²/δ above r: the residual itself
    np.testing.assert_allclose(ritz_errors(evals, big).numpy(), [5, 5, 25 / 6])
    one = ritz_errors(torch.tensor([3.0], dtype=F64), torch.tensor([0.1], dtype=F64))
    assert float(one[0]) == pytest.approx(0.1)  # no second Ritz value and no cap: the residual itself


def test_lanczos_rejects_an_unknown_rule():
    from landscape.errors import ConfigError

    with pytest.raises(ConfigError, match="rule must be one of"):
        lanczos(lambda v: v, 4, rule="bogus")


def test_lanczos_is_seeded_and_float32_close_to_float64(case):
    model, x, y, H = case
    op32 = HessianOperator(model, CE, x, y)
    a = lanczos(op32.matvec, op32.size, top_k=3, seed=3)
    b = lanczos(op32.matvec, op32.size, top_k=3, seed=3)
    assert torch.equal(a.eigenvalues, b.eigenvalues)
    ref = np.linalg.eigvalsh(H.numpy())[-3:]
    np.testing.assert_allclose(a.eigenvalues.numpy()[-3:], ref, rtol=1e-3)


def test_hutchinson_and_hutchpp_within_three_standard_errors(case):
    model, x, y, H = case
    op = HessianOperator(model, CE, x, y, dtype=F64)
    exact = float(torch.trace(H))
    for est in (hutchinson(op.matvec, op.size, samples=100, dtype=F64, seed=0),
                hutch_plus_plus(op.matvec, op.size, matvecs=99, dtype=F64, seed=0)):
        assert abs(est.estimate - exact) <= 3 * est.standard_error, (est.estimate, exact, est.standard_error)


def test_hutchpp_beats_hutchinson_on_a_low_rank_matrix():
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.standard_normal((400, 400)))
    lam = np.concatenate([np.geomspace(100, 1, 20), np.full(380, 0.01)])
    A = torch.tensor((q * lam) @ q.T)
    exact = lam.sum()
    errs = {"h": [], "pp": []}
    for seed in range(5):
        errs["h"].append(abs(hutchinson(lambda v: A @ v, 400, samples=60, dtype=F64, seed=seed).estimate - exact))
        errs["pp"].append(abs(hutch_plus_plus(lambda v: A @ v, 400, matvecs=60, dtype=F64, seed=seed).estimate - exact))
    assert np.mean(errs["pp"]) < 0.1 * np.mean(errs["h"])


def test_slq_quadrature_is_exact_for_low_moments_per_vector(case):
    model, x, y, H = case
    op = HessianOperator(model, CE, x, y, dtype=F64)
    g = torch.Generator().manual_seed(5)
    v = torch.randn(op.size, generator=g, dtype=F64)
    res = lanczos(op.matvec, op.size, max_steps=20, top_k=0, tol=0.0, v0=v, dtype=F64, check_every=10**9)
    w, theta = (res.first_components**2).numpy(), res.eigenvalues.numpy()
    q = (v / v.norm()).numpy()
    Hn = H.numpy()
    for p in (0, 1, 2, 3):  # Gauss quadrature with m nodes is exact up to degree 2m − 1
        np.testing.assert_allclose(np.sum(w * theta**p), q @ np.linalg.matrix_power(Hn, p) @ q, rtol=1e-8)


def test_slq_moments_estimate_trace_and_frobenius(case):
    model, x, y, H = case
    op = HessianOperator(model, CE, x, y, dtype=F64)
    sd = stochastic_lanczos_quadrature(op.matvec, op.size, vectors=30, steps=20, dtype=F64, seed=0)
    P = op.size
    # per-vector samples of the moment give a standard error for the stochastic estimate
    for p, exact in ((1, float(torch.trace(H)) / P), (2, float((H**2).sum()) / P)):
        per_vector = np.sum(sd.weights * sd.nodes**p, axis=1)
        se = per_vector.std(ddof=1) / np.sqrt(len(per_vector))
        assert abs(sd.moment(p) - exact) <= 4 * se, (p, sd.moment(p), exact, se)


def test_smoothed_density_follows_pyhessian_convention():
    nodes = np.array([[-1.0, 0.0, 2.0], [-0.5, 0.5, 3.0]])
    weights = np.array([[0.2, 0.5, 0.3], [0.1, 0.6, 0.3]])
    from landscape.linalg import SpectralDensity

    grid, dens = smoothed_density(SpectralDensity(nodes, weights), bins=500)
    lo, hi = np.mean(nodes.min(1)) - 0.01, np.mean(nodes.max(1)) + 0.01
    np.testing.assert_allclose(grid[[0, -1]], [lo, hi])
    var = 1e-5 * max(1, hi - lo)
    ref = np.mean([(np.exp(-(grid[:, None] - n) ** 2 / (2 * var)) / np.sqrt(2 * np.pi * var)) @ w
                   for n, w in zip(nodes, weights, strict=True)], axis=0)
    ref /= ref.sum() * (grid[1] - grid[0])
    np.testing.assert_allclose(dens, ref, rtol=1e-12)
    assert dens.sum() * (grid[1] - grid[0]) == pytest.approx(1.0)


@pytest.mark.cuda
def test_hvp_and_lanczos_on_cuda(case):
    model, x, y, H = case
    op = HessianOperator(model.cuda(), CE, x, y, dtype=F64, device="cuda")
    v = torch.randn(op.size, dtype=F64)
    torch.testing.assert_close(op.matvec(v.cuda()).cpu(), H @ v, rtol=1e-9, atol=1e-11)
    res = lanczos(op.matvec, op.size, top_k=5, bottom_k=1, dtype=F64, device="cuda", basis_device="cpu")
    ref = np.linalg.eigvalsh(H.numpy())
    np.testing.assert_allclose(res.eigenvalues.numpy()[-5:], ref[-5:], rtol=1e-6)
    model.cpu()
