"""Tests for the training-dynamics losses: StableMax CE and the spherical Z-loss.

Each is compared in float64 with an independent numpy evaluation of its formula; StableMax's
gradient is compared with a central finite difference.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from landscape.errors import ConfigError
from landscape.train.losses import LOSSES, build_loss, stablemax


def make_batch(seed=0, n=9, c=6, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    z = scale * torch.randn(n, c, generator=g, dtype=torch.float64)
    y = torch.randint(0, c, (n,), generator=g)
    return z, y


def np_s(x):
    return np.where(x >= 0, x + 1.0, 1.0 / (1.0 - np.minimum(x, 0.0)))


def np_stablemax_ce(z, y):
    s = np_s(z)
    return -np.log(s[np.arange(len(y)), y] / s.sum(axis=1))


def np_spherical(z, y, a, b):
    mu = z.mean(axis=1, keepdims=True)
    sigma = np.sqrt(((z - mu) ** 2).mean(axis=1, keepdims=True))
    zt = ((z - mu) / sigma)[np.arange(len(y)), y]
    return np.logaddexp(0.0, a * (b - zt)) / a


# --------------------------------------------------------------------------- stablemax


def test_stablemax_ce_equals_formula_in_float64():
    z, y = make_batch()
    z[0, :3] = torch.tensor([0.0, -0.0, 1e-300], dtype=torch.float64)  # the branch point
    out = build_loss("stablemax").per_sample(z, y)
    np.testing.assert_allclose(out.numpy(), np_stablemax_ce(z.numpy(), y.numpy()), rtol=1e-12)
    assert LOSSES["stablemax_ce"] is LOSSES["stablemax"]


def test_stablemax_probabilities_sum_to_one_and_match_s():
    z, _ = make_batch(seed=1)
    p = stablemax(z)
    s = np_s(z.numpy())
    np.testing.assert_allclose(p.numpy(), s / s.sum(axis=1, keepdims=True), rtol=1e-12)
    np.testing.assert_allclose(p.sum(-1).numpy(), 1.0, rtol=1e-12)


def test_stablemax_gradient_equals_central_finite_difference():
    z, y = make_batch(seed=2, n=4, c=5)
    # keep every logit away from the branch point 0, where s is only C¹
    z = torch.where(z.abs() < 0.05, z + 0.1 * torch.sign(z + 1e-3), z)
    zz = z.clone().requires_grad_(True)
    loss = build_loss("stablemax")
    (grad,) = torch.autograd.grad(loss(zz, y), zz)
    h = 1e-6
    fd = np.zeros(z.shape)
    for i in range(z.shape[0]):
        for j in range(z.shape[1]):
            e = torch.zeros_like(z)
            e[i, j] = h
            fd[i, j] = (float(loss(z + e, y)) - float(loss(z - e, y))) / (2 * h)
    np.testing.assert_allclose(grad.numpy(), fd, rtol=1e-6, atol=1e-9)


def test_stablemax_does_not_collapse_where_softmax_does():
    """float32: softmax CE of a confident sample is exactly 0 (Softmax Collapse); StableMax's is not."""
    z = torch.tensor([[40.0, 0.0, -3.0]], dtype=torch.float32)
    y = torch.tensor([0])
    assert float(build_loss("ce").per_sample(z, y)) == 0.0
    value = float(build_loss("stablemax").per_sample(z, y))
    expected = float(np_stablemax_ce(z.double().numpy(), y.numpy())[0])  # log(1 + 1.25/41)
    assert value > 0 and value == pytest.approx(expected, rel=1e-5)


# --------------------------------------------------------------------------- spherical z-loss


@pytest.mark.parametrize("a,b", [(1.0, 1.0), (0.3, 2.5), (4.0, -0.5)])
def test_spherical_zloss_equals_formula(a, b):
    z, y = make_batch(seed=3)
    out = build_loss("spherical_zloss", a=a, b=b, eps=1e-300).per_sample(z, y)
    np.testing.assert_allclose(out.numpy(), np_spherical(z.numpy(), y.numpy(), a, b), rtol=1e-12)


def test_spherical_zloss_is_shift_and_scale_invariant():
    z, y = make_batch(seed=4)
    loss = build_loss("spherical_z", eps=1e-300)
    base = loss.per_sample(z, y)
    np.testing.assert_allclose(loss.per_sample(7.5 * z - 3.0, y).numpy(), base.numpy(), rtol=1e-12)


def test_spherical_zloss_is_finite_on_constant_logits():
    z = torch.zeros(2, 4, requires_grad=True)
    out = build_loss("spherical_zloss").per_sample(z, torch.tensor([0, 3]))
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(z.grad).all()


def test_spherical_zloss_is_not_the_palm_z_loss_term():
    """The registered loss and the PaLM log²Z weight are separate, and both apply."""
    z, y = make_batch(seed=5)
    both = build_loss("spherical_zloss", z_loss=1e-2, eps=1e-300).per_sample(z, y)
    lse = np.log(np.exp(z.numpy()).sum(axis=1))
    expected = np_spherical(z.numpy(), y.numpy(), 1.0, 1.0) + 1e-2 * lse**2
    np.testing.assert_allclose(both.numpy(), expected, rtol=1e-12)
    assert "z_loss" not in LOSSES


@pytest.mark.parametrize("kw", [dict(a=0.0), dict(a=-1.0), dict(eps=0.0)])
def test_spherical_zloss_bad_params_raise_one_line(kw):
    with pytest.raises(ConfigError) as info:
        build_loss("spherical_zloss", **kw)
    assert "\n" not in str(info.value)
