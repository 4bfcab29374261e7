"""The package's layers point down: no module imports one of a higher layer (docs/architecture.md).

Every ``import`` is read from the source (module level and inside functions alike), so an
upward dependency cannot hide in a function body. A module belongs to the first layer whose
prefixes match its dotted name; modules of one layer may import each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "landscape"

# lowest first; the façade on top
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("landscape._version", "landscape.errors", "landscape.registry", "landscape.tasks",
              "landscape.arrays", "landscape.utils", "landscape.models", "landscape.data", "landscape.datasets")),
    ("core", ("landscape.core", "landscape.batch", "landscape.outputs", "landscape.params")),
    ("math", ("landscape.linalg", "landscape.directions", "landscape.trajectory_pca", "landscape.features", "landscape.evaluate",
              "landscape.user_data")),
    ("probes", ("landscape.probes",)),
    ("io", ("landscape.checkpoints", "landscape.model_spec", "landscape.weights", "landscape.checkpoint_files",
            "landscape.run_dir", "landscape.run_data", "landscape.trajectory", "landscape.store",
            "landscape.results")),
    ("train", ("landscape.train",)),
    ("plots", ("landscape.plots", "landscape.vtp", "landscape.figures")),
    ("run", ("landscape.analyze", "landscape.targets", "landscape.executors", "landscape.sweep",
             "landscape.run_selection")),
    ("study", ("landscape.correlate", "landscape.study")),
    ("facade", ("landscape.facade", "landscape.demo", "landscape")),
]

# Upward imports known and pending a fix; each names its fix. Any other upward import fails.
KNOWN_UPWARD: dict[tuple[str, str], str] = {}  # (importer, imported) → why; empty: no exception


def layer_of(module: str) -> int:
    for i, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes if p != "landscape"):
            return i
    if module == "landscape":
        return len(LAYERS) - 1
    raise KeyError(module)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every ``landscape`` import in ``path``, relative ones resolved."""
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "landscape"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "landscape":
                # `from landscape import directions`: the submodule is what is imported
                subs = [f"{target}.{a.name}" for a in node.names if (PACKAGE.parent / f"{target}.{a.name}".replace(".", "/")).with_suffix(".py").exists()
                        or (PACKAGE.parent / f"{target}.{a.name}".replace(".", "/")).is_dir()]
                found += [(node.lineno, t) for t in (subs or [target])]
    return found


def upward_imports() -> list[str]:
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        here = module_name(path)
        mine = layer_of(here)
        for line, target in imports(path):
            if target == "landscape" and here != "landscape":
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line} {here} ({LAYERS[mine][0]}) imports the "
                           f"package root")
                continue
            theirs = layer_of(target)
            if theirs > mine and (here, target) not in KNOWN_UPWARD:
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line} {here} ({LAYERS[mine][0]}) imports "
                           f"{target} ({LAYERS[theirs][0]})")
    return bad


def test_every_module_has_a_layer():
    for path in PACKAGE.rglob("*.py"):
        layer_of(module_name(path))  # raises KeyError for a module the map does not place


def test_no_module_imports_a_higher_layer():
    bad = upward_imports()
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_each_known_upward_import_is_still_there():
    """A known exception that was fixed is taken out of ``KNOWN_UPWARD`` (so it cannot come back)."""
    found = {(module_name(path), target) for path in PACKAGE.rglob("*.py") for _, target in imports(path)}
    stale = [f"{a} → {b}" for a, b in KNOWN_UPWARD if (a, b) not in found]
    assert not stale, "fixed, remove from KNOWN_UPWARD: " + ", ".join(stale)


def test_the_check_sees_an_upward_import_inside_a_function(tmp_path, monkeypatch):
    fake = tmp_path / "landscape"
    (fake / "core").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "core" / "__init__.py").write_text("")
    (fake / "analyze.py").write_text("")
    (fake / "core" / "kernel.py").write_text("def f():\n    from landscape.analyze import x\n")
    monkeypatch.setattr(f"{__name__}.PACKAGE", fake)
    assert upward_imports() == ["landscape/core/kernel.py:2 landscape.core.kernel (core) imports landscape.analyze (run)"]


@pytest.mark.parametrize("line, expected", [("from . import data", "landscape.core.data"),
                                            ("from ..errors import E", "landscape.errors")])
def test_relative_imports_are_resolved(tmp_path, monkeypatch, line, expected):
    fake = tmp_path / "landscape"
    (fake / "core").mkdir(parents=True)
    for f in ("__init__.py", "errors.py", "core/__init__.py", "core/data.py"):
        (fake / f).write_text("")
    (fake / "core" / "kernel.py").write_text(line + "\n")
    monkeypatch.setattr(f"{__name__}.PACKAGE", fake)
    assert [t for _, t in imports(fake / "core" / "kernel.py")] == [expected]
