"""Tests for landscape.train.losses: each loss against an independent float64 reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from landscape.errors import ConfigError, LandscapeError
from landscape.registry import UnknownNameError
from landscape.train.losses import LOSSES, Loss, build_loss, sparsemax

RTOL, ATOL = 1e-10, 1e-12
N, C = 7, 5


# --------------------------------------------------------------------------- fixtures


def make_batch(seed: int = 0, n: int = N, c: int = C, scale: float = 2.0):
    g = torch.Generator().manual_seed(seed)
    z = scale * torch.randn(n, c, generator=g, dtype=torch.float64)
    y = torch.randint(0, c, (n,), generator=g)
    return z, y


@pytest.fixture
def batch():
    return make_batch()


def np_batch(z, y):
    return z.detach().numpy(), y.numpy()


def np_logsumexp(z):
    m = z.max(axis=-1, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(axis=-1, keepdims=True)))[..., 0]


def np_log_softmax(z):
    return z - np_logsumexp(z)[:, None]


def np_ce(z, y):
    return -np_log_softmax(z)[np.arange(len(y)), y]


def np_pt(z, y):
    return np.exp(np_log_softmax(z))[np.arange(len(y)), y]


def np_onehot(y, c):
    out = np.zeros((len(y), c))
    out[np.arange(len(y)), y] = 1.0
    return out


def per_sample(name, z, y, **params):
    return build_loss(name, **params).per_sample(z, y)


def close(a, b, rtol=RTOL, atol=ATOL):
    np.testing.assert_allclose(np.asarray(a.detach()), np.asarray(b), rtol=rtol, atol=atol)


# Non-default parameters for every loss, so the parameter path is exercised too.
NONDEFAULT = {
    "ce": {},
    "label_smoothing": {"smoothing": 0.2},
    "maxsup": {"alpha": 0.3},
    "focal": {"gamma": 1.5},
    "poly1": {"epsilon": 2.0},
    "sce": {"alpha": 0.5, "beta": 0.7},
    "gce": {"q": 0.5},
    "mae": {},
    "mse": {"softmax": True, "scale": 2.0},
    "temperature_ce": {"temperature": 3.0},
    "sparsemax": {},
    "stablemax": {},
    "spherical_zloss": {"a": 2.0, "b": 0.5},
}


def test_every_registered_loss_has_a_test_case():
    assert sorted(NONDEFAULT) == LOSSES.names()


# --------------------------------------------------------------------------- special cases


def test_ce_matches_torch_and_numpy(batch):
    z, y = batch
    close(per_sample("ce", z, y), F.cross_entropy(z, y, reduction="none"))
    close(per_sample("cross_entropy", z, y), np_ce(*np_batch(z, y)))


def test_focal_gamma0_is_ce(batch):
    z, y = batch
    close(per_sample("focal", z, y, gamma=0.0), np_ce(*np_batch(z, y)))


def test_focal_vs_numpy(batch):
    z, y = batch
    pt = np_pt(*np_batch(z, y))
    close(per_sample("focal", z, y, gamma=2.5), -((1 - pt) ** 2.5) * np.log(pt))


def test_poly1_eps0_is_ce_and_formula(batch):
    z, y = batch
    zn, yn = np_batch(z, y)
    close(per_sample("poly1", z, y, epsilon=0.0), np_ce(zn, yn))
    close(per_sample("polyloss", z, y, epsilon=1.5), np_ce(zn, yn) + 1.5 * (1 - np_pt(zn, yn)))


@pytest.mark.parametrize("s", [0.0, 0.1, 0.35, 0.9])
def test_label_smoothing_matches_torch_and_numpy(batch, s):
    z, y = batch
    ours = per_sample("label_smoothing", z, y, smoothing=s)
    close(ours, F.cross_entropy(z, y, label_smoothing=s, reduction="none"))
    zn, yn = np_batch(z, y)
    target = (1 - s) * np_onehot(yn, C) + s / C
    close(ours, -(target * np_log_softmax(zn)).sum(axis=1))


def test_temperature_ce(batch):
    z, y = batch
    zn, yn = np_batch(z, y)
    close(per_sample("temperature_ce", z, y, temperature=1.0), np_ce(zn, yn))
    by_hand = np_logsumexp(zn / 2.0) - zn[np.arange(N), yn] / 2.0
    close(per_sample("tce", z, y, temperature=2.0), by_hand)


def test_gce_limits(batch):
    z, y = batch
    zn, yn = np_batch(z, y)
    close(per_sample("gce", z, y, q=1e-4), np_ce(zn, yn), rtol=1e-3, atol=1e-3)
    close(per_sample("generalized_ce", z, y, q=1.0), 1 - np_pt(zn, yn))
    pt = np_pt(zn, yn)
    close(per_sample("gce", z, y, q=0.7), (1 - pt**0.7) / 0.7)


def test_mae_vs_hand_formula(batch):
    z, y = batch
    zn, yn = np_batch(z, y)
    p = np.exp(np_log_softmax(zn))
    close(per_sample("mae", z, y), np.abs(p - np_onehot(yn, C)).sum(axis=1))


@pytest.mark.parametrize("softmax", [False, True])
@pytest.mark.parametrize("scale,weight", [(1.0, 1.0), (3.0, 1.0), (30.0, 15.0)])
def test_mse_vs_numpy(batch, softmax, scale, weight):
    z, y = batch
    zn, yn = np_batch(z, y)
    s = np.exp(np_log_softmax(zn)) if softmax else zn
    diff2 = (s - scale * np_onehot(yn, C)) ** 2
    w = np.where(np_onehot(yn, C) > 0, weight, 1.0)
    ours = per_sample("mse", z, y, softmax=softmax, scale=scale, target_weight=weight)
    close(ours, (w * diff2).sum(axis=1))
    if not softmax and scale == 1.0:
        # sum over classes = C x torch's MSELoss mean over all entries
        torch_mean = F.mse_loss(z, F.one_hot(y, C).double())
        close(build_loss("mse")(z, y), C * torch_mean.numpy())


def test_sce_vs_numpy(batch):
    z, y = batch
    zn, yn = np_batch(z, y)
    p = np.exp(np_log_softmax(zn))
    q = np_onehot(yn, C)
    log_q = np.where(q > 0, 0.0, -4.0)  # log 0 := A = -4
    rce = -(p * log_q).sum(axis=1)
    close(per_sample("sce", z, y), 0.1 * np_ce(zn, yn) + 1.0 * rce)
    close(per_sample("symmetric_ce", z, y, alpha=0.5, beta=0.7), 0.5 * np_ce(zn, yn) + 0.7 * rce)


def test_sce_authors_code_convention(batch):
    """The authors' code: clamp one-hot at 1e-4, natural log, p clamped at 1e-7."""
    z, y = batch
    zn, yn = np_batch(z, y)
    p = np.clip(np.exp(np_log_softmax(zn)), 1e-7, 1.0)
    rce = -(p * np.log(np.clip(np_onehot(yn, C), 1e-4, 1.0))).sum(axis=1)
    ref = 0.1 * np_ce(zn, yn) + rce
    ours = per_sample("sce", z, y, log_zero=math.log(1e-4))
    close(ours, ref, rtol=1e-5, atol=1e-5)


