"""The sharpness probe ``landscape.probes.sharpness`` against closed forms on quadratic losses.

A module with one parameter vector θ outputs θ for every sample, and a per-sample loss
``½(z − θ*)ᵀA(z − θ*)`` makes every batch loss exactly ``L(θ) = ½(θ − θ*)ᵀA(θ − θ*)``. At θ = θ*
(float64): worst-case l2 sharpness = ``½ρ²λ_max(A)``, worst-case linf (A diagonal, ≥ 0) =
``½ρ² Σ a_i``, average-case l2 = ``½ρ² tr A``, linf = ``½ρ² tr A / 3``; the adaptive versions are
the same with ``A`` replaced by ``SAS``, ``S = diag|θ*|``; first-order flatness = ``ρ·ρλ_max(A)``.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from landscape.datasets import load_dataset
from landscape.errors import ConfigError
from landscape.models import build_model
from landscape.probes.base import PROBES, ProbeContext
from landscape.probes.sharpness import (
    SharpnessConfig,
    auto_pgd_checkpoints,
    largest_sigma,
    project_ellipsoid,
    sharpness,
    worst_case_ascent,
)
from landscape.train.losses import build_loss

QUIET = dict(dtype="float64", subset=None, m=4, first_order_rho=None, pac_bayes=False)


class Point(nn.Module):
    """Outputs its parameter θ for every input row."""

    def __init__(self, theta: torch.Tensor) -> None:
        super().__init__()
        self.theta = nn.Parameter(theta.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.theta.expand(len(x), -1)


def quadratic(A: np.ndarray, center: np.ndarray):
    """Model at θ = center, loss ½(θ − center)ᵀA(θ − center) for every sample, 8 samples."""
    A_t, c_t = torch.tensor(A), torch.tensor(center)

    def loss(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        d = z - c_t
        return 0.5 * ((d @ A_t) * d).sum(1)

    x = torch.zeros(8, 1, dtype=torch.float64)
    y = torch.zeros(8, dtype=torch.long)
    return Point(c_t).double(), loss, x, y


def spd(eigs, seed=0) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((len(eigs), len(eigs))))
    return q @ np.diag(eigs) @ q.T


EIGS = [5.0, 2.0, 1.0, 0.5, 0.1]
CENTER = np.array([0.5, -1.5, 2.0, 1.0, -0.8])  # away from 0, so |w| ≠ 0 in adaptive mode


# --------------------------------------------------------------------------- worst case, closed forms


@pytest.mark.parametrize("adaptive", [False, True])
def test_worst_l2_is_half_rho2_lambda_max(adaptive):
    A = spd(EIGS)
    S = np.diag(np.abs(CENTER)) if adaptive else np.eye(5)
    lam = np.linalg.eigvalsh(S @ A @ S)[-1]
    rhos = (0.1, 0.3)
    cfg = SharpnessConfig(kind="worst", norm="l2", adaptive=adaptive, rhos=rhos, random_start=True, **QUIET)
    out = sharpness(*quadratic(A, CENTER), cfg)
    expected = 0.5 * np.array(rhos) ** 2 * lam
    np.testing.assert_allclose(out["delta_loss"], expected, rtol=1e-6)
    np.testing.assert_allclose(out["delta_norm_set"], rhos, rtol=1e-9)  # on the boundary


@pytest.mark.parametrize("adaptive", [False, True])
def test_worst_linf_diagonal_is_half_rho2_sum(adaptive):
    a = np.array([3.0, 1.0, 0.2, 0.7, 2.5])
    s = np.abs(CENTER) if adaptive else np.ones(5)
    rhos = (0.05, 0.2)
    for random_start in (True, False):  # at the minimum ∇L = 0, so a zero start cannot move
        cfg = SharpnessConfig(kind="worst", norm="linf", adaptive=adaptive, rhos=rhos,
                              random_start=random_start, **QUIET)
        out = sharpness(*quadratic(np.diag(a), CENTER), cfg)
        if random_start:
            np.testing.assert_allclose(out["delta_loss"], 0.5 * np.array(rhos) ** 2 * (a * s**2).sum(), rtol=1e-12)
        else:
            np.testing.assert_array_equal(out["delta_loss"], 0.0)


def test_worst_l2_euclidean_ellipsoid_is_feasible_lower_bound():
    """The reference's adaptive-l2 update (Euclidean projection onto the ellipsoid) stays inside
    the set, so its value is a lower bound of the scaled-ascent optimum."""
    A = spd(EIGS)
    S = np.diag(np.abs(CENTER))
    exact = 0.5 * 0.3**2 * np.linalg.eigvalsh(S @ A @ S)[-1]
    cfg = SharpnessConfig(kind="worst", norm="l2", adaptive=True, rhos=(0.3,), random_start=True,
                          ellipsoid="euclidean", **QUIET)
    out = sharpness(*quadratic(A, CENTER), cfg)
    assert out["delta_norm_set"][0] <= 0.3 + 1e-9
    assert 0 < out["delta_loss"][0] <= exact * (1 + 1e-9)


def test_worst_case_away_from_minimum_gains_over_linear_term():
    """Off the minimum the zero start moves (the gradient is nonzero) and beats the first-order step."""
    A = spd(EIGS)
    model, loss, x, y = quadratic(A, CENTER)
    with torch.no_grad():
        model.theta += 0.1
    rho = 0.2
    out = sharpness(model, loss, x, y, SharpnessConfig(norm="l2", adaptive=False, rhos=(rho,), **QUIET))
    g = A @ np.full(5, 0.1)
    sam = 0.5 * (0.1 + rho * g / np.linalg.norm(g)) @ A @ (0.1 + rho * g / np.linalg.norm(g)) - 0.5 * 0.01 * A.sum()
    assert out["delta_loss"][0] >= sam - 1e-12


# --------------------------------------------------------------------------- average case, first order


@pytest.mark.parametrize("norm,factor", [("l2", 1.0), ("linf", 1 / 3)])
@pytest.mark.parametrize("adaptive", [False, True])
def test_average_is_half_rho2_trace(norm, factor, adaptive):
    A = spd(EIGS, seed=1)
    S = np.diag(np.abs(CENTER)) if adaptive else np.eye(5)
    rhos = (0.1, 0.4)
    cfg = SharpnessConfig(kind="average", norm=norm, adaptive=adaptive, rhos=rhos, samples_avg=400, **QUIET)
    out = sharpness(*quadratic(A, CENTER), cfg)
    expected = 0.5 * np.array(rhos) ** 2 * np.trace(S @ A @ S) * factor
    assert np.all(out["delta_loss_se"] > 0)
    assert np.all(np.abs(out["delta_loss"] - expected) < 4 * out["delta_loss_se"])
    assert np.all(out["delta_loss_se"] < 0.1 * expected)


def test_first_order_flatness_is_rho_times_rho_lambda_max():
    A = spd(EIGS, seed=2)
    rho = 0.3
    cfg = SharpnessConfig(**{**QUIET, "first_order_rho": rho, "first_order_iters": 20})
    out = sharpness(*quadratic(A, CENTER), cfg)
    np.testing.assert_allclose(out["first_order_flatness"], rho * rho * max(EIGS), rtol=1e-6)
    np.testing.assert_allclose(out["first_order_grad_norm"], rho * max(EIGS), rtol=1e-6)


# --------------------------------------------------------------------------- the ascent stays feasible


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("norm,ellipsoid", [("linf", "scaled"), ("l2", "scaled"), ("l2", "euclidean")])
def test_ascent_never_leaves_the_set(seed, norm, ellipsoid):
    rng = np.random.default_rng(seed)
    n = 30
    M = torch.tensor(rng.standard_normal((n, n)))
    b = torch.tensor(rng.standard_normal(n))
    s = torch.tensor(np.abs(rng.standard_normal(n)) * 3)
    s[rng.integers(0, n, 3)] = 0.0  # zero weights: never perturbed in adaptive mode
    rho = float(rng.uniform(0.01, 2))

    def value_grad(delta):
        d = delta.detach().requires_grad_(True)
        f = torch.sin(M @ d).sum() + b @ d + (d**3).sum()
        (g,) = torch.autograd.grad(f, d)
        return float(f.detach()), 0.0, g

    def check(delta):
        assert torch.all(delta[s == 0] == 0)
        u = delta[s > 0] / s[s > 0]
        size = u.abs().max() if norm == "linf" else u.norm()
        assert float(size) <= rho + 1e-9
        seen.append(1)

    seen: list[int] = []
    u0 = torch.tensor(rng.standard_normal(n)) * 10  # far outside: projected first
    f, _, delta = worst_case_ascent(value_grad, s, rho, norm=norm, iters=25, u0=u0, ellipsoid=ellipsoid,
                                    on_iterate=check)
    check(delta)
    assert len(seen) == 26


def test_ellipsoid_projection_is_the_nearest_point():
    rng = np.random.default_rng(0)
    s = torch.tensor(rng.uniform(0.2, 2.0, 6))
    delta = torch.tensor(rng.standard_normal(6)) * 3
    x = project_ellipsoid(delta, s, 0.5)
    assert float((x / s).norm()) <= 0.5 + 1e-12
    for _ in range(200):  # no feasible point is closer
        v = torch.tensor(rng.standard_normal(6))
        p = 0.5 * s * v / v.norm() * rng.uniform(0, 1) ** 0.2
        assert float((p - delta).norm()) >= float((x - delta).norm()) - 1e-9


def test_checkpoints_follow_croce_hein():
    # p = 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99, 1.05 (0.41 + 0.16 and 0.7·20 round up in
    # float, as in the reference: ⌈0.5700000000000001·100⌉ = 58, ⌈14.000000000000002⌉ = 15)
    assert auto_pgd_checkpoints(20) == [5, 9, 12, 15, 16, 18, 19, 20]
    w = auto_pgd_checkpoints(100)
    assert w[:2] == [22, 41] and w[-1] >= 100 and all(a < b for a, b in zip(w[:-1], w[1:], strict=True))


# --------------------------------------------------------------------------- PAC-Bayes σ search


@pytest.mark.parametrize("sigma_star", [1e-4, 0.03, 0.7, 5.0, 300.0])
def test_largest_sigma_brackets_the_threshold(sigma_star):
    calls = []

    def drop(sigma):  # a monotone accuracy drop crossing 0.1 at sigma_star
        calls.append(sigma)
        return 0.1 * (sigma / sigma_star) ** 1.5

    lo, hi = largest_sigma(drop, 0.1, sigma0=0.01, steps=20)
    assert drop(lo) <= 0.1 < drop(hi)
    assert lo <= sigma_star < hi and hi / lo <= 2 ** (1 / 2**20) * (1 + 1e-12)


def test_largest_sigma_edges():
    assert largest_sigma(lambda s: 0.0, 0.1, max_doublings=5) == (math.inf, math.inf)
    lo, hi = largest_sigma(lambda s: 1.0, 0.1, max_doublings=5)
    assert lo == 0.0 and hi > 0


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("settings", [
    dict(rhos=(0.1, 0.0)), dict(rhos=(-1.0,)), dict(rhos=()), dict(norm="l1"), dict(kind="best"),
    dict(m=2048, subset=1024), dict(params="some"), dict(restarts=3),
    dict(kind="average", norm="linf", adaptive=True), dict(iters=0),
])
def test_bad_config(settings):
    with pytest.raises(ConfigError) as err:
        SharpnessConfig(**settings)
    assert "\n" not in str(err.value)


def test_m_larger_than_the_data():
    model, loss, x, y = quadratic(np.eye(5), CENTER)
    with pytest.raises(ConfigError, match="m=16"):
        sharpness(model, loss, x, y, SharpnessConfig(**{**QUIET, "m": 16}))


def test_default_grid_is_the_papers():
    assert SharpnessConfig().rhos == (0.001, 0.002, 0.004, 0.008)
    assert SharpnessConfig(norm="l2").rhos == (0.25, 0.5, 1.0, 2.0)


# --------------------------------------------------------------------------- the registered probe


@pytest.fixture(scope="module")
def digits_ctx():
    torch.manual_seed(0)
    data = load_dataset("digits", train_size=96, test_size=32)
    model = build_model("mlp", data.input_shape, data.num_classes, width=16, depth=1, norm="batchnorm")
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(60):  # fit the 96 points, so that weight noise can cost accuracy
        opt.zero_grad()
        nn.functional.cross_entropy(model(data.train.x), data.train.y).backward()
        opt.step()
    model.eval()
    return ProbeContext(model=model, loss=build_loss("ce").per_sample, data=data, device=torch.device("cpu"))


def test_registered_probe_smoke(digits_ctx):
    ctx = digits_ctx
    before = copy.deepcopy(ctx.model.state_dict())
    progress = []
    ctx.advance = progress.append
    cfg = SharpnessConfig(subset=64, m=32, iters=5, first_order_iters=2, pac_steps=4, pac_draws=2)
    out = PROBES["sharpness"].run(ctx, cfg)
    assert out["delta_loss"].shape == out["delta_error"].shape == out["delta_norm"].shape == (4,)
    assert out["delta_loss_batches"].shape == (4, 2)
    assert np.all(out["delta_loss"] >= 0) and np.all(np.diff(out["delta_loss"]) >= -1e-6)  # grows with ρ
    assert np.all(out["delta_norm_set"] <= np.array(cfg.rhos) * (1 + 1e-5))
    # 4 ρ × 2 batches × 5 iterations, and first order: 2 batches × (1 + 3) points × 2 (double backward)
    assert out["num_gradients"] == 4 * 2 * 5 + 2 * (1 + 3) * 2 and progress[-1] == out["num_gradients"]
    assert out["first_order_flatness"] > 0
    pac = out["pac_bayes"]
    assert 0 < pac["sigma"] < math.inf and pac["inv_sigma2"] == pytest.approx(pac["sigma"] ** -2)
    assert 0 < pac["sigma_mag"] < math.inf
    for k, v in ctx.model.state_dict().items():  # nothing mutated (BatchNorm buffers included)
        assert torch.equal(v, before[k]), k
    again = PROBES["sharpness"].run(ctx, cfg)  # deterministic
    np.testing.assert_array_equal(again["delta_loss"], out["delta_loss"])


def test_pac_bayes_at_or_below_the_target_accuracy_is_infinite_without_a_search(digits_ctx):
    """A model whose clean accuracy is ≤ the allowed drop cannot lose more: σ = ∞ (what the
    doubling search would end with after 60 doublings), found after the clean evaluation alone."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    nn.init.zeros_(model[1].weight)
    nn.init.zeros_(model[1].bias)  # constant logits: the accuracy of always answering class 0
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    ctx = ProbeContext(model=model, loss=build_loss("ce").per_sample, data=digits_ctx.data, device=torch.device("cpu"))
    base = dict(subset=64, m=32, iters=1, rhos=(0.01,), first_order_rho=None, pac_target=0.5)
    without = len(calls)
    PROBES["sharpness"].run(ctx, SharpnessConfig(**base, pac_bayes=False))
    without, start = len(calls) - without, len(calls)
    pac = PROBES["sharpness"].run(ctx, SharpnessConfig(**base))["pac_bayes"]
    assert pac["accuracy_clean"] <= 0.5
    assert pac["sigma"] == pac["sigma_mag"] == math.inf and pac["inv_sigma2"] == pac["inv_sigma2_mag"] == 0.0
    assert len(calls) - start == without + 2  # + the clean accuracy of each of the 2 batches
    assert largest_sigma(lambda s: pac["accuracy_clean"], 0.5) == (math.inf, math.inf)  # the search's answer


def test_params_no_norm_bias_and_train_bn(digits_ctx):
    ctx = digits_ctx
    before = copy.deepcopy(ctx.model.state_dict())
    base = dict(subset=64, m=32, iters=3, first_order_rho=None, pac_bayes=False, rhos=(0.01,))
    full = PROBES["sharpness"].run(ctx, SharpnessConfig(**base))
    weights = PROBES["sharpness"].run(ctx, SharpnessConfig(**base, params="no_norm_bias", bn_mode="train"))
    n_weights = sum(p.numel() for n, p in ctx.model.named_parameters() if p.ndim > 1)
    assert weights["num_params"] == n_weights < full["num_params"]
    for k, v in ctx.model.state_dict().items():
        assert torch.equal(v, before[k]), k
