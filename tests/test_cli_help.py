"""`landscape PROBE --help` lists every setting of the probe's config with its default, as shown
to the user (the rendered help, not only the option objects)."""

import dataclasses

import pytest

from landscape.probes import PROBES
from landscape_cli.main import main


def _rows(text: str) -> dict[str, str]:
    """Option name → the text of its row in the rendered help (continuation lines joined)."""
    rows: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        cell = line.strip().strip("│").strip()
        if cell.startswith("--"):
            current = cell.split()[0].split(",")[0]
            rows[current] = cell
        elif current is not None and cell and not line.strip().startswith(("╰", "╭")):
            rows[current] += " " + cell
        else:
            current = None
    return {k: " ".join(v.split()) for k, v in rows.items()}


def _shown(default):
    if isinstance(default, tuple):
        return ",".join(map(str, default))
    return str(default)


@pytest.mark.parametrize("name", sorted(PROBES.names()))
def test_help_lists_every_setting_with_its_default(name, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "240")
    assert main([name, "--help"]) == 0
    rows = _rows(capsys.readouterr().out)
    for f in dataclasses.fields(PROBES[name].config):
        flag = "--" + f.name.replace("_", "-")
        assert flag in rows, (name, flag, sorted(rows))
        if f.default is None or f.default is dataclasses.MISSING:
            continue
        if isinstance(f.default, bool):
            expected = flag[2:] if f.default else f"no-{flag[2:]}"
        else:
            expected = _shown(f.default)
        # a setting the CLI parses itself (a tuple or a union) shows its default as click does a text: (X)
        assert f"[default: {expected}]" in rows[flag] or f"[default: ({expected})]" in rows[flag], (name, rows[flag])
    assert "--setting" in rows and "--checkpoints" in rows
