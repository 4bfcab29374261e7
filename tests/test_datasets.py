"""Tests for landscape.datasets: loaders on files the tests write, and the shared options."""

from __future__ import annotations

import gzip
import json
import math
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from landscape.datasets import (
    DATASETS,
    Dataset,
    Split,
    dataset_params,
    iterate_batches,
    load_dataset,
    load_pickle_restricted,
    read_idx,
)
from landscape.errors import ConfigError, DataError, LandscapeError
from landscape.registry import UnknownNameError

SMALL_GMM = dict(n_train=400, n_test=200, dim=16)


def unstandardize(ds: Dataset, x: torch.Tensor) -> np.ndarray:
    norm = ds.info["normalization"]
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mean = np.asarray(norm["mean"]).reshape(shape)
    std = np.asarray(norm["std"]).reshape(shape)
    return x.double().numpy() * np.where(std < 1e-12, 1.0, std) + mean


# --------------------------------------------------------------------------- file writers (independent of the loader)

IDX_CODES = {
    np.dtype("uint8"): 0x08,
    np.dtype("int8"): 0x09,
    np.dtype(">i2"): 0x0B,
    np.dtype(">i4"): 0x0C,
}


def write_idx(path: Path, array: np.ndarray, *, gz: bool = False) -> Path:
    array = np.asarray(array)
    big = array.astype(array.dtype.newbyteorder(">")) if array.dtype.itemsize > 1 else array
    header = bytes([0, 0, IDX_CODES[big.dtype], array.ndim]) + b"".join(
        struct.pack(">I", d) for d in array.shape
    )
    blob = header + big.tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(blob))
    else:
        path.write_bytes(blob)
    return path


def make_mnist(
    folder: Path, *, gz: bool = False, n_train: int = 12, n_test: int = 5, seed: int = 0
):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10).astype(np.uint8),
    }
    for name, arr in arrays.items():
        write_idx(folder / name, arr, gz=gz)
    return arrays


def _sbs(b: bytes) -> bytes:
    """SHORT_BINSTRING / BINSTRING: how Python 2 pickled a str (loads as bytes with encoding='bytes')."""
    return (b"U" + bytes([len(b)]) + b) if len(b) < 256 else (b"T" + struct.pack("<i", len(b)) + b)