def test_maxsup_vs_numpy(batch):
    z, y = batch
    zn, yn = np_batch(z, y)
    ref = np_ce(zn, yn) + 0.3 * (zn.max(axis=1) - zn.mean(axis=1))
    close(per_sample("maxsup", z, y, alpha=0.3), ref)


def test_maxsup_equals_label_smoothing_when_correct(batch):
    z, _ = batch
    y = z.argmax(dim=1)  # every sample correctly classified
    close(per_sample("maxsup", z, y, alpha=0.2), per_sample("ls", z, y, smoothing=0.2))


# --------------------------------------------------------------------------- sparsemax


def np_simplex_projection(v, iters=200):
    """Euclidean projection onto the simplex by bisection on tau: sum max(v - tau, 0) = 1."""
    lo, hi = v.min() - 1.0, v.max()
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if np.maximum(v - mid, 0.0).sum() > 1.0:
            lo = mid
        else:
            hi = mid
    return np.maximum(v - 0.5 * (lo + hi), 0.0)


@pytest.mark.parametrize("scale", [0.1, 1.0, 5.0])
def test_sparsemax_is_simplex_projection(scale):
    z, _ = make_batch(seed=3, n=20, c=9, scale=scale)
    p = sparsemax(z)
    close(p.sum(dim=1), np.ones(20))
    assert (p >= 0).all()
    ref = np.stack([np_simplex_projection(row) for row in z.numpy()])
    close(p, ref, rtol=1e-9, atol=1e-12)


