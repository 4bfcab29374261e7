"""User text is printed literally: no rich markup, no emoji codes, in every message that echoes it;
Ctrl-C is one line and exit 130."""

import shutil

import pytest

from landscape_cli import main as cli
from landscape_cli.main import main

NASTY = ["[/]", "[bold]x[/bold]", ":thumbs_up:", "1:-1:5", "[red]"]
QUIET = ["--no-progress", "--no-plots", "--device", "cpu"]


def _one_line(capsys, rc, expected_rc=2):
    out = capsys.readouterr()
    err = out.err.strip()
    assert rc == expected_rc, (rc, out)
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("text", NASTY)
def test_missing_path_is_echoed_literally(tmp_path, capsys, text):
    path = tmp_path / f"run{text}"
    err = _one_line(capsys, main(["rankme", str(path), *QUIET]))
    assert err == f"error: {path} does not exist; give a RUN_DIR or a checkpoint file"


@pytest.mark.parametrize("text", NASTY)
def test_every_echoing_error_path(run_copy, capsys, text):
    cases = [
        (["surface", str(run_copy), "--x", text, *QUIET], f"bad grid {text!r}"),
        (["surface", str(run_copy), "--x", "-1:1:3", "--y", text, *QUIET], f"bad grid {text!r}"),
        (["rankme", str(run_copy), "--setting", f"{text}=1", *QUIET], f"unknown setting(s) {text} for probe 'rankme'"),
        (["rankme", str(run_copy), "--setting", text, *QUIET], f"--setting takes KEY=VALUE, got {text!r}"),
        (["analyze", str(run_copy), "--setting", f"{text}=1", *QUIET], f"--setting takes PROBE.KEY=VALUE, got {text!r}"),
        (["analyze", str(run_copy), "--probes", text, *QUIET], text),
        (["rankme", str(run_copy), "--checkpoints", text, *QUIET], f"{text!r}"),
        (["rankme", str(run_copy), "--split", text, *QUIET], f"got {text!r}"),
        (["rankme", str(run_copy), "--layer", text, *QUIET], text),
        (["train", "--out", str(run_copy.parent / "new"), "--model", text, "--no-progress"], f"unknown model {text!r}"),
        (["train", "--out", str(run_copy.parent / "new"), "--checkpoints", text, "--no-progress"],
         f"bad checkpoint schedule {text!r}"),
        (["train", "--out", str(run_copy.parent / "new"), "--model-param", text, "--no-progress"],
         f"--model-param takes KEY=VALUE, got {text!r}"),
    ]
    for argv, expected in cases:
        err = _one_line(capsys, main(argv))
        assert expected in err, (argv, err)
        assert "👍" not in err


def test_run_directory_path_with_markup_in_results_lines(run_copy, capsys):
    weird = run_copy.parent / "r[/]:thumbs_up:[bold]"
    shutil.copytree(run_copy, weird)
    assert main(["rankme", str(weird), "--no-progress", "--device", "cpu"]) == 0
    out = capsys.readouterr().out.replace("\n", "")
    assert f"results: {weird / 'analysis.h5'}" in out
    assert f"figures: {weird / 'plots'}" in out
    assert "👍" not in out


def test_train_echoes_its_out_path_literally(tmp_path, capsys):
    out = tmp_path / "[bold]:thumbs_up:[/]"
    assert main(["train", "--out", str(out), "--epochs", "1", "--train-size", "100", "--width", "8",
                 "--checkpoints", "none", "--no-progress", "--device", "cpu"]) == 0
    assert f"run directory: {out}" in capsys.readouterr().out.replace("\n", "")


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "app", interrupted)
    err = _one_line(capsys, main(["rankme", "x"]), expected_rc=130)
    assert err == "interrupted: rerun the same command to resume (`landscape train`: add --resume)"


def test_an_error_message_with_newlines_is_still_one_line(monkeypatch, capsys):
    from landscape.errors import LandscapeError

    def fails(*a, **k):
        raise LandscapeError("first [/] part\nsecond :thumbs_up: part")

    monkeypatch.setattr(cli, "app", fails)
    assert _one_line(capsys, main([])) == "error: first [/] part second :thumbs_up: part"
