"""A probe setting's value is converted to its field's annotated type, or refused in one line.

The same rules hold for ``make_config`` (Python), ``ls.<probe>(..., KEY=VALUE)``,
``analyze(settings=...)``, ``--KEY VALUE`` and ``--setting KEY=VALUE`` on the command line.
"""

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

import landscape as ls
from landscape.analyze import analyze
from landscape.errors import ConfigError
from landscape.probes import PROBES, make_config
from landscape.probes.base import coerce_setting, coerce_value
from landscape.probes.hessian import HessianConfig
from landscape.store import Store
from landscape_cli import main as cli
from landscape_cli.main import main


@pytest.mark.parametrize("tp, value, expected", [
    (int, 3, 3), (int, "3", 3), (int, " 7 ", 7), (int, np.int64(4), 4),
    (float, 2, 2.0), (float, "2.5", 2.5), (float, "1e-3", 0.001), (float, np.float32(0.5), 0.5),
    (float, 0.1, 0.1),
    (bool, True, True), (bool, False, False), (bool, np.bool_(True), True), (bool, "TRUE", True),
    (bool, "false", False), (bool, "Yes", True), (bool, "no", False), (bool, "1", True), (bool, "0", False),
    (str, "abc", "abc"), (str, "-1:1:51", "-1:1:51"),
    (int | None, None, None), (int | None, "none", None), (int | None, "NULL", None), (int | None, "5", 5),
    (str | None, "null", None), (str | None, "0", "0"), (str | None, "features.1", "features.1"),
    (tuple[float, float], [0, 1], (0.0, 1.0)), (tuple[float, float], "0.5,0.05", (0.5, 0.05)),
    (tuple[float, float], "(-3, 1)", (-3.0, 1.0)),
    (tuple[float, ...], 0.05, (0.05,)), (tuple[float, ...], "0.1, 0.2,", (0.1, 0.2)),
    (tuple[float, ...], "[0.1,0.2]", (0.1, 0.2)), (tuple[float, ...] | None, "none", None),
    (tuple[int, ...], ["1", 2], (1, 2)), (list[int], ("3", 4), [3, 4]),
    (float | str, 10, 10.0), (float | str, 2.5, 2.5), (float | str, "median", "median"),
    (float | str, "10", "10"),  # a Python string for a union with str is kept as it is
])
def test_accepted_values_convert_exactly(tp, value, expected):
    out = coerce_value(tp, "k", value)
    assert out == expected and type(out) is type(expected)
    if isinstance(out, tuple | list):
        assert [type(v) for v in out] == [type(v) for v in expected]


@pytest.mark.parametrize("tp, text, expected", [
    (float | str, "10", 10.0), (float | str, "median", "median"), (bool | None, "0", False),
    (str | None, "0", "0"), (int, "3", 3), (tuple[float, ...] | None, "0.01", (0.01,)),
])
def test_command_line_text_tries_the_other_alternatives_before_str(tp, text, expected):
    out = coerce_value(tp, "k", text, text=True)
    assert out == expected and type(out) is type(expected)


@pytest.mark.parametrize("tp, value, message", [
    (int, "abc", "k must be int, got 'abc'"),
    (int, 2.5, "k must be int, got 2.5"),
    (int, "2.5", "k must be int, got '2.5'"),
    (int, True, "k must be int, got True"),
    (int, None, "k must be int, got None"),
    (float, True, "k must be float, got True"),
    (float, "abc", "k must be float, got 'abc'"),
    (bool, "maybe", "k must be true or false, got 'maybe'"),
    (bool, 0, "k must be true or false, got 0"),
    (bool, 2, "k must be true or false, got 2"),
    (str, 3, "k must be str, got 3"),
    (int | None, "x", "k must be int or none, got 'x'"),
    (tuple[float, float], "0.5", "k must be 2 comma-separated float values (e.g. 0.1,0.2), got '0.5'"),
    (tuple[float, float], [1, 2, 3], "k must be 2 comma-separated float values (e.g. 0.1,0.2), got [1, 2, 3]"),
    (tuple[float, ...] | None, "a,b", "k must be comma-separated float values (e.g. 0.1,0.2) or none, got 'a,b'"),
    (float | str, True, "k must be float or str, got True"),
])
def test_refused_values_are_one_line(tp, value, message):
    with pytest.raises(ConfigError) as info:
        coerce_value(tp, "k", value)
    assert str(info.value) == message


def test_the_field_type_comes_from_the_config_annotations():
    assert coerce_setting(HessianConfig, "top_k", "4") == 4
    assert coerce_setting(HessianConfig, "trace", "no") is False
    assert coerce_setting(HessianConfig, "not_a_field", "x") == "x"  # left to make_config's unknown-key error


@pytest.mark.parametrize("probe", PROBES.names())
def test_every_default_config_round_trips_unchanged(probe):
    default = PROBES[probe].config()
    again = make_config(probe, **dataclasses.asdict(default))
    assert again == default
    for f in dataclasses.fields(default):
        assert type(getattr(again, f.name)) is type(getattr(default, f.name)), f.name


