"""Second-order autograd through attention (``landscape.params.second_order``).

With the default SDPA backend a double backward (or forward-over-reverse) through
``nn.TransformerEncoder`` on CPU fails (``derivative for
aten::_scaled_dot_product_flash_attention_for_cpu_backward is not implemented``); every HVP and
``∇‖∇L‖²`` must pick the math backend by itself. References, float64: central finite
differences of the first-order gradient computed with the default (fused) backend — no
second-order autograd and no ``functional_call`` — and ``torch.autograd.functional.hessian`` of
the loss with the flat vector written into a copy of the model by attribute assignment.
"""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from landscape.linalg import HVP_METHODS, HessianOperator, lanczos
from landscape.params import second_order, select_parameters
from landscape.probes.hessian import HessianConfig, hessian
from landscape.probes.sharpness import SharpnessConfig, _Objective, sharpness
from tests.test_tied_weights import plain_loader


def CE(z, y):  # noqa: N802 — per-sample cross-entropy
    return F.cross_entropy(z, y, reduction="none")


class EncoderClassifier(nn.Module):
    """One default ``nn.TransformerEncoderLayer`` (SDPA attention), mean-pooled: 627 parameters."""

    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16, dropout=0.0,
                                           batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=1, enable_nested_tensor=False)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.encoder(x).mean(1))


@functools.cache
def case():
    torch.manual_seed(0)
    model = EncoderClassifier().double().eval()
    x = torch.randn(20, 5, 8, dtype=torch.float64)
    y = torch.randint(0, 3, (20,))
    ref = copy.deepcopy(model)
    load, theta0 = plain_loader(ref)

    def loss(theta):
        load(theta)
        return CE(ref(x), y).mean()

    def grad(theta):  # first order, default SDPA backend
        t = theta.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(loss(t), t)
        return g

    h = 1e-4
    eye = torch.eye(len(theta0), dtype=torch.float64)
    fd = torch.stack([(grad(theta0 + h * e) - grad(theta0 - h * e)) / (2 * h) for e in eye], dim=1)
    fd = 0.5 * (fd + fd.T)
    with second_order():
        H = torch.autograd.functional.hessian(loss, theta0)
    return model, x, y, theta0, grad(theta0), fd, H


def test_default_attention_has_no_double_backward():
    """The failure this module is about (guards that the test below exercises it)."""
    model, x, y, *_ = case()
    ref = copy.deepcopy(model)
    load, theta = plain_loader(ref)
    theta.requires_grad_(True)
    load(theta)
    with pytest.raises(RuntimeError, match="not implemented"):
        (g,) = torch.autograd.grad(CE(ref(x), y).mean(), theta, create_graph=True)
        torch.autograd.grad(g.sum(), theta)


def test_references_agree():
    *_, fd, H = case()
    assert float((fd - H).abs().max()) <= 1e-6


@pytest.mark.parametrize("method", [m for m in HVP_METHODS if m != "auto"])
def test_hessian_top2_matches_dense(method):
    model, x, y, theta0, _, fd, H = case()
    op = HessianOperator(model, CE, x, y, dtype=torch.float64, method=method, batch_size=8)
    torch.testing.assert_close(op.theta, theta0, rtol=0, atol=0)
    res = lanczos(op.matvec, op.size, max_steps=op.size, top_k=2, bottom_k=0, dtype=torch.float64)
    assert op.method == method  # no silent fallback
    for ref in (H, fd):
        want = torch.linalg.eigvalsh(ref)[-2:]
        assert float((res.eigenvalues[-2:] - want).abs().max()) <= 1e-6


def test_hessian_probe_runs_on_attention():
    model, x, y, *_, H = case()
    out = hessian(model, CE, x, y, HessianConfig(dtype="float64", top_k=2, bottom_k=1, lanczos_steps=627,
                                                 trace=False))
    evals = torch.linalg.eigvalsh(H).numpy()
    np.testing.assert_allclose(out["eigenvalues"], evals[::-1][:2], rtol=0, atol=1e-6)
    np.testing.assert_allclose(out["bottom_eigenvalues"], evals[:1], rtol=0, atol=1e-6)


def test_grad_norm_ascent_is_hessian_times_gradient():
    model, x, y, _, g, _, H = case()
    cfg = SharpnessConfig(dtype="float64", subset=None, m=20, pac_bayes=False)
    obj = _Objective(model, CE, select_parameters(model), cfg, torch.float64, torch.device("cpu"))
    gnorm, hg = obj.grad_norm_ascent(torch.zeros_like(obj.theta), x, y)
    assert gnorm == pytest.approx(float(g.norm()), rel=1e-10)
    torch.testing.assert_close(hg, H @ g, rtol=1e-8, atol=1e-10)


def test_sharpness_first_order_flatness_runs():
    model, x, y, *_ = case()
    cfg = SharpnessConfig(dtype="float64", subset=None, m=10, iters=2, rhos=(0.01,), first_order_rho=0.05,
                          first_order_iters=3, pac_bayes=False)
    out = sharpness(model, CE, x, y, cfg)
    assert np.isfinite(out["first_order_flatness"]) and out["first_order_flatness"] > 0
    assert np.isfinite(out["first_order_grad_norm"])
