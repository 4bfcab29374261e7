"""``landscape analyze DIR --model-factory … --data-factory … [--task …]`` on models and data the
project did not build: a Hugging Face BERT fed dict batches, an ``nn.TransformerEncoder``
classifier, a tiny GPT-2 with the causal-LM task, and a linear regression — run from the user's
own folder as a new user would, each number checked against a direct computation.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from landscape.store import Store

transformers = pytest.importorskip("transformers")

MODELS = """
import torch
import transformers
from torch import nn

VOCAB, T = 30, 6


def bert():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=VOCAB, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=16, max_position_embeddings=16, num_labels=3)
    return transformers.BertForSequenceClassification(cfg)


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 8)
        layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.classifier = nn.Linear(8, 3)

    def forward(self, ids):
        return self.classifier(self.encoder(self.embed(ids)).mean(1))


def encoder():
    torch.manual_seed(1)
    return Encoder()


def gpt2():
    torch.manual_seed(2)
    cfg = transformers.GPT2Config(vocab_size=VOCAB, n_positions=8, n_embd=8, n_layer=1, n_head=2)
    return transformers.GPT2LMHeadModel(cfg)


def linear():
    torch.manual_seed(3)
    return nn.Linear(4, 1)


class NoLogits(Encoder):
    def forward(self, ids):
        return {"hidden": self.encoder(self.embed(ids))}  # an output a classifier probe cannot read


def nologits():
    torch.manual_seed(1)
    return NoLogits()
"""

DATA = """
import torch
from torch.utils.data import DataLoader, TensorDataset

VOCAB, T, N = 30, 6, 22


def _ids(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (N, T), generator=g), torch.randint(0, 3, (N,), generator=g)


def dicts(batch_size=8):
    ids, y = _ids(0)
    mask = torch.ones(N, T, dtype=torch.long)
    mask[::3, 4:] = 0
    items = [{"input_ids": ids[i], "attention_mask": mask[i], "label": y[i]} for i in range(N)]
    return DataLoader(items, batch_size=batch_size)


def pairs(batch_size=8):
    ids, y = _ids(1)
    return DataLoader(TensorDataset(ids, y), batch_size=batch_size, shuffle=True)


def text(batch_size=8):
    ids, _ = _ids(2)
    return DataLoader([{"input_ids": ids[i], "labels": ids[i]} for i in range(N)], batch_size=batch_size)


def values(batch_size=16):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(50, 4, generator=g)
    y = x @ torch.randn(4, generator=g) + 0.1 * torch.randn(50, generator=g)  # targets (N,), outputs [N, 1]
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


def empty():
    return DataLoader(TensorDataset(torch.zeros(0, T, dtype=torch.long), torch.zeros(0, dtype=torch.long)))


def float_labels():
    ids, y = _ids(1)
    return DataLoader(TensorDataset(ids, y.float()), batch_size=8)


def strings():
    return ["not a batch", "nor this", "nor that"]
"""


def _landscape(*args, cwd):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-m", "landscape_cli.main", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A user's folder: their model and data modules and one checkpoint per model."""
    root = tmp_path_factory.mktemp("user")
    (root / "mymodels.py").write_text(textwrap.dedent(MODELS))
    (root / "mydata.py").write_text(textwrap.dedent(DATA))
    sys.path.insert(0, str(root))
    try:
        import mydata
        import mymodels
    finally:
        sys.path.remove(str(root))
    for name in ("bert", "encoder", "gpt2", "linear", "nologits"):
        (root / name).mkdir()
        torch.save(getattr(mymodels, name)().state_dict(), root / name / "step_100.pt")
    return root, mymodels, mydata


def _analyze(root, model, data, probes, *extra, out="out.h5"):
    return _landscape("analyze", f"{model}/", "--model-factory", f"mymodels:{model}", "--data-factory",
                      f"mydata:{data}", "--probes", probes, "--out", out, "--no-progress", "--no-plots",
                      "--device", "cpu", *extra, cwd=root)


def _mean_loss(model, loader_batches, call):
    total, n = 0.0, 0
    with torch.no_grad():
        for batch in loader_batches:
            loss, k = call(model, batch)
            total += float(loss) * k
            n += k
    return total / n


ALL = "hessian,surface,sharpness,coherence,collapse,rankme,dse"
SMALL = ["--setting", "hessian.top_k=1", "--setting", "hessian.trace_samples=3", "--setting", "hessian.density=false",
         "--setting", "surface.x=-0.5:0.5:3", "--setting", "surface.y=-0.5:0.5:3", "--setting", "sharpness.m=8",
         "--setting", "sharpness.rhos=0.01", "--setting", "sharpness.iters=3", "--setting", "coherence.subset=10",
         "--setting", "dse.dsmi_inputs=false", "--setting", "rankme.samples=22", "--setting", "collapse.splits=train",
         "--setting", "surface.splits=train", "--setting", "rankme.splits=train", "--setting", "dse.splits=train"]


