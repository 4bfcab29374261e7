"""Worst-case sharpness takes its clean loss from the forward pass of the first Auto-PGD gradient
(at δ = 0) instead of a separate forward pass: the values equal those of the former algorithm,
written plainly here (a clean no-grad forward per batch, then Auto-PGD calling its own gradient
at δ = 0), and the passes are counted on the model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from landscape.errors import LandscapeError
from landscape.probes.sharpness import SharpnessConfig, sharpness, worst_case_ascent


def ce(z, t):
    return nn.functional.cross_entropy(z, t, reduction="none")


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    return model.eval()


def data(n: int = 24):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def former_worst_case(model, x, y, cfg: SharpnessConfig) -> dict[str, np.ndarray]:
    """The pre-change algorithm, plainly: same subset order, a clean forward per batch, then
    :func:`worst_case_ascent` with a value_grad of its own for each (ρ, batch)."""
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(cfg.seed))  # subset=None
    x, y = x[idx], y[idx]
    names = [n for n, _ in model.named_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]

    def logits(delta, xb):
        parts = torch.split(theta + delta, sizes)
        return functional_call(model, {n: t.view(s) for n, t, s in zip(names, parts, shapes, strict=True)}, (xb,))

    def err(z, yb):
        return float((z.argmax(1) != yb).double().mean())

    batches = [(x[b * cfg.m:(b + 1) * cfg.m], y[b * cfg.m:(b + 1) * cfg.m]) for b in range(len(y) // cfg.m)]
    clean = []
    for xb, yb in batches:
        with torch.no_grad():
            z = logits(torch.zeros_like(theta), xb)
        clean.append((float(ce(z, yb).mean()), err(z, yb)))
    s = theta.abs()
    out = np.zeros((len(cfg.rhos), len(batches)))
    for r, rho in enumerate(cfg.rhos):
        for b, (xb, yb) in enumerate(batches):
            def value_grad(delta, xb=xb, yb=yb):
                d = delta.detach().requires_grad_(True)
                z = logits(d, xb)
                v = ce(z, yb).mean()
                (g,) = torch.autograd.grad(v, d)
                return float(v.detach()), err(z.detach(), yb), g

            f, _, _ = worst_case_ascent(value_grad, s, rho, norm=cfg.norm, iters=cfg.iters, clean=clean[b])
            out[r, b] = f - clean[b][0]
    return {"delta_loss_batches": out, "loss_clean": np.mean([c[0] for c in clean])}


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_worst_case_equals_the_former_algorithm_with_one_forward_fewer_per_batch(norm):
    model = tiny_model()
    x, y = data()
    cfg = SharpnessConfig(kind="worst", norm=norm, rhos=(0.05, 0.3), m=8, subset=None, iters=6,
                          dtype="float64", first_order_rho=None, pac_bayes=False)
    calls = {"forward": 0, "backward": 0}

    def on_forward(module, inputs, output):
        calls["forward"] += 1
        if output.requires_grad:
            output.register_hook(lambda g: calls.__setitem__("backward", calls["backward"] + 1))

    handle = model.register_forward_hook(on_forward)
    try:
        out = sharpness(model, ce, x, y, cfg)
    finally:
        handle.remove()
    ref = former_worst_case(model, x, y, cfg)
    np.testing.assert_allclose(out["delta_loss_batches"], ref["delta_loss_batches"], rtol=1e-12, atol=1e-15)
    assert out["loss_clean"][0] == pytest.approx(ref["loss_clean"], rel=1e-14)
    assert np.all(out["delta_loss"] > 0)
    # 2 ρ × 3 batches × (6 gradients + 1 forward at the last iterate); no separate clean forward
    assert calls == {"forward": 2 * 3 * 7, "backward": 2 * 3 * 6} and out["num_gradients"] == 2 * 3 * 6


def test_ascent_given_its_first_evaluation_skips_that_call_only():
    theta_star = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    A = torch.diag(torch.tensor([1.0, 3.0, 0.5], dtype=torch.float64))
    calls = []

    def value_grad(delta):  # ½ δᵀAδ + bᵀδ: a quadratic with a linear term
        calls.append(delta.clone())
        return float(0.5 * delta @ A @ delta + theta_star @ delta), 0.0, A @ delta + theta_star

    s = torch.ones(3, dtype=torch.float64)
    plain = worst_case_ascent(value_grad, s, 0.4, norm="l2", iters=9)
    n_plain = len(calls)
    calls.clear()
    first = value_grad(torch.zeros(3, dtype=torch.float64))
    calls.clear()
    given = worst_case_ascent(value_grad, s, 0.4, norm="l2", iters=9, first=first)
    assert len(calls) == n_plain - 1 and n_plain == 10  # 9 gradients + the last iterate's value
    assert given[0] == plain[0] and torch.equal(given[2], plain[2])
    d = given[2]  # feasible, and F* is the value at δ* (above F(0) = 0)
    assert float(d.norm()) <= 0.4 * (1 + 1e-12)
    assert given[0] == pytest.approx(float(0.5 * d @ A @ d + theta_star @ d), rel=1e-12) and given[0] > 0


def test_nan_clean_loss_still_counts_every_bad_batch():
    model = tiny_model()
    x, y = data()
    x[torch.arange(len(x)) % 3 == 0, 0] = math.nan  # after the shuffle, every batch of 8 holds one
    cfg = SharpnessConfig(kind="worst", rhos=(0.1,), m=8, subset=None, iters=3, dtype="float64",
                          first_order_rho=None, pac_bayes=False)
    with pytest.raises(LandscapeError, match=r"the loss is NaN/inf at these weights on 3 of 3 batches"):
        sharpness(model, ce, x, y, cfg)
    x, _ = data()
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x[idx[8:10], 1] = math.nan  # only the second of the three batches
    with pytest.raises(LandscapeError, match=r"on 1 of 3 batches"):
        sharpness(model, ce, x, y, cfg)
