"""Tests for landscape.train.schedules: the learning rate at every step against hand formulas."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from landscape.errors import ConfigError
from landscape.registry import UnknownNameError
from landscape.train.optim import build_optimizer
from landscape.train.schedules import SCHEDULES, build_schedule

BASE_LR = 0.4


def make_opt(name="sgd"):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    return model, build_optimizer(name, model, lr=BASE_LR)


def lrs(sched, opt, steps):
    """The lr used by optimizer steps 0 … steps−1 (the scheduler is stepped after each)."""
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step(lambda: torch.zeros(()))  # keeps torch's "step before scheduler" check quiet
        sched.step()
    return out


def warm(t, w):
    return min(1.0, t / w) if w else 1.0


def cosine(t, total, w, m):
    p = min(1.0, max(0.0, (t - w) / (total - w)))
    return m + (1 - m) * 0.5 * (1 + math.cos(math.pi * p))


def linear(t, total, w, m):
    p = min(1.0, max(0.0, (t - w) / (total - w)))
    return 1 - (1 - m) * p


CASES = [
    ("constant", {}, 0, lambda t: 1.0),
    ("constant", {}, 5, lambda t: warm(t, 5)),
    ("step", {"milestones": [0.5, 0.75]}, 0, lambda t: 0.1 ** ((t >= 10) + (t >= 15))),
    (
        "step",
        {"milestones": [1, 3], "gamma": 0.5},
        2,
        lambda t: warm(t, 2) * 0.5 ** ((t >= 4) + (t >= 12)),
    ),
    ("step", {"milestones": [7], "unit": "step"}, 0, lambda t: 0.1 ** (t >= 7)),
    ("cosine", {}, 0, lambda t: cosine(t, 20, 0, 0.0)),
    ("cosine", {"min_lr": 0.1}, 4, lambda t: warm(t, 4) * cosine(t, 20, 4, 0.1)),
    ("linear", {}, 0, lambda t: linear(t, 20, 0, 0.0)),
    ("linear", {"min_lr": 0.25}, 3, lambda t: warm(t, 3) * linear(t, 20, 3, 0.25)),
]


@pytest.mark.parametrize("name,params,warmup,formula", CASES)
def test_lr_matches_hand_formula(name, params, warmup, formula):
    _, opt = make_opt()
    sched = build_schedule(
        name, opt, total_steps=20, steps_per_epoch=4, warmup_steps=warmup, **params
    )
    got = lrs(sched, opt, 24)  # past the end: stays at the final value
    want = [BASE_LR * formula(t) for t in range(24)]
    assert got == pytest.approx(want, abs=1e-12)


def test_warmup_starts_at_zero_and_reaches_the_base_lr():
    _, opt = make_opt()
    sched = build_schedule("cosine", opt, total_steps=10, steps_per_epoch=5, warmup_steps=4)
    got = lrs(sched, opt, 5)
    assert got[0] == 0.0 and got[4] == pytest.approx(BASE_LR)


@pytest.mark.parametrize("opt_name", ["sam", "gam", "sam_on"])
def test_schedule_drives_the_base_optimizer_of_sharpness_aware_wrappers(opt_name):
    model, opt = make_opt(opt_name)
    sched = build_schedule("linear", opt, total_steps=10, steps_per_epoch=5)
    x = torch.randn(8, 3)

    def closure():
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        return loss.detach()

    for t in range(3):
        assert opt.base_optimizer.param_groups[0]["lr"] == pytest.approx(BASE_LR * (1 - t / 10))
        opt.step(closure)
        sched.step()
    # still shared after the optimizer is reloaded from a state dict
    opt.load_state_dict(opt.state_dict())
    sched.step()
    assert opt.base_optimizer.param_groups[0]["lr"] == pytest.approx(BASE_LR * (1 - 4 / 10))


def test_zero_lr_step_leaves_the_weights_alone():
    model, opt = make_opt("sam")
    build_schedule("constant", opt, total_steps=10, steps_per_epoch=5, warmup_steps=3)
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.randn(8, 3)

    def closure():
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        return loss.detach()

    opt.step(closure)
    assert all(torch.equal(a, b.detach()) for a, b in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize(
    "name,params", [("step", {"milestones": [0.3, 2]}), ("cosine", {"min_lr": 0.1})]
)
def test_state_dict_round_trip(name, params):
    _, opt = make_opt()
    sched = build_schedule(name, opt, total_steps=20, steps_per_epoch=4, warmup_steps=3, **params)
    lrs(sched, opt, 7)
    buf = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)

    _, opt2 = make_opt()
    sched2 = build_schedule(name, opt2, total_steps=20, steps_per_epoch=4, warmup_steps=3, **params)
    opt2.load_state_dict(saved["opt"])
    sched2.load_state_dict(saved["sched"])
    assert lrs(sched2, opt2, 10) == lrs(sched, opt, 10)


def test_registry():
    assert SCHEDULES.names() == ["constant", "cosine", "linear", "step"]
    assert SCHEDULES["multistep"] is SCHEDULES["step"]
    _, opt = make_opt()
    with pytest.raises(UnknownNameError, match="constant, cosine, linear, step"):
        build_schedule("exponential", opt, total_steps=10, steps_per_epoch=2)


@pytest.mark.parametrize(
    "name,kw,word",
    [
        ("cosine", dict(min_lr=2.0), "min_lr"),
        ("cosine", dict(gamma=0.1), "accepted: min_lr"),
        ("step", dict(milestones=[1.5]), "milestone"),
        ("step", dict(milestones=[0.5], gamma=0.0), "gamma"),
        ("step", dict(milestones=[0.5], unit="year"), "unit"),
        ("step", dict(milestones="0.5"), "milestones"),
        ("linear", dict(warmup_steps=11), "warmup_steps"),
        ("linear", dict(warmup_steps=10), "warmup_steps"),
        ("constant", dict(total_steps=0), "total_steps"),
    ],
)
def test_bad_parameters_raise_config_errors(name, kw, word):
    _, opt = make_opt()
    args = dict(total_steps=10, steps_per_epoch=2)
    args.update(kw)
    with pytest.raises(ConfigError) as info:
        build_schedule(name, opt, **args)
    assert word in str(info.value) and "\n" not in str(info.value)
