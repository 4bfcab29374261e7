"""``import landscape as ls``: one call per probe on a model, a loss and data as the user has them."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import landscape as ls
from landscape.errors import ConfigError, LandscapeError


@pytest.fixture(scope="module")
def problem():
    torch.manual_seed(0)
    x = torch.randn(70, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (70,))
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    return model, x, y


def _dense_eigenvalues(model, x, y):
    params = dict(model.named_parameters())
    flat = torch.cat([p.detach().reshape(-1) for p in params.values()])

    def loss(theta):
        tensors, i = {}, 0
        for name, p in params.items():
            tensors[name] = theta[i:i + p.numel()].view_as(p)
            i += p.numel()
        return nn.functional.cross_entropy(torch.func.functional_call(model, tensors, (x,)), y)

    return torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss, flat)).numpy()


def test_hessian_from_a_dataloader_equals_the_dense_hessian(problem):
    model, x, y = problem
    loader = DataLoader(TensorDataset(x, y), batch_size=32)  # 32 + 32 + 6: an uneven last batch
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    res = ls.hessian(model, nn.CrossEntropyLoss(), loader, top_k=5, bottom_k=1, dtype="float64",
                     trace_samples=10, device="cpu")
    dense = _dense_eigenvalues(model, x, y)
    np.testing.assert_allclose(res["eigenvalues"], dense[::-1][:5], atol=1e-6, rtol=0)
    np.testing.assert_allclose(res["bottom_eigenvalues"], dense[:1], atol=1e-6, rtol=0)
    assert model.training  # the user's model keeps its mode and its weights
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert res.attrs["data"]["normalization"]["method"] == "none" and res.attrs["data"]["n_train"] == 70
    assert "DataLoader of 3 batches" in res.attrs["data"]["source"]["train"]


@pytest.mark.parametrize("form", ["numpy", "tensordataset", "list_of_batches"])
def test_every_data_form_gives_the_same_numbers(problem, form):
    model, x, y = problem
    data = {"numpy": (x.numpy(), y.numpy()), "tensordataset": TensorDataset(x, y),
            "list_of_batches": [(x[i:i + 25], y[i:i + 25]) for i in range(0, 70, 25)]}[form]
    reference = ls.surface(model, nn.CrossEntropyLoss(), (x, y), x="-1:1:5", y="-1:1:5", device="cpu")
    got = ls.surface(model, nn.CrossEntropyLoss(), data, x="-1:1:5", y="-1:1:5", device="cpu")
    np.testing.assert_allclose(got["train_loss"], reference["train_loss"], atol=1e-8, rtol=0)


def test_surface_and_sharpness_from_a_dataloader_equal_the_concatenated_tensors(problem):
    model, x, y = problem
    loader = DataLoader(TensorDataset(x, y), batch_size=32)
    for probe, settings, keys in [
        (ls.surface, dict(x="-1:1:7", y="-1:1:7"), ["train_loss", "train_acc"]),
        (ls.sharpness, dict(m=16, iters=5), ["delta_loss"]),
    ]:
        a = probe(model, nn.CrossEntropyLoss(), loader, device="cpu", **settings)
        b = probe(model, nn.CrossEntropyLoss(), (x, y), device="cpu", **settings)
        for key in keys:
            np.testing.assert_allclose(a[key], b[key], atol=1e-8, rtol=0)


def test_a_per_sample_a_mean_module_and_a_mean_function_agree(problem):
    model, x, y = problem
    settings = dict(x="-0.5:0.5:3", y="-0.5:0.5:3", device="cpu")
    losses = [nn.CrossEntropyLoss(reduction="none"), nn.CrossEntropyLoss(),
              lambda out, t: nn.functional.cross_entropy(out, t)]
    grids = [ls.surface(model, loss, (x, y), **settings)["train_loss"] for loss in losses]
    for grid in grids[1:]:
        np.testing.assert_allclose(grid, grids[0], atol=1e-12, rtol=0)
    # the centre of the grid is the loss itself
    np.testing.assert_allclose(grids[0][1, 1], nn.functional.cross_entropy(model(x), y).item(), atol=1e-12)


def test_a_result_saves_as_the_cli_writes_and_plots(problem, tmp_path):
    model, x, y = problem
    res = ls.hessian(model, nn.CrossEntropyLoss(), (x, y), top_k=2, trace_samples=5, device="cpu")
    path = res.save(tmp_path / "mine.h5", name="my_model")
    stored = ls.load_results(path)["my_model/hessian"]
    np.testing.assert_array_equal(stored.arrays["eigenvalues"], res["eigenvalues"])
    assert stored.attrs["settings_hash"] == res.attrs["settings_hash"]
    with pytest.raises(LandscapeError, match="already holds my_model/hessian"):
        res.save(path, name="my_model")
    figures = res.plot(tmp_path / "plots")
    assert figures and all(f.stat().st_size > 1000 for f in figures)
    assert not list((tmp_path / "plots").glob(".*.h5"))


def test_bad_input_is_one_clear_error(problem):
    model, x, y = problem
    cases = [
        (lambda: ls.hessian(model, nn.CrossEntropyLoss(), DataLoader(TensorDataset(x[:0], y[:0]))), "is empty"),
        (lambda: ls.hessian(model, nn.CrossEntropyLoss(), [{"input_ids": x, "labels": y}]), "keyword inputs"),
        (lambda: ls.hessian(model, nn.CrossEntropyLoss(), "data.npz"), "must be (x, y) tensors"),
        (lambda: ls.hessian(model, lambda o, t: o.sum(dim=0), (x, y)), "loss returned shape (3,)"),
        (lambda: ls.hessian(lambda v: v, nn.CrossEntropyLoss(), (x, y)), "must be a torch.nn.Module"),
        (lambda: ls.hessian(model, nn.CrossEntropyLoss(), (x, y), topk=3), "unknown setting"),
        (lambda: ls.hessian(model, nn.CrossEntropyLoss(), (x, y.double())), "integer class labels"),
        (lambda: ls.rankme(model, nn.CrossEntropyLoss(), (x, y)), "pass test="),
    ]
    for call, message in cases:
        with pytest.raises(LandscapeError, match=message.replace("(", r"\(").replace(")", r"\)")):
            call()


def test_the_facade_is_light_to_import():
    import subprocess
    import sys

    code = "import sys, landscape; print('torch' in sys.modules, callable(landscape.hessian))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True"]


def test_a_model_returning_an_output_object_gives_the_same_numbers(problem):
    from dataclasses import dataclass

    model, x, y = problem

    @dataclass
    class Output:  # the shape of a Hugging Face ModelOutput: an object with .logits
        logits: torch.Tensor

    class Wrapped(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, v):
            return Output(self.inner(v))

    plain = ls.hessian(model, nn.CrossEntropyLoss(), (x, y), top_k=2, trace_samples=5, device="cpu")
    wrapped = ls.hessian(Wrapped(model), nn.CrossEntropyLoss(), (x, y), top_k=2, trace_samples=5, device="cpu")
    np.testing.assert_allclose(wrapped["eigenvalues"], plain["eigenvalues"], rtol=1e-12)
    picked = ls.hessian(Wrapped(model), nn.CrossEntropyLoss(), (x, y), top_k=2, trace_samples=5, device="cpu",
                        output_fn=lambda out: out.logits)
    np.testing.assert_allclose(picked["eigenvalues"], plain["eigenvalues"], rtol=1e-12)


def test_a_model_with_nan_weights_is_refused_in_one_line_and_the_callers_rng_is_untouched():
    import landscape as ls
    from landscape.errors import CheckpointError

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    x, y = torch.randn(30, 4), torch.randint(0, 3, (30,))
    state = torch.random.get_rng_state()
    ls.surface(model, torch.nn.CrossEntropyLoss(), (x, y), dim=1, x="-1:1:5")  # seeds its directions
    assert torch.equal(torch.random.get_rng_state(), state)
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    with pytest.raises(CheckpointError, match=r"^the model has 1 non-finite weight \(first: 0.weight\)"):
        ls.surface(model, torch.nn.CrossEntropyLoss(), (x, y), dim=1, x="-1:1:5")


def test_leaving_the_loss_out_names_what_is_missing():
    import landscape as ls

    model = torch.nn.Linear(4, 3)
    loader = [(torch.randn(8, 4), torch.randint(0, 3, (8,)))]
    with pytest.raises(ConfigError, match=r"^ls.hessian\(model, loss, data\): pass the loss before the data"):
        ls.hessian(model, loader)
