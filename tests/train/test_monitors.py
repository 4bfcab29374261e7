import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import landscape as ls
from landscape.checkpoints import RunDir, load_state_dict
from landscape.errors import ConfigError
from landscape.linalg import HessianOperator
from landscape.registry import UnknownNameError
from landscape.train.config import TrainConfig
from landscape.train.monitors import (
    MONITORS,
    MonitorInputs,
    MonitorSet,
    parse_monitor,
    top_eigenpair,
)
from landscape.train.trainer import load_data, train
from landscape_cli.main import main


def _ce(z, t):
    return F.cross_entropy(z, t, reduction="none")


def _problem(n=120, width=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, width), nn.Tanh(), nn.Linear(width, 3))
    return model, x, y


def _run(name, model, x, y, state=None, step=0, **params):
    return MONITORS[name].fn(MonitorInputs(model, _ce, x, y, step), {} if state is None else state, **params)


# ---- registry and settings ---------------------------------------------------------------------


def test_registry_names_costs_and_errors():
    for name in ("grad_norm", "weight_norm", "update_norm", "logit_stats", "softmax_collapse", "lambda_max",
                 "nlm_cosine", "per_sample_loss", "coherence", "attention_logits", "adam_sharpness"):
        assert MONITORS[name].cost
    c = parse_monitor("lambda_max:every=50,subset=64,tol=1e-4,warm=false")
    assert (c.name, c.every, c.subset, c.params) == ("lambda_max", 50, 64, {"tol": 1e-4, "warm": False})
    assert parse_monitor("grad_norm").every == 1
    with pytest.raises(UnknownNameError, match="valid monitor names: .*grad_norm"):
        parse_monitor("gradnorm")
    with pytest.raises(ConfigError, match="unknown setting.*bogus.*valid: every, subset"):
        parse_monitor("lambda_max:bogus=1")
    with pytest.raises(ConfigError, match="every must be an integer ≥ 1"):
        parse_monitor("grad_norm:every=0")
    with pytest.raises(ConfigError, match="monitor.*given twice"):
        MonitorSet(["grad_norm", "grad_norm:every=2"], _ce, torch.zeros(3, 5), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ConfigError, match="unknown setting"):
        TrainConfig(monitors={"grad_norm": {"per_layer": True}})
    cfg = TrainConfig(monitors={"lambda_max": {"every": 5, "steps": 30}})
    assert TrainConfig.from_dict(json.loads(cfg.to_json())) == cfg


# ---- each monitor against a direct computation --------------------------------------------------


def test_grad_weight_and_update_norms_match_direct_computation():
    model, x, y = _problem()
    loss = _ce(model(x), y).mean()
    grads = torch.autograd.grad(loss, list(model.parameters()))
    expect = np.sqrt(sum(float((g.double() ** 2).sum()) for g in grads))
    assert _run("grad_norm", model, x, y)["grad_norm"] == pytest.approx(expect, rel=1e-6)

    w = _run("weight_norm", model, x, y, per_layer=True)
    flat = np.concatenate([p.detach().numpy().ravel() for p in model.parameters()]).astype(np.float64)
    assert w["weight_norm"] == pytest.approx(np.linalg.norm(flat), rel=1e-12)
    first = np.concatenate([model[0].weight.detach().numpy().ravel(), model[0].bias.detach().numpy()])
    assert w["weight_norm/0"] == pytest.approx(np.linalg.norm(first.astype(np.float64)), rel=1e-12)
    assert set(w) == {"weight_norm", "weight_norm/0", "weight_norm/2"}

    state = {}
    assert _run("update_norm", model, x, y, state, step=3) == {}  # nothing to compare with yet
    with torch.no_grad():
        model[2].bias += torch.tensor([3.0, 0.0, -4.0])
    out = _run("update_norm", model, x, y, state, step=7)
    assert out == {"update_norm": pytest.approx(5.0, rel=1e-6), "update_steps": 4}


