"""The sharpness package: one registered probe over four measures, the old import path intact, and
the shared option groups of :mod:`landscape.probes.base` on :class:`SharpnessConfig`."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

import landscape.probes.sharpness as package
from landscape.errors import ConfigError
from landscape.probes import PROBES
from landscape.probes import base as probe_base
from landscape.probes.sharpness import SharpnessConfig, auto_pgd, objective, pac_bayes, probe

ROOT = Path(__file__).resolve().parents[2]

# name, default — in the order the stored ``settings`` attribute lists them (results stored
# before the package existed have exactly these keys)
FIELDS = [("kind", "worst"), ("norm", "linf"), ("adaptive", True), ("rhos", None), ("m", 128), ("iters", 20),
          ("restarts", 1), ("random_start", False), ("momentum", 0.75), ("step_mult", 1.0),
          ("ellipsoid", "scaled"), ("samples_avg", 20), ("logit_normalize", False), ("params", "all"),
          ("bn_mode", "eval"), ("subset", 1024), ("split", "train"), ("dtype", "float32"), ("seed", 0),
          ("first_order_rho", 0.05), ("first_order_iters", 10), ("momentum_form", "croce_hein"),
          ("pac_bayes", True), ("pac_target", 0.1), ("pac_draws", 3), ("pac_steps", 12), ("pac_eps", 1e-3),
          ("pac_mag_form", "jiang")]


def imported_names() -> set[str]:
    """Every name some module of the repository imports from ``landscape.probes.sharpness``."""
    names = set()
    for folder in ("landscape", "cli", "tests", "benchmarks", "examples"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and node.module == "landscape.probes.sharpness":
                    names.update(a.name for a in node.names)
    return names


def test_every_imported_name_is_reexported_as_the_object_the_code_uses():
    names = imported_names()
    assert {"_Objective", "_BatchFn", "_pac_bayes", "SharpnessConfig", "worst_case_ascent"} <= names
    for name in names:
        assert hasattr(package, name), name
    assert package._Objective is objective._Objective is auto_pgd._Objective is pac_bayes._Objective
    assert package.worst_case_ascent is auto_pgd.worst_case_ascent
    assert package.sharpness is probe.sharpness and package.largest_sigma is pac_bayes.largest_sigma
    assert set(package.__all__) <= set(dir(package))


def test_one_registered_probe_runs_the_package():
    assert PROBES["sharpness"].config is SharpnessConfig
    assert PROBES["sharpness"].run is package.run_sharpness
    assert not any(name in PROBES for name in ("worst_case", "average_case", "first_order", "pac_bayes"))


def test_settings_keep_their_names_order_and_defaults():
    fields = dataclasses.fields(SharpnessConfig)
    assert [(f.name, f.default) for f in fields] == FIELDS
    assert SharpnessConfig().to_dict()["rhos"] == (0.001, 0.002, 0.004, 0.008)  # resolved, then stored


def test_the_shared_groups_are_declared_by_base():
    helps = probe_base.setting_help(SharpnessConfig)
    assert helps["bn_mode"] == probe_base.bn_mode_setting().metadata["help"]
    assert helps["dtype"] == probe_base.dtype_setting().metadata["help"]
    assert helps["split"] == probe_base.split_setting().metadata["help"]
    assert helps["subset"] == probe_base.subset_setting(1024, "points").metadata["help"]
    assert helps["seed"].startswith("Seed of ") and "random starts" in helps["seed"]


@pytest.mark.parametrize("settings, message", [
    (dict(split="val"), "split must be train or test, got 'val'"),
    (dict(subset=0), "subset must be a whole number ≥ 1 or None, got 0"),
    (dict(dtype="float16"), "dtype must be one of float32, float64, got 'float16'"),
    (dict(bn_mode="batch"), "bn_mode must be one of eval, train, got 'batch'"),
    (dict(ellipsoid="round"), "ellipsoid must be one of scaled, euclidean, got 'round'"),
    (dict(m=0), "m must be ≥ 1, got 0"),
    (dict(samples_avg=1), "samples_avg must be ≥ 2, got 1"),
    (dict(first_order_rho=0.0), "first_order_rho must be > 0 or None, got 0.0"),
    (dict(pac_target=1.0), "pac_target must be in (0, 1), got 1.0"),
    (dict(rhos="x"), "rhos must be a number or a list of numbers > 0, got 'x'"),
])
def test_each_check_says_what_is_wrong_in_one_line(settings, message):
    with pytest.raises(ConfigError) as err:
        SharpnessConfig(**settings)
    assert str(err.value) == message


def test_the_shared_checks_run_through_check_settings(monkeypatch):
    seen = []
    real = probe_base.check_settings

    def spy(cfg, checks=()):
        seen.append(type(cfg))
        return real(cfg, checks)

    monkeypatch.setattr("landscape.probes.sharpness.config.check_settings", spy)
    SharpnessConfig(subset=None, m=4, rhos=0.5)
    assert seen == [SharpnessConfig]
