"""Streamed data (issue 19): a DataLoader, a map-style Dataset, a list / generator of batches or a
list of single items give the numbers of the concatenated tensors, read batch by batch, never
gathered into memory; bad streams fail with one line.

References: the dense float64 Hessian of the mean loss (``torch.autograd.functional.hessian``,
``numpy.linalg.eigvalsh``), the cross-entropy computed directly, and the same probe on the
concatenated ``(x, y)`` tensors.
"""

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

import landscape as ls
from landscape.batch import InputBatch
from landscape.core.data import Stream
from landscape.errors import LandscapeError
from landscape.linalg import HessianOperator

N, SHAPE, BATCH = 150, (2, 3), 32  # 32·4 + 22: an uneven last batch; inputs (2, 3) (no parameter has that shape)
CE = nn.CrossEntropyLoss()


def _model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 3)).double()  # 103 parameters


@pytest.fixture(scope="module")
def problem():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, *SHAPE, dtype=torch.float64, generator=g)
    y = torch.randint(0, 3, (N,), generator=g)
    return _model(), x, y


def _loader(x, y, **kw) -> DataLoader:
    return DataLoader(TensorDataset(x, y), batch_size=BATCH, **kw)


def _dense_spectrum(model, x, y) -> np.ndarray:
    """Ascending eigenvalues of the dense Hessian of the mean cross-entropy over all of (x, y)."""
    return np.linalg.eigvalsh(_dense_hessian(model, x, y))


HESSIAN = dict(top_k=5, bottom_k=1, dtype="float64", trace=False, device="cpu")
SURFACE = dict(x="-1:1:5", y="-1:1:3", device="cpu")


class Items(Dataset):
    """A map-style Dataset of (x_i, y_i) items (labels as Python ints); counts every read."""

    def __init__(self, x, y):
        self.x, self.y = x, y
        self.reads = torch.zeros(len(x), dtype=torch.long)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        self.reads[i] += 1
        return self.x[i], int(self.y[i])


# ---- 1. the Hessian of a DataLoader: the dense Hessian ---------------------------------------


def test_hessian_of_a_dataloader_equals_the_dense_hessian(problem):
    model, x, y = problem
    res = ls.hessian(model, CE, _loader(x, y), **HESSIAN)
    dense = _dense_spectrum(model, x, y)
    np.testing.assert_allclose(res["eigenvalues"], dense[::-1][:5], atol=1e-6, rtol=0)
    np.testing.assert_allclose(res["bottom_eigenvalues"], dense[:1], atol=1e-6, rtol=0)
    # it streamed: 5 batches, double-backward HVPs over all 150 samples
    assert res.attrs["data"]["source"]["train"] == "DataLoader of 5 batches, streamed"
    assert res["num_samples"] == N and res["hvp_method"] == "double_backward"
    with torch.no_grad():
        np.testing.assert_allclose(res["loss"], float(CE(model(x), y)), atol=1e-12, rtol=0)


# ---- 2. surface and worst-case sharpness: the concatenated tensors ---------------------------


def test_surface_of_a_dataloader_equals_the_tensors(problem):
    model, x, y = problem
    a = ls.surface(model, CE, _loader(x, y), **SURFACE)
    b = ls.surface(model, CE, (x, y), **SURFACE)
    for key in ("train_loss", "train_acc"):
        np.testing.assert_allclose(a[key], b[key], atol=1e-8, rtol=0)
    with torch.no_grad():  # the grid's origin is the model itself
        logits = model(x)
    np.testing.assert_allclose(a["train_loss"][2, 1], float(CE(logits, y)), atol=1e-12, rtol=0)
    np.testing.assert_allclose(a["train_acc"][2, 1], float((logits.argmax(1) == y).double().mean()),
                               atol=1e-12, rtol=0)
    assert np.ptp(a["train_loss"]) > 1e-3  # the grid moves: not a constant compared with itself


