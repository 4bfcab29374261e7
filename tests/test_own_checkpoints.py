"""Issue 13's scenario end to end, as a new user runs it: a CNN trained in a plain loop, saved as
``epoch_{e}.pt``, inputs scaled X/16 into an npz, analyzed from the command line in the folder that
holds the factory module (no PYTHONPATH)."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from landscape.analyze import collect_series
from landscape.store import Store

NETS = textwrap.dedent("""
    import torch
    from torch import nn

    class SmallCNN(nn.Module):
        def __init__(self, num_classes=10):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.pool = nn.AdaptiveAvgPool2d(2)
            self.fc = nn.Linear(4 * 4, num_classes)

        def forward(self, x):
            return self.fc(torch.flatten(self.pool(torch.relu(self.conv(x))), 1))

    def build():
        return SmallCNN()
""")


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory):
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("user")
    (root / "mynets.py").write_text(NETS)
    digits = load_digits()
    x = digits.images[:, None] / 16  # float64, in [0, 1]: the user's own preprocessing
    y = digits.target.astype(np.int64)
    np.savez(root / "digits_mine.npz", x_train=x[:600], y_train=y[:600], x_test=x[600:800], y_test=y[600:800])
    sys.path.insert(0, str(root))
    sys.modules.pop("mynets", None)  # this file's module, not one another test imported
    try:
        import mynets

        torch.manual_seed(0)
        model = mynets.build()
    finally:
        sys.path.remove(str(root))
        sys.modules.pop("mynets", None)
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    xt, yt = torch.tensor(x[:600], dtype=torch.float32), torch.tensor(y[:600])
    (root / "ckpts").mkdir()
    for epoch in range(1, 16):
        for i in range(0, 600, 100):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xt[i:i + 100]), yt[i:i + 100]).backward()
            opt.step()
        if epoch % 5 == 0:
            torch.save(model.state_dict(), root / "ckpts" / f"epoch_{epoch}.pt")
    model.eval()
    with torch.no_grad():
        truth = torch.nn.functional.cross_entropy(model(xt), yt).item()
    return root, truth


def _landscape(*args, cwd):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-m", "landscape_cli.main", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_the_scenario_gives_the_true_loss_in_training_order(user_folder):
    root, truth = user_folder
    proc = _landscape("analyze", "ckpts/", "--model-factory", "mynets:build", "--dataset", "npz",
                      "--dataset-param", "path=digits_mine.npz", "--checkpoints", "all", "--out", "mine.h5",
                      "--probes", "hessian,rankme", "--setting", "hessian.top_k=2", "--setting",
                      "hessian.trace_samples=5", "--setting", "rankme.samples=64", "--no-progress",
                      cwd=root)
    assert proc.returncode == 0, proc.stderr
    assert "inputs 1x8x8 as given (no normalization" in proc.stdout  # printed once
    assert proc.stdout.count("data: npz") == 1
    store = Store(root / "mine.h5")
    arrays, attrs = store.read("epoch_15/hessian")
    assert abs(float(arrays["loss"]) - truth) < 1e-6
    assert attrs["data"]["normalization"]["method"] == "none"
    series = collect_series(root / "mine.h5", "hessian", ["loss"])
    assert list(series["name"]) == ["epoch_5", "epoch_10", "epoch_15"]
    assert list(series["epoch"]) == [5.0, 10.0, 15.0]
    # --checkpoints last is epoch_15, by name too
    for which in ("last", "epoch_15", "epoch_1*"):
        out = f"{which.replace('*', 'x')}.h5"
        proc = _landscape("rankme", "ckpts/", "--model-factory", "mynets:build", "--dataset", "npz",
                          "--dataset-param", "path=digits_mine.npz", "--checkpoints", which, "--samples", "64",
                          "--out", out, "--no-progress", "--no-plots", cwd=root)
        assert proc.returncode == 0, proc.stderr
        names = sorted(g.partition("/")[0] for g in Store(root / out).groups())
        assert names == (["epoch_10", "epoch_15"] if "*" in which else ["epoch_15"]), which


def test_scenario_mistakes_are_one_line(user_folder, tmp_path):
    root, _ = user_folder
    for args, message in [
        (["--model-factory", "mynets:build"], "name its data with --dataset NAME"),
        (["--model-factory", "nets_typo:build", "--dataset", "npz", "--dataset-param", "path=digits_mine.npz"],
         "cannot import model factory 'nets_typo:build'"),
        (["--model-factory", "./mynets.py:nope", "--dataset", "npz", "--dataset-param", "path=digits_mine.npz"],
         "module './mynets.py' has no 'nope'"),
    ]:
        out = tmp_path / "never.h5"
        proc = _landscape("analyze", "ckpts/", *args, "--out", str(out), "--no-progress", cwd=root)
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], (args, proc.stderr)
        assert not out.exists()


def test_a_data_factory_brings_the_users_own_loaders(user_folder, tmp_path):
    root, truth = user_folder
    (root / "myloaders.py").write_text(textwrap.dedent("""
        import numpy as np
        import torch
        from torch.utils.data import DataLoader, TensorDataset

        def loaders(batch_size=64):
            d = np.load("digits_mine.npz")
            train = TensorDataset(torch.tensor(d["x_train"], dtype=torch.float32), torch.tensor(d["y_train"]))
            return DataLoader(train, batch_size=batch_size), (d["x_test"].astype(np.float32), d["y_test"])
    """))
    proc = _landscape("analyze", "ckpts/", "--model-factory", "mynets:build", "--data-factory", "myloaders:loaders",
                      "--dataset-param", "batch_size=50", "--checkpoints", "last", "--out", "fac.h5",
                      "--probes", "hessian,rankme", "--setting", "hessian.top_k=1", "--setting",
                      "hessian.trace_samples=3", "--setting", "rankme.samples=64", "--no-progress", "--no-plots",
                      cwd=root)
    assert proc.returncode == 0, proc.stderr
    arrays, attrs = Store(root / "fac.h5").read("epoch_15/hessian")
    assert abs(float(arrays["loss"]) - truth) < 1e-6
    assert attrs["data"]["source"]["factory"] == "myloaders:loaders"
    assert attrs["data"]["source"]["params"] == {"batch_size": 50}
    assert attrs["data"]["n_test"] == 200
    both = _landscape("analyze", "ckpts/", "--model-factory", "mynets:build", "--data-factory", "myloaders:loaders",
                      "--dataset", "npz", "--out", str(tmp_path / "x.h5"), cwd=root)
    assert both.returncode == 2 and "not both" in both.stderr
    missing = _landscape("analyze", "ckpts/", "--model-factory", "mynets:build", "--data-factory", "myloaders:nope",
                         "--out", str(tmp_path / "x.h5"), cwd=root)
    assert missing.returncode == 2 and "data factory 'myloaders:nope'" in missing.stderr
    assert not (tmp_path / "x.h5").exists()
