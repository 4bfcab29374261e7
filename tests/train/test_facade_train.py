"""``ls.train(cfg, out, ...)`` is the trainer, one call from the façade."""

import torch

import landscape as ls
from landscape.checkpoints import RunDir, load_state_dict
from landscape.train.config import TrainConfig
from landscape.train.trainer import train


def test_ls_train_is_the_trainer(tmp_path):
    cfg = TrainConfig(model="mlp", model_params={"width": 8, "depth": 1}, train_size=100, epochs=1)
    a = ls.train(cfg, tmp_path / "a", device="cpu", progress=False)
    b = train(cfg, tmp_path / "b", device="cpu", progress=False)
    assert type(a) is type(b) and callable(ls.train)
    wa = load_state_dict(RunDir(tmp_path / "a").checkpoint("last").path)
    wb = load_state_dict(RunDir(tmp_path / "b").checkpoint("last").path)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_ls_train_without_importing_the_package_first():
    import subprocess
    import sys

    code = "import landscape as ls; print(callable(ls.train))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split() == ["True"]