def test_currently_valid_calls_keep_their_values():
    assert make_config("surface", x="-1:1:51").x == "-1:1:51"
    assert make_config("dse", sigma="median").sigma == "median"
    assert make_config("sharpness", rhos=0.05).rhos == (0.05,)
    assert make_config("sharpness", rhos=[0.1, 0.2]).rhos == (0.1, 0.2)
    assert make_config("hessian", top_k=3, trace=False) == HessianConfig(top_k=3, trace=False)


@pytest.mark.parametrize("settings, message", [
    (dict(top_k="abc"), "top_k must be int, got 'abc'"),
    (dict(top_k=2.5), "top_k must be int, got 2.5"),
    (dict(trace="maybe"), "trace must be true or false, got 'maybe'"),
])
def test_make_config_and_the_facade_refuse_a_wrong_type(settings, message):
    with pytest.raises(ConfigError) as info:
        make_config("hessian", **settings)
    assert str(info.value) == message
    model = nn.Linear(2, 2)
    data = (torch.zeros(4, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ConfigError) as info:
        ls.hessian(model, nn.CrossEntropyLoss(), data, device="cpu", **settings)
    assert str(info.value) == message


def test_analyze_refuses_settings_of_a_probe_it_does_not_run(tiny_run, tmp_path):
    out = tmp_path / "a.h5"
    with pytest.raises(ConfigError) as info:
        analyze(tiny_run, "hessian", settings={"hessian": {"top_k": 2}, "sharpness": {"m": 64}}, out=out,
                device="cpu")
    assert str(info.value) == ("settings given for sharpness, which is not run (the probes run: hessian); "
                               "add it to the probes or drop its settings")
    with pytest.raises(ConfigError, match="top_k must be int, got 'abc'"):
        analyze(tiny_run, "hessian", settings={"hessian": {"top_k": "abc"}}, out=out, device="cpu")
    assert not out.exists()


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


QUIET = ["--no-progress", "--no-plots", "--device", "cpu"]


@pytest.mark.parametrize("argv, message", [
    (["analyze", "{run}", "--probes", "hessian", "--setting", "hessian.top_k=abc"],
     "error: top_k must be int, got 'abc'"),
    (["hessian", "{run}", "--setting", "top_k=2.5"], "error: top_k must be int, got '2.5'"),
    (["hessian", "{run}", "--setting", "trace=maybe"], "error: trace must be true or false, got 'maybe'"),
    (["analyze", "{run}", "--probes", "hessian", "--setting", "sharpness.m=64"],
     "error: settings given for sharpness, which is not run (the probes run: hessian); add it to the probes "
     "or drop its settings"),
])
def test_cli_refuses_a_bad_setting_in_one_line(run_copy, capsys, argv, message):
    assert main([a.format(run=run_copy) for a in argv] + QUIET) == 2
    assert _one_line(capsys) == message
    assert not (run_copy / "analysis.h5").exists()


@pytest.fixture
def built(monkeypatch):
    """The config a probe command builds, instead of running the probe."""
    seen = {}
    monkeypatch.setattr("landscape_cli.probes.run_probe_cli", lambda probe, cfg, *a, **k: seen.__setitem__(probe, cfg))
    return seen


@pytest.mark.parametrize("argv, field, value", [
    (["dse", "--setting", "sigma=10"], "sigma", 10.0),
    (["dse", "--sigma", "10"], "sigma", 10.0),
    (["sharpness", "--setting", "rhos=[0.1,0.2]"], "rhos", (0.1, 0.2)),
    (["sharpness", "--setting", "rhos=0.1,0.2"], "rhos", (0.1, 0.2)),
    (["measures", "--setting", "init=0"], "init", "0"),  # a str field keeps the text, not the number 0
    (["collapse", "--setting", "layer=none"], "layer", None),
    (["hessian", "--setting", "trace=0"], "trace", False),
    (["hessian", "--setting", "trace=Yes"], "trace", True),
    (["hessian", "--setting", "sigma_squared=1"], "sigma_squared", 1.0),
])
def test_cli_settings_are_read_by_the_field_type(built, argv, field, value):
    assert cli.main([argv[0], "RUN", *argv[1:]]) == 0
    got = getattr(built[argv[0]], field)
    assert got == value and type(got) is type(value)


def test_stored_settings_hold_the_converted_value(run_copy, capsys):
    small = ["--top-k", "2", "--trace-samples", "10", "--subset", "100", "--lanczos-steps", "30", *QUIET]
    assert main(["hessian", str(run_copy), "--setting", "trace=0", *small]) == 0
    capsys.readouterr()
    store = Store(run_copy / "analysis.h5")
    (group,) = [g for g in store.groups() if g.endswith("/hessian")]
    _, attrs = store.read(group)
    assert attrs["settings"]["trace"] is False and attrs["settings"]["top_k"] == 2
    # the same setting however it is written: served from the store, not recomputed
    for same in (["--setting", "trace=false"], ["--setting", "trace=No"], ["--no-trace"]):
        assert main(["hessian", str(run_copy), *same, *small]) == 0
        assert "(stored)" in capsys.readouterr().out
    assert [g for g in store.groups() if g.endswith("/hessian")] == [group]
    assert main(["hessian", str(run_copy), "--setting", "trace=1", *small]) == 2  # a different setting
    assert "with other settings (trace False → True)" in _one_line(capsys)