def test_worst_case_sharpness_of_a_dataloader_equals_the_tensors(problem):
    model, x, y = problem
    settings = dict(kind="worst", rhos=(0.01, 0.05, 0.1), m=25, iters=4, dtype="float64",
                    first_order_rho=None, pac_bayes=False, device="cpu")
    a = ls.sharpness(model, CE, _loader(x, y), **settings)
    b = ls.sharpness(model, CE, (x, y), **settings)
    assert a["delta_loss"].shape == (3,) and np.all(np.diff(a["delta_loss"]) > 0)
    for key in ("delta_loss", "delta_norm_max"):
        np.testing.assert_allclose(a[key], b[key], atol=1e-8, rtol=0)
    assert a["num_samples"] == b["num_samples"] == N


# ---- 3. a shuffling DataLoader is read in index order ----------------------------------------


def test_a_shuffling_dataloader_gives_the_unshuffled_numbers_and_says_so(problem):
    model, x, y = problem
    torch.manual_seed(123)
    shuffled = _loader(x, y, shuffle=True)
    plain = _loader(x, y)
    ha, hb = ls.hessian(model, CE, shuffled, **HESSIAN), ls.hessian(model, CE, plain, **HESSIAN)
    np.testing.assert_allclose(ha["eigenvalues"], hb["eigenvalues"], atol=1e-12, rtol=0)
    sa, sb = ls.surface(model, CE, shuffled, **SURFACE), ls.surface(model, CE, plain, **SURFACE)
    np.testing.assert_allclose(sa["train_loss"], sb["train_loss"], atol=1e-12, rtol=0)
    notes = ha.attrs["data"]["source"]["notes"]
    assert any("shuffle=True" in n and "index order" in n for n in notes)
    assert "notes" not in hb.attrs["data"]["source"]
    # gathered samples (take) are the dataset's own, in index order
    stream = Stream(shuffled)
    idx = torch.tensor([149, 3, 77])
    taken = stream.take(idx)
    assert torch.equal(taken.x, x[idx]) and torch.equal(taken.y, y[idx])


# ---- 4. every streamed form: the tensors' numbers ---------------------------------------------


def _forms(x, y):
    batches = [(x[i:i + 40], y[i:i + 40]) for i in range(0, N, 40)]  # 40, 40, 40, 30
    return {
        "map_dataset": Items(x, y),
        "list_of_batches": batches,
        "generator_of_batches": (b for b in batches),
        "list_of_items": [(x[i], int(y[i])) for i in range(N)],
    }


@pytest.mark.parametrize("form", ["map_dataset", "list_of_batches", "generator_of_batches", "list_of_items"])
def test_every_streamed_form_gives_the_tensors_numbers(problem, form):
    model, x, y = problem
    h_ref = ls.hessian(model, CE, (x, y), **HESSIAN)
    s_ref = ls.surface(model, CE, (x, y), **SURFACE)
    h = ls.hessian(model, CE, _forms(x, y)[form], **HESSIAN)
    s = ls.surface(model, CE, _forms(x, y)[form], **SURFACE)
    assert h.attrs["data"]["source"]["train"].endswith("streamed")
    assert h["num_samples"] == N
    np.testing.assert_allclose(h["eigenvalues"], h_ref["eigenvalues"], atol=1e-8, rtol=0)
    np.testing.assert_allclose(h["bottom_eigenvalues"], h_ref["bottom_eigenvalues"], atol=1e-8, rtol=0)
    for key in ("train_loss", "train_acc"):
        np.testing.assert_allclose(s[key], s_ref[key], atol=1e-8, rtol=0)
    if form == "generator_of_batches":
        assert any("one-shot" in n for n in h.attrs["data"]["source"]["notes"])


def test_an_iterable_dataset_through_a_dataloader_is_streamed(problem):
    model, x, y = problem

    class Iterable(IterableDataset):
        def __iter__(self):
            for i in range(N):
                yield x[i], int(y[i])

    got = ls.surface(model, CE, DataLoader(Iterable(), batch_size=BATCH), **SURFACE)
    ref = ls.surface(model, CE, (x, y), **SURFACE)
    np.testing.assert_allclose(got["train_loss"], ref["train_loss"], atol=1e-8, rtol=0)
    assert got.attrs["data"]["n_train"] == N


# ---- 5. coherence and the representation probes ----------------------------------------------