@pytest.mark.parametrize("model,data,key", [("bert", "dicts", "label"), ("encoder", "pairs", "labels")])
def test_every_probe_from_the_cli_on_a_transformer(folder, model, data, key):
    root, mymodels, mydata = folder
    proc = _analyze(root, model, data, ALL, *SMALL, "--target-key", key, out=f"{model}.h5")
    assert proc.returncode == 0, proc.stderr
    store = Store(root / f"{model}.h5")
    groups = set(store.groups())
    assert {f"step_100/{p}" for p in ALL.split(",")} <= groups, groups
    net = getattr(mymodels, model)()
    net.load_state_dict(torch.load(root / model / "step_100.pt"))
    net.eval()
    ce = torch.nn.CrossEntropyLoss()
    if model == "bert":
        def call(m, b):
            return ce(m(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits, b["label"]), len(b["label"])
    else:
        def call(m, b):
            return ce(m(b[0]), b[1]), len(b[1])
    truth = _mean_loss(net, getattr(mydata, data)(), call)
    arrays, attrs = store.read("step_100/hessian")
    assert abs(float(arrays["loss"]) - truth) < 1e-5
    surface, _ = store.read("step_100/surface")
    assert abs(float(surface["train_loss"][1, 1]) - truth) < 1e-5  # the grid's centre is the model itself
    assert "streamed" in attrs["data"]["source"]["train"]
    if model == "bert":
        assert attrs["data"]["inputs"]["target_key"] == "label"
    else:  # a shuffling loader is read in index order, and that is said
        assert any("index order" in note for note in attrs["data"]["source"]["notes"])


def test_a_causal_lm_from_the_cli_matches_the_dense_hessian(folder):
    root, mymodels, mydata = folder
    proc = _analyze(root, "gpt2", "text", "hessian,surface,sharpness", "--task", "causal_lm", "--setting",
                    "hessian.top_k=2", "--setting", "hessian.dtype=float64", "--setting", "hessian.trace=false",
                    "--setting", "hessian.density=false", "--setting", "surface.x=-0.5:0.5:3", "--setting",
                    "surface.dim=1", "--setting", "surface.splits=train", "--setting", "sharpness.m=11",
                    "--setting", "sharpness.rhos=0.01", "--setting", "sharpness.iters=3", out="lm.h5")
    assert proc.returncode == 0, proc.stderr
    net = mymodels.gpt2().double()
    net.load_state_dict(torch.load(root / "gpt2" / "step_100.pt"))
    net.eval()
    ids = torch.cat([b["input_ids"] for b in mydata.text()])
    params = dict(net.named_parameters())  # tied: wte.weight is lm_head.weight, one tensor
    names = list(params)
    shapes = [params[n].shape for n in names]
    flat = torch.cat([params[n].reshape(-1) for n in names]).detach()

    def loss(theta):
        chunks = torch.split(theta, [s.numel() for s in shapes])
        state = {n: c.view(s) for n, c, s in zip(names, chunks, shapes, strict=True)}
        logits = torch.func.functional_call(net, state, (ids,), tie_weights=True).logits
        # the token-weighted mean over the shifted targets (HF's own .loss upcasts to float32)
        return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))

    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        dense = torch.autograd.functional.hessian(loss, flat)
    top = np.sort(np.linalg.eigvalsh(dense.numpy()))[::-1][:2]
    arrays, attrs = Store(root / "lm.h5").read("step_100/hessian")
    np.testing.assert_allclose(arrays["eigenvalues"], top, rtol=1e-6, atol=1e-9)
    assert abs(float(arrays["loss"]) - float(loss(flat))) < 1e-9
    assert attrs["loss"]["task"] == "causal_lm" and attrs["data"]["task"]["name"] == "causal_lm"
    surface, _ = Store(root / "lm.h5").read("step_100/surface")
    assert np.isfinite(surface["train_acc"]).all() and 0 <= surface["train_acc"].min() <= 1


def test_a_regression_from_the_cli(folder):
    root, mymodels, mydata = folder
    proc = _analyze(root, "linear", "values", "hessian,surface", "--task", "regression", "--setting",
                    "hessian.top_k=3", "--setting", "hessian.dtype=float64", "--setting", "hessian.trace=false",
                    "--setting", "hessian.density=false", "--setting", "surface.x=-1:1:3", "--setting", "surface.dim=1",
                    "--setting", "surface.splits=train", out="reg.h5")
    assert proc.returncode == 0, proc.stderr
    x = torch.cat([b[0] for b in mydata.values()]).double()
    y = torch.cat([b[1] for b in mydata.values()]).double()
    # L = (1/N) Σ (wᵀx + b − y)²: the Hessian is (2/N) [x 1]ᵀ[x 1]
    z = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    expected = np.sort(np.linalg.eigvalsh((2.0 / len(x) * (z.T @ z)).numpy()))[::-1][:3]
    arrays, attrs = Store(root / "reg.h5").read("step_100/hessian")
    np.testing.assert_allclose(arrays["eigenvalues"], expected, rtol=1e-8)
    net = mymodels.linear().double()
    net.load_state_dict(torch.load(root / "linear" / "step_100.pt"))
    assert abs(float(arrays["loss"]) - float(torch.nn.functional.mse_loss(net(x).squeeze(1), y))) < 1e-10
    assert attrs["loss"]["name"] == "squared_error"
    surface, _ = Store(root / "reg.h5").read("step_100/surface")
    assert np.isnan(surface["train_acc"]).all()  # no accuracy for regression


@pytest.mark.parametrize("data,extra,message", [
    ("empty", [], "empty"),
    ("float_labels", [], "task='regression'"),
    ("strings", [], "not an (x, y) pair"),
    ("pairs", ["--task", "causal_lm"], "needs integer token targets of shape (N, T)"),
    ("dicts", [], "no 'labels'"),
    ("nologits", [], "logits"),  # the model's output holds no logits
])
def test_bad_data_from_the_cli_is_one_line(folder, data, extra, message):
    root, _, _ = folder
    model = {"dicts": "bert", "nologits": "nologits"}.get(data, "encoder")
    data = "pairs" if data == "nologits" else data
    proc = _analyze(root, model, data, "hessian", *extra, out=f"bad-{data}.h5")
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and not (root / f"bad-{data}.h5").exists()
