"""A user's data is used as given: foreign checkpoints probed on their own ``.npz`` arrays give the
numbers the model gives on those arrays, integer inputs (token ids) stay integer, and what was
applied to the inputs is recorded beside the results."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from landscape.analyze import run_probe
from landscape.checkpoints import ModelSpec, RunDir
from landscape.datasets import describe_data, load_dataset
from landscape.errors import ConfigError
from landscape.probes import make_config
from landscape.store import Store
from landscape.targets import DataSpec, Target, check_data_spec, load_data_and_loss, resolve_targets
from landscape.train.trainer import load_data

VOCAB, LENGTH, CLASSES = 13, 6, 3
HESS = dict(top_k=1, bottom_k=0, trace_samples=2, lanczos_steps=8)
SHARP = dict(m=20, iters=2, pac_bayes=False, first_order_rho=None)
SURF = dict(x="-1:1:3", y="-1:1:3")


# --------------------------------------------------------------------------- model factories


class TokenBag(nn.Module):
    """Mean of token embeddings, then a linear classifier: needs integer inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 5)
        self.head = nn.Linear(5, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.emb(x).mean(1)))


def token_bag() -> nn.Module:
    return TokenBag()


def small_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 10))


# --------------------------------------------------------------------------- fixtures


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 30) -> nn.Module:
    """A plain training loop, as a user writes it (full batch, SGD)."""
    torch.manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def digits_npz(tmp_path_factory):
    """sklearn digits scaled ``X/16`` (float64, as numpy makes them), saved by the user; a CNN
    trained on them in a plain loop, saved with ``torch.save(model.state_dict())``."""
    from sklearn.datasets import load_digits

    folder = tmp_path_factory.mktemp("mine")
    bunch = load_digits()
    x = (bunch.images / 16.0)[:, None][:400]
    y = bunch.target[:400].astype(np.int64)
    arrays = dict(x_train=x[:300], y_train=y[:300], x_test=x[300:], y_test=y[300:])
    np.savez(folder / "digits_mine.npz", **arrays)
    torch.manual_seed(0)
    model = _train(small_cnn(), torch.tensor(arrays["x_train"], dtype=torch.float32),
                   torch.from_numpy(arrays["y_train"]))
    (folder / "ckpts").mkdir()
    torch.save(model.state_dict(), folder / "ckpts" / "epoch_5.pt")
    return folder, arrays, model


@pytest.fixture(scope="module")
def tokens_npz(tmp_path_factory):
    """Token-id inputs (int64) with a label that depends on them, and a trained TokenBag."""
    folder = tmp_path_factory.mktemp("tokens")
    rng = np.random.default_rng(0)
    x = rng.integers(0, VOCAB, size=(80, LENGTH)).astype(np.int64)
    y = (x[:, 0] % CLASSES).astype(np.int64)
    arrays = dict(x_train=x[:60], y_train=y[:60], x_test=x[60:], y_test=y[60:])
    np.savez(folder / "tok.npz", **arrays)
    torch.manual_seed(0)
    model = _train(token_bag(), torch.from_numpy(arrays["x_train"]), torch.from_numpy(arrays["y_train"]))
    torch.save(model.state_dict(), folder / "w.pt")
    return folder, arrays, model


def _direct_loss_error(model: nn.Module, x: torch.Tensor, y: np.ndarray) -> tuple[float, float]:
    with torch.no_grad():
        logits = model(x).double()
    target = torch.from_numpy(y)
    return float(F.cross_entropy(logits, target)), float((logits.argmax(1) != target).double().mean())


# --------------------------------------------------------------------------- npz used as given


