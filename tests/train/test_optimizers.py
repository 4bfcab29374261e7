"""Tests for landscape.train.optim.

One step of every sharpness-aware optimizer is checked against a hand
computation on a float64 quadratic; the rest is behavioural (the loss of a
small problem falls by a stated factor), plus BatchNorm handling, weight
decay, zero gradients, resume and the error paths.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from landscape.errors import ConfigError, LandscapeError
from landscape.registry import UnknownNameError
from landscape.train.optim import (
    GAM,
    GNR,
    OPTIMIZERS,
    SAM,
    SAMON,
    SGD,
    Adam,
    SharpnessAware,
    bn_first_pass_only,
    build_optimizer,
    normalization_parameters,
)
from landscape.train.schedules import build_schedule

ATOL = 1e-6



SHARPNESS_AWARE = ["sam", "asam", "gam", "gnr", "sam_on"]
ALL = ["sgd", "adam", "adamw", *SHARPNESS_AWARE]


# --------------------------------------------------------------------------- a float64 quadratic


class Quadratic(nn.Module):
    """L(w) = ½ wᵀAw − bᵀw with w split over two parameters (so norms must be global)."""

    def __init__(self, seed: int = 0, n: int = 5) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        m = torch.randn(n, n, generator=g, dtype=torch.float64)
        self.register_buffer("A", m @ m.T / n + torch.eye(n, dtype=torch.float64))
        self.register_buffer("b", torch.randn(n, generator=g, dtype=torch.float64))
        w0 = torch.randn(n, generator=g, dtype=torch.float64)
        self.u = nn.Parameter(w0[:3].clone())
        self.v = nn.Parameter(w0[3:].clone())

    def w(self) -> torch.Tensor:
        return torch.cat([self.u, self.v]).detach().clone()

    def forward(self) -> torch.Tensor:
        w = torch.cat([self.u, self.v])
        return 0.5 * w @ self.A @ w - self.b @ w

    def grad(self, w: torch.Tensor) -> torch.Tensor:
        return self.A @ w - self.b


def counting_closure(model: nn.Module, opt: torch.optim.Optimizer, calls: list | None = None):
    def closure():
        opt.zero_grad()
        loss = model()
        loss.backward()
        if calls is not None:
            calls.append(torch.cat([p.detach().flatten().clone() for p in model.parameters()]))
        return loss.detach()

    return closure


def one_step(opt_cls, lr=0.1, **kw):
    model = Quadratic()
    w0 = model.w()
    loss0 = model().detach()
    opt = opt_cls(model.parameters(), SGD, lr=lr, **kw)
    calls: list = []
    loss = opt.step(counting_closure(model, opt, calls))
    assert torch.equal(loss, loss0)  # step returns the loss at the unperturbed weights
    assert torch.equal(calls[0], w0)  # the first call is at w
    assert len(calls) == opt_cls.closure_calls
    return model, w0, model.w(), calls


def test_sam_step_matches_hand_computation():
    rho, lr = 0.3, 0.1
    model, w, w1, calls = one_step(SAM, lr=lr, rho=rho)
    g = model.grad(w)
    e = rho * g / g.norm()
    torch.testing.assert_close(calls[1], w + e, atol=ATOL, rtol=0)
    torch.testing.assert_close(w1, w - lr * model.grad(w + e), atol=ATOL, rtol=0)


@pytest.mark.parametrize("via", ["asam", "sam_adaptive"])
def test_asam_step_matches_hand_computation(via):
    rho, eta, lr = 0.5, 0.01, 0.1
    if via == "asam":
        model, w, w1, _ = one_step(OPTIMIZERS["asam"], lr=lr, rho=rho, eta=eta)
    else:
        model, w, w1, _ = one_step(SAM, lr=lr, rho=rho, eta=eta, adaptive=True)
    g = model.grad(w)
    t = w.abs() + eta
    e = rho * t**2 * g / (t * g).norm()
    torch.testing.assert_close(w1, w - lr * model.grad(w + e), atol=ATOL, rtol=0)


def test_gnr_step_matches_hand_computation():
    r, alpha, lr = 0.2, 0.7, 0.1
    model, w, w1, calls = one_step(GNR, lr=lr, r=r, alpha=alpha)
    g1 = model.grad(w)
    g2 = model.grad(w + r * g1 / g1.norm())
    torch.testing.assert_close(calls[1], w + r * g1 / g1.norm(), atol=ATOL, rtol=0)
    torch.testing.assert_close(w1, w - lr * ((1 - alpha) * g1 + alpha * g2), atol=ATOL, rtol=0)


def test_gam_step_matches_hand_computation():
    hp = dict(rho=0.1, rho_t=0.3, alpha=0.3, beta=0.4, gamma=0.5)
    lr = 0.1
    model, w, w1, calls = one_step(GAM, lr=lr, **hp)
    grad = model.grad
    g0 = grad(w)
    w_1 = w + hp["rho"] * g0 / g0.norm()
    g1 = grad(w_1)
    d = g1 - g0
    w_2 = w + hp["rho_t"] * d / d.norm()
    g2 = grad(w_2)
    w_3 = w_2 + hp["rho"] * g2 / g2.norm()
    g3 = grad(w_3)
    m = g0 + abs(1 - hp["beta"]) * g2
    u = hp["alpha"] * g1 + (1 - hp["alpha"]) * g3
    vertical = m - (m @ u) / (u @ u) * u
    g_hat = u - hp["gamma"] * vertical
    for got, want in zip(calls[1:], [w_1, w_2, w_3], strict=True):
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    torch.testing.assert_close(w1, w - lr * g_hat, atol=ATOL, rtol=0)


def test_gam_adaptive_step_matches_hand_computation():
    hp = dict(rho=0.1, rho_t=0.3, alpha=0.3, beta=0.4, gamma=0.5, adaptive=True, eta=0.05)
    lr = 0.1
    model, w, w1, _ = one_step(GAM, lr=lr, **hp)
    grad = model.grad

    def step(at, v, radius):
        t = at.abs() + hp["eta"]
        return radius * t**2 * v / (t * v).norm()

    g0 = grad(w)
    g1 = grad(w + step(w, g0, hp["rho"]))
    w_2 = w + step(w, g1 - g0, hp["rho_t"])
    g2 = grad(w_2)
    g3 = grad(w_2 + step(w_2, g2, hp["rho"]))
    m = g0 + (1 - hp["beta"]) * g2
    u = hp["alpha"] * g1 + (1 - hp["alpha"]) * g3
    g_hat = u - hp["gamma"] * (m - (m @ u) / (u @ u) * u)
    torch.testing.assert_close(w1, w - lr * g_hat, atol=ATOL, rtol=0)


def test_sam_on_step_matches_hand_computation():
    rho, lr = 0.3, 0.1
    model = Quadratic()
    w = model.w()
    opt = SAMON(model.parameters(), SGD, norm_params=[model.v], lr=lr, rho=rho)
    calls: list = []
    opt.step(counting_closure(model, opt, calls))
    g = model.grad(w)
    e = torch.zeros_like(w)
    e[3:] = rho * g[3:] / g[3:].norm()  # only the "normalization" block, its own norm
    torch.testing.assert_close(calls[1], w + e, atol=ATOL, rtol=0)
    torch.testing.assert_close(model.w(), w - lr * model.grad(w + e), atol=ATOL, rtol=0)


def test_first_step_second_step_api_matches_step():
    rho, lr = 0.2, 0.05
    a, b = Quadratic(), Quadratic()
    opt_a = SAM(a.parameters(), SGD, lr=lr, rho=rho, momentum=0.9)
    opt_b = SAM(b.parameters(), SGD, lr=lr, rho=rho, momentum=0.9)
    for _ in range(3):
        opt_a.step(counting_closure(a, opt_a))
        b().backward()
        opt_b.first_step(zero_grad=True)
        b().backward()
        opt_b.second_step(zero_grad=True)
    assert torch.equal(a.w(), b.w())


# --------------------------------------------------------------------------- behaviour on a small problem


def make_classification(n=128, d=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = (x @ torch.randn(d, generator=g) > 0).long()
    return x, y


def make_mlp(seed=0, d=10):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 2))


def train_closure(model, opt, x, y):
    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss.detach()

    return bn_first_pass_only(model, closure)


LR = {"adam": 0.01, "adamw": 0.01}


@pytest.mark.parametrize("name", ALL)
def test_loss_falls_by_a_factor_of_10_in_60_steps(name):
    x, y = make_classification()
    model = make_mlp()
    params = {} if name in ("adam", "adamw") else {"momentum": 0.9}
    opt = build_optimizer(name, model, lr=LR.get(name, 0.1), **params)
    with torch.no_grad():
        first = F.cross_entropy(model(x), y).item()
    for _ in range(60):
        loss = opt.step(train_closure(model, opt, x, y))
    assert torch.isfinite(loss)
    with torch.no_grad():
        model.eval()
        last = F.cross_entropy(model(x), y).item()
    assert last < first / 10, (name, first, last)


@pytest.mark.parametrize("base", ["adam", "adamw"])
def test_sam_with_adaptive_bases_trains(base):
    x, y = make_classification()
    model = make_mlp()
    opt = build_optimizer("sam", model, lr=0.01, base=base, weight_decay=1e-4)
    with torch.no_grad():
        first = F.cross_entropy(model(x), y).item()
    for _ in range(60):
        opt.step(train_closure(model, opt, x, y))
    model.eval()
    with torch.no_grad():
        assert F.cross_entropy(model(x), y).item() < first / 10


@pytest.mark.parametrize("name", ALL)
def test_closure_calls_per_step(name):
    x, y = make_classification()
    model = make_mlp()
    opt = build_optimizer(name, model, lr=0.01)
    calls = []

    def closure():
        calls.append(1)
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss.detach()

    opt.step(bn_first_pass_only(model, closure))
    expected = {"gam": 4, "sgd": 1, "adam": 1, "adamw": 1}.get(name, 2)
    assert len(calls) == expected == type(opt).closure_calls


# --------------------------------------------------------------------------- SAM-ON


def test_sam_on_perturbs_only_normalization_parameters():
    x, y = make_classification()
    model = nn.Sequential(
        nn.Linear(10, 16, bias=False), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 16), nn.LayerNorm(16),
        nn.ReLU(), nn.Linear(16, 2),
    )  # fmt: skip
    norm_ids = {id(p) for p in normalization_parameters(model)}
    assert len(norm_ids) == 4
    names = [n for n, _ in model.named_parameters()]
    is_norm = {n: id(p) in norm_ids for n, p in model.named_parameters()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    rho = 0.5
    opt = build_optimizer("sam_on", model, lr=0.1, rho=rho)
    seen: list[dict[str, torch.Tensor]] = []

    def closure():
        seen.append({n: p.detach().clone() for n, p in model.named_parameters()})
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss.detach()

    opt.step(bn_first_pass_only(model, closure))
    assert len(seen) == 2
    delta = []
    for n in names:
        assert torch.equal(seen[0][n], before[n])
        if is_norm[n]:
            assert not torch.equal(seen[1][n], seen[0][n]), n
            delta.append((seen[1][n] - seen[0][n]).flatten())
        else:
            assert torch.equal(seen[1][n], seen[0][n]), n
    torch.testing.assert_close(torch.cat(delta).norm(), torch.tensor(rho), rtol=1e-5, atol=0)
    # every parameter is still updated by the base optimizer
    for n, p in model.named_parameters():
        assert not torch.equal(p.detach(), before[n]), n


def test_sam_on_needs_normalization_layers():
    with pytest.raises(ConfigError, match="normalization"):
        build_optimizer("sam_on", nn.Linear(3, 2), lr=0.1)


# --------------------------------------------------------------------------- weight decay


def linear_problem():
    """Least squares on a bias-free float64 linear layer; returns the model, its loss, w and ∇L(·)."""
    torch.manual_seed(0)
    model = nn.Linear(4, 1, bias=False).double()
    x = torch.randn(8, 4, dtype=torch.float64)
    y = torch.randn(8, 1, dtype=torch.float64)

    def loss_fn():
        return ((model(x) - y) ** 2).mean()

    def grad(w):
        w = w.clone().requires_grad_(True)
        return torch.autograd.grad(((x @ w.T - y) ** 2).mean(), w)[0]

    return model, loss_fn, model.weight.detach().clone(), grad


def run_one_step(name, model, loss_fn, **kw):
    opt = build_optimizer(name, model, **kw)

    def closure():
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss.detach()

    opt.step(closure)
    return model.weight.detach()


@pytest.mark.parametrize("decoupled", [False, True])
def test_sgd_weight_decay_textbook(decoupled):
    lr, wd = 0.1, 0.05
    model, loss_fn, w, grad = linear_problem()
    g = grad(w)
    w1 = run_one_step(
        "sgd", model, loss_fn, lr=lr, weight_decay=wd, decoupled_weight_decay=decoupled
    )
    want = (1 - lr * wd) * w - lr * g if decoupled else w - lr * (g + wd * w)
    torch.testing.assert_close(w1, want, atol=1e-12, rtol=0)


@pytest.mark.parametrize("name,decoupled", [("adam", False), ("adam", True), ("adamw", False)])
def test_adam_weight_decay_textbook(name, decoupled):
    lr, wd, eps = 0.01, 0.1, 1e-8
    model, loss_fn, w, grad = linear_problem()
    g = grad(w)
    w1 = run_one_step(
        name, model, loss_fn, lr=lr, weight_decay=wd, decoupled_weight_decay=decoupled
    )
    if name == "adamw" or decoupled:  # first Adam step: m̂ = g, v̂ = g²
        want = (1 - lr * wd) * w - lr * g / (g.abs() + eps)
    else:
        gc = g + wd * w
        want = w - lr * gc / (gc.abs() + eps)
    torch.testing.assert_close(w1, want, atol=1e-12, rtol=0)


@pytest.mark.parametrize("decoupled", [False, True])
def test_sam_weight_decay_applies_once_at_w(decoupled):
    lr, wd, rho = 0.1, 0.05, 0.2
    model, loss_fn, w, grad = linear_problem()
    g = grad(w)
    g_sam = grad(w + rho * g / g.norm())
    w1 = run_one_step(
        "sam", model, loss_fn, lr=lr, rho=rho, weight_decay=wd, decoupled_weight_decay=decoupled
    )
    want = (1 - lr * wd) * w - lr * g_sam if decoupled else w - lr * (g_sam + wd * w)
    torch.testing.assert_close(w1, want, atol=1e-12, rtol=0)


# --------------------------------------------------------------------------- BatchNorm


def bn_model(momentum=0.1):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 8), nn.BatchNorm1d(8, momentum=momentum), nn.ReLU(), nn.Linear(8, 8),
        nn.BatchNorm1d(8, momentum=momentum), nn.ReLU(), nn.Linear(8, 3),
    )  # fmt: skip


def bn_buffers(model):
    return {n: b.clone() for n, b in model.named_buffers()}


@pytest.mark.parametrize("name", ["sam", "gam", "gnr"])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_bn_statistics_follow_the_first_pass_only(name, momentum):
    x = torch.randn(16, 6, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 3, (16,), generator=torch.Generator().manual_seed(2))
    model = bn_model(momentum)
    reference = copy.deepcopy(model)
    reference(x)  # one plain training-mode forward
    opt = build_optimizer(name, model, lr=0.1)
    opt.step(train_closure(model, opt, x, y))
    got, want = bn_buffers(model), bn_buffers(reference)
    assert got.keys() == want.keys() and len(got) == 6
    for key in want:
        assert torch.equal(got[key], want[key]), key
    assert all(m.momentum == momentum for m in model.modules() if isinstance(m, nn.BatchNorm1d))


def test_bn_statistics_change_without_the_wrapper():
    x = torch.randn(16, 6, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 3, (16,), generator=torch.Generator().manual_seed(2))
    model = bn_model()
    reference = copy.deepcopy(model)
    reference(x)
    opt = build_optimizer("sam", model, lr=0.1)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss.detach()

    opt.step(closure)
    assert not torch.equal(model[1].running_mean, reference[1].running_mean)


# --------------------------------------------------------------------------- exactness and zero gradients


@pytest.mark.parametrize("name", SHARPNESS_AWARE)
def test_weights_are_restored_exactly_before_the_base_update(name):
    x, y = make_classification()
    model = make_mlp()
    w0 = [p.detach().clone() for p in model.parameters()]
    opt = build_optimizer(name, model, lr=0.1, momentum=0.9)
    seen = []
    opt.base_optimizer.register_step_pre_hook(
        lambda *_: seen.append([p.detach().clone() for p in model.parameters()])
    )
    opt.step(train_closure(model, opt, x, y))
    assert len(seen) == 1
    assert all(torch.equal(a, b) for a, b in zip(seen[0], w0, strict=True))


@pytest.mark.parametrize("name", SHARPNESS_AWARE)
@pytest.mark.parametrize("adaptive", [False, True])
def test_zero_gradient_is_safe(name, adaptive):
    model = make_mlp()
    x, _ = make_classification()
    w0 = [p.detach().clone() for p in model.parameters()]
    kw = {"adaptive": adaptive} if name in ("sam", "gam", "sam_on") else {}
    if name == "asam" and not adaptive:
        kw = {}
    opt = build_optimizer(name, model, lr=0.1, momentum=0.9, **kw)

    def closure():
        opt.zero_grad()
        loss = 0.0 * model(x).sum()
        loss.backward()
        return loss.detach()

    for _ in range(2):
        opt.step(bn_first_pass_only(model, closure))
    for a, b in zip(model.parameters(), w0, strict=True):
        assert torch.isfinite(a).all()
        assert torch.equal(a.detach(), b)


# --------------------------------------------------------------------------- resume


def snapshot(obj) -> dict:
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize(
    "name,base", [(n, "sgd") for n in ALL] + [("sam", "adam"), ("gam", "adamw")]
)
def test_resume_is_bit_identical(name, base):
    x, y = make_classification()
    batches = [(x[i::4], y[i::4]) for i in range(4)]
    kw = dict(lr=0.05, weight_decay=1e-3, base=base)
    if name == "sgd" or (name in SHARPNESS_AWARE and base == "sgd"):
        kw["momentum"] = 0.9

    def make(model):
        opt = build_optimizer(name, model, **kw)
        sched = build_schedule("cosine", opt, total_steps=8, steps_per_epoch=4, warmup_steps=2)
        return opt, sched

    def run(model, opt, sched, steps):
        for i in steps:
            xb, yb = batches[i % 4]
            opt.step(train_closure(model, opt, xb, yb))
            sched.step()

    model = make_mlp()
    opt, sched = make(model)
    run(model, opt, sched, range(3))
    saved = snapshot(
        {"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}
    )

    resumed = make_mlp(seed=123)
    resumed.load_state_dict(saved["model"])
    opt2, sched2 = make(resumed)
    opt2.load_state_dict(saved["opt"])
    sched2.load_state_dict(saved["sched"])

    run(model, opt, sched, range(3, 7))
    run(resumed, opt2, sched2, range(3, 7))
    for a, b in zip(model.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert opt.param_groups[0]["lr"] == opt2.param_groups[0]["lr"]
    if isinstance(opt2, SharpnessAware):  # the groups are still shared after loading
        assert opt2.param_groups is opt2.base_optimizer.param_groups


def test_hyperparameters_round_trip_through_state_dict():
    model = make_mlp()
    opt = build_optimizer("gam", model, lr=0.1, rho=0.07, gamma=0.2)
    state = snapshot(opt.state_dict())
    other = build_optimizer("gam", make_mlp(), lr=0.1)
    other.load_state_dict(state)
    assert other.param_groups[0]["rho"] == 0.07 and other.param_groups[0]["gamma"] == 0.2


# --------------------------------------------------------------------------- builder and errors


def test_registry_names():
    dynamics = ["entropy_sgd", "friendly_sam", "perp_adam", "perp_adamw", "perp_sgd",  # test_optimizers_dynamics
                "fsam", "mesa", "saf"]  # test_optimizers_fisher_saf
    assert OPTIMIZERS.names() == sorted(ALL + dynamics)
    assert OPTIMIZERS["sam-on"] is SAMON and OPTIMIZERS["samon"] is SAMON


def test_params_are_split_between_wrapper_and_base():
    model = make_mlp()
    opt = build_optimizer("sam", model, lr=0.1, rho=0.1, momentum=0.8, nesterov=True, base="sgd")
    assert isinstance(opt, SAM) and isinstance(opt.base_optimizer, SGD)
    group = opt.base_optimizer.param_groups[0]
    assert group["rho"] == 0.1 and group["momentum"] == 0.8 and group["nesterov"] is True
    opt = build_optimizer("gnr", model, lr=0.1, base="adam", betas=[0.8, 0.9], r=0.05)
    assert isinstance(opt.base_optimizer, Adam)
    assert opt.param_groups[0]["betas"] == (0.8, 0.9) and opt.param_groups[0]["r"] == 0.05


def test_unknown_optimizer_lists_valid_names():
    with pytest.raises(UnknownNameError) as info:
        build_optimizer("lion", make_mlp(), lr=0.1)
    assert isinstance(info.value, LandscapeError)
    for name in ALL:
        assert name in str(info.value)


def test_unknown_parameter_lists_accepted_ones():
    with pytest.raises(ConfigError) as info:
        build_optimizer("sam", make_mlp(), lr=0.1, rh0=0.1)
    msg = str(info.value)
    assert "rh0" in msg and "rho" in msg and "momentum" in msg and "\n" not in msg
    with pytest.raises(ConfigError, match="betas"):
        build_optimizer("sgd", make_mlp(), lr=0.1, betas=(0.9, 0.99))


@pytest.mark.parametrize(
    "name,kw,word",
    [
        ("sgd", dict(lr=0.0), "lr"),
        ("sam", dict(lr=-1.0), "lr"),
        ("sam", dict(lr=0.1, rho=-0.1), "rho"),
        ("asam", dict(lr=0.1, rho=-2.0), "rho"),
        ("gnr", dict(lr=0.1, r=-0.1), "r="),
        ("gam", dict(lr=0.1, rho_t=-1.0), "rho_t"),
        ("sgd", dict(lr=0.1, momentum=1.0), "momentum"),
        ("sam", dict(lr=0.1, momentum=-0.1), "momentum"),
        ("sgd", dict(lr=0.1, momentum=0.0, nesterov=True), "nesterov"),
        ("adam", dict(lr=0.1, betas=(0.9, 1.0)), "betas"),
        ("sgd", dict(lr=0.1, weight_decay=-1e-4), "weight_decay"),
        ("sam", dict(lr=0.1, base="sam"), "base"),
        ("sam", dict(lr=0.1, rho="big"), "rho"),
    ],
)
def test_invalid_values_raise_one_line_config_errors(name, kw, word):
    with pytest.raises(ConfigError) as info:
        build_optimizer(name, make_mlp(), **kw)
    assert word in str(info.value) and "\n" not in str(info.value)


def test_step_without_closure_is_an_error():
    model = make_mlp()
    opt = build_optimizer("sam", model, lr=0.1)
    with pytest.raises(RuntimeError, match="closure"):
        opt.step()
    expected = {"gam": "GAM takes four gradient evaluations", "entropy_sgd": "Entropy-SGD takes L gradient evaluations",
                "saf": "SAF adds a loss term", "mesa": "MESA adds a loss term"}
    for name, why in expected.items():  # the wrappers whose step is more than first_step + second_step
        opt = build_optimizer(name, model, lr=0.1)
        for half in (opt.first_step, opt.second_step):
            with pytest.raises(NotImplementedError, match=f"^{why}: use step"):
                half()


def test_step_hooks_run_once_even_after_torch_wrapped_its_own_classes():
    """Regression: once a plain torch.optim.SGD/Adam exists, torch has wrapped that class's `step`;
    our subclasses must still run each step hook exactly once."""
    for cls in (torch.optim.SGD, torch.optim.Adam):
        cls([torch.zeros(1, requires_grad=True)], lr=0.1)
    for name in ("sgd", "adam"):
        for decoupled in (False, True):
            model = make_mlp()
            opt = build_optimizer(name, model, lr=0.01, weight_decay=0.1, decoupled_weight_decay=decoupled)
            calls = []
            opt.register_step_pre_hook(lambda *_, calls=calls: calls.append(1))
            model(torch.randn(4, 10)).sum().backward()
            opt.step()
            assert len(calls) == 1, (name, decoupled)
