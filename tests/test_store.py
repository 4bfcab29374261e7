import multiprocessing as mp

import h5py
import numpy as np
import pytest

from landscape.store import SCHEMA_VERSION, Store, StoreError, settings_hash


def test_write_read_round_trip_with_nested_groups_and_attrs(tmp_path):
    store = Store(tmp_path / "a.h5")
    settings = {"top_k": 5, "splits": "train,test", "tol": None}
    store.write("step_000010/hessian",
                {"eigenvalues": np.arange(5.0), "method": "cached_graph", "tags": ["λ", "b"], "layers": {"names": np.array([b"fc1", b"fc2"]), "top": [1.0, 2.0]}},
                {"settings": settings, "settings_hash": settings_hash(settings), "seed": 3, "note": None,
                 "flag": True, "shape": [3, 32, 32]},
                {"step": 10, "test_acc": 0.9})
    arrays, attrs = store.read("step_000010/hessian")
    np.testing.assert_array_equal(arrays["eigenvalues"], np.arange(5.0))
    assert arrays["method"] == "cached_graph" and list(arrays["tags"]) == ["λ", "b"]
    np.testing.assert_array_equal(arrays["layers"]["top"], [1.0, 2.0])
    assert list(arrays["layers"]["names"]) == ["fc1", "fc2"]  # text comes back as str
    assert attrs["settings"] == settings and attrs["seed"] == 3 and attrs["note"] is None and attrs["flag"]
    assert list(attrs["shape"]) == [3, 32, 32]
    assert store.attrs("step_000010") == {"step": 10, "test_acc": 0.9}
    assert store.groups() == ["step_000010/hessian"]
    with h5py.File(tmp_path / "a.h5", "r") as f:
        assert f.attrs["schema_version"] == SCHEMA_VERSION


def test_has_compares_settings_and_rewrite_replaces(tmp_path):
    store = Store(tmp_path / "a.h5")
    assert not store.has("x/p")
    s1, s2 = {"k": 1}, {"k": 2}
    store.write("x/p", {"v": [1.0]}, {"settings_hash": settings_hash(s1)})
    assert store.has("x/p") and store.has("x/p", s1) and not store.has("x/p", s2)
    store.write("x/p", {"w": [2.0]}, {"settings_hash": settings_hash(s2)})
    arrays, _ = store.read("x/p")
    assert set(arrays) == {"w"} and store.has("x/p", s2)
    with pytest.raises(StoreError, match="has no group 'y/p'; stored: x/p"):
        store.read("y/p")


def test_a_failed_write_leaves_the_file_as_it_was(tmp_path):
    store = Store(tmp_path / "a.h5")
    store.write("x/p", {"v": [1.0]}, {"settings_hash": "a"})

    class Boom:
        def __array__(self, *args, **kwargs):
            raise RuntimeError("probe result cannot be converted")

    with pytest.raises(RuntimeError):
        store.write("x/p", {"v": Boom()}, {"settings_hash": "b"})
    arrays, attrs = store.read("x/p")
    assert arrays["v"].tolist() == [1.0] and attrs["settings_hash"] == "a"
    with h5py.File(tmp_path / "a.h5", "r") as f:
        assert not any(k.startswith(".tmp") for k in f)


def _writer(path, i):
    Store(path).write(f"c{i}/p", {"v": np.full(1000, i)}, {"settings_hash": str(i)})


def test_concurrent_writers_are_serialized(tmp_path):
    path = tmp_path / "a.h5"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, i)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    store = Store(path)
    assert store.groups() == [f"c{i}/p" for i in range(4)]
    assert all(store.read(f"c{i}/p")[0]["v"][0] == i for i in range(4))


def test_unwritable_and_corrupt_files(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="cannot write results to"):
        Store(tmp_path / "file" / "a.h5").check_writable()
    (tmp_path / "bad.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(StoreError, match="corrupt or unwritable"):
        Store(tmp_path / "bad.h5").check_writable()
    assert (tmp_path / "bad.h5").read_bytes() == b"not hdf5 at all"