def test_probe_loss_on_an_npz_equals_the_models_loss_on_the_raw_arrays(digits_npz, tmp_path):
    folder, arrays, model = digits_npz
    spec = ModelSpec(factory=f"{__name__}:small_cnn")
    data = DataSpec(dataset="npz", dataset_params={"path": str(folder / "digits_mine.npz")})
    out = tmp_path / "mine.h5"
    raw = torch.tensor(arrays["x_train"], dtype=torch.float32)
    loss, error = _direct_loss_error(model, raw, arrays["y_train"])
    assert 0 < loss < 1.5  # a partly trained model: the check below is not about a trivial value

    hess = run_probe(folder / "ckpts", "hessian", make_config("hessian", **HESS), device="cpu",
                     out=out, model_spec=spec, data_spec=data)[0]
    assert hess.result["loss"] == pytest.approx(loss, abs=1e-6)
    sharp = run_probe(folder / "ckpts", "sharpness", make_config("sharpness", **SHARP), device="cpu",
                      out=out, model_spec=spec, data_spec=data)[0]
    assert sharp.result["loss_clean"][0] == pytest.approx(loss, abs=1e-6)
    assert sharp.result["error_clean"][0] == pytest.approx(error, abs=1e-12)
    surf = run_probe(folder / "ckpts", "surface", make_config("surface", **SURF), device="cpu",
                     out=out, model_spec=spec, data_spec=data)[0]
    assert surf.result["origin_loss"] == pytest.approx(loss, abs=1e-6)

    # what was applied to the inputs is in the stored attributes: nothing but the float32 cast
    _, attrs = Store(out).read(f"{hess.target.name}/hessian")
    recorded = attrs["data"] if isinstance(attrs["data"], dict) else json.loads(attrs["data"])
    assert recorded["dataset"] == "npz" and recorded["input_dtype"] == "float32"
    assert recorded["normalization"] == {"method": "none", "dtype": "float64", "cast_to": "float32"}
    assert recorded["source"]["path"].endswith("digits_mine.npz")


def test_standardization_on_request_is_applied_and_recorded(digits_npz, tmp_path):
    folder, arrays, model = digits_npz
    data = DataSpec(dataset="npz", dataset_params={"path": str(folder / "digits_mine.npz"),
                                                   "normalize": "standardize"})
    x = arrays["x_train"]
    mean, std = x.mean(axis=(0, 2, 3)), x.std(axis=(0, 2, 3))  # one channel; numpy, float64
    scaled = torch.tensor((x - mean[:, None, None]) / std[:, None, None], dtype=torch.float32)
    loss, _ = _direct_loss_error(model, scaled, arrays["y_train"])
    rec = run_probe(folder / "ckpts", "hessian", make_config("hessian", **HESS), device="cpu",
                    out=tmp_path / "s.h5", model_spec=ModelSpec(factory=f"{__name__}:small_cnn"),
                    data_spec=data)[0]
    assert rec.result["loss"] == pytest.approx(loss, abs=1e-5)
    attrs = Store(tmp_path / "s.h5").read(f"{rec.target.name}/hessian")[1]
    norm = attrs["data"]["normalization"]
    assert norm["method"] == "standardize" and norm["fit_on"] == "train"
    np.testing.assert_allclose(norm["mean"], mean, rtol=1e-10)
    np.testing.assert_allclose(norm["std"], std, rtol=1e-10)


def test_describe_data_says_what_was_applied(digits_npz):
    folder, _, _ = digits_npz
    mine = load_dataset("npz", path=folder / "digits_mine.npz")
    assert describe_data(mine) == (
        "data: npz digits_mine.npz, 300 train / 100 test, inputs 1x8x8 as given "
        "(no normalization, cast float64 → float32)"
    )
    digits = load_dataset("digits")
    assert describe_data(digits) == (
        f"data: digits, {len(digits.train)} train / {len(digits.test)} test, inputs 1x8x8 "
        "standardized with the train mean/std of each of 1 channel (axis 1)"
    )


def test_registry_datasets_keep_their_standardization():
    ds = load_dataset("digits")
    norm = ds.normalization
    assert norm["method"] == "standardize" and ds.train.x.dtype == torch.float32
    # the standardized train channel has mean 0 and (population) std 1 ...
    x = ds.train.x.double().numpy()
    assert abs(x.mean()) < 1e-6 and x.std() == pytest.approx(1.0, abs=1e-6)
    # ... and undoing the recorded statistics gives back the raw pixels, integers 0..16
    raw = x * norm["std"][0] + norm["mean"][0]
    np.testing.assert_allclose(raw, np.round(raw), atol=1e-4)
    assert raw.min() > -1e-4 and raw.max() < 16 + 1e-4
    raw_test = ds.test.x.double().numpy() * norm["std"][0] + norm["mean"][0]
    np.testing.assert_allclose(raw_test, np.round(raw_test), atol=1e-4)
    assert load_dataset("digits", normalize="none").normalization["method"] == "none"
    with pytest.raises(ConfigError, match="normalize must be one of standardize, none, got 'zscore'"):
        load_dataset("digits", normalize="zscore")


