"""A probe lives in one place: analyze's defaults, the measures, the figures and the CLI are read
from its declaration (ARCHITECTURE.md rule 3), and adding a probe is adding one module."""

import dataclasses

import numpy as np
import pytest
import typer

import cli.main as cli
from landscape import figures
from landscape.analyze import analyze, parse_probes
from landscape.probes import PROBES, make_config, register_probe
from landscape.probes.base import ProbeContext, setting
from landscape.store import Store
from landscape.study import collect_runs, measure_family

# The tables as they were written by hand before they were derived (same contents, same order).
OLD_DEFAULT_PROBES = ("hessian", "sharpness", "coherence", "collapse", "rankme")
OLD_MEASURES = {
    "lambda_max": ("hessian", "eigenvalues"),
    "hessian_trace": ("hessian", "trace"),
    "first_order_flatness": ("sharpness", "first_order_flatness"),
    "pac_bayes_inv_sigma2": ("sharpness", "pac_bayes/inv_sigma2"),
    "pac_bayes_mag_inv_sigma2": ("sharpness", "pac_bayes/inv_sigma2_mag"),
    "coherence_m_alpha": ("coherence", "m_alpha"),
    "nc1_train": ("collapse", "train/nc1"),
    "rankme_train": ("rankme", "train/rankme"),
    **{name: ("measures", name) for name in (
        "num_params", "inv_margin2", "log_prod_spectral", "log_prod_spectral_over_margin", "log_sum_spectral",
        "log_sum_spectral_over_margin", "fro_over_spectral", "log_spec_orig_main", "log_spec_init_main",
        "log_prod_frobenius", "log_prod_frobenius_over_margin", "log_sum_frobenius",
        "log_sum_frobenius_over_margin", "dist_init_frobenius", "dist_init_spectral", "param_norm",
        "path_norm", "path_norm_over_margin", "steps_to_ce_0.1", "steps_ce_0.1_to_0.01", "gradient_noise",
        "pacbayes_init", "pacbayes_orig", "pacbayes_flatness", "pacbayes_mag_init", "pacbayes_mag_orig",
        "pacbayes_mag_flatness", "sharpness_init", "sharpness_orig", "sharpness_flatness")},
}
OLD_MEASURE_FAMILIES = (
    ("VC (parameter count)", ("num_params",)),
    ("output margin", ("inv_margin2",)),
    ("sharpness-based", ("pacbayes", "pac_bayes", "sharpness", "first_order_flatness")),
    ("curvature (Hessian)", ("lambda_max", "hessian_")),
    ("norm-based", ("log_prod_", "log_sum_", "fro_over", "log_spec_", "dist_init", "param_norm", "path_norm")),
    ("optimization-based", ("steps_", "gradient_noise", "coherence")),
    ("representation", ("nc1", "rankme")),
)
OLD_CURVES = {
    "collapse": [
        ("NC1  Tr(Σ_W Σ_B⁺)/C", "nc1", True),
        ("NC2 equinorm (means)", "equinorm_means", True),
        ("NC2 equiangularity (means)", "equiangular_means", True),
        ("NC3 self-duality", "self_duality", True),
        ("NC4 NCC mismatch", "ncc_mismatch", True),
        ("CDNV", "cdnv", True),
    ],
    "rankme": [("RankMe", "rankme", False), ("effective rank", "effective_rank", False),
               ("α-ReQ", "alpha_req", False)],
    "dse": [("DSE (bits)", "dse", False), ("DSMI(Z; Y) (bits)", "dsmi_y", False),
            ("DSMI(Z; X) (bits)", "dsmi_x", False)],
}
OLD_TITLES = {"collapse": "Neural collapse over training", "rankme": "RankMe over training",
              "dse": "Diffusion spectral entropy over training"}


def _old_family(name: str) -> str:
    for family, prefixes in OLD_MEASURE_FAMILIES:
        if name.startswith(prefixes):
            return family
    return "other"