def test_sparsemax_dim_and_shift():
    z, _ = make_batch(seed=4, n=6, c=4)
    close(sparsemax(z.T, dim=0).T, sparsemax(z).numpy())
    close(sparsemax(z + 100.0), sparsemax(z).numpy())


def test_sparsemax_loss_nonnegative_and_zero_when_dominant():
    z, y = make_batch(seed=5, n=200, c=6, scale=3.0)
    loss = per_sample("sparsemax", z, y)
    assert (loss >= -1e-12).all()
    z2 = z.clone()
    z2[torch.arange(200), y] = z.max(dim=1).values + 1.0 + 1e-3  # margin > 1
    close(per_sample("sparsemax", z2, y), np.zeros(200))


def test_sparsemax_loss_gradient_is_sparsemax_minus_onehot():
    z, y = make_batch(seed=6, n=30, c=7, scale=1.5)
    z.requires_grad_(True)
    (grad,) = torch.autograd.grad(per_sample("sparsemax", z, y).sum(), z)
    ref = sparsemax(z.detach()) - F.one_hot(y, 7).double()
    close(grad, ref.numpy())


def test_sparsemax_loss_vs_numpy_formula():
    z, y = make_batch(seed=7, n=15, c=6, scale=2.0)
    zn, yn = np_batch(z, y)
    ref = []
    for row, t in zip(zn, yn, strict=True):
        p = np_simplex_projection(row)
        support = p > 0
        tau = (row[support].sum() - 1.0) / support.sum()
        ref.append(-row[t] + 0.5 * (row[support] ** 2 - tau**2).sum() + 0.5)
    close(per_sample("sparsemax", z, y), np.array(ref), rtol=1e-9, atol=1e-10)


# --------------------------------------------------------------------------- z-loss, flooding


def test_z_loss_term(batch):
    z, y = batch
    zn, yn = np_batch(z, y)
    ours = build_loss("focal", gamma=1.0, z_loss=1e-2).per_sample(z, y)
    pt = np_pt(zn, yn)
    close(ours, -(1 - pt) * np.log(pt) + 1e-2 * np_logsumexp(zn) ** 2)


def test_flooding_value_and_gradient_sign(batch):
    z, y = batch
    z = z.clone().requires_grad_(True)
    base = build_loss("ce")
    mean = base(z, y)
    (g_mean,) = torch.autograd.grad(mean, z)
    mean = mean.item()

    b_high = mean + 0.5  # L < b: reversed gradient
    flooded = build_loss("ce", flooding=b_high)(z, y)
    close(flooded, np.array(abs(mean - b_high) + b_high))
    (g_high,) = torch.autograd.grad(flooded, z)
    close(g_high, -g_mean.numpy())

    b_low = mean - 0.5  # L > b: unchanged
    flooded = build_loss("ce", flooding=b_low)(z, y)
    close(flooded, np.array(mean))
    (g_low,) = torch.autograd.grad(flooded, z)
    close(g_low, g_mean.numpy())


def test_per_sample_has_no_flooding(batch):
    z, y = batch
    close(build_loss("ce", flooding=100.0).per_sample(z, y), np_ce(*np_batch(z, y)))


# --------------------------------------------------------------------------- every loss


@pytest.mark.parametrize("name", LOSSES.names())
def test_shape_finite_and_mean(name, batch):
    z, y = batch
    loss = build_loss(name, z_loss=1e-3, **NONDEFAULT[name])
    out = loss.per_sample(z, y)
    assert out.shape == (N,) and out.dtype == torch.float64
    assert torch.isfinite(out).all()
    value = loss(z, y)
    assert value.shape == ()
    close(value, np.array(float(out.mean())))
    # float32 logits, large magnitude: still finite
    z32 = (50.0 * z).float()
    assert torch.isfinite(loss.per_sample(z32, y)).all()


@pytest.mark.parametrize("name", LOSSES.names())
def test_gradcheck(name):
    # maxsup (max) and sparsemax are piecewise smooth: random points are away from the kinks.
    z, y = make_batch(seed=11, n=3, c=4, scale=1.0)
    z.requires_grad_(True)
    loss = build_loss(name, z_loss=1e-2, **NONDEFAULT[name])
    assert torch.autograd.gradcheck(lambda x: loss.per_sample(x, y), (z,))


@pytest.mark.parametrize("name", LOSSES.names())
def test_vmap_per_example_gradients(name, batch):
    z, y = batch
    fn = LOSSES[name]
    params = NONDEFAULT[name]
    per_example = torch.func.vmap(torch.func.grad(lambda zi, yi: fn(zi, yi, **params)))(z, y)
    zz = z.clone().requires_grad_(True)
    (full,) = torch.autograd.grad(fn(zz, y, **params).sum(), zz)
    close(per_example, full.numpy())