def test_logit_stats_and_softmax_collapse():
    logits = torch.tensor([[20.0, 0.0, -1.0], [2.0, 1.0, 0.0], [0.0, -70.0, 0.5], [0.5, 0.2, 0.1]])
    y = torch.tensor([0, 0, 2, 1])
    model = nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(3))
    z = logits.double().numpy()
    stats = _run("logit_stats", model, logits, y)
    assert stats["logit_norm"] == pytest.approx(np.linalg.norm(z, axis=1).mean(), rel=1e-6)
    lse = np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1)
    assert stats["log_z"] == pytest.approx(lse.mean(), rel=1e-6)
    assert stats["max_abs_logit"] == 70.0
    # float32 CE is exactly 0 for the first sample only (margin 20: 1 + e^-20 rounds to 1 in
    # float32); the third has margin 0.5, the others are wrong or close
    assert np.log1p(np.exp(-20.0) + np.exp(-21.0)) > 1e-9  # the true loss is not 0: a rounding
    assert _run("softmax_collapse", model, logits, y) == {"softmax_collapse": 0.25}
    # a NaN logit (a diverging run) makes every statistic NaN, max |logit| included
    bad = logits.clone()
    bad[1, 1] = float("nan")
    assert all(math.isnan(v) for v in _run("logit_stats", model, bad, y).values())


def _dense_top(model, x, y):
    op = HessianOperator(model, _ce, x, y, dtype=torch.float64)
    return float(torch.linalg.eigvalsh(op.dense())[-1])


def test_lambda_max_agrees_with_hessian_probe_and_dense_reference():
    model, x, y = _problem(width=6)
    out = _run("lambda_max", model, x, y, tol=1e-4)
    probe = ls.hessian(model, nn.CrossEntropyLoss(), (x, y), top_k=1, bottom_k=0, trace=False, device="cpu")
    assert out["lambda_max"] == pytest.approx(float(probe["eigenvalues"][0]), rel=1e-3)
    dense = _dense_top(model, x, y)
    assert abs(out["lambda_max"] - dense) <= max(out["lambda_max_residual"], 1e-5 * dense)
    assert out["lambda_max"] == pytest.approx(dense, rel=1e-3)
    assert out["lambda_max_converged"] and 2 <= out["lambda_max_hvps"] <= 20


def test_warm_start_uses_at_most_a_third_of_the_hvps_at_the_same_accuracy():
    """Full-batch GD on 300 digits, an MLP of 2 410 parameters, λ_max at every step: warm and
    cold starts (same stopping rule, tol 1e-3) both within 1e-3 of a float64 reference."""
    data = load_data(TrainConfig(train_size=300))
    x, y = data.train.x, data.train.y
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))
    warm = MonitorSet(["lambda_max:every=1,steps=100"], _ce, x, y)
    cold = MonitorSet(["lambda_max:every=1,steps=100,warm=false"], _ce, x, y)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    hvps = {"warm": 0, "cold": 0}
    for step in range(13):
        a, b = warm.run(step, model), cold.run(step, model)
        if step == 0:
            assert a == b  # the first measurement is a cold start either way
        else:
            hvps["warm"] += a["lambda_max_hvps"]
            hvps["cold"] += b["lambda_max_hvps"]
        if step % 4 == 0:
            ref = top_eigenpair(MonitorInputs(model, _ce, x, y, step), steps=200, tol=1e-10,
                                rule="residual", dtype=torch.float64)["lambda_max"]
            assert a["lambda_max"] == pytest.approx(ref, rel=1e-3)
            assert b["lambda_max"] == pytest.approx(ref, rel=1e-3)
        opt.zero_grad()
        _ce(model(x), y).mean().backward()
        opt.step()
    assert hvps["warm"] * 3 <= hvps["cold"], hvps


# ---- in the trainer ------------------------------------------------------------------------------

GD = TrainConfig(model="mlp", model_params={"width": 12, "depth": 1}, optimizer_params={"momentum": 0.0},
                 epochs=12, batch_size=150, train_size=150, lr=0.3, checkpoints="steps:5",
                 monitors={"lambda_max": {"every": 3}, "update_norm": {"every": 2}, "grad_norm": {"every": 4},
                           "logit_stats": {"every": 6}, "softmax_collapse": {"every": 6},
                           "weight_norm": {"every": 6}})
KEYS = ("lambda_max", "lambda_max_residual", "lambda_max_error", "lambda_max_hvps", "update_norm", "grad_norm",
        "logit_norm", "log_z", "max_abs_logit", "softmax_collapse", "weight_norm")


def _rows(run_dir):
    return [{k: v for k, v in r.items() if k != "time"} for r in RunDir(run_dir).metrics()]