def py2_cifar_pickle(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch pickled the way Python 2 cPickle + numpy 1.x wrote the real CIFAR-10 files."""
    array = (
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + _sbs(b"b") + b"\x87R"
    )
    state = b"(K\x01(" + b"".join(b"J" + struct.pack("<i", d) for d in data.shape) + b"t"
    state += b"cnumpy\ndtype\n" + _sbs(b"u1") + b"K\x00K\x01\x87R"
    state += b"(K\x03" + _sbs(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    state += b"\x89" + _sbs(data.tobytes()) + b"tb"
    items = _sbs(b"batch_label") + _sbs(b"training batch 1 of 5")
    items += _sbs(b"labels") + b"](" + b"".join(b"K" + bytes([v]) for v in labels) + b"e"
    items += _sbs(b"data") + array + state
    return b"\x80\x02}(" + items + b"u."


def make_cifar(
    folder: Path, *, n: int = 4, fmt: str = "py2", str_keys: bool = False, seed: int = 0
):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    batches = {}
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        if fmt == "py2":
            blob = py2_cifar_pickle(data, labels)
        else:
            key = (lambda k: k) if str_keys else (lambda k: k.encode())
            blob = pickle.dumps({key("data"): data, key("labels"): labels}, protocol=int(fmt))
        (folder / name).write_bytes(blob)
        batches[name] = (data, labels)
    return batches


# --------------------------------------------------------------------------- registry


def test_registry_names_and_aliases():
    assert DATASETS.names() == [
        "cifar10",
        "digits",
        "fashion_mnist",
        "gaussian_mixture",
        "mnist",
        "modular",
        "npz",
        "shakespeare_chars",
        "sparse_parity",
        "teacher_student",
    ]
    assert DATASETS["gmm"] is DATASETS["gaussian_mixture"]
    for name in DATASETS.names():
        assert DATASETS[name].__doc__
    assert dataset_params("gmm")["separation"] == 3.0
    assert "seed" not in dataset_params("digits") and "root" not in dataset_params("digits")


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(UnknownNameError) as err:
        load_dataset("imagenet")
    msg = str(err.value)
    assert isinstance(err.value, LandscapeError)
    assert "imagenet" in msg and all(n in msg for n in DATASETS.names())


# --------------------------------------------------------------------------- digits


def test_digits_shapes_split_and_standardization():
    ds = load_dataset("digits")
    assert ds.name == "digits" and ds.input_shape == (1, 8, 8) and ds.num_classes == 10
    assert len(ds.train) + len(ds.test) == 1797
    assert abs(len(ds.test) - 0.25 * 1797) <= 10
    assert ds.train.x.dtype == torch.float32 and ds.train.y.dtype == torch.int64
    assert ds.train.x.shape == (len(ds.train), 1, 8, 8)
    assert set(ds.train.y.tolist()) == set(range(10)) == set(ds.test.y.tolist())
    x = ds.train.x.double()
    assert abs(x.mean().item()) < 1e-5 and abs(x.std(unbiased=False).item() - 1) < 1e-5
    assert ds.info["normalization"]["std"][0] > 0
    json.dumps(ds.info)
    assert ds.clean_train_y is None

    again = load_dataset("digits", seed=0)
    assert torch.equal(again.train.x, ds.train.x) and torch.equal(again.test.y, ds.test.y)
    other = load_dataset("digits", seed=1)
    assert other.train.x.shape == ds.train.x.shape
    assert not torch.equal(other.train.x, ds.train.x)


def test_digits_test_fraction():
    ds = load_dataset("digits", test_fraction=0.5)
    assert abs(len(ds.test) - 0.5 * 1797) <= 10
    with pytest.raises(ConfigError, match="test_fraction"):
        load_dataset("digits", test_fraction=1.0)


# --------------------------------------------------------------------------- synthetic


@pytest.mark.parametrize("name", ["gaussian_mixture", "teacher_student"])
def test_synthetic_sizes_determinism_and_image_shape(name):
    ds = load_dataset(name, **SMALL_GMM, num_classes=4)
    assert (
        ds.train.x.shape == (400, 16) and ds.test.x.shape == (200, 16) and ds.input_shape == (16,)
    )
    assert ds.num_classes == 4
    assert torch.equal(load_dataset(name, **SMALL_GMM, num_classes=4).train.x, ds.train.x)
    assert not torch.equal(
        load_dataset(name, **SMALL_GMM, num_classes=4, seed=1).train.x, ds.train.x
    )
    # per-feature standardization for vector inputs
    assert torch.allclose(ds.train.x.mean(0), torch.zeros(16), atol=1e-5)
    assert torch.allclose(ds.train.x.std(0, unbiased=False), torch.ones(16), atol=1e-4)

    img = load_dataset(name, n_train=50, n_test=20, image_shape=[3, 8, 8])
    assert img.train.x.shape == (50, 3, 8, 8) and img.input_shape == (3, 8, 8)
    assert img.info["params"]["image_shape"] == [3, 8, 8]
    assert len(img.info["normalization"]["mean"]) == 3
    with pytest.raises(ConfigError, match="image_shape"):
        load_dataset(name, dim=10, image_shape=(3, 8, 8))


def test_gaussian_mixture_is_learnable_but_balanced():
    ds = load_dataset("gmm")
    assert ds.info["class_counts"]["train"] == [200] * 10
    x, y = ds.train.x.double(), ds.train.y
    means = torch.stack([x[y == c].mean(0) for c in range(10)])
    pred = torch.cdist(ds.test.x.double(), means).argmin(1)
    acc = (pred == ds.test.y).double().mean().item()
    assert 0.6 < acc  # nearest class mean: far above the 0.1 of chance


def test_teacher_student_labels_are_balanced_and_learnable():
    ds = load_dataset("teacher_student")
    counts = np.asarray(ds.info["class_counts"]["train"])
    assert counts.min() > 0.5 * counts.mean()
    # a least-squares linear read-out beats chance (0.1) clearly
    x = torch.cat([ds.train.x.double(), torch.ones(len(ds.train), 1, dtype=torch.float64)], 1)
    w = torch.linalg.lstsq(x, torch.nn.functional.one_hot(ds.train.y, 10).double()).solution
    xt = torch.cat([ds.test.x.double(), torch.ones(len(ds.test), 1, dtype=torch.float64)], 1)
    assert ((xt @ w).argmax(1) == ds.test.y).double().mean().item() > 0.25


# --------------------------------------------------------------------------- MNIST (IDX)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_reads_idx_exactly(tmp_path, gz):
    arrays = make_mnist(tmp_path / "mnist", gz=gz)
    raw = DATASETS["mnist"](seed=0, root=tmp_path / "mnist")
    np.testing.assert_array_equal(raw.x_train[:, 0], arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(raw.y_train, arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(raw.x_test[:, 0], arrays["t10k-images-idx3-ubyte"])
    np.testing.assert_array_equal(raw.y_test, arrays["t10k-labels-idx1-ubyte"])

    ds = load_dataset("mnist", root=tmp_path / "mnist")
    assert ds.input_shape == (1, 28, 28) and ds.num_classes == 10 and len(ds.train) == 12
    np.testing.assert_allclose(
        unstandardize(ds, ds.test.x)[:, 0], arrays["t10k-images-idx3-ubyte"], atol=1e-3
    )
    assert ds.test.y.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    assert ds.info["source"]["files"]["x_train"].endswith(".gz") == gz


def test_fashion_mnist_default_root_and_env(tmp_path, monkeypatch):
    make_mnist(tmp_path / "data" / "fashion_mnist")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LANDSCAPE_DATA", raising=False)
    assert len(load_dataset("fashion_mnist").train) == 12
    make_mnist(tmp_path / "elsewhere" / "mnist", n_train=7)
    monkeypatch.setenv("LANDSCAPE_DATA", str(tmp_path / "elsewhere"))
    assert len(load_dataset("mnist").train) == 7


def test_read_idx_other_dtypes(tmp_path):
    a = np.arange(-6, 6, dtype=">i2").reshape(3, 4)
    b = read_idx(write_idx(tmp_path / "a.idx", a))
    np.testing.assert_array_equal(b, a)
    assert b.dtype == np.int16 and b.dtype.isnative


def test_idx_bad_magic_and_truncation_name_the_file(tmp_path):
    folder = tmp_path / "mnist"
    arrays = make_mnist(folder)
    bad = folder / "train-labels-idx1-ubyte"
    bad.write_bytes(b"\x12\x34\x08\x01" + bad.read_bytes()[4:])
    with pytest.raises(DataError, match="magic") as err:
        load_dataset("mnist", root=folder)
    assert str(bad) in str(err.value)

    write_idx(bad, arrays["train-labels-idx1-ubyte"])
    images = folder / "t10k-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-10])
    with pytest.raises(DataError, match="truncated") as err:
        load_dataset("mnist", root=folder)
    assert str(images) in str(err.value)

    # a truncated gzip stream
    images.unlink()
    gz = write_idx(images, arrays["t10k-images-idx3-ubyte"], gz=True)
    gz.write_bytes(gz.read_bytes()[:40])
    with pytest.raises(DataError) as err:
        load_dataset("mnist", root=folder)
    assert str(gz) in str(err.value)


def test_mnist_missing_gives_one_line_with_layout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LANDSCAPE_DATA", raising=False)
    with pytest.raises(DataError) as err:
        load_dataset("mnist")
    msg = str(err.value)
    assert "\n" not in msg
    assert (
        "MNIST not found" in msg
        and "train-images-idx3-ubyte[.gz]" in msg
        and "t10k-labels-idx1-ubyte" in msg
    )
    assert os.path.join("data", "mnist") in msg and "root=" in msg

    folder = tmp_path / "partial"
    make_mnist(folder)
    (folder / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="missing t10k-labels-idx1-ubyte") as err:
        load_dataset("mnist", root=folder)
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------- CIFAR-10 (pickles)


@pytest.mark.parametrize("fmt,str_keys", [("py2", False), ("2", False), ("4", True), ("5", False)])
def test_cifar10_reads_batches_exactly(tmp_path, fmt, str_keys):
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    batches = make_cifar(folder, fmt=fmt, str_keys=str_keys)
    raw = DATASETS["cifar10"](seed=0, root=tmp_path / "cifar10")
    assert raw.x_train.shape == (20, 3, 32, 32) and raw.x_test.shape == (4, 3, 32, 32)
    data, labels = batches["data_batch_2"]
    img = raw.x_train[4:8]
    np.testing.assert_array_equal(raw.y_train[4:8], labels)
    # channel-major rows: red plane, green plane, blue plane, each row-major 32x32
    for ch in range(3):
        for r, c in [(0, 0), (0, 31), (5, 7), (31, 31)]:
            np.testing.assert_array_equal(img[:, ch, r, c], data[:, ch * 1024 + r * 32 + c])
    np.testing.assert_array_equal(raw.x_test.reshape(4, -1), batches["test_batch"][0])

    ds = load_dataset("cifar10", root=tmp_path / "cifar10", test_size=2)
    assert ds.input_shape == (3, 32, 32) and len(ds.train) == 20 and len(ds.test) == 2
    assert len(ds.info["normalization"]["mean"]) == 3


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar10_refuses_forbidden_globals_without_running_them(tmp_path):
    folder = tmp_path / "cifar10"
    make_cifar(folder, fmt="4")
    marker = tmp_path / "pwned"
    evil = folder / "data_batch_3"
    evil.write_bytes(pickle.dumps({b"data": _Exploit(marker), b"labels": [0]}))
    with pytest.raises(DataError, match="system") as err:
        load_dataset("cifar10", root=folder)
    assert str(evil) in str(err.value)
    assert not marker.exists()

    other = tmp_path / "other.pkl"
    other.write_bytes(pickle.dumps(torch.nn.Linear(2, 2)))
    with pytest.raises(DataError, match="not allowed"):
        load_pickle_restricted(other)


def test_cifar10_missing_gives_one_line_with_layout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LANDSCAPE_DATA", raising=False)
    with pytest.raises(DataError) as err:
        load_dataset("cifar10")
    msg = str(err.value)
    assert "\n" not in msg and "data_batch_1..5" in msg and "test_batch" in msg
    assert os.path.join("data", "cifar10") in msg and "cifar-10-batches-py" in msg


def test_cifar10_bad_content(tmp_path):
    folder = tmp_path / "c"
    make_cifar(folder, fmt="4")
    (folder / "test_batch").write_bytes(
        pickle.dumps({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]})
    )
    with pytest.raises(DataError, match="3072"):
        load_dataset("cifar10", root=folder)
    (folder / "test_batch").write_bytes(b"\x80\x04garbage")
    with pytest.raises(DataError, match="test_batch"):
        load_dataset("cifar10", root=folder)


# --------------------------------------------------------------------------- npz


def test_npz_round_trip_images(tmp_path):
    rng = np.random.default_rng(0)
    arrays = dict(
        x_train=rng.normal(size=(30, 2, 4, 4)).astype(np.float32),
        y_train=np.arange(30) % 3,
        x_test=rng.normal(size=(9, 2, 4, 4)).astype(np.float32),
        y_test=np.arange(9) % 3,
    )
    np.savez(tmp_path / "d.npz", **arrays)
    ds = load_dataset("npz", path=tmp_path / "d.npz")
    assert ds.input_shape == (2, 4, 4) and ds.num_classes == 3
    # used as given: bit for bit, and the record says nothing was applied
    np.testing.assert_array_equal(ds.train.x.numpy(), arrays["x_train"])
    np.testing.assert_array_equal(ds.test.x.numpy(), arrays["x_test"])
    assert ds.normalization == {"method": "none", "dtype": "float32"}
    assert ds.test.y.tolist() == arrays["y_test"].tolist()
    # standardization on request, with the train statistics per channel
    std = load_dataset("npz", path=tmp_path / "d.npz", normalize="standardize")
    mean = arrays["x_train"].astype(np.float64).mean(axis=(0, 2, 3))
    np.testing.assert_allclose(std.normalization["mean"], mean, rtol=1e-12)
    np.testing.assert_allclose(unstandardize(std, std.train.x), arrays["x_train"], atol=1e-5)
    np.testing.assert_allclose(unstandardize(std, std.test.x), arrays["x_test"], atol=1e-5)
    # relative to root; an explicit num_classes
    assert load_dataset("npz", path="d.npz", root=tmp_path, num_classes=5).num_classes == 5


def test_npz_2d_inputs_and_errors(tmp_path):
    x = np.arange(40, dtype=np.float64).reshape(10, 4)
    np.savez(
        tmp_path / "v.npz",
        x_train=x,
        y_train=np.arange(10) % 2,
        x_test=x[:3],
        y_test=np.zeros(3, int),
    )
    ds = load_dataset("npz", path=str(tmp_path / "v.npz"))
    assert ds.input_shape == (4,) and ds.train.x.shape == (10, 4) and ds.num_classes == 2
    # float64 inputs become float32 (the models' dtype), values otherwise as given; recorded
    assert ds.train.x.dtype == torch.float32
    np.testing.assert_array_equal(ds.train.x.numpy(), x.astype(np.float32))
    assert ds.normalization == {"method": "none", "dtype": "float64", "cast_to": "float32"}
    std = load_dataset("npz", path=str(tmp_path / "v.npz"), normalize="standardize")
    np.testing.assert_allclose(unstandardize(std, std.train.x), x, atol=1e-4)

    np.savez(
        tmp_path / "obj.npz",
        x_train=np.array([{"a": 1}], dtype=object),
        y_train=[0],
        x_test=x,
        y_test=[0],
    )
    with pytest.raises(DataError, match="obj.npz"):
        load_dataset("npz", path=tmp_path / "obj.npz")
    np.savez(tmp_path / "part.npz", x_train=x, y_train=np.zeros(10, int))
    with pytest.raises(DataError, match="x_test, y_test"):
        load_dataset("npz", path=tmp_path / "part.npz")
    np.savez(tmp_path / "fl.npz", x_train=x, y_train=np.zeros(10), x_test=x, y_test=np.zeros(10))
    with pytest.raises(DataError, match="integer"):
        load_dataset("npz", path=tmp_path / "fl.npz")
    with pytest.raises(DataError, match="not found"):
        load_dataset("npz", path=tmp_path / "nope.npz")
    with pytest.raises(ConfigError, match="path"):
        load_dataset("npz")


# --------------------------------------------------------------------------- shared options


def test_train_and_test_size_are_stratified_subsets():
    full = load_dataset("digits")
    ds = load_dataset("digits", train_size=200, test_size=50)
    assert len(ds.train) == 200 and len(ds.test) == 50
    assert ds.info["sizes"] == {"train": 200, "test": 50}
    assert ds.info["available"] == {"train": len(full.train), "test": len(full.test)}
    full_counts = full.info["class_counts"]["train"]
    for k, n in zip(ds.info["class_counts"]["train"], full_counts, strict=True):
        assert abs(k - 200 * n / len(full.train)) < 1  # proportional (largest remainder)
    assert torch.equal(load_dataset("digits", train_size=200, test_size=50).train.x, ds.train.x)
    # test subset labels are a sub-multiset of the full test labels, untouched
    assert set(ds.test.y.tolist()) <= set(full.test.y.tolist())
    with pytest.raises(ConfigError, match="train_size=5000 exceeds"):
        load_dataset("digits", train_size=5000)
    with pytest.raises(ConfigError, match="test_size"):
        load_dataset("digits", test_size=0)


@pytest.mark.parametrize("fraction", [0.0, 0.13, 0.5, 1.0])
def test_label_noise_flips_exact_count_to_different_classes(fraction):
    clean = load_dataset("gmm", **SMALL_GMM)
    ds = load_dataset("gmm", **SMALL_GMM, label_noise=fraction)
    assert torch.equal(ds.train.x, clean.train.x)
    assert torch.equal(ds.test.y, clean.test.y) and torch.equal(ds.test.x, clean.test.x)
    changed = (ds.train.y != clean.train.y).sum().item()
    assert changed == round(fraction * 400)
    if fraction > 0:
        assert torch.equal(ds.clean_train_y, clean.train.y)
        assert ds.info["label_corruption"]["changed"] == changed
        assert ds.info["label_corruption"]["fraction_applied"] == changed / 400
    assert ds.train.y.min() >= 0 and ds.train.y.max() < 10


def test_label_noise_targets_are_uniform_over_other_classes():
    ds = load_dataset("gmm", num_classes=3, n_train=6000, n_test=10, dim=4, label_noise=1.0)
    offset = (ds.train.y - ds.clean_train_y) % 3
    assert (offset != 0).all()
    frac_plus_one = (offset == 1).double().mean().item()
    assert abs(frac_plus_one - 0.5) < 0.03


def test_random_labels():
    clean = load_dataset("gmm", **SMALL_GMM)
    ds = load_dataset("gmm", **SMALL_GMM, random_labels=True)
    agree = (ds.train.y == clean.train.y).double().mean().item()
    assert abs(agree - 0.1) < 0.06  # uniform labels agree with the truth ~1/C of the time
    assert set(ds.train.y.tolist()) == set(range(10))
    assert torch.equal(ds.test.y, clean.test.y)
    assert ds.info["label_corruption"]["kind"] == "random_labels"
    with pytest.raises(ConfigError, match="random_labels"):
        load_dataset("gmm", **SMALL_GMM, random_labels=True, label_noise=0.1)


@pytest.mark.parametrize("ratio", [2.0, 10.0, 100.0])
def test_imbalance_counts_follow_cao_formula(ratio):
    ds = load_dataset("gmm", n_train=5000, n_test=100, dim=8, imbalance_ratio=ratio)
    expected = [math.floor(500 * ratio ** (-c / 9) + 1e-9) for c in range(10)]
    assert ds.info["class_counts"]["train"] == expected
    assert expected[0] == 500 and expected[-1] == int(500 / ratio)
    assert ds.info["imbalance"]["counts"] == expected
    assert ds.info["class_counts"]["test"] == [10] * 10  # test set stays balanced


def test_imbalance_applies_after_train_size():
    ds = load_dataset("gmm", **SMALL_GMM, train_size=200, imbalance_ratio=4.0)
    assert ds.info["imbalance"]["n_max"] == 20
    assert ds.info["class_counts"]["train"][0] == 20 and ds.info["class_counts"]["train"][-1] == 5
    with pytest.raises(ConfigError, match="no samples"):
        load_dataset("gmm", **SMALL_GMM, train_size=100, imbalance_ratio=50.0)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(label_noise=-0.1), "label_noise"),
        (dict(label_noise=1.5), "label_noise"),
        (dict(label_noise="0.1"), "label_noise"),
        (dict(imbalance_ratio=0.5), "imbalance_ratio"),
        (dict(imbalance_ratio=float("inf")), "imbalance_ratio"),
        (dict(train_size=0), "train_size"),
        (dict(train_size=2.5), "train_size"),
        (dict(seed=-1), "seed"),
        (dict(random_labels=1), "random_labels"),
        (dict(test_fraction=0.0), "test_fraction"),
        (dict(name="gmm", num_classes=1), "num_classes"),
        (dict(name="gmm", noise=-1.0), "noise"),
        (dict(name="gmm", image_shape=[3, 0]), "image_shape"),
        (dict(name="teacher_student", depth=-1), "depth"),
    ],
)
def test_out_of_range_values_are_config_errors(kwargs, match):
    kwargs = {"name": "digits", **kwargs}
    with pytest.raises(ConfigError, match=match) as err:
        load_dataset(**kwargs)
    assert "\n" not in str(err.value)


def test_unknown_params_list_accepted_names():
    with pytest.raises(ConfigError) as err:
        load_dataset("gmm", separaton=2.0)
    msg = str(err.value)
    assert "separaton" in msg and "separation" in msg and "image_shape" in msg and "\n" not in msg
    with pytest.raises(ConfigError, match="accepted: \\(none\\)"):
        load_dataset("mnist", foo=1)


def test_info_is_json_serializable_and_complete():
    ds = load_dataset(
        "gmm", **SMALL_GMM, image_shape=None, label_noise=0.2, imbalance_ratio=2.0, train_size=300
    )
    info = json.loads(json.dumps(ds.info))
    assert info["params"]["n_train"] == 400 and info["params"]["separation"] == 3.0
    assert info["options"]["label_noise"] == 0.2 and info["seed"] == 0
    assert set(info) >= {
        "normalization",
        "sizes",
        "class_counts",
        "label_corruption",
        "imbalance",
        "source",
    }


# --------------------------------------------------------------------------- batches


def test_iterate_batches():
    split = Split(torch.arange(10.0).reshape(10, 1), torch.arange(10))
    sizes = [len(y) for _, y in iterate_batches(split, 4, shuffle=False)]
    assert sizes == [4, 4, 2]
    assert [len(y) for _, y in iterate_batches(split, 4, shuffle=False, drop_last=True)] == [4, 4]
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = torch.cat([y for _, y in iterate_batches(split, 3, shuffle=True, generator=g1)])
    b = torch.cat([y for _, y in iterate_batches(split, 3, shuffle=True, generator=g2)])
    assert (
        torch.equal(a, b) and sorted(a.tolist()) == list(range(10)) and not torch.equal(a, split.y)
    )
    for x, y in iterate_batches(split, 3, shuffle=True):
        assert torch.equal(x[:, 0].long(), y)
    with pytest.raises(ConfigError):
        next(iterate_batches(split, 0, shuffle=False))


def test_npz_uint8_pixels_and_integer_ids(tmp_path):
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, size=(20, 3, 4, 4)).astype(np.uint8)
    labels = np.arange(20) % 4
    np.savez(tmp_path / "u8.npz", x_train=pixels, y_train=labels, x_test=pixels[:8], y_test=labels[:8])
    ds = load_dataset("npz", path=tmp_path / "u8.npz")
    # pixels: float32 with the values unchanged, the cast recorded
    assert ds.train.x.dtype == torch.float32
    np.testing.assert_array_equal(ds.train.x.numpy(), pixels.astype(np.float32))
    assert ds.normalization == {"method": "none", "dtype": "uint8", "cast_to": "float32"}
    std = load_dataset("npz", path=tmp_path / "u8.npz", normalize="standardize")
    ref = pixels.astype(np.float64)
    mean, sd = ref.mean(axis=(0, 2, 3)), ref.std(axis=(0, 2, 3))
    np.testing.assert_allclose(std.normalization["mean"], mean, rtol=1e-12)
    np.testing.assert_allclose(
        std.train.x.double().numpy(), (ref - mean[:, None, None]) / sd[:, None, None], atol=1e-5
    )
    # ids: dtype kept (unsigned wider than 8 bits as int64), standardization refused
    for dtype, kept in ((np.int64, torch.int64), (np.int16, torch.int16), (np.uint32, torch.int64)):
        ids = rng.integers(0, 50, size=(20, 7)).astype(dtype)
        np.savez(tmp_path / "ids.npz", x_train=ids, y_train=labels, x_test=ids[:8], y_test=labels[:8])
        tok = load_dataset("npz", path=tmp_path / "ids.npz")
        assert tok.train.x.dtype == kept and tok.train.x.tolist() == ids.tolist()
        with pytest.raises(ConfigError, match="integer inputs .* cannot be standardized") as err:
            load_dataset("npz", path=tmp_path / "ids.npz", normalize="standardize")
        assert "\n" not in str(err.value)
    # the registered datasets take the option too; an unknown value is one line
    assert load_dataset("digits", normalize="none").train.x.max() == 16
    with pytest.raises(ConfigError, match="normalize must be one of standardize, none"):
        load_dataset("npz", path=tmp_path / "u8.npz", normalize="minmax")
