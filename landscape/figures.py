"""Which figures each probe gets, drawn from the HDF5 store alone.

``probe_figures(store, probe, plots_dir)`` writes the figures of one probe and returns their
paths: per checkpoint for the Hessian (ESD, top-k spectrum, per-layer bars), and curves over the
stored checkpoints for the representation probes. Which figures a probe gets is its own declaration
(:class:`~landscape.probes.base.Probe`): a drawer kind registered here with :func:`drawer`
(``figure="hessian"``), or its ``curves``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from landscape.probes.base import PROBES, probe_order
from landscape.results import collect_series
from landscape.store import Store

Drawer = Callable[[Store, str, Path, tuple[str, ...]], list[Path]]  # (store, probe, plots dir, formats)
DRAWERS: dict[str, Drawer] = {}
"""Bespoke figure kinds by name; a probe names its kind in its declaration (``figure="hessian"``)."""


def drawer(kind: str) -> Callable[[Drawer], Drawer]:
    """Decorator: register a figure kind a probe may declare."""

    def decorate(fn: Drawer) -> Drawer:
        DRAWERS[kind] = fn
        return fn

    return decorate


def curves() -> dict[str, list[tuple[str, str, bool]]]:
    """``{probe: [(panel title, key inside a split's subgroup, log y), ...]}`` of every probe that
    declares figures over training (its ``curves``), in probe order."""
    return {name: list(PROBES[name].curves) for name in probe_order() if PROBES[name].curves}


def __getattr__(name: str) -> object:
    if name == "CURVES":  # derived from the probes' declarations, computed on access
        return curves()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def drawer_for(probe: str) -> Drawer | None:
    """The figures of ``probe``: its declared bespoke kind, else curves over training when it
    declares ``curves``, else none (also for a name that is no registered probe)."""
    if probe not in PROBES:
        return None
    declared = PROBES[probe]
    if declared.figure is not None:
        if declared.figure not in DRAWERS:
            raise ValueError(f"probe {probe!r} declares figure kind {declared.figure!r}; "
                             f"registered kinds: {', '.join(sorted(DRAWERS))}")
        return DRAWERS[declared.figure]
    return _curve_figures if declared.curves else None


def plots_dir_for(results: str | Path) -> Path:
    """Where a results file's figures go: ``plots/`` beside ``analysis.h5``, ``plots/<stem>/`` beside
    any other results file (so two files in one folder never overwrite each other's figures)."""
    results = Path(results)
    return results.parent / "plots" if results.name == "analysis.h5" else results.parent / "plots" / results.stem


def probe_figures(store_path: str | Path, probe: str, plots_dir: str | Path,
                  formats: tuple[str, ...] = ("png",)) -> list[Path]:
    """Draw ``probe``'s figures from ``store_path`` into ``plots_dir`` (:func:`drawer_for`)."""
    draw = drawer_for(probe)
    if draw is None:
        return []
    return draw(Store(store_path), PROBES.canonical(probe), Path(plots_dir), formats)


def training_axis(series: dict[str, np.ndarray]) -> tuple[np.ndarray, str, list[str] | None]:
    """``(x, xlabel, tick labels)`` for a figure over training from :func:`collect_series`: the
    epochs where every checkpoint has a distinct one, else the steps, else positions 0, 1, … with
    the checkpoint names as tick labels."""
    n = len(series["name"])
    for key in ("epoch", "step"):
        x = np.asarray(series[key], dtype=float)
        if n and np.isfinite(x).all() and len(np.unique(x)) == n:
            return x, key, None
    return np.arange(n, dtype=float), "checkpoint", [str(name) for name in series["name"]]


def _stored(store: Store, probe: str):
    """``(checkpoint, arrays, attrs)`` of every stored result of ``probe``."""
    for group in store.groups():
        ckpt, _, name = group.rpartition("/")
        if name == probe:
            arrays, attrs = store.read(group)
            yield ckpt, arrays, attrs


@drawer("hessian")
def _hessian_figures(store: Store, probe: str, plots_dir: Path, formats: tuple[str, ...]) -> list[Path]:
    from landscape.plots import plot_esd, plot_layer_spectrum, plot_top_eigenvalues, save_figure

    written: list[Path] = []
    for ckpt, r, _ in _stored(store, probe):
        stem = plots_dir / probe / ckpt
        fig = plot_top_eigenvalues(r["eigenvalues"], bottom=r.get("bottom_eigenvalues"), title=f"Hessian spectrum — {ckpt}")
        written += save_figure(fig, f"{stem}_top", formats)
        if "density" in r:
            fig = plot_esd(r["density_grid"], r["density"], nodes=r.get("esd_nodes"), weights=r.get("esd_weights"),
                           title=f"Hessian eigenvalue density — {ckpt}")
            written += save_figure(fig, f"{stem}_esd", formats)
        if "layers" in r:
            layers = r["layers"]
            trace = layers["trace"] if np.isfinite(layers["trace"]).any() else None
            fig = plot_layer_spectrum(list(layers["names"]), layers["top_eigenvalue"], trace,
                                      title=f"Per-layer Hessian — {ckpt}")
            written += save_figure(fig, f"{stem}_layers", formats)
    return written


@drawer("surface")
def _surface_figures(store: Store, probe: str, plots_dir: Path, formats: tuple[str, ...]) -> list[Path]:
    """1D: loss and accuracy on twin axes; 2D: contour, filled contour, heat map, 3D surface (with the
    PCA trajectory and explained-variance axis labels when the directions are PCA)."""
    from landscape.plots import plot_surface_1d, plot_surface_2d, save_figure

    written: list[Path] = []
    for ckpt, r, attrs in _stored(store, probe):
        settings = attrs.get("settings", {})
        splits = settings.get("splits", "train").split(",")
        stem = plots_dir / probe / ckpt
        if "ycoords" not in r:
            kw = {f"{s}_{m}": r.get(f"{s}_{m}") for s in ("train", "test") for m in ("loss", "acc") if f"{s}_{m}" in r}
            train_loss = kw.pop("train_loss", None)
            if train_loss is None:  # only the test split was computed: draw it as the main curve
                train_loss, kw["train_acc"] = kw.pop("test_loss"), kw.pop("test_acc", None)
            fig = plot_surface_1d(r["xcoords"], train_loss, **kw, title=f"1D loss slice — {ckpt}")
            written += save_figure(fig, f"{stem}_1d", formats)
            continue
        labels = None
        if "explained_variance_ratio" in r:
            ev = np.asarray(r["explained_variance_ratio"]) * 100
            labels = (f"PC1 ({ev[0]:.1f}%)", f"PC2 ({ev[1]:.1f}%)")
        for split in splits:
            values = r[f"{split}_loss"]
            for kind in ("contour", "filled", "heatmap", "surface3d"):
                fig = plot_surface_2d(r["xcoords"], r["ycoords"], values, kind=kind,
                                      trajectory=r.get("trajectory"), axis_labels=labels,
                                      title=f"{split} loss — {ckpt}")
                written += save_figure(fig, f"{stem}_{split}_{kind}", formats)
    return written


@drawer("sharpness")
def _sharpness_figures(store: Store, probe: str, plots_dir: Path, formats: tuple[str, ...]) -> list[Path]:
    """Sharpness against ρ, one line per checkpoint (Andriushchenko et al. 2023, Fig. 1 style)."""
    from landscape.plots import plot_curves, save_figure

    results = {ckpt: r for ckpt, r, _ in _stored(store, probe)}
    order = list(collect_series(store.path, probe, [])["name"])  # lines in training order
    results = {ckpt: results[ckpt] for ckpt in order}
    if not results:
        return []
    rhos = next(iter(results.values()))["rhos"]
    series = {
        "Δ loss  L(w+δ*) − L(w)": {ckpt: r["delta_loss"] for ckpt, r in results.items()},
        "Δ error": {ckpt: r["delta_error"] for ckpt, r in results.items()},
    }
    fig = plot_curves(rhos, series, xlabel="ρ", logx=True, title="Sharpness vs radius")
    return save_figure(fig, plots_dir / probe, formats)


@drawer("coherence")
def _coherence_figures(store: Store, probe: str, plots_dir: Path, formats: tuple[str, ...]) -> list[Path]:
    """Coherence m·α and GSNR over training (Chatterjee & Zielinski; Liu et al.), and the GSNR
    histogram of the last stored checkpoint."""
    from landscape.plots import plot_curves, save_figure

    keys = ["m_alpha", "alpha", "gsnr_mean", "gsnr_median"]
    series = collect_series(store.path, probe, keys)
    if not len(series["step"]):
        return []
    x, xlabel, names = training_axis(series)
    panels = {"coherence m·α (1 = orthogonal)": series["m_alpha"], "α = ‖E g‖² / E‖g‖²": series["alpha"],
              "GSNR mean": series["gsnr_mean"], "GSNR median": series["gsnr_median"]}
    written = save_figure(plot_curves(x, panels, xlabel=xlabel, logy=["GSNR mean", "GSNR median"], xticklabels=names,
                                      title="Gradient coherence over training"), plots_dir / probe, formats)
    last = f"{series['name'][-1]}/{probe}"  # the last in training order
    r, _ = store.read(last)
    edges, counts = np.asarray(r["gsnr_bin_edges"]), np.asarray(r["gsnr_hist"])
    if counts.size:
        centers = 0.5 * (edges[1:] + edges[:-1])
        fig = plot_curves(centers, {"parameters per bin": counts}, xlabel="log₁₀ GSNR",
                          title=f"GSNR histogram — {last.rpartition('/')[0]}")
        written += save_figure(fig, plots_dir / f"{probe}_gsnr_hist", formats)
    return written


def surface_vtps(store_path: str | Path, plots_dir: str | Path) -> list[Path]:
    """ParaView exports (``.vtp``) of every stored 2D loss surface, one per split."""
    from landscape.vtp import write_vtp

    written = []
    for ckpt, r, attrs in _stored(Store(store_path), "surface"):
        if "ycoords" not in r:
            continue
        for split in attrs.get("settings", {}).get("splits", "train").split(","):
            written.append(write_vtp(Path(plots_dir) / "surface" / f"{ckpt}_{split}_loss.vtp",
                                     r["xcoords"], r["ycoords"], r[f"{split}_loss"]))
    return written


def all_figures(store_path: str | Path, plots_dir: str | Path, formats: tuple[str, ...] = ("png",)) -> list[Path]:
    """Every figure the results file supports, drawn from the file alone (and, for an
    ``analysis.h5`` inside a RUN_DIR, the run's monitor values: :func:`monitor_figures`)."""
    store = Store(store_path)
    probes = sorted({g.rpartition("/")[2] for g in store.groups()})
    written = [p for probe in probes for p in probe_figures(store_path, probe, plots_dir, formats)]
    run_dir = Path(store_path).parent
    if (run_dir / "config.json").is_file() and (run_dir / "metrics.jsonl").is_file():
        written += monitor_figures(run_dir, plots_dir, formats)
    return written


def monitor_figures(run_dir: str | Path, plots_dir: str | Path, formats: tuple[str, ...] = ("png",)) -> list[Path]:
    """``plots_dir/monitors``: the monitor values of ``run_dir/metrics.jsonl`` over steps, λ_max
    against 2/η (η per step from the records, else the run's ``lr``); nothing when no monitor
    value was logged."""
    from landscape.checkpoints import RunDir
    from landscape.plots import monitor_value_keys, plot_monitors, save_figure
    from landscape.train.config import TrainConfig

    run = RunDir(run_dir)
    records = run.metrics()
    if not monitor_value_keys(records):
        return []
    cfg = TrainConfig.from_run(run)
    params = cfg.optimizer_params or {}
    beta = 0.0  # heavy-ball momentum moves GD's threshold (sgd's momentum defaults to 0.9 here)
    if cfg.optimizer == "sgd" and not params.get("nesterov", False):
        beta = float(params.get("momentum", 0.9))
    fig = plot_monitors(records, lr=cfg.lr, momentum=beta, title=f"Monitors — {run.path.name}")
    return save_figure(fig, Path(plots_dir) / "monitors", formats)


def _curve_figures(store: Store, probe: str, plots_dir: Path, formats: tuple[str, ...]) -> list[Path]:
    """The probe's declared ``curves`` over the stored checkpoints, one line per split."""
    from landscape.plots import plot_curves, save_figure

    declared = PROBES[probe]
    panels = declared.curves
    splits = ("train", "test")
    keys = [f"{s}/{k}" for s in splits for _, k, _ in panels]
    series = collect_series(store.path, probe, keys)
    if not len(series["step"]):
        return []
    x, xlabel, names = training_axis(series)
    data = {}
    for title, key, _ in panels:
        lines = {s: series[f"{s}/{key}"] for s in splits if np.isfinite(series[f"{s}/{key}"]).any()}
        if lines:
            data[title] = lines
    logy = [title for title, _, log in panels if log]
    logx = xlabel == "epoch" and declared.curves_logx and (x > 0).sum() >= 2
    title = declared.curves_title or f"{probe} over training"
    fig = plot_curves(x, data, xlabel=xlabel, logx=logx, logy=logy, title=title, xticklabels=names)
    return save_figure(fig, plots_dir / probe, formats)

