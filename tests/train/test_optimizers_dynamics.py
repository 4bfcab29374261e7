"""Tests for the training-dynamics optimizers: ⊥Grad, weight-decay exclusion, Friendly-SAM, Entropy-SGD.

Each update is compared with a hand computation of one (or two) steps in float64 on a tiny
problem: a quadratic split over two parameter tensors, or a small MLP whose gradient is taken
with autograd at the starting weights.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from landscape.errors import ConfigError
from landscape.train.optim import (
    OPTIMIZERS,
    SAM,
    SGD,
    AdamW,
    EntropySGD,
    FriendlySAM,
    PerpAdamW,
    PerpSGD,
    build_optimizer,
    no_decay_parameters,
    orthogonal_gradient,
    orthogonalized,
)
from tests.train.test_optimizers import Quadratic  # the float64 quadratic both files use

TOL = dict(rtol=1e-10, atol=1e-12)




def closure_for(model, opt):
    def closure():
        opt.zero_grad()
        loss = model()
        loss.backward()
        return loss.detach()

    return closure


def perp(w, g, rescale=True):
    """⊥Grad of one flat vector, numpy."""
    w, g = np.asarray(w, dtype=float), np.asarray(g, dtype=float)
    out = g - (w @ g) / (w @ w) * w
    if rescale:
        out = out * np.linalg.norm(g) / np.linalg.norm(out)
    return out


def perp_split(w, g, rescale=True):
    """⊥Grad applied per tensor of the quadratic's split (u = w[:3], v = w[3:])."""
    return np.concatenate([perp(w[:3], g[:3], rescale), perp(w[3:], g[3:], rescale)])


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()


def mlp_batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(16, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (16,), generator=g)


def mlp_closure(model, opt, x, y):
    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss.detach()

    return closure


# --------------------------------------------------------------------------- ⊥Grad


def test_orthogonal_gradient_formula_and_edge_cases():
    g = torch.Generator().manual_seed(0)
    w, grad = torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(3, 4, generator=g, dtype=torch.float64)
    for rescale in (False, True):
        out = orthogonal_gradient(w, grad, rescale=rescale)
        np.testing.assert_allclose(out.reshape(-1).numpy(), perp(w.reshape(-1), grad.reshape(-1), rescale), **TOL)
        assert abs(float((out * w).sum())) < 1e-12
    zero = torch.zeros_like(w)
    assert torch.equal(orthogonal_gradient(zero, grad), grad)  # w = 0: nothing to remove
    assert torch.equal(orthogonal_gradient(w, 2.5 * w), torch.zeros_like(w))  # g ∥ w: g⊥ = 0


@pytest.mark.parametrize("rescale", [True, False])
def test_perp_sgd_hands_the_base_an_orthogonal_gradient_and_matches_hand_step(rescale):
    model, (x, y) = mlp(), mlp_batch()
    w0 = [p.detach().clone() for p in model.parameters()]
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    g0 = [p.grad.detach().clone() for p in model.parameters()]
    lr = 0.3
    opt = build_optimizer("perp_sgd", model, lr=lr, momentum=0.0, rescale=rescale)
    assert isinstance(opt, PerpSGD)
    opt.step(mlp_closure(model, opt, x, y))
    for p, w, g in zip(model.parameters(), w0, g0, strict=True):
        handed = p.grad.reshape(-1).numpy()
        assert abs(handed @ w.reshape(-1).numpy()) < 1e-12 * max(1.0, np.linalg.norm(w.numpy()))
        expected = w.reshape(-1).numpy() - lr * perp(w.reshape(-1), g.reshape(-1), rescale)
        np.testing.assert_allclose(p.detach().reshape(-1).numpy(), expected, **TOL)


def test_perp_adamw_one_step_matches_hand_computation():
    model, (x, y) = mlp(), mlp_batch()
    w0 = [p.detach().clone() for p in model.parameters()]
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    g0 = [p.grad.detach().clone() for p in model.parameters()]
    lr, wd, eps = 0.01, 0.5, 1e-8
    opt = build_optimizer("perp_adamw", model, lr=lr, weight_decay=wd, eps=eps)
    assert isinstance(opt, PerpAdamW) and isinstance(opt, AdamW)
    opt.step(mlp_closure(model, opt, x, y))
    for p, w, g in zip(model.parameters(), w0, g0, strict=True):
        wf = w.reshape(-1).numpy()
        gp = perp(wf, g.reshape(-1))
        # AdamW step 1: decay first, then m̂ = g, v̂ = g² (bias-corrected) → lr·g/(|g| + eps)
        expected = wf * (1 - lr * wd) - lr * gp / (np.abs(gp) + eps)
        np.testing.assert_allclose(p.detach().reshape(-1).numpy(), expected, rtol=1e-9, atol=1e-12)


