"""The Jiang et al. 2020 measures against closed forms and direct computations (numpy, float64)."""

import copy
import itertools
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

import landscape as ls
from landscape.datasets import Split
from landscape.errors import ConfigError
from landscape.probes.measures import (
    MeasuresConfig,
    gradient_noise,
    norm_measures,
    output_margin,
    path_norm,
    steps_to_ce,
    weight_matrices,
)


def _np(t):
    return t.detach().double().numpy()


def _margin_np(z, y):
    correct = z[np.arange(len(y)), y]
    other = z.copy()
    other[np.arange(len(y)), y] = -np.inf
    m = np.sort(correct - other.max(1))
    return m[max(len(m) // 10, 1) - 1]


def _data(n=120, d=4, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randint(0, c, (n,), generator=g)


def _spec_fro(mats):
    spec = np.array([np.linalg.svd(w, compute_uv=False)[0] ** 2 for w in mats])
    fro = np.array([(w**2).sum() for w in mats])
    return spec, fro


# ---- a linear net ---------------------------------------------------------------------------------


def test_linear_net_every_measure_closed_form():
    torch.manual_seed(1)
    model = nn.Linear(4, 3, bias=False).double()
    x, y = _data()
    W = _np(model.weight)
    r = ls.measures(model, nn.CrossEntropyLoss(), (x, y), device="cpu", grad_batch_size=20, grad_subset=None)
    z = _np(x) @ W.T
    gamma = _margin_np(z, y.numpy())
    sigma2 = np.linalg.svd(W, compute_uv=False)[0] ** 2
    fro2 = (W**2).sum()
    assert r["num_params"] == 12 and r["num_weights"] == 12 and r["num_layers"] == 1
    assert r["margin"] == pytest.approx(gamma, rel=1e-12)
    assert r["inv_margin2"] == pytest.approx(1 / gamma**2, rel=1e-12)
    assert r["log_prod_spectral"] == pytest.approx(math.log(sigma2), rel=1e-10)
    assert r["log_sum_spectral"] == pytest.approx(math.log(sigma2), rel=1e-10)  # d = 1: log 1 + log σ²
    assert r["log_prod_spectral_over_margin"] == pytest.approx(math.log(sigma2 / gamma**2), rel=1e-10)
    assert r["log_prod_frobenius"] == pytest.approx(math.log(fro2), rel=1e-12)
    assert r["log_sum_frobenius_over_margin"] == pytest.approx(math.log(fro2 / gamma**2), rel=1e-10)
    assert r["fro_over_spectral"] == pytest.approx(fro2 / sigma2, rel=1e-10)
    assert r["param_norm"] == pytest.approx(fro2, rel=1e-12)
    assert r["path_norm"] == pytest.approx(fro2, rel=1e-12)  # 1ᵀ W² 1 = Σ w²
    assert r["path_norm_over_margin"] == pytest.approx(fro2 / gamma**2, rel=1e-12)
    # gradient noise: softmax-CE gradient of a linear map, (p − Y)ᵀX / b per batch, in numpy
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0)).numpy()
    xs, ys = _np(x)[perm], y.numpy()[perm]
    grads = []
    for k in range(len(ys) // 20):
        xb, yb = xs[k * 20:(k + 1) * 20], ys[k * 20:(k + 1) * 20]
        zb = xb @ W.T
        p = np.exp(zb - zb.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        p[np.arange(20), yb] -= 1
        grads.append((p.T @ xb / 20).reshape(-1))
    grads = np.array(grads)
    gbar = grads.mean(0)
    assert r["gradient_noise_batches"] == 6 and r["gradient_noise_batch_size"] == 20
    assert r["gradient_noise"] == pytest.approx(((grads - gbar) ** 2).sum(1).mean(), rel=1e-10)
    assert r["grad_norm2"] == pytest.approx((gbar**2).sum(), rel=1e-10)
    # no run, no initialization: NaN, with the reason
    for key in ("dist_init_frobenius", "dist_init_spectral", "log_spec_init_main", "steps_to_ce_0.1",
                "steps_ce_0.1_to_0.01"):
        assert math.isnan(r[key]) and r["reasons"][key]


# ---- a 2-layer ReLU net ---------------------------------------------------------------------------


def _two_layer(bias=True, seed=2):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5, bias=bias), nn.ReLU(), nn.Linear(5, 3, bias=bias)).double()


def test_two_layer_relu_norms_margin_and_init_distances():
    model, init = _two_layer(), _two_layer(seed=7)
    x, y = _data()
    W1, b1, W2, b2 = (_np(p) for p in model.parameters())
    V1, V2 = _np(init[0].weight), _np(init[2].weight)
    z = np.maximum(_np(x) @ W1.T + b1, 0) @ W2.T + b2
    gamma = _margin_np(z, y.numpy())
    got_gamma, k, n = output_margin(model, Split(x, y), batch_size=32)
    assert (k, n) == (12, 120) and got_gamma == pytest.approx(gamma, rel=1e-12)

    spec, fro = _spec_fro([W1, W2])
    dspec, dfro = _spec_fro([W1 - V1, W2 - V2])
    lg2 = 2 * math.log(abs(gamma))
    r = norm_measures(weight_matrices(model), weight_matrices(model, init.state_dict()), gamma)
    expect = {
        "log_prod_spectral": np.log(spec).sum(),
        "log_prod_spectral_over_margin": np.log(spec).sum() - lg2,
        "log_sum_spectral": math.log(2) + np.log(spec).sum() / 2,  # log(d·(∏σ²)^{1/d})
        "log_sum_spectral_over_margin": math.log(2) + (np.log(spec).sum() - lg2) / 2,
        "fro_over_spectral": (fro / spec).sum(),
        "log_spec_orig_main": np.log(spec).sum() - lg2 + math.log((fro / spec).sum()),
        "log_spec_init_main": np.log(spec).sum() - lg2 + math.log((dfro / spec).sum()),
        "log_prod_frobenius": np.log(fro).sum(),
        "log_prod_frobenius_over_margin": np.log(fro).sum() - lg2,
        "log_sum_frobenius": math.log(2) + np.log(fro).sum() / 2,
        "log_sum_frobenius_over_margin": math.log(2) + (np.log(fro).sum() - lg2) / 2,
        "dist_init_frobenius": dfro.sum(),
        "dist_init_spectral": dspec.sum(),
        "param_norm": fro.sum(),
    }
    for key, value in expect.items():
        assert r[key] == pytest.approx(value, rel=1e-10), key
    np.testing.assert_allclose(r["spectral_norms"], np.sqrt(spec), rtol=1e-12)
    assert list(r["layers"]) == ["0", "2"]


def test_two_layer_relu_path_norm_closed_forms():
    x, _ = _data()
    model = _two_layer(bias=False)
    W1, W2 = (_np(p) for p in model.parameters())
    paths = sum(W1[h, i] ** 2 * W2[o, h] ** 2 for i, h, o in itertools.product(range(4), range(5), range(3)))
    assert path_norm(model, x[:1]) == pytest.approx(paths, rel=1e-12)
    model = _two_layer(bias=True)
    W1, b1, W2, b2 = (_np(p) for p in model.parameters())
    # biases are paths that start at them: 1ᵀ(W2²(W1²1 + b1²) + b2²)
    assert path_norm(model, x[:1]) == pytest.approx((W2**2 @ (W1**2 @ np.ones(4) + b1**2) + b2**2).sum(), rel=1e-12)


# ---- a random 3-layer net, a conv net, BatchNorm ---------------------------------------------------


def test_random_three_layer_path_norm_and_spectral_products():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(3, 4, bias=False), nn.ReLU(), nn.Linear(4, 5, bias=False), nn.ReLU(),
                          nn.Linear(5, 2, bias=False))
    Ws = [_np(m.weight) for m in model if isinstance(m, nn.Linear)]
    direct = 0.0
    for i, a, b, o in itertools.product(range(3), range(4), range(5), range(2)):
        direct += Ws[0][a, i] ** 2 * Ws[1][b, a] ** 2 * Ws[2][o, b] ** 2
    assert path_norm(model, torch.zeros(1, 3)) == pytest.approx(direct, rel=1e-12)
    spec, fro = _spec_fro(Ws)
    r = norm_measures(weight_matrices(model), None, 1.0)
    assert r["log_prod_spectral"] == pytest.approx(math.log(np.prod(spec)), rel=1e-10)
    assert r["log_prod_frobenius"] == pytest.approx(math.log(np.prod(fro)), rel=1e-12)
    assert r["log_sum_spectral"] == pytest.approx(math.log(3 * np.prod(spec) ** (1 / 3)), rel=1e-10)