def test_the_derived_tables_equal_the_hand_written_ones():
    from landscape.analyze import DEFAULT_PROBES, MEASURES

    assert DEFAULT_PROBES == OLD_DEFAULT_PROBES and parse_probes("default") == list(OLD_DEFAULT_PROBES)
    old_measures = {k: v for k, v in MEASURES.items() if v[0] in {p for p, _ in OLD_MEASURES.values()}}
    assert list(old_measures.items()) == list(OLD_MEASURES.items())  # contents and order
    for name in [*OLD_MEASURES, "sharpness@0.002", "sharpness@1", "weight_norm_x", "no_such_measure"]:
        expected = "norm-based" if name.startswith("weight_norm") else _old_family(name)
        assert measure_family(name) == expected, name
    assert figures.CURVES == OLD_CURVES  # only these three probes declare curves
    assert list(figures.CURVES) == list(OLD_CURVES)
    assert {p: PROBES[p].curves_title for p in OLD_CURVES} == OLD_TITLES
    assert [p for p in PROBES if PROBES[p].curves_logx] == ["collapse"]


def test_each_probe_gets_the_figures_it_had():
    expected = {"hessian": figures._hessian_figures, "surface": figures._surface_figures,
                "sharpness": figures._sharpness_figures, "coherence": figures._coherence_figures,
                "collapse": figures._curve_figures, "rankme": figures._curve_figures, "dse": figures._curve_figures,
                "measures": None, "weight_norm": None}
    assert {p: figures.drawer_for(p) for p in expected} == expected
    assert figures.drawer_for("failures") is None  # a group name that is no probe


def test_every_setting_has_help_and_is_an_option_of_its_command_with_its_default():
    command = typer.main.get_command(cli.app)
    for name, probe in PROBES.items():
        assert name in command.commands, name
        params = {p.name: p for p in command.commands[name].params}
        for f in dataclasses.fields(probe.config):
            assert f.metadata.get("help"), f"{name}.{f.name} has no help text"
            option = params[f.name]
            assert option.help == f.metadata["help"]
            assert f"--{f.name.replace('_', '-')}" in option.opts
            if option.default is None and f.default is not None:  # a text option parsed by the CLI: default shown
                shown = ",".join(map(str, f.default)) if isinstance(f.default, tuple) else str(f.default)
                assert option.show_default == shown, f"{name}.{f.name}"
            else:
                assert option.default == f.default, f"{name}.{f.name}"
        assert "setting" in params and "checkpoints" in params and params["checkpoints"].default == probe.checkpoints


@pytest.fixture
def built(monkeypatch):
    """The config a probe command builds, instead of running the probe."""
    seen = {}

    def capture(probe, cfg, *args, **kwargs):
        seen[probe] = cfg

    monkeypatch.setattr("landscape_cli.probes.run_probe_cli", capture)
    return seen


@pytest.mark.parametrize("args, expected", [
    (["hessian", "--top-k", "3", "--density", "--no-trace", "--trace-method", "hutch++", "--trace-samples", "9"],
     dict(top_k=3, density=True, trace=False, trace_method="hutch++", trace_samples=9)),
    (["hessian", "--setting", "sigma_squared=0.01", "--subset", "7"], dict(sigma_squared=0.01, subset=7)),
    (["surface", "--split", "both", "--x", "-1:1:3", "--dim", "1"], dict(splits="train,test", x="-1:1:3", dim=1)),
    (["sharpness", "--rho", "0.1,0.2", "--m", "8", "--no-adaptive"], dict(rhos=(0.1, 0.2), m=8, adaptive=False)),
    (["coherence", "--subset", "none", "--histogram-range", "-3,1"], None),  # --subset is an int option
    (["coherence", "--histogram-range", "-3,1", "--method", "vmap"], dict(histogram_range=(-3.0, 1.0), method="vmap")),
    (["dse", "--sigma", "median", "--split", "train"], dict(sigma="median", splits="train")),
    (["dse", "--sigma", "2.5", "--samples", "50"], dict(sigma=2.5, samples=50)),
    (["measures", "--ce-thresholds", "0.5,0.05", "--setting", "init=null"], dict(ce_thresholds=(0.5, 0.05), init=None)),
    (["measures", "--init", "step_000005"], dict(init="step_000005")),
    (["rankme", "--layer", "features.1", "--setting", "center=true"], dict(layer="features.1", center=True)),
])
def test_options_build_the_config_given_options_only(built, args, expected):
    code = cli.main([args[0], "RUN", *args[1:]])
    if expected is None:
        assert code == 2 and not built
        return
    assert code == 0
    assert built[args[0]] == make_config(args[0], **expected)