def test_orthogonalized_wraps_any_optimizer_class_and_keeps_its_signature():
    cls = orthogonalized(torch.optim.RMSprop)
    assert orthogonalized(torch.optim.RMSprop) is cls and issubclass(cls, torch.optim.RMSprop)
    import inspect

    names = list(inspect.signature(cls.__init__).parameters)
    assert "alpha" in names and "rescale" in names
    model = Quadratic()
    w = model.w()
    opt = cls(model.parameters(), lr=0.1)
    opt.step(closure_for(model, opt))
    assert abs(float(model.u.grad @ w[:3])) < 1e-12 and abs(float(model.v.grad @ w[3:])) < 1e-12
    with pytest.raises(ConfigError):
        orthogonalized(SAM)


def test_perp_step_hooks_run_once_and_registry_names():
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)  # torch has now wrapped its SGD
    SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    model, (x, y) = mlp(), mlp_batch()
    opt = build_optimizer("perp_sgd", model, lr=0.1)
    calls = []
    opt.register_step_pre_hook(lambda *_: calls.append(1))
    opt.step(mlp_closure(model, opt, x, y))
    assert calls == [1]
    assert OPTIMIZERS["perp-adamw"] is PerpAdamW and OPTIMIZERS["orthograd"] is PerpAdamW


# --------------------------------------------------------------------------- SAM-family bases


def test_sam_with_perp_sgd_base_matches_hand_computation():
    rho, lr = 0.2, 0.1
    model = Quadratic()
    w = model.w()
    opt = SAM(model.parameters(), PerpSGD, lr=lr, momentum=0.0, rho=rho)
    opt.step(closure_for(model, opt))
    g = model.grad(w)
    g_sam = model.grad(w + rho * g / g.norm())
    expected = w.numpy() - lr * perp_split(w.numpy(), g_sam.numpy())  # projected at the restored w
    np.testing.assert_allclose(model.w().numpy(), expected, **TOL)


@pytest.mark.parametrize("name", ["sam", "friendly_sam", "fsam", "gnr", "entropy_sgd", "saf", "mesa"])
def test_builder_accepts_any_registered_plain_optimizer_as_base(name):
    model, (x, y) = mlp(), mlp_batch()
    opt = build_optimizer(name, model, lr=0.05, base="perp_adamw", rescale=False)
    assert isinstance(opt.base_optimizer, PerpAdamW)
    assert opt.param_groups[0]["rescale"] is False
    before = [p.detach().clone() for p in model.parameters()]
    opt.step(mlp_closure(model, opt, x, y))
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    with pytest.raises(ConfigError, match="base optimizer"):
        build_optimizer(name, model, lr=0.05, base="friendly_sam")


# --------------------------------------------------------------------------- weight-decay exclusion


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 5)
        self.bn = nn.BatchNorm1d(5)
        self.ln = nn.LayerNorm(5)
        self.head = nn.Linear(5, 3, bias=False)

    def forward(self, x):
        return self.head(self.ln(self.bn(self.fc(x))))


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "sam", "gam", "perp_adamw", "friendly_sam", "fsam",
                                  "entropy_sgd", "saf", "mesa"])
def test_no_decay_bias_norm_groups(name):
    model = Net()
    opt = build_optimizer(name, model, lr=0.1, weight_decay=0.3, no_decay_bias_norm=True)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] == 0.3 for p in g["params"]}
    spared = {id(p) for g in opt.param_groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert decayed == {id(model.fc.weight), id(model.head.weight)}
    assert spared == {id(model.fc.bias), id(model.bn.weight), id(model.bn.bias), id(model.ln.weight),
                      id(model.ln.bias)}
    plain = build_optimizer(name, model, lr=0.1, weight_decay=0.3)
    assert len(plain.param_groups) == 1 and plain.param_groups[0]["weight_decay"] == 0.3


@pytest.mark.parametrize("decoupled", [False, True])
def test_no_decay_bias_norm_leaves_spared_parameters_undecayed(decoupled):
    """Zero loss gradient: only weight decay moves the weights; spared ones must not move."""
    model = Net()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    lr, wd = 0.1, 0.3
    opt = build_optimizer("sgd", model, lr=lr, momentum=0.0, weight_decay=wd,
                          decoupled_weight_decay=decoupled, no_decay_bias_norm=True)
    opt.zero_grad()
    (0.0 * model(torch.randn(8, 4)).sum()).backward()
    opt.step()
    for n, p in model.named_parameters():
        expected = before[n] * (1 - lr * wd) if n in ("fc.weight", "head.weight") else before[n]
        torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=1e-7)
    assert {id(p) for p in no_decay_parameters(model)} == {
        id(model.fc.bias), id(model.bn.weight), id(model.bn.bias), id(model.ln.weight), id(model.ln.bias)}