def test_coherence_of_a_dataloader_equals_the_tensors(problem):
    model, x, y = problem
    settings = dict(subset=60, dtype="float64", device="cpu")
    a = ls.coherence(model, CE, _loader(x, y), **settings)
    b = ls.coherence(model, CE, (x, y), **settings)
    for key in ("alpha", "m_alpha", "gsnr_mean"):
        np.testing.assert_allclose(a[key], b[key], atol=1e-10, rtol=1e-10)
    np.testing.assert_allclose(a["layers/alpha"], b["layers/alpha"], atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("probe,keys", [
    ("collapse", ("nc1", "equiangular_means", "self_duality", "ncc_mismatch")),
    ("rankme", ("rankme", "effective_rank", "alpha_req")),
])
def test_representation_probes_of_dataloaders_equal_the_tensors(problem, probe, keys):
    model, x, y = problem
    g = torch.Generator().manual_seed(5)
    tx, ty = torch.randn(70, *SHAPE, dtype=torch.float64, generator=g), torch.randint(0, 3, (70,), generator=g)
    fn = getattr(ls, probe)
    a = fn(model, CE, _loader(x, y), test=_loader(tx, ty), device="cpu")
    b = fn(model, CE, (x, y), test=(tx, ty), device="cpu")
    for split in ("train", "test"):
        for key in keys:
            np.testing.assert_allclose(a[f"{split}/{key}"], b[f"{split}/{key}"], atol=1e-9, rtol=1e-9)


def test_rankme_of_a_dataloader_is_the_rankme_of_the_features(problem):
    model, x, y = problem
    res = ls.rankme(model, CE, _loader(x, y), splits="train", device="cpu")
    with torch.no_grad():
        z = model[:3](x).numpy()  # the classifier's input
    s = np.linalg.svd(z, compute_uv=False)
    p = s / s.sum() + 1e-7
    np.testing.assert_allclose(res["train/rankme"], np.exp(-(p * np.log(p)).sum()), rtol=1e-10)


@pytest.mark.parametrize("dsmi_inputs", [False, True])
def test_dse_of_a_dataloader_equals_the_tensors(problem, dsmi_inputs):
    model, x, y = problem
    settings = dict(splits="train", dsmi_inputs=dsmi_inputs, n_clusters=3, n_random_subsets=2, device="cpu")
    a = ls.dse(model, CE, _loader(x, y), **settings)
    b = ls.dse(model, CE, (x, y), **settings)
    keys = ("dse", "dsmi_y", "eigenvalues") + (("dsmi_x",) if dsmi_inputs else ())
    for key in keys:
        np.testing.assert_allclose(a[f"train/{key}"], b[f"train/{key}"], atol=1e-9, rtol=1e-9)


# ---- 6. take: exactly the samples asked for, in the order asked ------------------------------


@pytest.mark.parametrize("kind", ["loader", "map_dataset", "list_of_batches"])
def test_take_returns_exactly_the_samples_in_the_order_given(problem, kind):
    _, x, y = problem
    source = {"loader": _loader(x, y), "map_dataset": Items(x, y),
              "list_of_batches": [(x[i:i + 40], y[i:i + 40]) for i in range(0, N, 40)]}[kind]
    stream = Stream(source)
    idx = torch.tensor([149, 0, 31, 32, 100, 5, 128, 127])  # unsorted, across batch edges, the last one
    taken = stream.take(idx)
    assert torch.equal(taken.x, x[idx]) and torch.equal(taken.y, y[idx])
    assert torch.equal(stream.take([7]).x, x[7:8])
    with pytest.raises(LandscapeError, match="150"):
        stream.take([150])


def test_dict_batches_through_take_and_batches():
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 50, (45, 7), generator=g)
    mask = torch.randint(0, 2, (45, 7), generator=g)
    labels = torch.randint(0, 2, (45,), generator=g)
    batches = [{"input_ids": ids[i:i + 16], "attention_mask": mask[i:i + 16], "labels": labels[i:i + 16]}
               for i in range(0, 45, 16)]  # 16, 16, 13
    stream = Stream(batches)
    assert len(stream) == 45
    got = list(stream.batches())
    assert [len(b) for _, b in got] == [16, 16, 13]
    assert all(isinstance(xb, InputBatch) and list(xb.keys()) == ["input_ids", "attention_mask"] for xb, _ in got)
    assert torch.equal(torch.cat([xb["input_ids"] for xb, _ in got]), ids)
    assert torch.equal(torch.cat([yb for _, yb in got]), labels)
    idx = torch.tensor([44, 2, 17, 16, 30])
    taken = stream.take(idx)
    assert torch.equal(taken.x["input_ids"], ids[idx]) and torch.equal(taken.x["attention_mask"], mask[idx])
    assert torch.equal(taken.y, labels[idx])
    # a Dataset of dict items with another target key, the same through a DataLoader
    items = [{"input_ids": ids[i], "attention_mask": mask[i], "target": labels[i]} for i in range(45)]
    for source in (_ListDataset(items), DataLoader(_ListDataset(items), batch_size=10)):
        s = Stream(source, target_key="target")
        taken = s.take(idx)
        assert torch.equal(taken.x["attention_mask"], mask[idx]) and torch.equal(taken.y, labels[idx])