def test_conv_kernel_is_reshaped_to_out_by_rest():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4, 2))
    K = _np(model[0].weight).reshape(3, -1)
    (w_conv, w_lin) = weight_matrices(model).values()
    np.testing.assert_allclose(_np(w_conv), K)
    assert w_lin.shape == (2, 12)
    r = norm_measures(weight_matrices(model), None, 1.0)
    spec, _ = _spec_fro([K, _np(model[3].weight)])
    np.testing.assert_allclose(r["spectral_norms"] ** 2, spec, rtol=1e-12)


def _bn_net():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).double()
    bn = model[1]
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


def test_batchnorm_is_folded_into_the_preceding_layer():
    model = _bn_net()
    bn = model[1]
    s = _np(bn.weight) / np.sqrt(_np(bn.running_var) + bn.eps)
    folded = weight_matrices(model)
    np.testing.assert_allclose(_np(folded["0"]), s[:, None] * _np(model[0].weight), rtol=1e-12)
    np.testing.assert_allclose(_np(weight_matrices(model, fold_batchnorm=False)["0"]), _np(model[0].weight))
    # the folded layer computes what Linear → BatchNorm (eval) computes
    x, _ = _data(d=4)
    b = _np(bn.bias) + s * (_np(model[0].bias) - _np(bn.running_mean))
    with torch.no_grad():
        np.testing.assert_allclose(_np(x) @ _np(folded["0"]).T + b, _np(model[1](model[0](x))), rtol=1e-10)