def test_no_decay_bias_norm_must_be_boolean():
    with pytest.raises(ConfigError, match="no_decay_bias_norm"):
        build_optimizer("sgd", Net(), lr=0.1, no_decay_bias_norm="yes")


# --------------------------------------------------------------------------- Friendly-SAM


def test_friendly_sam_two_steps_match_hand_computation():
    rho, sigma, lmbda, lr = 0.3, 0.8, 0.6, 0.1
    model = Quadratic()
    opt = FriendlySAM(model.parameters(), SGD, lr=lr, momentum=0.0, rho=rho, sigma=sigma, lmbda=lmbda)
    w0 = model.w()
    opt.step(closure_for(model, opt))
    g0 = model.grad(w0)  # step 1: m = g0, d = g0
    w1 = w0 - lr * model.grad(w0 + rho * g0 / g0.norm())
    np.testing.assert_allclose(model.w().numpy(), w1.numpy(), **TOL)
    opt.step(closure_for(model, opt))
    g1 = model.grad(w1)
    d = g1 - sigma * g0
    w2 = w1 - lr * model.grad(w1 + rho * d / d.norm())
    np.testing.assert_allclose(model.w().numpy(), w2.numpy(), **TOL)
    m = lmbda * g0 + (1 - lmbda) * g1
    ema = torch.cat([t for t in opt.state_dict()["fsam_ema"]])
    np.testing.assert_allclose(ema.numpy(), m.numpy(), **TOL)


def test_friendly_sam_resume_from_state_dict_is_exact():
    def run(split):
        model = Quadratic()
        opt = FriendlySAM(model.parameters(), SGD, lr=0.1, rho=0.2)
        for k in range(3):
            if k == split:
                state = opt.state_dict()
                fresh = Quadratic()
                fresh.load_state_dict(model.state_dict())
                model = fresh
                opt = FriendlySAM(model.parameters(), SGD, lr=0.1, rho=0.2)
                opt.load_state_dict(state)
            opt.step(closure_for(model, opt))
        return model.w()

    assert torch.equal(run(split=None), run(split=2))


# --------------------------------------------------------------------------- Entropy-SGD


def test_entropy_sgd_one_step_matches_hand_computation():
    L, gamma, noise, inner_lr, alpha, lr = 3, 0.5, 0.05, 0.1, 0.75, 0.7
    model = Quadratic()
    x = model.w()
    opt = EntropySGD(model.parameters(), SGD, lr=lr, momentum=0.0, L=L, gamma=gamma, noise=noise,
                     inner_lr=inner_lr, alpha=alpha)
    assert opt.closure_calls == L
    calls = []
    closure = closure_for(model, opt)

    def counting():
        calls.append(1)
        return closure()

    torch.manual_seed(123)
    loss = opt.step(counting)
    assert len(calls) == L and float(loss) == pytest.approx(float(0.5 * x @ model.A @ x - model.b @ x))
    # hand computation with the same noise: drawn per tensor (u then v) at each inner step
    torch.manual_seed(123)
    xp, mu = x.clone(), x.clone()
    for _ in range(L):
        xi = torch.cat([torch.randn(3, dtype=torch.float64), torch.randn(2, dtype=torch.float64)])
        xp = xp - inner_lr * (model.grad(xp) + gamma * (xp - x)) + noise * math.sqrt(2 * inner_lr) * xi
        mu = alpha * mu + (1 - alpha) * xp
    expected = x - lr * (x - mu)
    np.testing.assert_allclose(model.w().numpy(), expected.numpy(), **TOL)


@pytest.mark.parametrize("kw,word", [(dict(L=0), "L="), (dict(L=2.5), "L="), (dict(inner_lr=0.0), "inner_lr"),
                                     (dict(alpha=1.0), "alpha"), (dict(lmbda=1.5), "lmbda")])
def test_invalid_dynamics_parameters_raise_one_line(kw, word):
    name = "friendly_sam" if "lmbda" in kw else "entropy_sgd"
    with pytest.raises(ConfigError) as info:
        build_optimizer(name, mlp(), lr=0.1, **kw)
    assert word in str(info.value) and "\n" not in str(info.value)


def test_entropy_sgd_and_friendly_sam_reduce_the_loss():
    for name, kw in (("entropy_sgd", dict(L=5, lr=1.0, momentum=0.0, inner_lr=0.2)),
                     ("friendly_sam", dict(lr=0.2, rho=0.05))):
        model, (x, y) = mlp(), mlp_batch()
        opt = build_optimizer(name, model, **kw)
        first = float(opt.step(mlp_closure(model, opt, x, y)))
        for _ in range(40):
            last = float(opt.step(mlp_closure(model, opt, x, y)))
        assert last < 0.5 * first, name