# --------------------------------------------------------------------------- integer inputs


def test_integer_inputs_keep_their_dtype_and_cannot_be_standardized(tokens_npz):
    folder, arrays, _ = tokens_npz
    ds = load_dataset("npz", path=folder / "tok.npz")
    assert ds.train.x.dtype == torch.int64 and ds.test.x.dtype == torch.int64
    np.testing.assert_array_equal(ds.train.x.numpy(), arrays["x_train"])
    assert ds.normalization == {"method": "none", "dtype": "int64"}
    assert ds.input_shape == (LENGTH,)
    with pytest.raises(ConfigError) as err:
        load_dataset("npz", path=folder / "tok.npz", normalize="standardize")
    assert str(err.value) == (
        "dataset 'npz' has integer inputs (int64, e.g. token ids), which cannot be standardized; "
        "use normalize=none (the default for integer inputs)"
    )
    # int32 ids stay int32; subsets and label noise keep the dtype too
    np.savez(folder / "tok32.npz", **{k: (v.astype(np.int32) if k.startswith("x") else v)
                                      for k, v in arrays.items()})
    small = load_dataset("npz", path=folder / "tok32.npz", train_size=30, label_noise=0.1)
    assert small.train.x.dtype == torch.int32 and len(small.train) == 30


def test_probes_run_on_token_ids_with_an_embedding_model(tokens_npz, tmp_path):
    folder, arrays, model = tokens_npz
    spec = ModelSpec(factory=f"{__name__}:token_bag")
    data = DataSpec(dataset="npz", dataset_params={"path": str(folder / "tok.npz")})
    loss, error = _direct_loss_error(model, torch.from_numpy(arrays["x_train"]), arrays["y_train"])
    out = tmp_path / "tok.h5"

    def probe(name, **kw):
        return run_probe(folder / "w.pt", name, make_config(name, **kw), device="cpu", out=out,
                         model_spec=spec, data_spec=data)[0].result

    hess = probe("hessian", **HESS)
    assert hess["loss"] == pytest.approx(loss, abs=1e-6) and np.isfinite(hess["eigenvalues"]).all()
    sharp = probe("sharpness", **SHARP)
    assert sharp["loss_clean"][0] == pytest.approx(loss, abs=1e-6)
    assert sharp["error_clean"][0] == pytest.approx(error, abs=1e-12)
    surf = probe("surface", **SURF)
    assert surf["origin_loss"] == pytest.approx(loss, abs=1e-6)
    assert probe("coherence", subset=40)  # per-sample gradients through an embedding
    attrs = Store(out).read("w/hessian")[1]
    assert attrs["data"]["input_dtype"] == "int64"
    assert attrs["data"]["normalization"] == {"method": "none", "dtype": "int64"}


def test_float64_probes_keep_token_ids_integer(tokens_npz, tmp_path):
    folder, arrays, model = tokens_npz
    data = DataSpec(dataset="npz", dataset_params={"path": str(folder / "tok.npz")})
    with torch.no_grad():
        ref = float(F.cross_entropy(model.double()(torch.from_numpy(arrays["x_train"])),
                                    torch.from_numpy(arrays["y_train"])))
    rec = run_probe(folder / "w.pt", "hessian", make_config("hessian", **HESS, dtype="float64"),
                    device="cpu", out=tmp_path / "h64.h5", model_spec=ModelSpec(factory=f"{__name__}:token_bag"),
                    data_spec=data)[0]
    assert rec.result["loss"] == pytest.approx(ref, abs=1e-12)


