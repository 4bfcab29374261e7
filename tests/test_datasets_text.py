"""The character-level corpus dataset and training on per-token targets."""

from __future__ import annotations

import json
from importlib import resources

import numpy as np
import pytest
import torch

import landscape as ls
from landscape.checkpoints import RunDir
from landscape.datasets import load_dataset
from landscape.errors import ConfigError, DataError
from landscape.train.config import TrainConfig


def _text() -> str:
    return resources.files("landscape").joinpath("corpora", "tinyshakespeare.txt").read_text("utf-8")


def test_windows_are_the_text_and_its_next_characters():
    text = _text()
    d = load_dataset("shakespeare_chars", context=16, test_fraction=0.1)
    alphabet = d.info["source"]["alphabet"]
    assert alphabet == "".join(sorted(set(text))) and d.num_classes == len(alphabet) == d.info["source"]["vocab"]
    decode = np.array(list(alphabet))
    cut = int(round(0.9 * len(text)))
    x, y = d.train.x.numpy(), d.train.y.numpy()
    for n in (0, 1, len(x) - 1):  # disjoint windows: window n starts at 16 n
        assert "".join(decode[x[n]]) == text[16 * n : 16 * n + 16]
        assert "".join(decode[y[n]]) == text[16 * n + 1 : 16 * n + 17]
    assert "".join(decode[d.test.x[0].numpy()]) == text[cut : cut + 16]
    assert len(x) == len(range(0, cut - 16, 16))
    assert d.info["task"] == {"name": "token_classification", "ignore_index": -100, "shift": False,
                              "valid_tokens": {"train": x.size, "test": d.test.y.numel()}}


def test_stride_overlaps_windows_and_a_user_text_file(tmp_path):
    f = tmp_path / "mine.txt"
    f.write_text("abcabcabcabcabcabcabcabcabcabcabcabcabcabc", encoding="utf-8")
    d = load_dataset("chars", path=str(f), context=4, stride=1, test_fraction=0.25)
    assert d.info["source"]["alphabet"] == "abc" and d.info["source"]["source"].startswith(str(f))
    assert d.train.x[:3].tolist() == [[0, 1, 2, 0], [1, 2, 0, 1], [2, 0, 1, 2]]
    assert torch.equal(d.train.y[:, :-1], d.train.x[:, 1:])