@pytest.mark.parametrize("args, message", [
    (["hessian", "--top-k", "3", "--setting", "top_k=4"], "top_k is given twice"),
    (["sharpness", "--rho", "a,b"], "--rhos must be comma-separated float values"),
    (["measures", "--ce-thresholds", "0.5"], "--ce-thresholds must be 2 comma-separated float values"),
    (["hessian", "--top-k", "0"], "top_k must be ≥ 1"),
])
def test_option_mistakes_are_one_line(built, capsys, args, message):
    assert cli.main([args[0], "RUN", *args[1:]]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and not built


# ---- adding a probe is one module ----------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TinyConfig:
    scale: float = setting(2.0, "Multiplies the parameter count.")


def _run_tiny(ctx: ProbeContext, cfg: TinyConfig) -> dict:
    n = sum(p.numel() for p in ctx.model.parameters())
    return {"train": {"value": cfg.scale * n}, "num": n}


@pytest.fixture
def tiny_probe():
    """What a new module would do at import: register a probe with its declaration; removed after."""
    register_probe("tiny_probe", TinyConfig, summary=("value",), measures={"tiny_value": "train/value"},
                   families={"tiny family": ("tiny_",)}, curves=(("tiny value", "value", False),),
                   cli_help="A tiny probe.", checkpoints="all")(_run_tiny)
    yield PROBES["tiny_probe"]
    PROBES._entries.pop("tiny_probe")
    cli.app.registered_commands = [c for c in cli.app.registered_commands if c.name != "tiny_probe"]


def test_a_probe_registered_by_its_module_alone_is_everywhere(tiny_probe, run_copy, tmp_path, capsys, monkeypatch):
    from landscape.analyze import DEFAULT_PROBES, MEASURES

    monkeypatch.setenv("COLUMNS", "200")  # help on one line per option

    # the CLI: a command in `landscape --help`, its setting an option with help and default
    assert cli.main(["--help"]) == 0
    assert "tiny_probe" in capsys.readouterr().out
    assert cli.main(["tiny_probe", "--help"]) == 0
    shown = capsys.readouterr().out
    assert "--scale" in shown and "Multiplies the parameter count." in shown and "2.0" in shown
    assert cli.main(["tiny_probe", str(run_copy), "--scale", "3", "--no-progress", "--device", "cpu"]) == 0
    store = Store(run_copy / "analysis.h5")
    groups = [g for g in store.groups() if g.endswith("/tiny_probe")]
    assert len(groups) == 4  # its declared default: every checkpoint
    arrays, attrs = store.read(groups[-1])
    assert attrs["settings"] == {"scale": 3.0} and arrays["train"]["value"] == 3.0 * arrays["num"]
    # analyze, the measures and their family; not a default probe (it declares no position)
    assert "tiny_probe" not in DEFAULT_PROBES and "tiny_probe" in parse_probes("all")
    out = tmp_path / "a.h5"
    report = analyze(run_copy, probes="tiny_probe", checkpoints="all", device="cpu", out=out)
    assert report.failures == {} and len(report.results["tiny_probe"]) == 4
    assert MEASURES["tiny_value"] == ("tiny_probe", "train/value") and measure_family("tiny_value") == "tiny family"
    record = collect_runs([run_copy])[0]
    assert record["tiny_value"] == pytest.approx(3.0 * float(arrays["num"]))
    # the figures: its declared curves over training
    assert figures.CURVES["tiny_probe"] == [("tiny value", "value", False)]
    written = figures.probe_figures(out, "tiny_probe", tmp_path / "plots")
    assert written == [tmp_path / "plots" / "tiny_probe.png"] and written[0].stat().st_size > 0
    values = [Store(out).read(g)[0]["train"]["value"] for g in Store(out).groups() if g.endswith("/tiny_probe")]
    np.testing.assert_allclose(values, 2.0 * float(arrays["num"]))  # analyze ran it with its default scale
