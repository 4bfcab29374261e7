import multiprocessing as mp

import h5py
import numpy as np
import pytest

from landscape.store import (
    SCHEMA_VERSION,
    Store,
    StoreError,
    checkpoint_name,
    group_name,
    settings_hash,
)


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


# ---- bounded files: partial work is updated in place ---------------------------------------------


def _partial(done, values, d0, complete=False, sha="abc"):
    return ({"train_loss": values, "done": done.astype(np.uint8), "directions": {"d0": d0}},
            {"settings_hash": "s", "complete": complete, "versions": {"numpy": "x"}}, {"checkpoint_sha256": sha})


def _address(path, name):
    with h5py.File(path, "r") as f:
        return h5py.h5o.get_info(f[name].id).addr


def test_partial_saves_update_the_group_in_place_and_the_file_stays_bounded(tmp_path):
    path = tmp_path / "a.h5"
    store = Store(path)
    rng = np.random.default_rng(0)
    d0, values, done = rng.normal(size=50_000), np.full(100, np.nan), np.zeros(100, bool)
    sizes, addrs = [], []
    for chunk in range(10):
        sl = slice(10 * chunk, 10 * chunk + 10)
        values[sl], done[sl] = rng.normal(size=10), True
        store.write("c/surface", *_partial(done, values, d0, complete=chunk == 9))
        sizes.append(path.stat().st_size)
        addrs.append((_address(path, "c/surface/directions/d0"), _address(path, "c/surface/train_loss")))
    assert len(set(addrs)) == 1  # the same datasets, overwritten where they are
    assert max(sizes) - min(sizes) < 8192 and sizes[-1] < 1.5 * d0.nbytes  # no copy per save
    arrays, attrs = store.read("c/surface")
    np.testing.assert_array_equal(arrays["train_loss"], values)
    np.testing.assert_array_equal(arrays["directions"]["d0"], d0)
    assert arrays["done"].all() and attrs["complete"] is True and store.has("c/surface")


def test_other_settings_another_checkpoint_or_a_shrinking_mask_replace_the_group_whole(tmp_path):
    path = tmp_path / "a.h5"
    store = Store(path)
    d0, done = np.arange(1000.0), np.zeros(10, bool)
    done[:5] = True
    store.write("c/surface", *_partial(done, np.arange(10.0), d0))
    first = _address(path, "c/surface/train_loss")
    arrays, attrs, parent = _partial(np.zeros(10, bool), np.full(10, 7.0), d0)
    store.write("c/surface", arrays, attrs, parent)  # a fresh start: the old mask must not survive
    assert store.read("c/surface")[0]["done"].sum() == 0
    arrays, attrs, parent = _partial(done, np.full(10, 8.0), d0, sha="other")
    store.write("c/surface", arrays, attrs, parent)
    assert store.read("c/surface")[0]["train_loss"].tolist() == [8.0] * 10
    assert _address(path, "c/surface/train_loss") != first


def test_a_crash_between_values_and_mask_leaves_a_partial_group_whose_mask_is_not_ahead(tmp_path, monkeypatch):
    store = Store(tmp_path / "a.h5")
    values, done = np.full(10, np.nan), np.zeros(10, bool)
    values[:5], done[:5] = 1.0, True
    store.write("c/surface", *_partial(done, values, np.arange(3.0)))
    values[5:], done[5:] = 2.0, True
    real = h5py.Dataset.__setitem__

    def crash_on_done(self, key, value):
        if self.name.endswith("/done"):
            raise KeyboardInterrupt
        real(self, key, value)

    monkeypatch.setattr(h5py.Dataset, "__setitem__", crash_on_done)
    with pytest.raises(KeyboardInterrupt):
        store.write("c/surface", *_partial(done, values, np.arange(3.0), complete=True))
    monkeypatch.undo()
    arrays, attrs = store.read("c/surface")
    assert attrs["complete"] is False and arrays["done"].sum() == 5
    assert np.all(arrays["train_loss"][arrays["done"].astype(bool)] == 1.0)