def test_trainer_writes_monitors_on_schedule_and_trains_as_without(tmp_path):
    train(GD, tmp_path / "mon", progress=False, device="cpu")
    train(GD.replace(monitors={}), tmp_path / "plain", progress=False, device="cpu")
    a, b = (load_state_dict(RunDir(tmp_path / d).checkpoint("last").path) for d in ("mon", "plain"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # monitors do not change the training
    rows = {r["step"]: r for r in _rows(tmp_path / "mon")}
    assert sorted(rows) == list(range(13))  # every step has an epoch record here (full batch)
    for step, r in rows.items():
        assert ("lambda_max" in r) == (step % 3 == 0)
        assert ("update_norm" in r) == (step % 2 == 0 and step > 0)
        assert ("grad_norm" in r) == (step % 4 == 0)
        assert ("softmax_collapse" in r) == (step % 6 == 0)
    assert rows[4]["update_steps"] == 2


def test_trainer_monitor_only_records_between_evaluations(tmp_path):
    cfg = GD.replace(epochs=2, batch_size=50, checkpoints="none", monitors={"grad_norm": {"every": 2}})
    train(cfg, tmp_path / "run", progress=False, device="cpu")
    rows = _rows(tmp_path / "run")  # 3 steps per epoch: evaluations at 0, 3, 6; monitors at 0, 2, 4, 6
    assert [(r["step"], "train_loss" in r, "grad_norm" in r) for r in rows] == [
        (0, True, True), (2, False, True), (3, True, False), (4, False, True), (6, True, True)]


def test_resume_with_monitors_is_bit_identical(tmp_path):
    train(GD, tmp_path / "full", progress=False, device="cpu")
    partial = train(GD, tmp_path / "cut", progress=False, device="cpu", stop_after=8)
    assert partial.steps == 8
    resumed = train(GD, tmp_path / "cut", resume=True, progress=False, device="cpu")
    assert resumed.resumed_from == 5  # lambda_max last ran at 3, update_norm at 4: both states saved at 5
    assert _rows(tmp_path / "full") == _rows(tmp_path / "cut")
    warm_calls = [r["lambda_max_hvps"] for r in _rows(tmp_path / "full") if "lambda_max" in r]
    assert len(warm_calls) == 5


# ---- in a user's own loop -------------------------------------------------------------------------


class UserNet(nn.Module):
    """Not the toolkit's MLP: the same function under the same parameter names."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(64, 12), nn.Identity(), nn.ReLU())
        self.classifier = nn.Linear(12, 10)

    def forward(self, x):
        return self.classifier(self.features(x))


def test_monitor_in_a_plain_loop_writes_the_trainers_values(tmp_path):
    cfg = GD.replace(epochs=7)
    train(cfg, tmp_path / "run", progress=False, device="cpu")
    model = UserNet()
    model.load_state_dict(load_state_dict(RunDir(tmp_path / "run").checkpoint(0).path))
    data = load_data(cfg)
    x, y = data.train.x, data.train.y
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    specs = [f"{name}:every={s['every']}" for name, s in cfg.monitors.items()]
    mon = ls.Monitor(model, nn.CrossEntropyLoss(), (x, y), specs, out=tmp_path / "mine.jsonl")
    mon.step(0, opt)
    for step in range(1, 8):
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(step - 1))  # the trainer's order
        opt.zero_grad()
        F.cross_entropy(model(x[order]), y[order]).backward()
        opt.step()
        mon.step(step, opt)
    mine = {r["step"]: r for r in map(json.loads, (tmp_path / "mine.jsonl").read_text().splitlines())}
    theirs = {r["step"]: r for r in _rows(tmp_path / "run")}
    assert sorted(mine) == [0, 2, 3, 4, 6]
    for step, r in mine.items():
        for key in KEYS:
            assert (key in r) == (key in theirs[step]), (step, key)
            if key in r:
                assert r[key] == theirs[step][key], (step, key)  # the same trajectory: the same floats
    with pytest.raises(ConfigError, match="already holds records; pass append=True"):
        ls.Monitor(model, nn.CrossEntropyLoss(), (x, y), ["grad_norm"], out=tmp_path / "mine.jsonl")


def test_cli_monitor_flag(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--out", str(out), "--epochs", "1", "--train-size", "100", "--width", "8",
               "--batch-size", "100", "--no-progress", "--device", "cpu",
               "--monitor", "weight_norm:per_layer=true", "--monitor", "lambda_max:every=1,steps=10"])
    assert rc == 0
    assert TrainConfig.from_run(RunDir(out)).monitors == {"weight_norm": {"every": 1, "per_layer": True},
                                           "lambda_max": {"every": 1, "steps": 10}}
    last = RunDir(out).metrics()[-1]
    assert "weight_norm/classifier" in last and last["lambda_max_hvps"] <= 10
    rc = main(["train", "--out", str(tmp_path / "bad"), "--monitor", "nope", "--no-progress"])
    assert rc == 2 and "unknown monitor 'nope'" in capsys.readouterr().err


# ---- nlm_cosine, per_sample_loss, coherence, attention_logits, adam_sharpness ---------------------


def test_nlm_cosine_is_the_cosine_between_the_gradient_and_minus_theta():
    model, x, y = _problem()
    grads = torch.autograd.grad(_ce(model(x), y).mean(), list(model.parameters()))
    g = np.concatenate([a.double().numpy().ravel() for a in grads])
    theta = np.concatenate([p.detach().double().numpy().ravel() for p in model.parameters()])
    expect = -g @ theta / (np.linalg.norm(g) * np.linalg.norm(theta))
    assert _run("nlm_cosine", model, x, y)["nlm_cosine"] == pytest.approx(expect, rel=1e-5)
    # logits (x, −x) = (1, −1)·x fit to x = ±1 → y = 0 / 1: −∇L ∝ θ, the step only scales θ up
    lin = nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0], [-1.0]]))
    xs, ys = torch.tensor([[1.0], [-1.0]]), torch.tensor([0, 1])
    assert _run("nlm_cosine", lin, xs, ys)["nlm_cosine"] == pytest.approx(1.0, abs=1e-6)


def test_per_sample_loss_on_its_fixed_subset():
    from landscape.probes.base import fixed_subset

    model, x, y = _problem()
    out = MonitorSet(["per_sample_loss"], _ce, x, y).run(0, model)
    idx = fixed_subset(120, 32, 0).numpy()
    z = model(x).detach().double().numpy()[idx]
    lse = np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1)
    expect = lse - z[np.arange(32), y.numpy()[idx]]
    assert len(out["per_sample_losses"]) == 32
    np.testing.assert_allclose(out["per_sample_losses"], expect, rtol=1e-5)
    assert out["per_sample_loss_mean"] == pytest.approx(expect.mean(), rel=1e-5)
    assert len(MonitorSet(["per_sample_loss:subset=7"], _ce, x, y).run(0, model)["per_sample_losses"]) == 7


def test_coherence_monitor_equals_the_probe_and_a_direct_computation():
    from landscape.probes.base import fixed_subset
    from landscape.probes.coherence import CoherenceConfig, coherence

    model, x, y = _problem()
    out = MonitorSet(["coherence:subset=20"], _ce, x, y).run(0, model)
    probe = coherence(model, _ce, x, y, CoherenceConfig(subset=20))
    assert out["coherence_m_alpha"] == float(probe["m_alpha"])
    assert out["coherence_alpha"] == float(probe["alpha"])
    gs = []
    for i in fixed_subset(120, 20, 0).tolist():
        g = torch.autograd.grad(_ce(model(x[i:i + 1]), y[i:i + 1]).sum(), list(model.parameters()))
        gs.append(np.concatenate([a.double().numpy().ravel() for a in g]))
    gs = np.array(gs)
    m_alpha = np.linalg.norm(gs.sum(0)) ** 2 / (gs ** 2).sum()
    assert out["coherence_m_alpha"] == pytest.approx(m_alpha, rel=1e-5)
    assert MonitorSet(["coherence"], _ce, x, y).run(0, model)["coherence_m_alpha"] == pytest.approx(
        float(coherence(model, _ce, x, y, CoherenceConfig(subset=120))["m_alpha"]))  # default 128 > 120: all


def _attention_direct(model, ids):
    """Per layer, max |qᵀk|/√d and mean entropy from the block's input, in numpy."""
    inputs = []
    hooks = [b.attn.register_forward_pre_hook(lambda m, a: inputs.append(a[0].detach())) for b in model.blocks]
    with torch.no_grad():
        model(ids)
    for h in hooks:
        h.remove()
    out = []
    for block, h in zip(model.blocks, inputs, strict=True):
        a = block.attn
        w, b = a.qkv.weight.detach().double().numpy(), a.qkv.bias.detach().double().numpy()
        qkv = h.double().numpy() @ w.T + b
        n, t, width = h.shape
        d = width // a.heads
        q = qkv[..., :width].reshape(n, t, a.heads, d).transpose(0, 2, 1, 3)
        k = qkv[..., width:2 * width].reshape(n, t, a.heads, d).transpose(0, 2, 1, 3)
        s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d)
        mask = np.tril(np.ones((t, t), dtype=bool))
        peak = np.abs(s)[..., mask].max()
        s = np.where(mask, s, -np.inf)
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        ent = -(np.where(mask, p * np.log(np.where(mask, p, 1.0)), 0.0)).sum(-1).mean()
        out.append((peak, ent))
    return out


def test_attention_logits_per_layer_and_error_for_other_models():
    from landscape.models import build_model

    torch.manual_seed(0)
    model = build_model("transformer", (6,), 5, vocab=7, layers=2, width=16, heads=2)
    with torch.no_grad():
        for blk in model.blocks:
            blk.attn.qkv.weight.mul_(20)  # logits well away from 0
    ids = torch.randint(0, 7, (24, 6), generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 5, (24,), generator=torch.Generator().manual_seed(2))
    out = MonitorSet(["attention_logits:batch_size=5"], _ce, ids, y).run(0, model)
    direct = _attention_direct(model, ids)
    for i, (peak, ent) in enumerate(direct):
        assert out[f"attn_max_logit/{i}"] == pytest.approx(peak, rel=1e-5)
        assert out[f"attn_entropy/{i}"] == pytest.approx(ent, rel=1e-5)
    assert out["attn_max_logit"] == pytest.approx(max(p for p, _ in direct), rel=1e-5)
    mlp, x, y = _problem()
    with pytest.raises(ConfigError, match="attention_logits monitor needs a model with attention_stats"):
        ls.Monitor(mlp, nn.CrossEntropyLoss(), (x, y), ["attention_logits"])
    with pytest.raises(ConfigError, match="attention_stats"):
        MonitorSet(["attention_logits"], _ce, x, y).run(0, mlp)


def test_adam_sharpness_matches_a_dense_preconditioned_hessian():
    model, x, y = _problem(n=60, width=4)
    opt = torch.optim.Adam(model.parameters(), lr=0.01, betas=(0.9, 0.99), eps=1e-3)
    mons = MonitorSet(["adam_sharpness:every=1,steps=60,tol=1e-6,dtype=\"float64\""], _ce, x, y)
    assert mons.run(0, model, opt) == {}  # no optimizer state before the first step
    for _ in range(3):
        opt.zero_grad()
        _ce(model(x), y).mean().backward()
        opt.step()
    out = mons.run(3, model, opt)
    h = HessianOperator(model, _ce, x, y, dtype=torch.float64).dense().numpy()
    p = []
    for param in model.parameters():
        st = opt.state[param]
        vhat = st["exp_avg_sq"].double().numpy().ravel() / (1 - 0.99 ** float(st["step"]))
        p.append(np.sqrt(vhat) + 1e-3)
    d = 1 / np.sqrt(np.concatenate(p))
    dense = np.linalg.eigvalsh(d[:, None] * h * d[None, :])[-1]
    assert dense > 2 * np.linalg.eigvalsh(h)[-1]  # the preconditioner matters here
    assert out["adam_sharpness"] == pytest.approx(dense, rel=1e-5)
    assert out["adam_sharpness_converged"]
    assert out["adam_sharpness_threshold"] == pytest.approx(38 / 0.01)
    with pytest.raises(ConfigError, match="adam_sharpness needs an Adam-family optimizer"):
        sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        _ce(model(x), y).mean().backward()
        sgd.step()
        MonitorSet(["adam_sharpness"], _ce, x, y).run(0, model, sgd)


def test_trainer_refuses_a_monitor_the_model_cannot_feed_before_writing(tmp_path, capsys):
    rc = main(["train", "--out", str(tmp_path / "run"), "--epochs", "1", "--train-size", "50", "--no-progress",
               "--device", "cpu", "--monitor", "attention_logits"])
    assert rc == 2 and "attention_logits monitor needs a model with attention_stats" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
