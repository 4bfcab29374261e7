"""Tests for FSAM (Fisher-mask SAM), SAF and MESA: one step against a hand computation in
float64, the mask refresh, the per-sample output memory across epochs, the weight EMA, the
trainer hook (short runs, bit-identical resume) and the CLI.

Hand computations use numpy on the flat weights; gradients at given weights come from the
closed form of the quadratic, or from autograd on a copy of the network.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from landscape.checkpoints import RunDir, load_state_dict
from landscape.errors import ConfigError
from landscape.train.config import TrainConfig
from landscape.train.optim import (
    MESA,
    OPTIMIZERS,
    SAF,
    SGD,
    FisherSAM,
    FriendlySAM,
    build_optimizer,
    trajectory_kl,
)
from landscape.train.trainer import train
from tests.train.test_optimizers import Quadratic
from tests.train.test_optimizers_dynamics import TOL
from tests.train.test_optimizers_dynamics import closure_for as quad_closure


def softmax(z, axis=-1):
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def kl_numpy(z_now, z_ref, tau):
    """τ² KL(softmax(z_ref/τ) ‖ softmax(z_now/τ)) per row."""
    p, q = softmax(np.asarray(z_ref) / tau), softmax(np.asarray(z_now) / tau)
    return tau**2 * (p * (np.log(p) - np.log(q))).sum(-1)


def top_mask(fisher, keep):
    """Boolean mask of the `keep` largest entries (numpy, no ties in these tests)."""
    m = np.zeros(fisher.size, dtype=bool)
    m[np.argsort(-fisher, kind="stable")[:keep]] = True
    return m


# --------------------------------------------------------------------------- names


def test_registry_names_after_the_rename():
    assert OPTIMIZERS["fsam"] is FisherSAM and OPTIMIZERS["fisher_sam"] is FisherSAM
    assert OPTIMIZERS["friendly_sam"] is FriendlySAM
    assert OPTIMIZERS["saf"] is SAF and OPTIMIZERS["mesa"] is MESA
    for name in ("fsam", "saf", "mesa"):
        with pytest.raises(ConfigError, match="base optimizer"):
            build_optimizer("sam", nn.Linear(2, 2), lr=0.1, base=name)


# --------------------------------------------------------------------------- FSAM


@pytest.mark.parametrize("adaptive", [False, True])
def test_fsam_one_step_matches_hand_computation(adaptive):
    rho, lr, keep, eta = 0.3, 0.1, 0.4, 0.01
    model = Quadratic()
    A, b = model.A.numpy(), model.b.numpy()
    opt = FisherSAM(model.parameters(), SGD, lr=lr, momentum=0.0, rho=rho, keep_ratio=keep,
                    adaptive=adaptive, eta=eta)
    w = model.w().numpy()
    opt.step(quad_closure(model, opt))
    g = A @ w - b
    m = top_mask(g**2, int(5 * keep))  # 2 of the 5 coordinates
    assert m.sum() == 2
    t = np.abs(w) + eta if adaptive else np.ones_like(w)
    eps = m * rho * t**2 * g / np.linalg.norm(t * g)  # norm of the unmasked g
    expected = w - lr * (A @ (w + eps) - b)  # the gradient at w + ε, unmasked
    np.testing.assert_allclose(model.w().numpy(), expected, **TOL)
    saved = opt.state_dict()
    np.testing.assert_array_equal(torch.cat(saved["fisher_mask"]).numpy(), m)
    assert saved["fisher_steps"] == 1


def test_fsam_mask_is_refreshed_every_T_steps():
    rho, lr, keep = 0.5, 0.4, 0.4
    seed = 3
    A, b = Quadratic(seed).A.numpy(), Quadratic(seed).b.numpy()

    def hand(T, steps):
        w = Quadratic(seed).w().numpy()
        masks = []
        for k in range(steps):
            g = A @ w - b
            if k % T == 0:
                m = top_mask(g**2, 2)
            masks.append(m)
            w = w - lr * (A @ (w + m * rho * g / np.linalg.norm(g)) - b)
        return w, masks

    for T in (1, 2, 3):
        model = Quadratic(seed)
        opt = FisherSAM(model.parameters(), SGD, lr=lr, momentum=0.0, rho=rho, keep_ratio=keep, T=T)
        seen = []
        for _ in range(4):
            opt.step(quad_closure(model, opt))
            seen.append(torch.cat(opt.state_dict()["fisher_mask"]).numpy())
        w, masks = hand(T, 4)
        np.testing.assert_allclose(model.w().numpy(), w, **TOL)
        for a, e in zip(seen, masks, strict=True):
            np.testing.assert_array_equal(a, e)
    # the refresh matters on this problem: the mask of the gradient changes between steps
    _, every = hand(1, 4)
    assert any(not np.array_equal(every[0], m) for m in every[1:])


def net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()


def batch(seed=1, n=16):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def net_grad(model, flat, x, y):
    """Autograd gradient of the mean CE of a copy of `model` at the flat weights `flat`."""
    other = copy.deepcopy(model)
    torch.nn.utils.vector_to_parameters(torch.as_tensor(flat), other.parameters())
    other.zero_grad()
    nn.functional.cross_entropy(other(x), y).backward()
    return torch.nn.utils.parameters_to_vector([p.grad for p in other.parameters()]).numpy()


@pytest.mark.parametrize("mask_all", [False, True])
def test_fsam_reference_exclusions_on_a_network(mask_all):
    """With the model given, biases stay outside the mask (perturbed fully) unless mask_all."""
    rho, lr, keep = 0.2, 0.1, 0.25
    model, (x, y) = net(), batch()
    is_bias = np.concatenate([np.full(p.numel(), n.endswith("bias")) for n, p in model.named_parameters()])
    w = torch.nn.utils.parameters_to_vector(model.parameters()).detach().numpy()
    opt = build_optimizer("fsam", model, lr=lr, momentum=0.0, rho=rho, keep_ratio=keep, mask_all=mask_all)

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss.detach()

    opt.step(closure)
    g = net_grad(model, w, x, y)
    ranked = np.ones_like(is_bias) if mask_all else ~is_bias
    m = np.zeros(w.size, dtype=bool)
    m[np.flatnonzero(ranked)] = top_mask(g[ranked] ** 2, int(ranked.sum() * keep))
    m |= ~ranked  # outside the mask: always perturbed
    eps = m * rho * g / np.linalg.norm(g)
    expected = w - lr * net_grad(model, w + eps, x, y)
    got = torch.nn.utils.parameters_to_vector(model.parameters()).detach().numpy()
    np.testing.assert_allclose(got, expected, **TOL)
    masks = opt.state_dict()["fisher_mask"]
    assert all((mk is None) == (not mask_all and n.endswith("bias"))
               for (n, _), mk in zip(model.named_parameters(), masks, strict=True))


def test_fsam_resume_from_state_dict_is_exact():
    def run(split):
        model = Quadratic()
        opt = FisherSAM(model.parameters(), SGD, lr=0.2, rho=0.3, keep_ratio=0.4, T=3)
        for k in range(5):
            if k == split:  # step 4 reuses the mask of step 3: it must come from the state
                state = copy.deepcopy(opt.state_dict())
                fresh = Quadratic()
                fresh.load_state_dict(model.state_dict())
                model = fresh
                opt = FisherSAM(model.parameters(), SGD, lr=0.2, rho=0.3, keep_ratio=0.4, T=3)
                opt.load_state_dict(state)
            opt.step(quad_closure(model, opt))
        return model.w()

    assert torch.equal(run(split=None), run(split=4))


def test_fsam_refuses_a_friendly_sam_state():
    model = Quadratic()
    friendly = FriendlySAM(model.parameters(), SGD, lr=0.1)
    friendly.step(quad_closure(model, friendly))
    fisher = FisherSAM(Quadratic().parameters(), SGD, lr=0.1)
    with pytest.raises(ConfigError, match="friendly_sam") as info:
        fisher.load_state_dict(friendly.state_dict())
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name,kw,word", [
    ("fsam", dict(keep_ratio=1.5), "keep_ratio"), ("fsam", dict(T=0), "T="),
    ("fsam", dict(mask_all="yes"), "mask_all"), ("saf", dict(E=0), "E="),
    ("saf", dict(tau=0.0), "tau"), ("saf", dict(start_epoch=2, end_epoch=2), "end_epoch"),
    ("mesa", dict(decay=1.5), "decay"), ("mesa", dict(lam=-1.0), "lam"),
])
def test_invalid_parameters_raise_one_line(name, kw, word):
    with pytest.raises(ConfigError) as info:
        build_optimizer(name, net(), lr=0.1, **kw)
    assert word in str(info.value) and "\n" not in str(info.value)


# --------------------------------------------------------------------------- the KL term


def test_trajectory_kl_value_and_gradient():
    g = torch.Generator().manual_seed(0)
    z_now = torch.randn(7, 5, generator=g, dtype=torch.float64, requires_grad=True)
    z_ref = torch.randn(7, 5, generator=g, dtype=torch.float64)
    tau = 2.5
    kl = trajectory_kl(z_now, z_ref, tau)
    np.testing.assert_allclose(kl.detach().numpy(), kl_numpy(z_now.detach().numpy(), z_ref.numpy(), tau), **TOL)
    from scipy.special import rel_entr
    from scipy.special import softmax as sp_softmax

    p, q = sp_softmax(z_ref.numpy() / tau, axis=1), sp_softmax(z_now.detach().numpy() / tau, axis=1)
    np.testing.assert_allclose(kl.detach().numpy(), tau**2 * rel_entr(p, q).sum(1), **TOL)
    kl.sum().backward()
    np.testing.assert_allclose(z_now.grad.numpy(), tau * (q - p), **TOL)  # ∂(τ² KL)/∂z_now = τ (q − p)
    assert torch.all(trajectory_kl(z_ref, z_ref, tau).abs() < 1e-12)


# --------------------------------------------------------------------------- SAF


def test_saf_memory_uses_the_outputs_of_E_epochs_ago():
    E, lam, tau, n = 2, 0.7, 3.0, 6
    opt = SAF(net().parameters(), SGD, lr=0.1, lam=lam, tau=tau, E=E, start_epoch=1)
    g = torch.Generator().manual_seed(0)
    outputs = {}  # (epoch, sample) -> logits given in that epoch
    for epoch in range(6):
        order = torch.randperm(n, generator=g)
        for part in (order[:4], order[4:]):
            if epoch == 1 and 5 in part.tolist():  # sample 5 skipped in epoch 1
                part = part[part != 5]
            z = torch.randn(len(part), 3, generator=g, dtype=torch.float64)
            term = opt.auxiliary_loss(None, None, z, part, epoch)
            if epoch <= 1:  # not active yet (epoch > start_epoch)
                assert float(term) == 0.0
            else:
                rows = [(k, i) for k, i in enumerate(part.tolist()) if (epoch - E, i) in outputs]
                if epoch - E == 1:
                    assert all(i != 5 for _, i in rows)  # no record of sample 5 from epoch 1
                ref = np.stack([outputs[(epoch - E, i)] for _, i in rows])
                now = z.numpy()[[k for k, _ in rows]]
                expected = lam * kl_numpy(now, ref, tau).mean() if rows else 0.0
                assert float(term) == pytest.approx(expected, rel=1e-12, abs=1e-14)
            for k, i in enumerate(part.tolist()):
                outputs[(epoch, i)] = z[k].numpy()
    state = opt.state_dict()
    assert state["saf_memory"].shape == (E + 1, n, 3)
    # the ring holds the last E + 1 epochs, each row tagged with its epoch
    for slot in range(E + 1):
        for i in range(n):
            e = int(state["saf_epochs"][slot, i])
            assert e % (E + 1) == slot and e >= 6 - (E + 1)
            np.testing.assert_array_equal(state["saf_memory"][slot, i].numpy(), outputs[(e, i)])


def linear_model():
    torch.manual_seed(0)
    return nn.Linear(4, 3).double()


def test_saf_one_step_gradient_includes_the_kl_term():
    """w1 = w − lr ∇(CE + λ·mean τ²KL): the KL gradient τ(q − p)/B, by hand for a linear model."""
    lam, tau, lr, E = 0.6, 2.0, 0.3, 1
    model, (x, y) = linear_model(), batch(n=8)
    idx = torch.arange(8)
    opt = build_optimizer("saf", model, lr=lr, momentum=0.0, lam=lam, tau=tau, E=E, start_epoch=0)
    W, b = model.weight.detach().numpy().copy(), model.bias.detach().numpy().copy()
    z_past = np.random.default_rng(0).normal(size=(8, 3))
    opt.auxiliary_loss(model, x, torch.as_tensor(z_past), idx, epoch=0)  # the record of epoch 0

    def closure():
        opt.zero_grad()
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y)
        (loss + opt.auxiliary_loss(model, x, logits, idx, epoch=1)).backward()
        return loss.detach()

    opt.step(closure)
    xn = x.numpy()
    z = xn @ W.T + b
    dz = (softmax(z) - np.eye(3)[y.numpy()]) / 8 + lam * tau * (softmax(z / tau) - softmax(z_past / tau)) / 8
    np.testing.assert_allclose(model.weight.detach().numpy(), W - lr * dz.T @ xn, **TOL)
    np.testing.assert_allclose(model.bias.detach().numpy(), b - lr * dz.sum(0), **TOL)
    # the current outputs (at w, before the step) are the record of epoch 1
    np.testing.assert_allclose(opt.state_dict()["saf_memory"][1].numpy(), z, **TOL)


def test_saf_batch_without_records_gives_zero_and_a_finite_gradient():
    """Active before E epochs have passed (start_epoch < E): no record yet, the term is 0."""
    opt = SAF(net().parameters(), SGD, lr=0.1, E=3, start_epoch=0)
    z0 = torch.randn(4, 3, dtype=torch.float64)
    opt.auxiliary_loss(None, None, z0, torch.arange(4), 0)
    z = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    term = opt.auxiliary_loss(None, None, z, torch.arange(4), 1)  # would read epoch −2
    term.backward()
    assert float(term.detach()) == 0.0 and torch.equal(z.grad, torch.zeros_like(z))


def test_saf_state_round_trip_and_shape_check():
    opt = SAF(net().parameters(), SGD, lr=0.1, E=1)
    opt.auxiliary_loss(None, None, torch.ones(2, 3, dtype=torch.float64), torch.tensor([0, 4]), 0)
    other = SAF(net().parameters(), SGD, lr=0.1, E=1)
    other.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert torch.equal(other.state_dict()["saf_memory"], opt.state_dict()["saf_memory"])
    assert other.state_dict()["saf_epochs"].tolist() == [[0, -1, -1, -1, 0], [-1] * 5]
    with pytest.raises(ConfigError, match="output shape") as info:
        other.auxiliary_loss(None, None, torch.ones(2, 4, dtype=torch.float64), torch.tensor([0, 1]), 1)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- MESA


class BNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(4, 5)
        self.bn = nn.BatchNorm1d(5)
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.bn(self.fc(x))))


def test_mesa_ema_and_kl_against_the_ema_model():
    lam, tau, decay, lr = 0.5, 2.0, 0.6, 0.2
    model, (x, y) = BNNet().double(), batch(n=12)
    opt = build_optimizer("mesa", model, lr=lr, momentum=0.0, lam=lam, tau=tau, decay=decay, start_epoch=0)
    tracked = lambda: {n: t.detach().clone() for n, t in  # noqa: E731
                       [*model.named_parameters(), *model.named_buffers()] if t.is_floating_point()}
    ema = tracked()  # the EMA starts as the model
    terms = []
    for epoch in range(3):
        def closure(epoch=epoch):
            opt.zero_grad()
            logits = model(x)
            loss = nn.functional.cross_entropy(logits, y)
            before = {n: t.clone() for n, t in model.named_buffers()}
            term = opt.auxiliary_loss(model, x, logits, torch.arange(12), epoch)
            # the EMA forward changes no buffer of the model and leaves it in training mode
            assert all(torch.equal(before[n], t) for n, t in model.named_buffers()) and model.training
            terms.append((float(term.detach()), logits.detach().numpy()))
            (loss + term).backward()
            return loss.detach()

        ema_model = copy.deepcopy(model).eval()  # the EMA model of this step, built by hand
        ema_model.load_state_dict({**model.state_dict(), **ema})
        with torch.no_grad():
            z_ema = ema_model(x).numpy()
        opt.step(closure)
        term, z = terms[-1]
        if epoch == 0:  # not active in epoch 0 (epoch > start_epoch)
            assert term == 0.0
        else:
            assert term == pytest.approx(lam * kl_numpy(z, z_ema, tau).mean(), rel=1e-12)
        ema = {n: decay * ema[n] + (1 - decay) * t for n, t in tracked().items()}  # after the step
        saved = opt.state_dict()["mesa_ema"]
        assert saved.keys() == ema.keys()
        for n in ema:
            torch.testing.assert_close(saved[n], ema[n], rtol=1e-12, atol=1e-14)
    assert "bn.running_mean" in saved and "bn.num_batches_tracked" not in saved


def test_mesa_needs_the_model_and_the_same_model_to_resume():
    with pytest.raises(ConfigError, match="model="):
        MESA(net().parameters(), SGD, lr=0.1)
    state = build_optimizer("mesa", net(), lr=0.1).state_dict()
    with pytest.raises(ConfigError, match="another model") as info:
        build_optimizer("mesa", BNNet().double(), lr=0.1).load_state_dict(state)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- the trainer


SMALL = TrainConfig(model="mlp", model_params={"width": 32, "depth": 1}, optimizer_params={"momentum": 0.9},
                    epochs=3, batch_size=64, checkpoints="every:1", train_size=400)
ACTIVE = {"saf": {"E": 1, "start_epoch": 0, "lam": 0.5}, "mesa": {"start_epoch": 0, "lam": 0.5, "decay": 0.9},
          "fsam": {"keep_ratio": 0.2, "T": 4}}  # T = 4: the resume at step 9 falls between two refreshes


def _weights(run_dir):
    return load_state_dict(RunDir(run_dir).checkpoint("last").path)


def _equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", ["saf", "mesa"])
def test_train_with_the_term_on_and_off(tmp_path, name):
    """λ = 0 trains exactly as the base optimizer; λ > 0 changes the weights (the term reaches backward)."""
    sgd = train(SMALL, tmp_path / "sgd", progress=False, device="cpu")
    off = SMALL.replace(optimizer=name, optimizer_params={"momentum": 0.9, **ACTIVE[name], "lam": 0.0})
    on = SMALL.replace(optimizer=name, optimizer_params={"momentum": 0.9, **ACTIVE[name]})
    train(off, tmp_path / "off", progress=False, device="cpu")
    result = train(on, tmp_path / "on", progress=False, device="cpu")
    assert _equal(_weights(tmp_path / "sgd"), _weights(tmp_path / "off"))
    assert not _equal(_weights(tmp_path / "sgd"), _weights(tmp_path / "on"))
    assert result.final["train_acc"] > 0.5 and np.isfinite(result.final["train_loss"])
    # the logged running loss is the task loss alone: with λ = 0 it is the base optimizer's
    rows_sgd, rows_off = RunDir(tmp_path / "sgd").metrics(), RunDir(tmp_path / "off").metrics()
    assert [r.get("train_loss_running") for r in rows_sgd] == [r.get("train_loss_running") for r in rows_off]
    del sgd


def test_train_with_fsam(tmp_path):
    cfg = SMALL.replace(optimizer="fsam", optimizer_params={"momentum": 0.9, **ACTIVE["fsam"]})
    result = train(cfg, tmp_path / "run", progress=False, device="cpu")
    assert result.final["train_acc"] > 0.5
    assert TrainConfig.from_run(RunDir(tmp_path / "run")).optimizer == "fsam"


@pytest.mark.parametrize("name", ["saf", "mesa", "fsam"])
def test_resume_mid_epoch_is_bit_identical(tmp_path, name):
    cfg = SMALL.replace(optimizer=name, optimizer_params={"momentum": 0.9, **ACTIVE[name]},
                        checkpoints="steps:5,9,12", schedule="cosine",
                        model_params={"width": 32, "depth": 1, "norm": "batchnorm"})
    train(cfg, tmp_path / "full", progress=False, device="cpu")
    partial = train(cfg, tmp_path / "cut", progress=False, device="cpu", stop_after=11)
    assert partial.steps == 11
    resumed = train(cfg, tmp_path / "cut", resume=True, progress=False, device="cpu")
    assert resumed.resumed_from == 9  # epoch 1 (7 steps an epoch): the term is active, memory/EMA restored
    assert _equal(_weights(tmp_path / "full"), _weights(tmp_path / "cut"))
    strip = lambda rows: [{k: v for k, v in r.items() if k != "time"} for r in rows]  # noqa: E731
    assert strip(RunDir(tmp_path / "full").metrics()) == strip(RunDir(tmp_path / "cut").metrics())


def test_cli_train_with_saf(tmp_path, capsys):
    from landscape_cli.main import main

    out = tmp_path / "run"
    rc = main(["train", "--out", str(out), "--optimizer", "saf", "--optimizer-param", "E=1",
               "--optimizer-param", "start_epoch=0", "--optimizer-param", "lam=0.5", "--epochs", "2",
               "--train-size", "200", "--width", "16", "--no-progress", "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    cfg = TrainConfig.from_run(RunDir(out))
    assert cfg.optimizer == "saf" and cfg.optimizer_params == {"E": 1, "start_epoch": 0, "lam": 0.5}
    assert main(["train", "--out", str(tmp_path / "bad"), "--optimizer", "saf", "--optimizer-param", "E=0",
                 "--epochs", "1", "--train-size", "200", "--no-progress", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "E=0" in err and not (tmp_path / "bad").exists()