class _ListDataset(Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_batches_move_and_cast_floating_inputs_only():
    x, y = torch.randn(10, 3), torch.randint(0, 2, (10,))
    ids = torch.randint(0, 9, (10, 3))
    xb, yb = next(Stream([(x, y)]).to("cpu", torch.float64).batches())
    assert xb.dtype == torch.float64 and torch.equal(xb, x.double()) and yb.dtype == torch.long
    ib, _ = next(Stream([(ids, y)]).to("cpu", torch.float64).batches())
    assert ib.dtype == torch.long and torch.equal(ib, ids)


# ---- 7. never concatenated: one batch of inputs at a time ------------------------------------


def test_a_streamed_hvp_reads_every_sample_once_per_product_and_never_concatenates_inputs(problem, monkeypatch):
    model, x, y = problem
    data = Items(x, y)
    stream = Stream(data).to("cpu", torch.float64)
    op = HessianOperator(model, nn.CrossEntropyLoss(reduction="none"), stream, None, batch_size=BATCH,
                         dtype=torch.float64)
    rows_seen = []
    handle = model.register_forward_pre_hook(lambda _m, args: rows_seen.append(args[0].shape[0]))
    concatenated = []
    real_cat, real_stack = torch.cat, torch.stack

    def watch(real):
        def wrapped(tensors, *args, **kwargs):
            tensors = list(tensors)
            if any(isinstance(t, torch.Tensor) and tuple(t.shape[-2:]) == SHAPE for t in tensors):
                concatenated.append(sum(t.shape[0] if t.ndim == 3 else 1 for t in tensors))
            return real(tensors, *args, **kwargs)
        return wrapped

    monkeypatch.setattr(torch, "cat", watch(real_cat))
    monkeypatch.setattr(torch, "stack", watch(real_stack))  # the collate of BATCH items is allowed
    data.reads.zero_()
    v = torch.randn(op.size, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    try:
        hv = [op.matvec(v) for _ in range(3)]
    finally:
        handle.remove()
        monkeypatch.undo()
    assert torch.equal(data.reads, torch.full((N,), 3))  # each sample read exactly once per HVP
    assert max(rows_seen) == BATCH and sum(rows_seen) == 3 * N  # the model never sees more than a batch
    assert concatenated and max(concatenated) <= BATCH  # only the collate of one batch, never the data
    # and the product is the dense Hessian's
    dense = _dense_hessian(model, x, y)
    np.testing.assert_allclose(hv[0].numpy(), dense @ v.numpy(), atol=1e-10, rtol=0)


def test_a_dataset_stream_counts_its_batches_per_batch_size(problem):
    _, x, y = problem
    stream = Stream(Items(x, y))
    for size in (32, 150, 1000, None):
        assert stream.num_batches(size) == len(list(stream.batches(size)))
    assert Stream(_loader(x, y)).num_batches(7) == 5  # a DataLoader's batches are its own


def _dense_hessian(model, x, y) -> np.ndarray:
    params = dict(model.named_parameters())
    flat = torch.cat([p.detach().reshape(-1) for p in params.values()])

    def mean_loss(theta):
        tensors, i = {}, 0
        for name, p in params.items():
            tensors[name] = theta[i:i + p.numel()].view_as(p)
            i += p.numel()
        return nn.functional.cross_entropy(torch.func.functional_call(model, tensors, (x,)), y)

    return torch.autograd.functional.hessian(mean_loss, flat).numpy()


def test_the_facade_streams_a_dataset_pass_by_pass(problem):
    """Through ``ls.hessian`` / ``ls.surface``: every sample past the first two (which the façade
    reads once more to call the model) is read once to survey the data, once for the gradient and
    once per HVP (once per grid point) — gathered data would be read once in all."""
    model, x, y = problem
    data = Items(x, y)
    h = ls.hessian(model, CE, data, top_k=1, bottom_k=0, lanczos_steps=6, dtype="float64", trace=False,
                   device="cpu")
    assert h["num_hvps"] >= 6
    assert torch.equal(data.reads[2:], torch.full((N - 2,), 2 + h["num_hvps"]))
    data = Items(x, y)
    s = ls.surface(model, CE, data, x="-1:1:3", y="-1:1:2", vectorize="loop", device="cpu")
    assert s["train_loss"].shape == (3, 2)
    assert torch.equal(data.reads[2:], torch.full((N - 2,), 1 + 6))


# ---- 8. bad streams: one line, a LandscapeError ----------------------------------------------


def _bad_inputs(x, y):
    class Strings(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return "sample"

    class IterableItems(IterableDataset):  # single samples, not batches (with a length: not map-style)
        def __iter__(self):
            for i in range(N):
                yield x[i], int(y[i])

        def __len__(self):
            return N

    class Ragged(Dataset):
        def __len__(self):
            return 64

        def __getitem__(self, i):
            return torch.zeros(6 if i < 32 else 5), 0

    return {
        "empty_loader": (_loader(x[:0], y[:0]), "empty"),
        "empty_generator": ((b for b in []), "empty"),
        "float_labels": (_loader(x, y.double()), "integer class labels"),
        "label_matrix": ([(x[:10], torch.zeros(10, 3, dtype=torch.long))], "class labels"),
        "three_strings": ([("a", "b", "c")], "tensor"),
        "string": ("train.csv", "got str"),
        "string_items": (Strings(), "str"),
        "lengths_differ": ([(x[:10], y[:9])], "10 inputs but 9 targets"),
        "shape_changes": ([(x[:32], y[:32]), (torch.randn(32, 3, 2, dtype=torch.float64), y[:32])], "batch 1"),
        "dtype_changes": ([(x[:32], y[:32]), (x[32:64].float(), y[32:64])], "batch 1"),
        "ragged_loader": (DataLoader(Ragged(), batch_size=32), "batch 1"),
        "ragged_items": (DataLoader(Ragged(), batch_size=40), "stack"),
        "iterable_of_items": (IterableItems(), "scalar target"),
        "generator_of_items": (((x[i], int(y[i])) for i in range(N)), "scalar target"),
        "scalar_inputs": ([(3, torch.tensor([0, 1]))], "scalar input"),
        "dict_without_targets": ([{"input_ids": torch.zeros(4, 3, dtype=torch.long)}], "labels"),
    }


BAD = ["empty_loader", "empty_generator", "float_labels", "label_matrix", "three_strings", "string",
       "string_items", "lengths_differ", "shape_changes", "dtype_changes", "ragged_loader", "ragged_items",
       "iterable_of_items", "generator_of_items", "scalar_inputs", "dict_without_targets"]


@pytest.mark.parametrize("case", BAD)
def test_bad_streams_fail_with_one_line(problem, case):
    model, x, y = problem
    data, words = _bad_inputs(x, y)[case]
    with pytest.raises(LandscapeError) as err:
        ls.hessian(model, CE, data, **HESSIAN)
    message = str(err.value)
    assert "\n" not in message and words in message, message


def test_a_bad_test_stream_fails_with_one_line(problem):
    model, x, y = problem
    with pytest.raises(LandscapeError) as err:
        ls.surface(model, CE, _loader(x, y), test=_loader(x[:, :1], y), splits="train,test", **SURFACE)
    assert "\n" not in str(err.value) and "shape" in str(err.value)
