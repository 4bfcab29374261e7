"""Every package of the source tree is in pyproject's explicit package list (a non-editable
install ships only those: a package left out installs without error and fails on import)."""

from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_directory_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "landscape").rglob("__init__.py")}
    found |= {"landscape_cli"} if (ROOT / "cli" / "__init__.py").exists() else set()
    assert found == listed, f"missing from pyproject: {sorted(found - listed)}; listed but absent: {sorted(listed - found)}"