def test_path_norm_with_batchnorm_matches_the_reference_reparametrization():
    """A transcription of the reference (``_reparam`` then ``_path_norm``) on a copy of the model."""
    model = _bn_net()
    ref = copy.deepcopy(model)
    lin, bn = ref[0], ref[1]
    with torch.no_grad():
        scale = bn.weight / (bn.running_var + bn.eps).sqrt()
        lin.bias.copy_(bn.bias + scale * (lin.bias - bn.running_mean))
        lin.weight.copy_(lin.weight * scale[:, None])
        bn.bias.fill_(0), bn.weight.fill_(1), bn.running_mean.fill_(0), bn.running_var.fill_(1)
        for p in ref.parameters():
            p.pow_(2)
        expected = float(ref(torch.ones(1, 4, dtype=torch.float64)).sum())
    assert path_norm(model, torch.zeros(1, 4)) == pytest.approx(expected, rel=1e-12)


# ---- optimization-based measures, gradient noise edge cases, config ---------------------------------


def test_steps_to_ce_from_records():
    records = [{"step": 0, "train_ce": 2.3}, {"event": "resume"}, {"step": 10, "train_ce": 0.5},
               {"step": 20, "train_ce": 0.09}, {"step": 30, "train_ce": 0.02}, {"step": 40, "train_ce": 0.008},
               {"step": 50, "train_ce": 0.001}]
    assert steps_to_ce(records, "train_ce", (0.1, 0.01)) == (20.0, 20.0, None)
    first, second, why = steps_to_ce(records[:5], "train_ce", (0.1, 0.01))
    assert first == 20.0 and math.isnan(second) and "never reached 0.01" in why
    first, second, why = steps_to_ce(records[:3], "train_ce", (0.1, 0.01))
    assert math.isnan(first) and math.isnan(second) and "never reached 0.1" in why
    assert "no 'train_ce'" in steps_to_ce([{"step": 0}], "train_ce", (0.1, 0.01))[2]


def test_gradient_noise_needs_two_batches_and_is_zero_for_identical_samples():
    model, ce = _two_layer(), nn.CrossEntropyLoss(reduction="none")
    x, y = _data(n=10)
    r = gradient_noise(model, ce, x, y, batch_size=6, subset=None)
    assert math.isnan(r["gradient_noise"]) and r["gradient_noise_batches"] == 1
    same = gradient_noise(model, ce, x[:1].repeat(40, 1), y[:1].repeat(40), batch_size=10, subset=None)
    assert same["gradient_noise_batches"] == 4
    assert same["gradient_noise"] == pytest.approx(0.0, abs=1e-28) and same["grad_norm2"] > 0