def test_bad_text_and_label_options_are_one_line(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe\x00abc")
    with pytest.raises(DataError, match="not UTF-8"):
        load_dataset("chars", path=str(bad))
    with pytest.raises(DataError, match="cannot read text file"):
        load_dataset("chars", path=str(tmp_path / "missing.txt"))
    with pytest.raises(ConfigError, match="label_noise acts on one class label"):
        load_dataset("chars", label_noise=0.1)
    with pytest.raises(ConfigError, match="too few for context"):
        load_dataset("chars", context=100_000)


def test_train_size_is_a_seeded_random_subset_of_windows():
    full = load_dataset("chars", context=32)
    a = load_dataset("chars", context=32, train_size=50, seed=3)
    b = load_dataset("chars", context=32, train_size=50, seed=3)
    assert torch.equal(a.train.x, b.train.x) and len(a.train) == 50
    rows = {tuple(r) for r in full.train.x.tolist()}
    assert all(tuple(r) in rows for r in a.train.x.tolist())
    assert a.info["task"]["valid_tokens"]["train"] == 50 * 32


def test_a_language_model_trains_on_tokens_and_records_its_vocab(tmp_path):
    cfg = TrainConfig(model="transformer", model_params={"head": "lm", "layers": 1, "width": 16, "heads": 2},
                      dataset="chars", dataset_params={"context": 16}, train_size=64, optimizer="adamw",
                      lr=3e-3, epochs=1, batch_size=32, checkpoints="every:1", eval_batch_size=64)
    r = ls.train(cfg, tmp_path / "run", progress=False)
    meta = json.loads((tmp_path / "run" / "config.json").read_text())
    assert meta["model_spec"]["params"]["vocab"] == 62 and "vocab" not in meta["config"]["model_params"]
    # the logged loss is the token-weighted mean cross-entropy, and accuracy is token accuracy
    model = RunDir(tmp_path / "run").load_model("last")
    data = load_dataset("chars", context=16, train_size=64)
    with torch.no_grad():
        z = model(data.train.x)
    ce = torch.nn.functional.cross_entropy(z.reshape(-1, 62).double(), data.train.y.reshape(-1))
    acc = (z.argmax(-1) == data.train.y).double().mean()
    assert r.final["train_loss"] == pytest.approx(float(ce), rel=1e-5)
    assert r.final["train_acc"] == pytest.approx(float(acc), abs=1e-12)


def test_the_hessian_of_a_language_model_run_is_the_token_mean_cross_entropy_s(tmp_path):
    """analyze on our own LM run: λ_max of the token-weighted mean CE, against power iteration
    on autograd HVPs of ``F.cross_entropy`` over all train tokens (float64)."""
    from landscape.analyze import analyze

    cfg = TrainConfig(model="transformer", model_params={"head": "lm", "layers": 1, "width": 8, "heads": 2},
                      dataset="chars", dataset_params={"context": 8}, train_size=32, optimizer="adamw",
                      lr=1e-2, epochs=2, batch_size=16, checkpoints="none", eval_batch_size=64)
    ls.train(cfg, tmp_path / "run", progress=False)
    report = analyze(tmp_path / "run", "hessian", device="cpu",
                     settings={"hessian": {"top_k": 1, "bottom_k": 0, "dtype": "float64", "trace": False}})
    assert not report.failures
    top = float(report.results["hessian"][-1].result["eigenvalues"][0])

    model = RunDir(tmp_path / "run").load_model("last").double()
    data = load_dataset("chars", context=8, train_size=32)
    params = [p for p in model.parameters()]

    def loss() -> torch.Tensor:
        z = model(data.train.x)
        return torch.nn.functional.cross_entropy(z.reshape(-1, z.shape[-1]), data.train.y.reshape(-1))

    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):  # the kernel with a second derivative
        grads = torch.autograd.grad(loss(), params, create_graph=True)
        v = [torch.randn_like(p) for p in params]
        for _ in range(300):
            hv = torch.autograd.grad(grads, params, v, retain_graph=True)
            norm = torch.sqrt(sum((h * h).sum() for h in hv))
            v = [h / norm for h in hv]
    assert top == pytest.approx(float(norm), rel=1e-4)


def test_a_killed_language_model_run_resumes_bit_identically(tmp_path):
    cfg = TrainConfig(model="transformer", model_params={"head": "lm", "layers": 1, "width": 8, "heads": 2},
                      dataset="chars", dataset_params={"context": 8}, train_size=48, optimizer="adamw",
                      lr=1e-2, epochs=2, batch_size=16, checkpoints="steps:2", eval_batch_size=64)
    whole = ls.train(cfg, tmp_path / "whole", progress=False, monitors=["logit_stats:every=1"])
    ls.train(cfg, tmp_path / "cut", progress=False, stop_after=4, monitors=["logit_stats:every=1"])
    again = ls.train(cfg, tmp_path / "cut", resume=True, progress=False, monitors=["logit_stats:every=1"])
    assert again.resumed_from == 2

    def rows(run: str) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "time"} for r in RunDir(tmp_path / run).metrics()]

    assert rows("cut") == rows("whole") and again.final["train_acc_running"] == whole.final["train_acc_running"]
    a, b = (RunDir(tmp_path / r).load_model("last").state_dict() for r in ("whole", "cut"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cli_trains_a_character_model_with_context_and_refuses_it_elsewhere(tmp_path, capsys):
    from landscape_cli.main import main

    out = tmp_path / "lm"
    rc = main(["train", "--out", str(out), "--model", "transformer", "--model-param", "head=lm",
               "--model-param", "layers=1", "--width", "8", "--model-param", "heads=2", "--dataset",
               "shakespeare_chars", "--context", "12", "--train-size", "40", "--optimizer", "adamw",
               "--epochs", "1", "--checkpoints", "none", "--no-progress", "--device", "cpu"])
    assert rc == 0
    cfg = TrainConfig.from_run(RunDir(out))
    assert cfg.dataset_params == {"context": 12} and RunDir(out).model_spec.input_shape == (12,)
    capsys.readouterr()
    assert main(["train", "--out", str(tmp_path / "d"), "--context", "4", "--epochs", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown parameter 'context' for dataset 'digits'" in err
    assert not (tmp_path / "d").exists()
