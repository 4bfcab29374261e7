"""Checkpoints as other tools write them (Lightning, Hugging Face, EMA wrappers, plain loops), and
their order over training in the stored results and figures."""

import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from landscape.analyze import collect_series
from landscape.checkpoints import (
    CheckpointReadError,
    LoadedState,
    ModelSpec,
    fit_state_dict,
    load_model,
    load_state_dict,
    load_weights,
)
from landscape.errors import CheckpointError, ConfigError
from landscape.figures import probe_figures, training_axis
from landscape.plots import plot_curves
from landscape.store import Store

SPEC = ModelSpec(name="mlp", input_shape=(1, 8, 8), num_classes=10, params={"width": 16, "depth": 1})


def _model(seed=0):
    torch.manual_seed(seed)
    return SPEC.build()


def _outputs(model):
    torch.manual_seed(123)
    with torch.no_grad():
        return model.eval()(torch.randn(5, 1, 8, 8))


def _lightning_checkpoint(model, *, extra=None):
    """The dict ``Trainer.save_checkpoint`` writes for a LightningModule holding ``self.model``."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10)
    model(torch.randn(4, 1, 8, 8)).sum().backward()
    opt.step()
    sched.step()
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    state.update(extra or {})
    return {
        "epoch": 3, "global_step": 1200, "pytorch-lightning_version": "2.4.0",
        "state_dict": state,
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 4, "completed": 3}}}},
        "callbacks": {"ModelCheckpoint{'monitor': 'val_loss'}": {"best_model_score": torch.tensor(0.25),
                                                                 "dirpath": "/runs/ckpts", "best_k_models": {}}},
        "optimizer_states": [opt.state_dict()], "lr_schedulers": [sched.state_dict()],
        "hparams_name": "kwargs", "hyper_parameters": {"lr": 0.1, "width": 16},
    }


def test_lightning_ckpt_read_safely_and_its_prefix_stripped(tmp_path):
    model = _model()
    torch.save(_lightning_checkpoint(model), tmp_path / "epoch=3-step=1200.ckpt")
    loaded = load_state_dict(tmp_path / "epoch=3-step=1200.ckpt")
    assert isinstance(loaded, LoadedState) and isinstance(loaded, dict)
    assert loaded.info == {"format": "lightning", "weights": "raw", "state_key": "state_dict", "other_weights": [],
                           "stripped_prefixes": []}
    assert sorted(loaded) == sorted(f"model.{k}" for k in model.state_dict())
    other = _model(seed=1)
    state, applied = fit_state_dict(loaded, other.state_dict().keys())
    assert applied == "model."
    load_weights(other, state)
    torch.testing.assert_close(_outputs(other), _outputs(model), rtol=0, atol=0)
    # the Python loader strips it too
    torch.testing.assert_close(_outputs(load_model(tmp_path / "epoch=3-step=1200.ckpt", SPEC)), _outputs(model),
                               rtol=0, atol=0)


def test_explicit_strip_prefix_takes_the_submodule_and_leaves_the_rest(tmp_path):
    model = _model()
    ckpt = _lightning_checkpoint(model, extra={"criterion.weight": torch.ones(10)})  # a weighted CE's buffer
    torch.save(ckpt, tmp_path / "last.ckpt")
    loaded = load_state_dict(tmp_path / "last.ckpt")
    keys = _model(seed=1).state_dict().keys()
    with pytest.raises(CheckpointError, match=r"the model's weights are under 'model\.' in the checkpoint, beside "
                                              r"other keys \(criterion\.weight\); pass --strip-prefix model\. "):
        fit_state_dict(loaded, keys)
    for given in ("model.", "model"):
        state, applied = fit_state_dict(loaded, keys, strip_prefix=given)
        assert applied == "model." and sorted(state) == sorted(keys)
    with pytest.raises(CheckpointError, match=r"no key of the checkpoint starts with 'net\.' \(--strip-prefix\); "
                                              r"its keys start with 'criterion\.', 'model\.'"):
        fit_state_dict(loaded, keys, strip_prefix="net.")
    other = load_model(tmp_path / "last.ckpt", SPEC, strip_prefix="model.")
    torch.testing.assert_close(_outputs(other), _outputs(model), rtol=0, atol=0)


def test_no_automatic_stripping_where_the_model_has_the_prefix():
    model = nn.Sequential()
    model.add_module("net", nn.Linear(2, 2))  # keys net.weight, net.bias
    state = {"net.weight": torch.ones(2, 2), "net.bias": torch.zeros(2)}
    assert fit_state_dict(state, model.state_dict().keys()) == (state, "")
    nested = {f"module_a.net.{k}": v for k, v in {"weight": 1, "bias": 2}.items()}  # two prefixes deep
    out, applied = fit_state_dict(nested, ["weight", "bias"])
    assert applied == "module_a.net." and out == {"weight": 1, "bias": 2}
    # keys that share no prefix are left as they are (the strict load names the mismatch)
    odd = {"a.w": torch.ones(1), "b.w": torch.ones(1)}
    assert fit_state_dict(odd, ["weight"]) == (odd, "")


def test_ema_or_raw_weights_chosen_and_recorded(tmp_path):
    raw, ema = _model(seed=0), _model(seed=1)
    torch.save({"state_dict": raw.state_dict(), "state_dict_ema": ema.state_dict(), "epoch": 9},
               tmp_path / "both.pth")
    auto = load_state_dict(tmp_path / "both.pth")
    assert auto.info["weights"] == "ema" and auto.info["state_key"] == "state_dict_ema"
    assert auto.info["other_weights"] == ["state_dict"]
    chosen = {w: load_state_dict(tmp_path / "both.pth", weights=w) for w in ("ema", "raw")}
    assert chosen["raw"].info == {**auto.info, "weights": "raw", "state_key": "state_dict",
                                  "other_weights": ["state_dict_ema"]}
    for name, ref in (("ema", ema), ("raw", raw)):
        m = _model(seed=2)
        load_weights(m, chosen[name])
        torch.testing.assert_close(_outputs(m), _outputs(ref), rtol=0, atol=0)
    m = load_model(tmp_path / "both.pth", SPEC, weights="raw")
    torch.testing.assert_close(_outputs(m), _outputs(raw), rtol=0, atol=0)
    assert not torch.equal(_outputs(raw), _outputs(ema))  # the choice matters
    # asking for what is not there is one line saying what is
    torch.save(raw.state_dict(), tmp_path / "plain.pt")
    assert load_state_dict(tmp_path / "plain.pt").info["weights"] == "raw"
    with pytest.raises(CheckpointReadError, match=r"plain.pt holds no EMA weights \(it has a bare state dict "
                                                  r"\(raw\)\); use --weights raw or auto"):
        load_state_dict(tmp_path / "plain.pt", weights="ema")
    torch.save({"ema": ema.state_dict(), "step": 100}, tmp_path / "ema_only.pt")
    assert load_state_dict(tmp_path / "ema_only.pt").info["state_key"] == "ema"
    with pytest.raises(CheckpointReadError, match=r"holds no raw weights \(it has ema \(ema\)\); use --weights ema"):
        load_state_dict(tmp_path / "ema_only.pt", weights="raw")
    with pytest.raises(ConfigError, match="weights must be one of auto, ema, raw"):
        load_state_dict(tmp_path / "plain.pt", weights="best")


@pytest.mark.parametrize("key", ["net", "model_state_dict", "network", "model"])
def test_common_wrapper_keys(tmp_path, key):
    model = _model()
    opt = torch.optim.Adam(model.parameters())
    torch.save({key: model.state_dict(), "optimizer_state_dict": opt.state_dict(), "epoch": 4}, tmp_path / "w.pt")
    loaded = load_state_dict(tmp_path / "w.pt")
    assert loaded.info["state_key"] == key and loaded.info["weights"] == "raw"
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())


def test_no_state_dict_lists_the_keys_found(tmp_path):
    torch.save({"weights_v2": _model().state_dict(), "epoch": 3, "seed": 0}, tmp_path / "odd.pt")
    with pytest.raises(CheckpointReadError) as err:
        load_state_dict(tmp_path / "odd.pt")
    assert "does not hold a state dict of tensors (top-level keys: weights_v2, epoch, seed)" in str(err.value)
    assert "\n" not in str(err.value) and err.value.path == tmp_path / "odd.pt"
    torch.save({f"k{i}": i for i in range(30)}, tmp_path / "many.pt")
    with pytest.raises(CheckpointReadError, match=r"top-level keys: k0, k1, k2, k3, k4, k5, …, k28, k29 \(30 in all\)"):
        load_state_dict(tmp_path / "many.pt")
    torch.save([torch.ones(2)], tmp_path / "list.pt")
    with pytest.raises(CheckpointReadError, match="holds a list, not a state dict"):
        load_state_dict(tmp_path / "list.pt")


def test_read_errors_carry_their_path_across_processes(tmp_path):
    (tmp_path / "bad.ckpt").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointReadError) as err:
        load_state_dict(tmp_path / "bad.ckpt")
    copy = pickle.loads(pickle.dumps(err.value))
    assert isinstance(copy, CheckpointError) and copy.path == tmp_path / "bad.ckpt" and str(copy) == str(err.value)
    with pytest.raises(CheckpointReadError, match="does not exist") as err:
        load_state_dict(tmp_path / "nope.safetensors")
    assert err.value.path == tmp_path / "nope.safetensors"


def test_hugging_face_folder_and_sharded_weights(tmp_path):
    model = _model()
    folder = tmp_path / "checkpoint-500"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text("{}")
    assert load_state_dict(folder).info["format"] == "safetensors"
    torch.testing.assert_close(_outputs(load_model(folder, SPEC)), _outputs(model), rtol=0, atol=0)
    sharded = tmp_path / "checkpoint-600"
    sharded.mkdir()
    (sharded / "model.safetensors.index.json").write_text('{"weight_map": {}}')
    with pytest.raises(CheckpointReadError, match="is sharded .* not supported; save it as one file"):
        load_state_dict(sharded)


# ---- order over training: collect_series and the figures ---------------------------------------


def _store_epochs(path, epochs, values, *, parent=lambda e: {"epoch": e}, probe="rankme"):
    store = Store(path)
    for e, v in zip(epochs, values, strict=True):
        arrays = {"train": {"rankme": v, "effective_rank": v + 1}}
        store.write(f"epoch_{e}/{probe}", arrays, {"probe": probe, "settings_hash": "h", "settings": {}}, parent(e))
    return store


def test_collect_series_in_training_order_with_names(tmp_path):
    epochs, values = [5, 10, 15], [3.0, 2.0, 1.0]
    store = _store_epochs(tmp_path / "a.h5", epochs, values)
    assert store.groups() == ["epoch_10/rankme", "epoch_15/rankme", "epoch_5/rankme"]  # HDF5 order: by text
    series = collect_series(store.path, "rankme", ["train/rankme"])
    assert list(series["name"]) == ["epoch_5", "epoch_10", "epoch_15"]
    assert list(series["epoch"]) == epochs and list(series["train/rankme"]) == values
    assert np.isnan(series["step"]).all()
    # no step or epoch stored: natural order of the names, and the names as the x axis
    plain = _store_epochs(tmp_path / "b.h5", epochs, values, parent=lambda e: {})
    series = collect_series(plain.path, "rankme", ["train/rankme"])
    assert list(series["name"]) == ["epoch_5", "epoch_10", "epoch_15"] and list(series["train/rankme"]) == values
    x, xlabel, names = training_axis(series)
    assert list(x) == [0, 1, 2] and xlabel == "checkpoint" and names == ["epoch_5", "epoch_10", "epoch_15"]
    # steps, where stored, order the checkpoints even against their names
    stepped = _store_epochs(tmp_path / "c.h5", epochs, values, parent=lambda e: {"step": 100 - e})
    series = collect_series(stepped.path, "rankme", ["train/rankme"])
    assert list(series["step"]) == [85, 90, 95] and list(series["name"]) == ["epoch_15", "epoch_10", "epoch_5"]
    assert training_axis(series)[:2][1] == "step"


def test_over_training_figures_use_epochs_or_names(tmp_path, monkeypatch):
    from landscape import plots

    epochs, values = [5, 10, 15], [3.0, 2.0, 1.0]
    drawn = []

    def spy(x, series, real=plots.plot_curves, **kw):
        fig = real(x, series, **kw)
        drawn.append((np.asarray(x), series, kw, fig))
        return fig

    monkeypatch.setattr(plots, "plot_curves", spy)
    store = _store_epochs(tmp_path / "a.h5", epochs, values)
    assert probe_figures(store.path, "rankme", tmp_path / "plots")
    plain = _store_epochs(tmp_path / "b.h5", epochs, values, parent=lambda e: {})
    assert probe_figures(plain.path, "rankme", tmp_path / "plots_b")
    (x, series, kw, fig), (x_b, _, kw_b, fig_b) = drawn
    assert list(x) == epochs and kw["xlabel"] == "epoch" and kw["xticklabels"] is None
    np.testing.assert_array_equal(fig.axes[0].lines[0].get_xdata(), epochs)
    np.testing.assert_array_equal(fig.axes[0].lines[0].get_ydata(), values)
    assert list(x_b) == [0, 1, 2] and kw_b["xlabel"] == "checkpoint"
    ax = fig_b.axes[0]
    fig_b.canvas.draw()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["epoch_5", "epoch_10", "epoch_15"]
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), values)


def test_name_ticks_are_thinned_and_checked():
    names = [f"epoch_{e}" for e in range(1, 31)]
    fig = plot_curves(np.arange(30.0), {"a": np.arange(30.0), "b": np.arange(30.0)}, xticklabels=names, ncols=1)
    fig.canvas.draw()
    top, bottom = fig.axes
    labels = [t.get_text() for t in bottom.get_xticklabels()]
    assert len(labels) <= 12 and labels[0] == "epoch_1" and labels[-1] == "epoch_30"
    assert not any(t.get_visible() for t in top.get_xticklabels())  # names on the lowest panel only
    np.testing.assert_array_equal(top.get_xticks(), bottom.get_xticks())
    from landscape.errors import LandscapeError

    with pytest.raises(LandscapeError, match="xticklabels has 2 labels for 3 x values"):
        plot_curves([0, 1, 2], {"a": [1, 2, 3]}, xticklabels=["x", "y"])


def test_coherence_and_sharpness_figures_follow_training_order(tmp_path, monkeypatch):
    from landscape import plots

    drawn = []

    def spy(x, series, real=plots.plot_curves, **kw):
        drawn.append((np.asarray(x), series, kw))
        return real(x, series, **kw)

    monkeypatch.setattr(plots, "plot_curves", spy)
    store = Store(tmp_path / "a.h5")
    for e in (5, 10, 15):
        attrs = {"settings_hash": "h", "settings": {}}
        coherence = {"m_alpha": 1.0 / e, "alpha": 0.5, "gsnr_mean": 2.0, "gsnr_median": 1.0,
                     "gsnr_bin_edges": np.array([0.0, 1.0, 2.0]), "gsnr_hist": np.array([e, 1])}
        store.write(f"epoch_{e}/coherence", coherence, {**attrs, "probe": "coherence"}, {"epoch": e})
        sharpness = {"rhos": np.array([0.01, 0.1]), "delta_loss": np.array([e, 2.0 * e]),
                     "delta_error": np.array([0.0, 0.1])}
        store.write(f"epoch_{e}/sharpness", sharpness, {**attrs, "probe": "sharpness"})
    probe_figures(store.path, "coherence", tmp_path / "plots")
    probe_figures(store.path, "sharpness", tmp_path / "plots")
    (x, panels, kw), (_, hist, hist_kw), (_, sharp, _) = drawn
    assert list(x) == [5, 10, 15] and kw["xlabel"] == "epoch"
    np.testing.assert_allclose(panels["coherence m·α (1 = orthogonal)"], [1 / 5, 1 / 10, 1 / 15])
    assert hist_kw["title"] == "GSNR histogram — epoch_15" and list(hist["parameters per bin"]) == [15, 1]
    lines = sharp["Δ loss  L(w+δ*) − L(w)"]
    assert list(lines) == ["epoch_5", "epoch_10", "epoch_15"] and list(lines["epoch_10"]) == [10, 20]