@pytest.mark.parametrize(("settings", "message"), [
    ({"margin_quantile": 0.0}, "margin_quantile"), ({"ce_thresholds": (0.01, 0.1)}, "ce_thresholds"),
    ({"grad_batch_size": 0}, "grad_batch_size"), ({"bn_mode": "other"}, "bn_mode must be one of eval, train"),
    ({"batch_size": 0}, "batch_size must be a whole number ≥ 1"), ({"pac_dtype": "float16"}, "pac_dtype"),
    ({"pac_m": 64, "pac_subset": 32}, "pac_m=64 is larger")])
def test_config_errors(settings, message):
    with pytest.raises(ConfigError, match=message) as info:
        MeasuresConfig(**settings)
    assert "\n" not in str(info.value)


# ---- a real run: the initialization and the training log --------------------------------------------


def test_run_probe_on_a_trained_run(run_copy):
    from safetensors.torch import load_file

    from landscape.analyze import run_probe
    from landscape.study import collect_runs

    (rec,) = run_probe(run_copy, "measures", MeasuresConfig(ce_thresholds=(2.1, 1.0)), device="cpu")
    r = rec.result
    ckpts = sorted((run_copy / "checkpoints").glob("step_*.safetensors"))
    first, last = load_file(ckpts[0]), load_file(ckpts[-1])
    layers = ["features.1", "classifier"]
    W = [last[f"{n}.weight"].double().numpy() for n in layers]
    V = [first[f"{n}.weight"].double().numpy() for n in layers]
    assert ckpts[0].name == "step_000000.safetensors"
    assert r["dist_init_frobenius"] == pytest.approx(sum(((w - v) ** 2).sum() for w, v in zip(W, V, strict=True)), rel=1e-10)
    dspec, _ = _spec_fro([w - v for w, v in zip(W, V, strict=True)])
    assert r["dist_init_spectral"] == pytest.approx(dspec.sum(), rel=1e-10)
    assert r["param_norm"] == pytest.approx(sum((w**2).sum() for w in W), rel=1e-10)
    assert r["num_params"] == sum(t.numel() for t in last.values())
    log = [json.loads(line) for line in (run_copy / "metrics.jsonl").read_text().splitlines() if line.strip()]
    log = [e for e in log if "train_ce" in e]
    s1 = next(e["step"] for e in log if e["train_ce"] <= 2.1)
    s2 = next(e["step"] for e in log if e["train_ce"] <= 1.0)
    assert (r["steps_to_ce_2.1"], r["steps_ce_2.1_to_1"]) == (s1, s2 - s1)
    assert r["gradient_noise_batch_size"] == 64  # the run's training batch size
    # the default thresholds: this short run never gets to CE 0.1, said so; correlate reads the measures
    (rec,) = run_probe(run_copy, "measures", device="cpu", out=run_copy / "other.h5")
    assert math.isnan(rec.result["steps_to_ce_0.1"]) and "never reached 0.1" in rec.result["reasons"]["steps_to_ce_0.1"]
    run_probe(run_copy, "measures", device="cpu", force=True)
    record = collect_runs([run_copy])[0]
    assert record["dist_init_frobenius"] == pytest.approx(r["dist_init_frobenius"])
    assert record["path_norm"] > 0


def test_missing_initialization_is_nan_with_reason(run_copy):
    from landscape.analyze import run_probe

    (rec,) = run_probe(run_copy, "measures", MeasuresConfig(init="999"), device="cpu")
    assert math.isnan(rec.result["dist_init_frobenius"]) and "999" in rec.result["reasons"]["dist_init_frobenius"]
    assert math.isfinite(rec.result["log_prod_spectral"])


# ---- flatness: PAC-Bayes σ, σ′ and worst-case α -------------------------------------------------------


def test_pac_bayes_and_sharpness_bounds_closed_form():
    from landscape.probes.measures import pac_bayes_bound, sharpness_bound

    assert pac_bayes_bound(9.0, 0.5, 100) == pytest.approx(9.0 / (4 * 0.25) + math.log(200) + 10, rel=1e-14)
    assert pac_bayes_bound(2.0, 0.1, 50) == pytest.approx(50.0 + math.log(500) + 10, rel=1e-14)
    assert pac_bayes_bound(2.0, 0.0, 50) == math.inf and math.isnan(pac_bayes_bound(2.0, math.inf, 50))
    # ‖v‖² log(2ω)/(4α²) + log(m/α) + 10
    assert sharpness_bound(9.0, 0.5, 50, 100) == pytest.approx(9.0 * math.log(100) + math.log(200) + 10, rel=1e-14)
    assert sharpness_bound(1.0, 0.0, 5, 10) == math.inf and math.isnan(sharpness_bound(1.0, math.inf, 5, 10))


