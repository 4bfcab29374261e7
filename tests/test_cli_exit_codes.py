"""Exit codes of the CLI when some tasks fail: 1 once everything else is done and stored (and a
closing line that says so), 2 when nothing could be done, 0 when every task succeeded."""

import numpy as np
import pytest

from landscape.analyze import run_probe
from landscape.checkpoints import RunDir
from landscape.probes import make_config
from landscape.store import Store
from landscape_cli.app import SOME_FAILED
from landscape_cli.main import main

QUIET = ["--no-progress", "--no-plots", "--device", "cpu"]
RANKME = ["--setting", "rankme.samples=64"]


def _corrupt(run, index=0):
    """Cut checkpoint ``index`` of ``run`` short (an unreadable safetensors file); its name."""
    cp = RunDir(run).checkpoints()[index]
    cp.path.write_bytes(cp.path.read_bytes()[:100])
    return cp.name


@pytest.fixture
def reference(tiny_run, tmp_path_factory):
    """rankme (64 samples) on every checkpoint of the intact run, computed directly."""
    out = tmp_path_factory.mktemp("ref") / "ref.h5"
    records = run_probe(tiny_run, "rankme", make_config("rankme", samples=64), checkpoints="all", out=out,
                        device="cpu")
    return {r.target.name: r.result for r in records}


def _assert_stored_as_reference(path, names, reference):
    store = Store(path)
    for name in names:
        arrays, _ = store.read(f"{name}/rankme")
        for split in ("train", "test"):
            np.testing.assert_array_equal(np.asarray(arrays[split]["rankme"]),
                                          np.asarray(reference[name][split]["rankme"]))


def test_analyze_with_a_corrupt_checkpoint_stores_the_others_and_exits_1(run_copy, reference, capsys):
    bad = _corrupt(run_copy)
    names = [c.name for c in RunDir(run_copy).checkpoints()]
    out = run_copy / "analysis.h5"
    rc = main(["analyze", str(run_copy), "--probes", "rankme", "--checkpoints", "all", *RANKME, *QUIET])
    captured = capsys.readouterr()
    assert rc == SOME_FAILED == 1
    err = captured.err.strip().splitlines()
    assert any(line.startswith(f"rankme {bad} failed: ") for line in err), captured.err
    assert err[-1] == (f"1 of {len(names)} checkpoint tasks failed (recorded under /failures in {out}); "
                       "the others are stored")
    assert "Traceback" not in captured.err and f"results: {out}" in captured.out.replace("\n", "")
    assert "not a readable safetensors file" in Store(out).attrs(f"failures/rankme/{bad}")["error"]
    _assert_stored_as_reference(out, [n for n in names if n != bad], reference)


def test_analyze_with_a_failing_probe_and_a_good_one_exits_1(run_copy, capsys):
    rc = main(["analyze", str(run_copy), "--probes", "rankme,coherence", "--setting", "coherence.subset=5000",
               *RANKME, *QUIET])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert err[-1].startswith("1 of 2 probes failed (recorded under /failures in "), err
    assert "subset of 5000" in Store(run_copy / "analysis.h5").attrs("failures/coherence")["error"]
    assert Store(run_copy / "analysis.h5").read(f"{RunDir(run_copy).checkpoints()[-1].name}/rankme")[0]


def test_analyze_where_every_checkpoint_fails_exits_2(run_copy, capsys):
    n = len(RunDir(run_copy).checkpoints())
    for i in range(n):
        _corrupt(run_copy, i)
    rc = main(["analyze", str(run_copy), "--probes", "rankme", "--checkpoints", "all", *RANKME, *QUIET])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1].startswith(f"{n} of {n} checkpoint tasks failed") and err[-1].endswith("nothing was analyzed")


def test_a_probe_command_with_a_corrupt_checkpoint_exits_1(run_copy, reference, capsys):
    bad = _corrupt(run_copy, 1)
    names = [c.name for c in RunDir(run_copy).checkpoints()]
    out = run_copy / "analysis.h5"
    rc = main(["rankme", str(run_copy), "--checkpoints", "all", "--samples", "64", *QUIET])
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert rc == 1
    assert any(line.startswith(f"rankme {bad} failed: ") for line in err), captured.err
    assert err[-1] == f"1 of {len(names)} checkpoints failed (each named above); the others are stored in {out}"
    _assert_stored_as_reference(out, [n for n in names if n != bad], reference)


def test_a_probe_command_where_every_checkpoint_fails_exits_2(run_copy, capsys):
    names = [c.name for c in RunDir(run_copy).checkpoints()]
    for i in range(len(names)):
        _corrupt(run_copy, i)
    assert main(["rankme", str(run_copy), "--checkpoints", "all", "--samples", "64", *QUIET]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "".join(err)
    assert [line.split(" failed: ")[0] for line in err[:-1]] == [f"rankme {name}" for name in names]
    assert err[-1] == f"{len(names)} of {len(names)} checkpoints failed (each named above); nothing was analyzed"
    assert not (run_copy / "analysis.h5").exists()


def test_no_failure_is_exit_0_without_a_closing_line(run_copy, capsys):
    assert main(["rankme", str(run_copy), "--checkpoints", "all", "--samples", "64", *QUIET]) == 0
    assert main(["analyze", str(run_copy), "--probes", "rankme", "--checkpoints", "all", *RANKME, *QUIET]) == 0
    assert "failed" not in capsys.readouterr().err
