import json

import pytest
import torch

from landscape.checkpoints import RunDir, load_state_dict
from landscape.errors import ConfigError
from landscape.sweep import expand_grid, read_grid, sweep
from landscape.train.config import TrainConfig
from landscape_cli.main import main

SPEC = {"base": {"model_params": {"width": 8, "depth": 1}, "epochs": 1, "train_size": 100, "batch_size": 50,
                 "checkpoints": "none"},
        "grid": {"lr": [0.01, 0.1], "optimizer_params.momentum": [0.0, 0.9]}}


def test_expand_grid_names_and_params():
    runs = expand_grid(SPEC)
    assert [n for n, _ in runs] == ["lr=0.01,momentum=0.0", "lr=0.01,momentum=0.9", "lr=0.1,momentum=0.0",
                                    "lr=0.1,momentum=0.9"]
    assert runs[3][1].lr == 0.1 and runs[3][1].optimizer_params == {"momentum": 0.9}
    assert runs[3][1].model_params == {"width": 8, "depth": 1}
    for bad, message in [({"grid": {"lr": 0.1}}, "non-empty list"), ({"grid": {"lrr": [1]}}, "unknown config key"),
                         ({"grid": {"lr.x": [1]}}, "dotted keys"), ({"bass": {}}, "keys 'base'")]:
        with pytest.raises(ConfigError, match=message):
            expand_grid(bad)


def test_sweep_trains_skips_finished_and_matches_the_process_pool(tmp_path):
    first = sweep(SPEC, tmp_path / "runs", device="cpu")
    assert [r.status for r in first] == ["trained"] * 4
    assert all(TrainConfig.from_run(RunDir(r.run_dir)).epochs == 1 for r in first)
    again = sweep(SPEC, tmp_path / "runs", device="cpu")
    assert [r.status for r in again] == ["finished"] * 4
    pooled = sweep(SPEC, tmp_path / "pool", device="cpu", executor="process", workers=2)
    for a, b in zip(first, pooled, strict=True):
        wa = load_state_dict(RunDir(a.run_dir).checkpoint("last").path)
        wb = load_state_dict(RunDir(b.run_dir).checkpoint("last").path)
        assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_grid_files_and_cli(tmp_path, capsys):
    (tmp_path / "g.json").write_text(json.dumps(SPEC))
    (tmp_path / "g.yaml").write_text("base: {epochs: 1, train_size: 100, checkpoints: none}\ngrid: {seed: [0, 1]}\n")
    assert len(expand_grid(read_grid(tmp_path / "g.yaml"))) == 2
    assert main(["sweep", str(tmp_path / "g.yaml"), "--out", str(tmp_path / "runs"), "--no-progress", "--device", "cpu"]) == 0
    assert "seed=1" in capsys.readouterr().out
    (tmp_path / "bad.json").write_text('{"grid": {"lr": [0.1,]}}')
    assert main(["sweep", str(tmp_path / "bad.json"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "not valid JSON" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()