def test_surface_interrupted_five_times_leaves_a_file_as_small_as_an_uninterrupted_one(tiny_run, tmp_path):
    from landscape.analyze import run_probe
    from landscape.probes import make_config

    cfg = make_config("surface", x="-1:1:41", y="-1:1:41", chunk=32)
    full, cut = tmp_path / "full.h5", tmp_path / "cut.h5"
    expected = run_probe(tiny_run, "surface", cfg, out=full, device="cpu")[0].result

    class Stop(Exception):
        pass

    for k in range(1, 6):
        def stop_after(target, n, limit=k * 280):
            if n >= limit:
                raise Stop

        with pytest.raises(Stop):
            run_probe(tiny_run, "surface", cfg, out=cut, device="cpu", on_progress=stop_after)
        group = Store(cut).groups()[0]
        assert Store(cut).read(group)[0]["done"].sum() >= k * 280 - 32
    resumed = run_probe(tiny_run, "surface", cfg, out=cut, device="cpu")[0].result
    np.testing.assert_array_equal(resumed["train_loss"], expected["train_loss"])
    assert cut.stat().st_size <= 1.5 * full.stat().st_size
    for path in (full, cut):  # against an independent reference: a compacted copy of the same file
        copy = tmp_path / f"copy-{path.name}"
        with h5py.File(path, "r") as src, h5py.File(copy, "w") as dst:
            for key in src:
                src.copy(src[key], dst, name=key)
        assert path.stat().st_size <= 1.5 * copy.stat().st_size


def test_repack_keeps_the_contents_and_drops_dead_space_and_debris(tmp_path):
    path = tmp_path / "a.h5"
    store = Store(path)
    for i in range(5):  # complete rewrites of a large group: each leaves its predecessor as dead space
        store.write("c/p", {"v": np.full(200_000, float(i)), "name": "x"}, {"settings_hash": str(i), "complete": False},
                    {"step": 3})
    store.write("d/p", {"w": np.arange(4)}, {"settings_hash": "d", "complete": False})
    with h5py.File(path, "a") as f:
        f.create_group(".tmp-dead")
    before = path.stat().st_size
    assert before > 5 * 1.6e6
    assert store.repack() == (before, path.stat().st_size)
    assert path.stat().st_size < 1.2 * 1.6e6
    arrays, attrs = store.read("c/p")
    assert arrays["v"].tolist() == [4.0] * 200_000 and arrays["name"] == "x" and attrs["settings_hash"] == "4"
    assert store.attrs("c") == {"step": 3} and store.groups() == ["c/p", "d/p"]
    with h5py.File(path, "r") as f:
        assert f.attrs["schema_version"] == SCHEMA_VERSION and ".tmp-dead" not in f
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.h5", "a.h5.lock"]


def test_a_completed_group_compacts_a_bloated_file(tmp_path):
    path = tmp_path / "a.h5"
    store = Store(path)
    for i in range(4):
        store.write("c/p", {"v": np.full(200_000, float(i))}, {"settings_hash": str(i), "complete": False})
    assert path.stat().st_size > 4 * 1.6e6
    store.write("c/p", {"v": np.full(200_000, 9.0)}, {"settings_hash": "9"})  # complete
    assert path.stat().st_size < 1.2 * 1.6e6
    assert store.read("c/p")[0]["v"].tolist() == [9.0] * 200_000


# ---- names ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [".", "..", "failures", ".tmp-1234", "a/b", "/x/", "%2F", "50%", "ünï code",
                                  "failures2", "step_000500"])
def test_group_names_escape_the_layout_and_invert_exactly(tmp_path, name):
    escaped = group_name(name)
    assert checkpoint_name(escaped) == name
    assert "/" not in escaped and not escaped.startswith(".") and escaped != "failures"
    store = Store(tmp_path / "a.h5")
    store.write(f"{escaped}/p", {"v": [1.0]}, {"settings_hash": "h"}, {"step": 1})
    store.write("failures/p", {}, {"error": "boom"})
    assert store.groups() == [f"{escaped}/p"] and store.attrs(escaped) == {"step": 1}
    assert [checkpoint_name(g.rpartition("/")[0]) for g in store.groups()] == [name]


def test_plain_checkpoint_names_are_unchanged():
    assert group_name("step_000500") == "step_000500" and group_name("model.pth") == "model.pth"
    assert group_name(".") == "%2E" and group_name("failures") == "%66ailures" and group_name("a/b") == "a%2Fb"
    with pytest.raises(StoreError, match="cannot be empty"):
        group_name("")
