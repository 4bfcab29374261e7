"""Hand-edited or damaged run files, non-finite weights and absurd sizes: one line and exit 2
(or a documented NaN), nothing written."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from landscape.analyze import run_probe
from landscape.checkpoints import RunDir, check_finite_weights
from landscape.errors import CheckpointError, ConfigError, LandscapeError
from landscape.probes import make_config
from landscape_cli.main import main

RANKME = ["--no-progress", "--no-plots", "--device", "cpu"]


def _one_line(capsys):
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def _edit_config(run, change):
    path = run / "config.json"
    meta = json.loads(path.read_text())
    path.write_text(json.dumps(change(meta)))


def _set(meta, section, key, value):
    meta[section][key] = value
    return meta


def _drop(meta, section, key=None):
    if key is None:
        del meta[section]
    else:
        del meta[section][key]
    return meta


@pytest.mark.parametrize("change, message", [
    (lambda m: [m], "config.json holds a JSON array, not an object"),
    (lambda m: "run", "config.json holds a JSON string, not an object"),
    (lambda m: {**m, "model_spec": "mlp"}, "'model_spec' must be an object, got a string"),
    (lambda m: {**m, "config": [1]}, "'config' must be an object, got a array"),
    (lambda m: _set(m, "model_spec", "num_classes", "ten"), "model_spec.num_classes must be a positive integer or null, got \"ten\""),
    (lambda m: _set(m, "model_spec", "num_classes", 0), "model_spec.num_classes must be a positive integer"),
    (lambda m: _set(m, "model_spec", "input_shape", 64), "model_spec.input_shape must be a list of positive integers"),
    (lambda m: _set(m, "model_spec", "input_shape", [1, "8", 8]), "model_spec.input_shape must be a list"),
    (lambda m: _set(m, "model_spec", "name", 3), "model_spec.name must be a non-empty string or null"),
    (lambda m: _set(m, "model_spec", "params", [16]), "model_spec.params must be an object or null"),
    (lambda m: _drop(m, "model_spec", "name"), "model_spec has no name (and no factory)"),
    (lambda m: _drop(m, "model_spec", "num_classes"), "model_spec has no num_classes"),
    (lambda m: _drop(m, "model_spec"), "has no 'model_spec'"),
    (lambda m: _drop(m, "config"), "has no 'config' (the training config)"),
    (lambda m: _set(m, "config", "lr", "fast"), "'config': config key 'lr' must be float, got 'fast'"),
    (lambda m: _set(m, "config", "epochs", 2.5), "'config': config key 'epochs' must be int"),
    (lambda m: _set(m, "config", "dataset", None), "'config': config key 'dataset' must not be null"),
])
def test_malformed_config_json_is_one_line_naming_the_file(run_copy, capsys, change, message):
    _edit_config(run_copy, change)
    assert main(["rankme", str(run_copy), *RANKME]) == 2
    err = _one_line(capsys)
    assert str(run_copy / "config.json") in err and message in err, err
    assert "the run directory is damaged" in err
    if "model_spec'" not in message:  # training rebuilds its model from the config, not the spec
        assert main(["train", "--out", str(run_copy), "--resume", "--no-progress", "--device", "cpu"]) == 2
        assert message in _one_line(capsys)


def test_config_json_that_is_not_utf8(run_copy, capsys):
    (run_copy / "config.json").write_bytes(b"\xff\xfe{")
    assert main(["rankme", str(run_copy), *RANKME]) == 2
    assert f"cannot read {run_copy / 'config.json'}" in _one_line(capsys)


def test_truncated_last_metrics_line_is_tolerated_by_probes(run_copy, capsys):
    path = run_copy / "metrics.jsonl"
    text = path.read_text()
    full = [json.loads(line) for line in text.splitlines()]
    path.write_text(text + text.splitlines()[-1][:25])  # a record cut short by a kill or a full disk
    assert RunDir(run_copy).metrics() == full
    assert main(["rankme", str(run_copy), *RANKME]) == 0
    capsys.readouterr()
    # the stored checkpoint attributes come from the complete records
    import h5py

    with h5py.File(run_copy / "analysis.h5", "r") as f:
        last = RunDir(run_copy).checkpoints()[-1]
        assert f[last.name].attrs["test_acc"] == full[-1]["test_acc"]


@pytest.mark.parametrize("damage, message", [
    (lambda lines: [lines[0], lines[1][:30], *lines[2:]], "metrics.jsonl line 2 is not valid JSON"),
    (lambda lines: [lines[0], "[1, 2]", *lines[1:]], "metrics.jsonl: record 2 holds a JSON array, not a metrics object"),
    (lambda lines: [lines[0], '{"step": "three"}', *lines[1:]], "record 2 holds a step that is not a number"),
])
def test_damaged_metrics_line_is_one_clear_error(run_copy, capsys, damage, message):
    path = run_copy / "metrics.jsonl"
    path.write_text("\n".join(damage(path.read_text().splitlines())) + "\n")
    with pytest.raises(CheckpointError, match=message):
        RunDir(run_copy).metrics()
    assert main(["rankme", str(run_copy), *RANKME]) == 2
    assert message in _one_line(capsys)


# ---- non-finite weights ----------------------------------------------------------------------

PROBES = [
    ("hessian", dict(trace_samples=4, lanczos_steps=10, top_k=2)),
    ("sharpness", dict(subset=128, m=64, iters=2, pac_bayes=False, first_order_rho=None, rhos=(0.01,))),
    ("coherence", dict(subset=64)),
    ("collapse", {}),
    ("rankme", {}),
    ("dse", dict(dsmi_inputs=False)),
    ("surface", dict(x="-1:1:3", y="-1:1:3")),
]


def _scale_last_checkpoint(run, change):
    cp = RunDir(run).checkpoints()[-1]
    state = load_file(str(cp.path))
    change(state["features.1.weight"])
    save_file(state, str(cp.path))
    return cp


def test_check_finite_weights_counts_and_names_the_first():
    from landscape.models import build_model

    model = build_model("mlp", (4,), 3, width=5, depth=1)
    check_finite_weights(model, "checkpoint a")  # finite: nothing happens
    names = [n for n, _ in model.named_parameters()]
    with torch.no_grad():
        dict(model.named_parameters())[names[-1]][0] = float("nan")  # a whole row of the last tensor
        dict(model.named_parameters())[names[1]].view(-1)[0] = float("-inf")
    n_bad = 1 + dict(model.named_parameters())[names[-1]][0].numel()
    with pytest.raises(CheckpointError, match=rf"^checkpoint a has {n_bad} non-finite weights \(first: {names[1]}\)"):
        check_finite_weights(model, "checkpoint a")


@pytest.mark.parametrize("probe, settings", PROBES, ids=[p for p, _ in PROBES])
def test_every_probe_refuses_a_checkpoint_with_nan_weights(run_copy, probe, settings):
    """Needs ``check_finite_weights`` called where the model is loaded (landscape.targets.load_model)."""
    def poison(w):
        w[0, 0] = float("nan")
        w[1, 0] = float("inf")

    cp = _scale_last_checkpoint(run_copy, poison)
    out = run_copy / f"{probe}.h5"
    with pytest.raises(CheckpointError) as info:
        run_probe(run_copy, probe, make_config(probe, **settings), out=out, device="cpu")
    message = str(info.value)
    assert message == (f"checkpoint {cp.path} has 2 non-finite weights (first: features.1.weight); the probe is "
                       "undefined there: probe an earlier checkpoint, or retrain (e.g. with a lower learning rate)")
    if out.exists():
        import h5py

        with h5py.File(out, "r") as f:
            assert cp.name not in f


@pytest.mark.parametrize("probe, settings", PROBES, ids=[p for p, _ in PROBES])
def test_finite_weights_whose_activations_overflow(run_copy, probe, settings):
    """First-layer weights 3e38: finite, but float32 activations overflow to inf. A probe whose
    value is then undefined says so in one line; the surface stores the NaN it measured, with its
    done mask."""
    _scale_last_checkpoint(run_copy, lambda w: w.fill_(3e38))
    out = run_copy / f"{probe}.h5"
    cfg = make_config(probe, **settings)
    if probe == "surface":
        (record,) = run_probe(run_copy, probe, cfg, out=out, device="cpu")
        assert np.isnan(record.result["train_loss"]).all() and record.result["done"].all()
        return
    # the classifier's inputs on the train split, counted directly with a forward hook
    run = RunDir(run_copy)
    model, seen = run.model_spec.build(), []
    from landscape.checkpoints import load_state_dict, load_weights
    from landscape.train.trainer import load_data

    load_weights(model, load_state_dict(run.checkpoints()[-1].path))
    model.classifier.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    model.eval()(load_data(run.config).train.x)
    n_bad = int((~torch.isfinite(seen[0])).sum())
    assert 0 < n_bad < seen[0].numel() == 4800
    features = f"the train features hold {n_bad:,} NaN/inf values (of 4,800)"
    expected = {"hessian": "the loss is NaN/inf at these weights on the 300 samples; the Hessian is undefined",
                "sharpness": "the loss is NaN/inf at these weights on 2 of 2 batches; sharpness is undefined",
                "coherence": "per-example gradients are NaN/inf in 4 of 4 parameter tensors",
                "collapse": f"{features}; neural collapse is undefined",
                "rankme": f"{features}; rankme is undefined",
                "dse": f"{features}; DSE is undefined"}[probe]
    with pytest.raises(LandscapeError) as info:
        run_probe(run_copy, probe, cfg, out=out, device="cpu")
    assert str(info.value).startswith(expected) and "\n" not in str(info.value), str(info.value)


def test_sharpness_ascent_ignores_nan_iterates():
    from landscape.probes.sharpness import worst_case_ascent

    s = torch.ones(3, dtype=torch.float64)

    def all_nan(delta):
        return float("nan"), float("nan"), torch.full_like(delta, float("nan"))

    f, err, _ = worst_case_ascent(all_nan, s, 0.1, norm="linf", iters=6)
    assert np.isnan(f) and np.isnan(err)
    f, err, delta = worst_case_ascent(all_nan, s, 0.1, norm="linf", iters=6, clean=(1.5, 0.25))
    assert (f, err) == (1.5, 0.25) and not delta.any()  # the clean point is the only candidate

    def nan_away_from_zero(delta):  # F = Σδ, NaN outside a small box
        if delta.abs().max() > 0.05:
            return float("nan"), 0.0, torch.full_like(delta, float("nan"))
        return float(delta.sum()), 0.0, torch.ones_like(delta)

    f, _, delta = worst_case_ascent(nan_away_from_zero, s, 0.1, norm="linf", iters=10, clean=(0.0, 0.0))
    assert np.isfinite(f) and f == pytest.approx(float(delta.sum())) and delta.abs().max() <= 0.05


def test_hessian_hvp_overflow_is_one_line():
    from landscape.probes.hessian import HessianConfig, hessian

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)

    def loss(z, y):  # finite value and gradient at θ, but ∂² = 1e39·… overflows float32
        return (z ** 2).sum(1) * 1e38

    x, y = torch.randn(8, 3) * 1e-30, torch.zeros(8, dtype=torch.long)
    with pytest.raises(LandscapeError, match="a Hessian-vector product became NaN/inf"):
        hessian(model, loss, x, y, HessianConfig(top_k=1, bottom_k=0, trace=False, lanczos_steps=4))


# ---- absurd sizes ----------------------------------------------------------------------------


def test_absurd_surface_grid_is_refused_before_anything_is_written(run_copy, capsys):
    assert main(["surface", str(run_copy), "--x", "-1:1:1000000", "--y", "-1:1:1000000", *RANKME]) == 2
    err = _one_line(capsys)
    points = 10**12  # coordinates + meshgrid (32 B), loss and accuracy (16 B), done (1 B) per point
    tib = points * 49 / 2**40
    assert f"a grid of 1,000,000 × 1,000,000 points needs ~{tib:.3g} TiB, more than the" in err, err
    assert "use fewer points" in err
    assert not (run_copy / "analysis.h5").exists()
    assert main(["surface", str(run_copy), "--dim", "1", "--x", "0:1:100000000000000", *RANKME]) == 2
    assert "a grid of 100,000,000,000,000 points needs" in _one_line(capsys)
    assert not (run_copy / "analysis.h5").exists()


def test_memory_estimates_refuse_what_does_not_fit(run_copy, monkeypatch):
    import landscape.utils as U

    monkeypatch.setattr(U, "memory_limit", lambda device="cpu": 100_000)
    hess = make_config("hessian", lanczos_steps=100, trace=False)
    with pytest.raises(ConfigError, match=r"a Lanczos basis of 100 × 1,210 values needs ~473 KiB, more than "
                                          r"the 97.7 KiB of cpu memory; use fewer --lanczos-steps"):
        run_probe(run_copy, "hessian", hess, out=run_copy / "h.h5", device="cpu")  # 100·1210·4 B
    with pytest.raises(ConfigError, match=r"a diffusion kernel of 300 × 300 points needs ~2.75 MiB"):
        run_probe(run_copy, "dse", make_config("dse"), out=run_copy / "d.h5", device="cpu")  # 4·300²·8 B
    monkeypatch.undo()
    with pytest.raises(ConfigError, match=r"a density grid of 1,000,000,000,000 bins needs ~29.1 TiB"):
        run_probe(run_copy, "hessian", make_config("hessian", density=True, density_bins=10**12, trace=False,
                                                   lanczos_steps=5, top_k=1),
                  out=run_copy / "h.h5", device="cpu")


@pytest.mark.parametrize("argv, message", [
    (["hessian", "{run}", "--top-k", "5000"], "exceed the 1210 parameters"),
    (["hessian", "{run}", "--subset", "100000"], "subset of 100000 samples asked for, but the data hold 300"),
    (["coherence", "{run}", "--subset", "100000"], "subset of 100000 samples asked for, but the data hold 300"),
    (["surface", "{run}", "--subset", "100000", "--x", "-1:1:3", "--y", "-1:1:3"], "subset of 100000 samples"),
    (["sharpness", "{run}", "--m", "5000"], "m=5000"),
])
def test_sizes_larger_than_the_model_or_data(run_copy, capsys, argv, message):
    assert main([a.format(run=run_copy) for a in argv] + RANKME) == 2
    assert message in _one_line(capsys)