def _ref_mag_bound(ref_vec, dist_w_vec, mag_sigma, mag_eps, m):
    """The reference's ``_pacbayes_mag_bound`` (robust-generalization-measures), line for line in numpy."""
    omega = len(ref_vec)
    numerator = mag_eps**2 + (mag_sigma**2 + 1) * (np.linalg.norm(ref_vec, 2) ** 2) / omega
    denominator = mag_eps**2 + mag_sigma**2 * dist_w_vec**2
    return 1 / 4 * np.log(numerator / denominator).sum() + math.log(m / mag_sigma) + 10


@pytest.mark.parametrize("eps", [1e-3, 0.0])
def test_pac_bayes_mag_bound_matches_the_reference_code(eps):
    from landscape.probes.measures import pac_bayes_mag_bound

    rng = np.random.default_rng(0)
    w, w0 = rng.normal(size=57), rng.normal(size=57)
    dist = w - w0
    for ref in (dist, w):  # pacbayes_mag_init, pacbayes_mag_orig
        got = pac_bayes_mag_bound(torch.from_numpy(ref), torch.from_numpy(dist), 0.3, eps, 1000)
        assert got == pytest.approx(_ref_mag_bound(ref, dist, 0.3, eps, 1000), rel=1e-12)
    assert pac_bayes_mag_bound(torch.from_numpy(w), torch.from_numpy(dist), 0.0, eps, 10) == math.inf


def _trained_net(n=300, d=6, c=3, seed=0):
    torch.manual_seed(seed)
    x = torch.randn(n, d, dtype=torch.float64)
    y = (x @ torch.randn(c, d, dtype=torch.float64).T).argmax(1)
    model = nn.Sequential(nn.Linear(d, 12), nn.ReLU(), nn.Linear(12, c)).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model, x, y


def test_flatness_sigma_is_the_sharpness_probes_and_bounds_follow_their_formulas():
    model, x, y = _trained_net()
    settings = {"subset": 256, "m": 64, "seed": 3, "pac_draws": 2}
    r = ls.measures(model, nn.CrossEntropyLoss(), (x, y), device="cpu", grad_subset=None, seed=3, pac_draws=2,
                    pac_subset=256, pac_m=64, worst_sharpness=False)
    s = ls.sharpness(model, nn.CrossEntropyLoss(), (x, y), device="cpu", rhos=(1e-3,), iters=1,
                     first_order_rho=None, **settings)
    assert 0 < r["pac_sigma"] < math.inf and r["pac_sigma"] == s["pac_bayes"]["sigma"]
    assert r["pac_sigma_mag"] == s["pac_bayes"]["sigma_mag"]
    sigma, n = r["pac_sigma"], len(y)
    w2 = sum((_np(m.weight) ** 2).sum() for m in model if isinstance(m, nn.Linear))  # weights only, no biases
    assert r["pacbayes_orig"] == pytest.approx(w2 / (4 * sigma**2) + math.log(n / sigma) + 10, rel=1e-12)
    assert r["pacbayes_flatness"] == pytest.approx(1 / sigma**2, rel=1e-12)
    assert r["pacbayes_mag_flatness"] == pytest.approx(1 / r["pac_sigma_mag"] ** 2, rel=1e-12)
    for key in ("pacbayes_init", "pacbayes_mag_init", "pacbayes_mag_orig"):  # no initialization here
        assert math.isnan(r[key]) and "initialization" in r["reasons"][key]
    assert "sharpness_orig" not in r.arrays and "sharpness_alpha" not in r.arrays


def _fgsm_drop(model, x, y, alpha):
    """Error increase at ``w + α·sign(∇L(w))`` (kept only if it raises the loss): one Auto-PGD step."""
    params = list(model.parameters())
    loss = nn.functional.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, params)
    err0 = float((model(x).argmax(1) != y).double().mean())
    with torch.no_grad():
        for p, g in zip(params, grads, strict=True):
            p.add_(alpha * g.sign())
        z = model(x)
        worse, err = float(nn.functional.cross_entropy(z, y)) > float(loss), float((z.argmax(1) != y).double().mean())
        for p, g in zip(params, grads, strict=True):
            p.sub_(alpha * g.sign())
    return (err if worse else err0) - err0


