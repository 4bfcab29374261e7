"""Faults of the HDF5 store: a full disk, symlinked results files, read-only locations."""

import errno
import os
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

import landscape.store.hdf5 as H  # the group writes (where a full disk is simulated)
from landscape.store import Store, StoreError

DISK_FULL = "disk full writing .*: free space and rerun the same command to resume"


def _filled(tmp_path):
    store = Store(tmp_path / "a.h5")
    store.write("c0/p", {"v": np.arange(10.0)}, {"settings_hash": "0"}, {"step": 0})
    return store, (tmp_path / "a.h5").read_bytes()


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("what", ["write", "check_writable", "repack"])
def test_no_space_to_reserve_fails_in_one_line_before_the_file_is_touched(tmp_path, monkeypatch, what):
    store, before = _filled(tmp_path)
    monkeypatch.setattr(os, "posix_fallocate", _enospc)
    with pytest.raises(StoreError, match=DISK_FULL):
        if what == "write":
            store.write("c1/p", {"v": np.arange(10.0)}, {"settings_hash": "1"})
        else:
            getattr(store, what)()
    assert (tmp_path / "a.h5").read_bytes() == before
    assert store.groups() == ["c0/p"] and store.read("c0/p")[0]["v"].tolist() == list(range(10))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.h5", "a.h5.lock"]  # no temporary left


def test_disk_full_inside_a_write_is_one_line_and_keeps_the_previous_groups(tmp_path, monkeypatch):
    store, _ = _filled(tmp_path)
    monkeypatch.setattr(H, "_fill", _enospc)
    with pytest.raises(StoreError, match=DISK_FULL):
        store.write("c1/p", {"v": np.arange(10.0)}, {"settings_hash": "1"})
    assert store.groups() == ["c0/p"] and store.read("c0/p")[0]["v"].tolist() == list(range(10))
    with h5py.File(tmp_path / "a.h5", "r") as f:
        assert not any(k.startswith(".tmp") for k in f)
    monkeypatch.undo()
    store.write("c1/p", {"v": np.arange(3.0)}, {"settings_hash": "1"})  # the same command, rerun
    assert store.groups() == ["c0/p", "c1/p"]


def test_a_new_file_on_a_full_disk_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "posix_fallocate", _enospc)
    with pytest.raises(StoreError, match=DISK_FULL):
        Store(tmp_path / "new.h5").write("c/p", {"v": [1.0]}, {"settings_hash": "h"})
    assert not (tmp_path / "new.h5").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["new.h5.lock"]


_FILL_UP = textwrap.dedent("""
    import sys
    import numpy as np
    from landscape.store import Store, StoreError
    store, written = Store(sys.argv[1]), []
    for i in range(int(sys.argv[3]) if len(sys.argv) > 3 else 1000):
        try:
            store.write(f"c{i}/p", {"v": np.full(int(sys.argv[2]), float(i))}, {"settings_hash": "h"})
        except StoreError as exc:
            print("ERROR", exc)
            break
        written.append(f"c{i}/p")
    print("WRITTEN", ",".join(written))
""")


@pytest.fixture
def small_tmpfs(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a 2 MiB tmpfs here ({proc.stderr.decode().strip() or 'no mount rights'})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.parametrize("n", [300, 30_000])
def test_a_really_full_disk_never_crashes_and_keeps_every_group_written(small_tmpfs, tmp_path, n):
    script = tmp_path / "fill.py"
    script.write_text(_FILL_UP)
    path = small_tmpfs / "a.h5"
    proc = subprocess.run([sys.executable, str(script), str(path), str(n)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]  # not 139: no segfault
    lines = proc.stdout.splitlines()
    assert lines[0] == f"ERROR disk full writing {path}: free space and rerun the same command to resume"
    assert proc.stderr == ""
    written = lines[1].removeprefix("WRITTEN ").split(",")
    store = Store(path)
    assert store.groups() == sorted(written) and len(written) >= 2
    for g in written:
        assert store.read(g)[0]["v"][0] == float(g[1:-2])
    # freeing space (here: a larger tmpfs) lets the same command go on
    subprocess.run(["mount", "-o", "remount,size=8m", str(small_tmpfs)], check=True)
    proc = subprocess.run([sys.executable, str(script), str(path), "10", "20"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "ERROR" not in proc.stdout and proc.stderr == ""
    assert Store(path).read(written[0])[0]["v"][0] == 0.0


# ---- symlinks ----------------------------------------------------------------------------------


def test_a_symlinked_results_file_is_refused_for_writing_unless_allowed(tmp_path):
    real, _ = _filled(tmp_path)
    link = tmp_path / "link.h5"
    link.symlink_to(real.path)
    before = real.path.read_bytes()
    for call in (lambda s: s.write("x/p", {"v": [1.0]}, {"settings_hash": "h"}), Store.check_writable, Store.repack):
        with pytest.raises(StoreError, match=r"link.h5 is a symlink \(to .*a.h5\); refusing to write through it"):
            call(Store(link))
    assert real.path.read_bytes() == before
    assert Store(link).groups() == ["c0/p"]  # reading through it is harmless
    Store(link, allow_symlink=True).write("x/p", {"v": [1.0]}, {"settings_hash": "h"})
    Store(link, allow_symlink=True).repack()
    assert link.is_symlink() and real.groups() == ["c0/p", "x/p"]


# ---- read-only locations -------------------------------------------------------------------------


def _check_reads(path):
    store = Store(path)
    assert store.groups() == ["c0/p"] and store.has("c0/p") and store.attrs("c0") == {"step": 0}
    assert store.read("c0/p")[0]["v"].tolist() == list(range(10))


def test_reads_take_no_lock_and_write_nothing(tmp_path, monkeypatch):
    store, before = _filled(tmp_path)
    (tmp_path / "a.h5.lock").unlink()

    def no_writes(*args, **kwargs):
        raise AssertionError("a read tried to lock or write")

    monkeypatch.setattr(Store, "_locked", no_writes)
    monkeypatch.setattr(Store, "_session", no_writes)
    _check_reads(store.path)
    assert [p.name for p in tmp_path.iterdir()] == ["a.h5"] and store.path.read_bytes() == before


def test_results_can_be_read_from_a_read_only_mount(tmp_path):
    _filled(tmp_path / "src")
    ro = tmp_path / "ro"
    ro.mkdir()
    proc = subprocess.run(["mount", "--bind", "-o", "ro", str(tmp_path / "src"), str(ro)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot make a read-only bind mount here ({proc.stderr.decode().strip() or 'no mount rights'})")
    try:
        if os.access(ro, os.W_OK) and subprocess.run(["touch", str(ro / "probe")]).returncode == 0:
            pytest.skip("the bind mount did not become read-only")
        (tmp_path / "src" / "a.h5.lock").unlink()
        _check_reads(ro / "a.h5")
        assert not (ro / "a.h5.lock").exists()
        with pytest.raises(StoreError, match="cannot write results to"):
            Store(ro / "a.h5").write("x/p", {"v": [1.0]}, {"settings_hash": "h"})
    finally:
        subprocess.run(["umount", str(ro)], check=False)