@pytest.mark.parametrize("name", LOSSES.names())
def test_spec_round_trip(name, batch):
    z, y = batch
    loss = build_loss(name, z_loss=1e-3, flooding=0.05, **NONDEFAULT[name])
    spec = loss.spec()
    assert spec["name"] == name and spec["z_loss"] == 1e-3 and spec["flooding"] == 0.05
    again = build_loss(
        spec["name"], z_loss=spec["z_loss"], flooding=spec["flooding"], **spec["params"]
    )
    assert again.spec() == spec
    close(again.per_sample(z, y), loss.per_sample(z, y).numpy())


def test_spec_resolves_defaults_and_aliases():
    assert build_loss("Focal").spec() == {
        "name": "focal",
        "params": {"gamma": 2.0},
        "z_loss": 0.0,
        "flooding": None,
    }
    assert build_loss("cross-entropy").spec()["name"] == "ce"
    assert build_loss("ls").spec()["params"] == {"smoothing": 0.1}
    assert build_loss("sce").spec()["params"] == {"alpha": 0.1, "beta": 1.0, "log_zero": -4.0}
    assert build_loss("gce").spec()["params"] == {"q": 0.7}
    assert build_loss("mse").spec()["params"] == {
        "softmax": False,
        "scale": 1.0,
        "target_weight": 1.0,
    }
    assert isinstance(build_loss("focal", gamma=3).spec()["params"]["gamma"], float)
    assert isinstance(build_loss(), Loss) and build_loss().name == "ce"


def test_loss_registry_names():
    assert LOSSES.names() == sorted(
        [
            "ce",
            "label_smoothing",
            "maxsup",
            "focal",
            "poly1",
            "sce",
            "gce",
            "mae",
            "mse",
            "temperature_ce",
            "sparsemax",
            "stablemax",
            "spherical_zloss",
        ]
    )


# --------------------------------------------------------------------------- errors


def test_unknown_name_lists_valid_names():
    with pytest.raises(UnknownNameError) as info:
        build_loss("hinge")
    assert isinstance(info.value, LandscapeError)
    for name in LOSSES.names():
        assert name in str(info.value)


def test_bad_param_name():
    with pytest.raises(ConfigError, match=r"unknown parameter 'gama'.*did you mean 'gamma'") as e:
        build_loss("focal", gama=2)
    assert "gamma=2.0" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="accepts no parameters"):
        build_loss("ce", smoothing=0.1)


@pytest.mark.parametrize(
    "name,params",
    [
        ("focal", {"gamma": -1.0}),
        ("label_smoothing", {"smoothing": 1.0}),
        ("label_smoothing", {"smoothing": -0.1}),
        ("gce", {"q": 0.0}),
        ("gce", {"q": 1.5}),
        ("poly1", {"epsilon": -2.0}),
        ("temperature_ce", {"temperature": 0.0}),
        ("maxsup", {"alpha": -0.1}),
        ("sce", {"beta": -1.0}),
        ("sce", {"log_zero": 0.0}),
        ("mse", {"scale": 0.0}),
        ("focal", {"gamma": float("nan")}),
        ("focal", {"gamma": float("inf")}),
        ("focal", {"gamma": "2"}),
        ("focal", {"gamma": True}),
        ("mse", {"softmax": 1}),
    ],
)
def test_out_of_range_params(name, params):
    with pytest.raises(ConfigError) as info:
        build_loss(name, **params)
    message = str(info.value)
    assert "\n" not in message and name in message
    assert next(iter(params)) in message


@pytest.mark.parametrize(
    "kwargs", [{"flooding": -0.1}, {"z_loss": -1e-4}, {"flooding": "0.1"}, {"z_loss": math.nan}]
)
def test_bad_z_loss_and_flooding(kwargs):
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        build_loss("ce", **kwargs)


def test_boundary_params_accepted():
    build_loss("gce", q=1.0)
    build_loss("poly1", epsilon=-1.0)
    build_loss("ls", smoothing=0.0)
    build_loss("focal", gamma=0)
    build_loss("ce", flooding=0.0)


def test_shape_mismatch(batch):
    z, y = batch
    with pytest.raises(ValueError, match="do not fit"):
        build_loss("ce")(z, y[:-1])
