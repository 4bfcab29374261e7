"""plot_monitors and monitor_figures: the monitor values of a real run's metrics.jsonl, on the axes."""

from __future__ import annotations

import json

import matplotlib.pyplot as plt
import numpy as np
import pytest

from landscape import plots
from landscape.errors import LandscapeError
from landscape.figures import monitor_figures
from landscape.train.config import TrainConfig
from landscape.train.trainer import train

pytestmark = pytest.mark.filterwarnings("error")


def _line(ax, label):
    matches = [ln for ln in ax.lines if ln.get_label() == label]
    assert len(matches) == 1, [ln.get_label() for ln in ax.lines]
    return matches[0]


def _axes(fig, title):
    matches = [ax for ax in fig.axes if ax.get_title() == title]
    assert len(matches) == 1, [ax.get_title() for ax in fig.axes]
    return matches[0]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny run: 4 steps per epoch, 3 epochs, cosine lr (so η changes every step), with
    ``--monitor lambda_max:every=2 --monitor grad_norm``."""
    out = tmp_path_factory.mktemp("mon") / "run"
    cfg = TrainConfig(model="mlp", model_params={"width": 16, "depth": 1, "activation": "tanh"},
                      dataset="digits", train_size=64, loss="mse", optimizer="sgd",
                      optimizer_params={"momentum": 0.0}, lr=0.05, schedule="cosine", epochs=3,
                      batch_size=16, checkpoints="none",
                      monitors={"lambda_max": {"every": 2}, "grad_norm": {}})
    train(cfg, out, device="cpu")
    return out


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_run_draws_lambda_max_against_two_over_eta_per_step(run_dir):
    records = _records(run_dir)
    fig = plots.plot_monitors(records)
    assert [ax.get_title() for ax in fig.axes] == ["λ_max (Hessian)", "gradient norm"]
    lam_recs = [r for r in records if "lambda_max" in r]
    assert [r["step"] for r in lam_recs] == list(range(0, 13, 2))
    ax = _axes(fig, "λ_max (Hessian)")
    line = _line(ax, "lambda_max")
    np.testing.assert_array_equal(line.get_xdata(), [r["step"] for r in lam_recs])
    np.testing.assert_array_equal(line.get_ydata(), [r["lambda_max"] for r in lam_recs])
    eta = np.array([r["lr"] for r in lam_recs])
    assert len(set(eta.tolist())) > 2  # the cosine schedule really changes η
    threshold = _line(ax, "2/η")
    assert threshold.get_linestyle() == "--"
    assert eta[-1] == 0.0  # the cosine schedule's last step: no threshold there
    expected = np.array([2.0 / e if e > 0 else np.nan for e in eta])
    np.testing.assert_allclose(threshold.get_ydata(), expected, rtol=1e-12)
    # the ± residual band encloses the estimate
    assert len(ax.collections) == 1
    plt.close(fig)


def test_run_draws_grad_norm_at_every_step(run_dir):
    records = _records(run_dir)
    fig = plots.plot_monitors(records)
    ax = _axes(fig, "gradient norm")
    assert ax.get_yscale() == "log"
    line = _line(ax, "grad_norm")
    np.testing.assert_array_equal(line.get_xdata(), np.arange(13))
    np.testing.assert_array_equal(line.get_ydata(), [r["grad_norm"] for r in records if "grad_norm" in r])


def test_lr_argument_draws_the_line_when_records_have_no_lr():
    records = [{"step": s, "lambda_max": 10.0 + s} for s in (0, 5, 10)]
    fig = plots.plot_monitors(records, lr=0.1)
    ax = fig.axes[0]
    np.testing.assert_allclose(_line(ax, "2/η").get_ydata(), [20.0, 20.0, 20.0])
    # without any η, no threshold line
    fig = plots.plot_monitors(records)
    assert [ln.get_label() for ln in fig.axes[0].lines] == ["lambda_max"]


def test_panels_for_every_monitor_and_unknown_keys_grouped():
    records = [
        {"step": 0, "epoch": 0.0, "lr": 0.1, "train_loss": 1.0, "time": 1e9, "weight_norm": 3.0,
         "weight_norm/fc1": 2.0, "weight_norm/fc2": 1.0, "logit_norm": 1.0, "log_z": 2.3, "max_abs_logit": 0.5,
         "softmax_collapse": 0.0, "nlm_cosine": 0.1},
        {"step": 1, "update_norm": 0.2, "update_steps": 1},
        {"step": 2, "event": "stopped", "value": 0.1},
    ]
    fig = plots.plot_monitors(records)
    assert [ax.get_title() for ax in fig.axes] == ["weight norm", "update norm", "logit statistics",
                                                   "softmax collapse", "cosine to the NLM direction",
                                                   "weight_norm"]
    logits = _axes(fig, "logit statistics")
    assert [ln.get_label() for ln in logits.lines] == ["logit_norm", "log_z", "max_abs_logit"]
    per_layer = _axes(fig, "weight_norm")
    assert [ln.get_label() for ln in per_layer.lines] == ["fc1", "fc2"]
    np.testing.assert_array_equal(_line(_axes(fig, "update norm"), "update_norm").get_xdata(), [1.0])


def test_adam_sharpness_panel_draws_its_threshold_dashed_and_its_residual_band():
    records = [{"step": s, "lr": 1e-3, "adam_sharpness": 30.0 + s, "adam_sharpness_residual": 0.5,
                "adam_sharpness_threshold": 38_000.0, "adam_sharpness_hvps": 4, "attn_max_logit": 2.0 ** s}
               for s in range(3)]
    fig = plots.plot_monitors(records)
    assert [ax.get_title() for ax in fig.axes] == ["preconditioned sharpness (Adam)", "max attention logit"]
    ax = _axes(fig, "preconditioned sharpness (Adam)")
    np.testing.assert_array_equal(_line(ax, "adam_sharpness").get_ydata(), [30.0, 31.0, 32.0])
    threshold = _line(ax, "(2+2β₁)/((1−β₁)η)")
    assert threshold.get_linestyle() == "--"
    np.testing.assert_array_equal(threshold.get_ydata(), [38_000.0] * 3)
    (band,) = ax.collections
    np.testing.assert_allclose(band.get_paths()[0].vertices[:, 1].min(), 29.5)
    assert _axes(fig, "max attention logit").get_yscale() == "log"


def test_no_monitor_values_is_a_clear_error():
    with pytest.raises(LandscapeError, match="--monitor"):
        plots.plot_monitors([{"step": 0, "epoch": 0.0, "lr": 0.1, "train_loss": 1.0, "test_acc": 0.5}])


def test_monitor_figures_writes_a_png_for_a_run_with_monitors(run_dir, tmp_path):
    written = monitor_figures(run_dir, tmp_path / "plots")
    assert written == [tmp_path / "plots" / "monitors.png"]
    assert written[0].stat().st_size > 5_000


def test_monitor_figures_draws_nothing_for_a_run_without_monitors(tmp_path):
    out = tmp_path / "plain"
    train(TrainConfig(model="mlp", model_params={"width": 8, "depth": 1}, dataset="digits", train_size=32,
                      epochs=1, batch_size=32, checkpoints="none"), out, device="cpu")
    assert monitor_figures(out, tmp_path / "plots") == []
    assert not (tmp_path / "plots").exists()


def test_edge_of_stability_summary_against_a_direct_computation():
    from tests.test_examples import load_example

    eos = load_example("edge_of_stability")
    lr, steps = 0.1, 100  # 2/η = 20
    lam = {s: (10.0 + s if s <= 10 else 20.0 + (1.0 if s % 20 else -1.0)) for s in range(0, 101, 10)}
    loss = {s: 1.0 / (1 + s) + (0.05 if s in (50, 90) else 0.0) for s in range(101)}
    recs = [{"step": s, "train_loss": loss[s], **({"lambda_max": lam[s], "lambda_max_residual": 0.01 * lam[s]}
                                                  if s in lam else {})} for s in range(101)]
    out = eos.summarize(recs, lr, steps)
    tail = [lam[s] / 20.0 for s in (80, 90, 100)]  # the measurements at steps ≥ 80
    got = out["lambda_max_over_two_over_eta_last20"]
    assert got["measurements"] == 3
    np.testing.assert_allclose([got["mean"], got["min"], got["max"]], [np.mean(tail), min(tail), max(tail)])
    assert out["first_step_within_5pct_of_two_over_eta"] == 10  # λ = 20 ≥ 0.95 · 20 first at step 10
    assert out["sharpened_before_reaching"] is True
    assert out["loss_non_monotone"] is True and out["loss_rises"] == 2  # up at 50 and at 90
    np.testing.assert_allclose(out["max_relative_residual_last20"], 0.01)


def test_all_figures_of_a_run_analysis_draws_its_monitors(run_dir, tmp_path):
    from landscape.analyze import run_probe
    from landscape.figures import all_figures
    from landscape.probes import make_config

    run_probe(run_dir, "hessian", make_config("hessian", top_k=1, bottom_k=0, trace=False, lanczos_steps=5),
              checkpoints="last", device="cpu")
    written = all_figures(run_dir / "analysis.h5", tmp_path / "plots")
    assert tmp_path / "plots" / "monitors.png" in written
    assert any("hessian" in str(p) for p in written)


def test_momentum_moves_the_stability_line():
    records = [{"step": s, "lr": 0.1, "lambda_max": 10.0 + s} for s in range(3)]
    ax = _axes(plots.plot_monitors(records, momentum=0.9), "λ_max (Hessian)")
    line = _line(ax, "(2+2β)/η, β=0.9")
    np.testing.assert_allclose(line.get_ydata(), (2 + 2 * 0.9) / 0.1)
    plt.close("all")


def test_landscape_plot_takes_a_run_dir(run_dir, tmp_path, capsys):
    from landscape_cli.main import main

    assert main(["plot", str(run_dir), "--out", str(tmp_path / "figs")]) == 0
    assert (tmp_path / "figs" / "monitors.png").is_file()
    empty = tmp_path / "nothing"
    empty.mkdir()
    assert main(["plot", str(empty)]) == 2
    err = capsys.readouterr().err
    assert "neither analysis.h5 nor metrics.jsonl" in err and "Traceback" not in err