def test_input_space_clustering_refuses_token_ids(tokens_npz, tmp_path):
    folder, _, _ = tokens_npz
    kw = dict(device="cpu", out=tmp_path / "d.h5", model_spec=ModelSpec(factory=f"{__name__}:token_bag"),
              data_spec=DataSpec(dataset="npz", dataset_params={"path": str(folder / "tok.npz")}))
    with pytest.raises(ConfigError) as err:
        run_probe(folder / "w.pt", "dse", make_config("dse", samples=40), **kw)
    assert "DSMI(Z; X) clusters the inputs by Euclidean distance" in str(err.value)
    assert "dsmi_inputs=false" in str(err.value) and "\n" not in str(err.value)
    res = run_probe(folder / "w.pt", "dse", make_config("dse", samples=40, dsmi_inputs=False), **kw)[0]
    assert np.isfinite(res.result["train"]["dse"])


# --------------------------------------------------------------------------- naming the data


def test_a_foreign_checkpoint_without_a_dataset_is_refused(digits_npz, tmp_path):
    folder, _, _ = digits_npz
    spec = ModelSpec(factory=f"{__name__}:small_cnn")
    for data_spec in (None, DataSpec(), DataSpec(loss="ce")):
        with pytest.raises(ConfigError) as err:
            run_probe(folder / "ckpts", "hessian", make_config("hessian", **HESS), device="cpu",
                      out=tmp_path / "n.h5", model_spec=spec, data_spec=data_spec)
        message = str(err.value)
        assert "is not inside a run directory; name its data with --dataset NAME" in message
        assert "--dataset-param path=FILE.npz" in message and "\n" not in message
    targets = resolve_targets(folder / "ckpts")
    with pytest.raises(ConfigError, match="name its data with --dataset NAME"):
        check_data_spec(targets, DataSpec())
    check_data_spec(targets, DataSpec(dataset="digits"))  # named: fine


def test_cli_foreign_checkpoint_without_dataset_is_one_line_exit_2(digits_npz, tmp_path, capsys):
    from cli.main import main

    folder, _, _ = digits_npz
    argv = ["hessian", str(folder / "ckpts"), "--out", str(tmp_path / "c.h5"), "--top-k", "1",
            "--model-factory", f"{__name__}:small_cnn", "--no-plots", "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "name its data with --dataset NAME" in err and "Traceback" not in err


def test_a_run_trained_on_standardized_npz_inputs_is_analyzed_on_them(run_copy, tmp_path):
    """A RUN_DIR written when npz inputs were always standardized records mean/std without a
    method: its data are loaded as it was trained, not as given."""
    rng = np.random.default_rng(1)
    arrays = dict(x_train=rng.normal(2.0, 3.0, size=(40, 1, 8, 8)), y_train=np.arange(40) % 10,
                  x_test=rng.normal(2.0, 3.0, size=(20, 1, 8, 8)), y_test=np.arange(20) % 10)
    np.savez(tmp_path / "old.npz", **arrays)
    meta_path = run_copy / "config.json"
    meta = json.loads(meta_path.read_text())
    meta["config"].update(dataset="npz", dataset_params={"path": str(tmp_path / "old.npz")}, train_size=None)
    mean, std = float(arrays["x_train"].mean()), float(arrays["x_train"].std())
    meta["dataset"]["info"]["normalization"] = {"axis": 1, "mean": [mean], "std": [std]}
    meta_path.write_text(json.dumps(meta))
    target = Target("t", RunDir(run_copy).checkpoints()[-1].path, 0, run_copy)
    data, _ = load_data_and_loss(target, None)
    assert data.normalization["method"] == "standardize"
    np.testing.assert_allclose(data.train.x.double().numpy(), (arrays["x_train"] - mean) / std, atol=1e-5)
    # a run whose record says "none" gets its data as given
    meta["dataset"]["info"]["normalization"] = {"method": "none", "dtype": "float64", "cast_to": "float32"}
    meta_path.write_text(json.dumps(meta))
    data, _ = load_data_and_loss(target, None)
    np.testing.assert_array_equal(data.train.x.numpy(), arrays["x_train"].astype(np.float32))


def test_the_trainer_path_is_unchanged_for_registry_data(run_copy):
    """load_data(cfg) of the project's own digits run: standardized, as recorded at training."""
    run = RunDir(run_copy)
    data = load_data(run.config)
    recorded = run.meta["dataset"]["info"]["normalization"]
    np.testing.assert_array_equal(data.normalization["mean"], recorded["mean"])
    np.testing.assert_array_equal(data.normalization["std"], recorded["std"])
    assert data.train.x.dtype == torch.float32
