"""The conventions of the sharpness probe against the references, each by a hand computation:
the magnitude-aware PAC-Bayes noise with ε (Jiang et al. 2020), the Auto-PGD momentum forms
(Croce & Hein vs the tml-epfl code), and the adaptive-l2 ``scaled`` scheme on a linear objective."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn

from landscape.errors import ConfigError
from landscape.probes.sharpness import (
    SharpnessConfig,
    magnitude_aware_std,
    sharpness,
    worst_case_ascent,
)


def test_defaults_are_the_documented_ones():
    cfg = SharpnessConfig()
    assert (cfg.pac_eps, cfg.pac_mag_form, cfg.pac_draws) == (1e-3, "jiang", 3)
    assert (cfg.momentum_form, cfg.momentum, cfg.ellipsoid) == ("croce_hein", 0.75, "scaled")
    settings = dataclasses.asdict(cfg)  # what run_probe stores as the group's ``settings`` attribute
    assert {"pac_eps", "pac_mag_form", "momentum_form", "ellipsoid", "pac_draws"} <= set(settings)


@pytest.mark.parametrize("settings", [dict(pac_eps=-1e-3), dict(pac_eps=math.inf), dict(pac_mag_form="nope"),
                                      dict(momentum_form="nope")])
def test_bad_convention_settings_are_one_line(settings):
    with pytest.raises(ConfigError) as err:
        SharpnessConfig(**settings)
    assert "\n" not in str(err.value)


def test_magnitude_aware_std_is_the_formula():
    w = np.array([-2.0, -1e-4, 0.0, 3e-3, 0.5])
    t = torch.tensor(w)
    for sigma, eps in [(0.1, 1e-3), (2.0, 0.0), (0.0, 1e-3)]:
        np.testing.assert_allclose(magnitude_aware_std(t, sigma, eps, "jiang").numpy(),
                                   np.sqrt(sigma**2 * w**2 + eps**2), rtol=1e-15, atol=0)
        np.testing.assert_allclose(magnitude_aware_std(t, sigma, eps, "linear").numpy(),
                                   sigma * (np.abs(w) + eps), rtol=1e-15, atol=0)
    # ε = 0: both are σ|w|, zero weights unperturbed (the probe's noise before ε)
    np.testing.assert_array_equal(magnitude_aware_std(t, 0.3, 0.0).numpy(), 0.3 * np.abs(w))


class _TwoClass(nn.Module):
    """Logits ``(W₀x, W₁x)`` with ``W = (a, −a)``: class 0 for x > 0 at the clean weights."""

    def __init__(self, a: float) -> None:
        super().__init__()
        self.lin = nn.Linear(1, 2, bias=False)
        with torch.no_grad():
            self.lin.weight.copy_(torch.tensor([[a], [-a]]))

    def forward(self, x):
        return self.lin(x)


@pytest.mark.parametrize("form", ["jiang", "linear"])
@pytest.mark.parametrize("eps", [1e-3, 0.0])
def test_pac_bayes_magnitude_aware_sigma_by_hand(form, eps):
    """With weights (a, −a) and labels 1[x < 0], a draw ξ flips every prediction iff
    2a + s(σ)(ξ₀ − ξ₁) < 0, s = the noise std of both weights; with one draw the largest σ keeping
    the accuracy is the σ where s(σ) = 2a/(ξ₁ − ξ₀), solved here by hand."""
    a = 2.0**-10  # ≈ ε, exact in float32 (the layer is made in float32, then cast)
    model = _TwoClass(a).double()
    x = torch.tensor([[1.0], [2.0], [-1.0], [-3.0]] * 2, dtype=torch.float64)
    y = (x[:, 0] < 0).long()
    loss = lambda z, t: nn.functional.cross_entropy(z, t, reduction="none")  # noqa: E731
    cfg = None
    for seed in range(50):  # a seed whose draw flips the predictions at some finite σ
        gen = torch.Generator().manual_seed(seed + 1)
        xi = torch.randn(2, generator=gen, dtype=torch.float64)  # the probe's draw (θ = W flattened)
        gap = float(xi[1] - xi[0])
        if 1.0 < gap < 1.9:  # a < s* = 2a/gap < 2a: ε matters, and σ* > 0 for ε = 1e-3 too
            cfg = SharpnessConfig(dtype="float64", subset=None, m=8, iters=1, rhos=(0.01,), first_order_rho=None,
                                  pac_draws=1, pac_steps=60, pac_target=0.1, pac_eps=eps, pac_mag_form=form,
                                  seed=seed)
            break
    assert cfg is not None
    s_star = 2 * a / gap
    if form == "jiang":
        sigma_star = math.sqrt(s_star**2 - eps**2) / a  # √(σ²a² + ε²) = s*
    else:
        sigma_star = s_star / (a + eps)  # σ(a + ε) = s*
    pac = sharpness(model, loss, x, y, cfg)["pac_bayes"]
    assert pac["accuracy_clean"] == 1.0
    assert pac["sigma_mag"] == pytest.approx(sigma_star, rel=1e-9)
    assert pac["inv_sigma2_mag"] == pytest.approx(sigma_star**-2, rel=1e-8)
    assert pac["sigma"] == pytest.approx(s_star, rel=1e-9)  # plain noise σ: unaffected by ε


# --------------------------------------------------------------------------- Auto-PGD momentum


def _linear(g):
    return lambda d: (float(g @ d), 0.0, g.clone())


def _ball(v, rho):
    n = np.linalg.norm(v)
    return v * (rho / n) if n > rho else v


@pytest.mark.parametrize("form", ["croce_hein", "tml_epfl"])
def test_momentum_update_against_a_hand_written_step(form):
    """Three iterations on F(δ) = gᵀδ, l2 ball of radius ρ, s = 1, from a point u₀ inside: the
    iterates of both momentum forms, transcribed from the two papers' / codes' formulas."""
    rng = np.random.default_rng(0)
    g = rng.standard_normal(5)
    u0 = 0.3 * rng.standard_normal(5)
    rho, alpha, eta = 1.0, 0.75, 2.0  # η = 2ρ
    gh = g / np.linalg.norm(g)
    us = [u0]
    for k in range(3):
        z = _ball(us[-1] + eta * gh, rho)
        prev = us[-2] if k else us[-1]
        if form == "tml_epfl":  # δ_{k+1} = α z + (1 − α) δ_{k−1}, δ_{−1} = δ₀
            us.append(alpha * z + (1 - alpha) * (us[-2] if k else u0))
        elif k == 0:  # Croce & Hein: u₁ = z, then u + α(z − u) + (1 − α)(u − u_prev), projected
            us.append(z)
        else:
            u = us[-1]
            us.append(_ball(u + alpha * (z - u) + (1 - alpha) * (u - prev), rho))
    values = [g @ u for u in us]
    assert values[0] < values[1] < values[2]  # improvements at the checkpoints 1, 2: no step-size halving
    seen = []
    s = torch.ones(5, dtype=torch.float64)
    f, _, d = worst_case_ascent(_linear(torch.tensor(g)), s, rho, norm="l2", iters=3, momentum=alpha,
                                u0=torch.tensor(u0), momentum_form=form, on_iterate=lambda u: seen.append(u.numpy()))
    np.testing.assert_allclose(np.array(seen), np.array(us[1:]), rtol=0, atol=1e-14)
    assert f == pytest.approx(max(values), abs=1e-14)  # the best iterate


def test_the_two_momentum_forms_differ_and_agree_for_alpha_one():
    rng = np.random.default_rng(1)
    g = torch.tensor(rng.standard_normal(4))
    u0 = torch.tensor(0.2 * rng.standard_normal(4))
    s = torch.ones(4, dtype=torch.float64)

    def iterates(form, alpha):
        seen = []
        worst_case_ascent(_linear(g), s, 1.0, norm="l2", iters=3, momentum=alpha, u0=u0, momentum_form=form,
                          on_iterate=lambda u: seen.append(u.clone()))
        return torch.stack(seen)

    assert not torch.allclose(iterates("croce_hein", 0.75), iterates("tml_epfl", 0.75))
    torch.testing.assert_close(iterates("croce_hein", 1.0), iterates("tml_epfl", 1.0), rtol=0, atol=1e-15)


# --------------------------------------------------------------------------- adaptive l2 scheme


def test_scaled_ellipsoid_reaches_the_closed_form_maximum_of_a_linear_objective():
    """max gᵀδ over ‖δ/s‖₂ ≤ ρ is ρ‖s⊙g‖ (at δ ∝ s²⊙g): the ``scaled`` scheme attains it; the
    reference's ``euclidean`` scheme, never above it, stops short of it here."""
    torch.manual_seed(0)
    g = torch.randn(6, dtype=torch.float64)
    s = torch.rand(6, dtype=torch.float64) * 2 + 0.1
    rho = 0.5
    best = rho * float((s * g).norm())
    scaled, _, d = worst_case_ascent(_linear(g), s, rho, norm="l2", iters=20, ellipsoid="scaled")
    assert scaled == pytest.approx(best, rel=1e-12)
    torch.testing.assert_close(d, rho * s * s * g / (s * g).norm(), rtol=1e-10, atol=1e-12)
    euclid, _, _ = worst_case_ascent(_linear(g), s, rho, norm="l2", iters=100, ellipsoid="euclidean")
    assert euclid <= best * (1 + 1e-12) and euclid < best * (1 - 1e-4)