def test_worst_case_alpha_brackets_the_target_one_fgsm_step():
    model, x, y = _trained_net()
    r = ls.measures(model, nn.CrossEntropyLoss(), (x, y), device="cpu", grad_subset=None, pac_bayes=False,
                    pac_subset=None, pac_m=len(y), pac_dtype="float64", worst_iters=1, worst_steps=10)
    lo, hi = r["sharpness_alpha"], r["sharpness_alpha_hi"]
    assert 0 < lo < hi <= lo * 1.01
    assert _fgsm_drop(model, x, y, lo) <= 0.1 < _fgsm_drop(model, x, y, hi)
    assert r["sharpness_gradients"] > 10 and r["flatness_points"] == len(y)
    w2 = sum((_np(m.weight) ** 2).sum() for m in model if isinstance(m, nn.Linear))
    omega = sum(m.weight.numel() for m in model if isinstance(m, nn.Linear))
    assert r["sharpness_flatness"] == pytest.approx(1 / lo**2, rel=1e-12)
    assert r["sharpness_orig"] == pytest.approx(w2 * math.log(2 * omega) / (4 * lo**2) + math.log(len(y) / lo) + 10,
                                                rel=1e-12)
    assert math.isnan(r["sharpness_init"]) and r["reasons"]["sharpness_init"]
    assert "pacbayes_orig" not in r.arrays


def test_flatness_on_a_trained_run_matches_the_sharpness_probe(run_copy):
    from safetensors.torch import load_file

    from landscape.analyze import run_probe
    from landscape.study import collect_runs

    (rec,) = run_probe(run_copy, "measures", device="cpu")
    from landscape.probes.sharpness import SharpnessConfig

    (srec,) = run_probe(run_copy, "sharpness", SharpnessConfig(rhos=(1e-3,), iters=1, first_order_rho=None), device="cpu")
    r, pac = rec.result, srec.result["pac_bayes"]
    assert math.isfinite(pac["sigma"]) and math.isfinite(pac["sigma_mag"]) and pac["sigma"] > 0
    assert r["pac_sigma"] == pac["sigma"] and r["pac_sigma_mag"] == pac["sigma_mag"]
    ckpts = sorted((run_copy / "checkpoints").glob("step_*.safetensors"))
    first, last = load_file(ckpts[0]), load_file(ckpts[-1])
    layers = ["features.1", "classifier"]
    w = np.concatenate([last[f"{k}.weight"].double().numpy().ravel() for k in layers])
    w0 = np.concatenate([first[f"{k}.weight"].double().numpy().ravel() for k in layers])
    m = 300  # the tiny run's train_size: m is the training-set size
    assert r["margin_samples"] == m
    sigma, sigma_mag = r["pac_sigma"], r["pac_sigma_mag"]
    assert r["pacbayes_init"] == pytest.approx(((w - w0) ** 2).sum() / (4 * sigma**2) + math.log(m / sigma) + 10,
                                               rel=1e-10)
    assert r["pacbayes_mag_init"] == pytest.approx(_ref_mag_bound(w - w0, w - w0, sigma_mag, 1e-3, m), rel=1e-10)
    assert r["pacbayes_mag_orig"] == pytest.approx(_ref_mag_bound(w, w - w0, sigma_mag, 1e-3, m), rel=1e-10)
    alpha = r["sharpness_alpha"]
    assert r["sharpness_init"] == pytest.approx(
        ((w - w0) ** 2).sum() * math.log(2 * w.size) / (4 * alpha**2) + math.log(m / alpha) + 10, rel=1e-10)
    record = collect_runs([run_copy])[0]
    for key in ("pacbayes_init", "pacbayes_mag_orig", "sharpness_flatness", "sharpness_init"):
        assert record[key] == pytest.approx(r[key])


def test_a_checkpoint_at_its_initialization_has_zero_distance():
    """At step 0 the weights are the initialization: distances 0, the init-based log form −inf."""
    from landscape.probes.measures import norm_measures

    w = {"a": torch.tensor([[1.0, 2.0], [0.5, -1.0]], dtype=torch.float64)}
    out = norm_measures(w, {"a": w["a"].clone()}, margin=0.5)
    assert out["dist_init_frobenius"] == 0.0 and out["dist_init_spectral"] == 0.0
    assert out["log_spec_init_main"] == -math.inf
