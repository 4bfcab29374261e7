"""Loss-surface probe: loss and accuracy along a 1D line or over a 2D plane through the weights
(Li et al. 2018, "Visualizing the Loss Landscape of Neural Nets"; tomgoldstein/loss-landscape).

For directions ``d₀`` (and ``d₁``) the probe evaluates

.. math::  L(θ + α d₀ + β d₁) = \\frac{1}{N}\\sum_n ℓ(f_{θ+αd₀+βd₁}(x_n), y_n)

and the accuracy, on each chosen split, at every grid point, without touching the model
(``functional_call`` with the perturbed tensors). Values are indexed ``[ix, iy]`` with
``α = xcoords[ix]``, ``β = ycoords[iy]`` for any grid shape; a ``done`` mask marks the points
computed so far (NaN/inf losses of divergent regions are stored as they are), so an interrupted
run resumes with exactly the values of an uninterrupted one. The grid is evaluated in chunks
through :meth:`~landscape.probes.base.ProbeContext.map_chunks` (:func:`evaluate_chunk`): here, or
on the workers the run layer chooses, each chunk saved as it comes back.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from landscape import directions as D
from landscape.core.data import is_stream, iter_batches
from landscape.core.kernel import logits_at, perturbed_state
from landscape.errors import ConfigError
from landscape.outputs import OutputFn, logits_of
from landscape.params import call
from landscape.probes.base import (
    ProbeContext,
    batch_size_setting,
    bn_mode_setting,
    check_settings,
    check_subset,
    fixed_subset,
    parse_splits,
    register_probe,
    seed_setting,
    setting,
    subset_setting,
)
from landscape.tasks import Task, correct_count
from landscape.trajectory_pca import pca_directions
from landscape.utils import check_allocation

DIRECTIONS = ("random", "pca", "interpolate:<checkpoint>")
MAX_POINTS = 1_000_000
"""The largest grid a surface accepts (1001 × 1001 points, each a pass over the data)."""


def grid_spec(spec: str) -> tuple[float, float, int]:
    """``"min:max:num"`` → ``(min, max, num)``, validated, nothing allocated."""
    parts = str(spec).split(":")
    try:
        lo, hi, num = float(parts[0]), float(parts[1]), int(parts[2])
        if len(parts) != 3 or num < 1 or not (math.isfinite(lo) and math.isfinite(hi)) or (num > 1 and hi <= lo):
            raise ValueError
    except (ValueError, IndexError):
        raise ConfigError(f"bad grid {spec!r}; use MIN:MAX:NUM with MIN < MAX and NUM ≥ 1, e.g. -1:1:51") from None
    return lo, hi, num


def parse_grid(spec: str) -> np.ndarray:
    """``"min:max:num"`` (the reference's syntax) → ``np.linspace(min, max, num)``."""
    lo, hi, num = grid_spec(spec)
    return np.linspace(lo, hi, num)


def grid_bytes(points: int, n_splits: int) -> int:
    """Host memory of a surface's results over ``points`` grid points: the coordinates (and their
    meshgrid), loss and accuracy (float64) per split, and the done mask."""
    return points * (2 * 2 * 8 + n_splits * 2 * 8 + 1)


@dataclass(frozen=True)
class SurfaceConfig:
    """Settings of the loss-surface probe (all recorded beside its results).

    ``dim`` 1 or 2; ``x``/``y`` grids as ``MIN:MAX:NUM``; ``direction`` ``random`` (Gaussian,
    normalized by ``norm`` with ``ignore`` handling of bias/BN tensors, over ``kind`` = weights
    or states), ``pca`` (top-2 PCA of the run's checkpoint trajectory) or
    ``interpolate:<checkpoint>`` (``θ_other − θ``, not normalized); ``orthogonal`` makes the
    second random direction orthogonal to the first. ``vectorize``: ``loop`` evaluates one grid
    point at a time over the whole (sub)set in batches of ``batch_size``; ``vmap`` evaluates
    ``points_per_call`` points in one vectorized call (``None``: as many as fit in
    ``memory_budget_mb``, estimated from the parameters and one batch's activations); ``auto`` loops on the CPU (measured faster on
    2 cores: ``benchmarks/surface.py``) and vmaps on a GPU, where a small model otherwise idles.
    """

    dim: int = setting(2, "1 (a line) or 2 (a plane).")
    x: str = setting("-1:1:51", "Grid along the first direction, MIN:MAX:NUM.")
    y: str = setting("-1:1:51", "Grid along the second direction, MIN:MAX:NUM.")
    direction: str = setting("random", "random, pca (the run's trajectory), or "
                                       "interpolate:CHECKPOINT.")
    norm: str = setting("filter", "Direction normalization: filter, layer, weight, none.")
    ignore: str = setting("biasbn", "biasbn (zero bias/BN directions) or none.")
    kind: str = setting("weights", "weights, or states (BatchNorm running statistics too).")
    orthogonal: bool = setting(False, "Make the second direction orthogonal to the first.")
    splits: str = setting("train", "train, test or both.")
    subset: int | None = subset_setting(None)
    batch_size: int = batch_size_setting(4096)
    bn_mode: str = bn_mode_setting()
    seed: int = seed_setting("the random directions and the subset")
    chunk: int = setting(32, "Grid points per saved chunk (the unit of resume).")
    workers: int = setting(1, "Processes evaluating grid chunks under --executor local (the warm "
                              "process pool); other executors use their own workers.")
    vectorize: str = setting("auto", "loop (one point at a time), vmap (many per call), auto "
                                     "(vmap on GPU).")
    points_per_call: int | None = setting(None, "Grid points per vectorized call (default: as "
                                                "many as fit in memory_budget_mb).")
    memory_budget_mb: float = setting(1024.0, "Memory for one vectorized call of grid points.")

    def __post_init__(self) -> None:
        object.__setattr__(self, "splits", ",".join(parse_splits(self.splits)))
        nums = [grid_spec(self.x)[2], *([grid_spec(self.y)[2]] if self.dim == 2 else [])]
        points = math.prod(nums)
        check_allocation(f"a grid of {' × '.join(f'{n:,}' for n in nums)} points",
                         grid_bytes(points, len(parse_splits(self.splits))),
                         "use fewer points (e.g. --x -1:1:51 --y -1:1:51)")
        if points > MAX_POINTS:  # each point is a full pass over the data: weeks of work, GBs of results
            raise ConfigError(
                f"a grid of {' × '.join(f'{n:,}' for n in nums)} = {points:,} points is more than {MAX_POINTS:,}, "
                f"each a pass over the data (results alone ~{grid_bytes(points, len(parse_splits(self.splits))) / 2**30:.1f} GiB); "
                "use fewer points (e.g. --x -1:1:51 --y -1:1:51)"
            )
        check_settings(self, [
            (self.dim in (1, 2), f"dim must be 1 or 2, got {self.dim}"),
            (self.direction in ("random", "pca") or self.direction.startswith("interpolate:"),
             f"direction must be one of {', '.join(DIRECTIONS)}, got {self.direction!r}"),
            (self.vectorize in ("auto", "loop", "vmap"), f"vectorize must be auto, loop or vmap, got {self.vectorize!r}"),
            (not (self.vectorize == "vmap" and self.bn_mode == "train"), "vectorize=vmap needs bn_mode=eval"),
            (self.points_per_call is None or self.points_per_call >= 1,
             f"points_per_call must be ≥ 1, got {self.points_per_call}"),
            (self.memory_budget_mb > 0, f"memory_budget_mb must be > 0, got {self.memory_budget_mb}"),
            (self.chunk >= 1 and self.workers >= 1, "chunk and workers must be ≥ 1"),
        ])

    @property
    def shape(self) -> tuple[int, ...]:
        nx = grid_spec(self.x)[2]
        return (nx,) if self.dim == 1 else (nx, grid_spec(self.y)[2])


# ---- evaluation -------------------------------------------------------------------------------


def evaluate_points(
    model: nn.Module,
    base: dict[str, torch.Tensor],
    directions: list[dict[str, torch.Tensor]],
    coefficients: np.ndarray,
    x: Any,
    y: torch.Tensor | None,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    batch_size: int = 4096,
    bn_mode: str = "eval",
    output_fn: OutputFn | None = None,
    task: str | Task = "classification",
) -> tuple[np.ndarray, np.ndarray]:
    """Mean loss and accuracy over ``(x, y)`` (or over the samples ``x`` when ``y`` is ``None``: a
    ``Split`` or a streamed :class:`~landscape.core.data.Stream`, read batch by batch) at
    ``base + Σ_i c_i d_i`` for each row ``c`` of
    ``coefficients`` (P × k); the model's own tensors are never modified. ``loss`` and the
    accuracy read :func:`landscape.outputs.logits_of` of the model's output (or ``output_fn``'s);
    the accuracy is ``task``'s (:func:`landscape.tasks.correct_count`: token accuracy for LMs)."""
    losses, accs = np.empty(len(coefficients)), np.empty(len(coefficients))
    with torch.no_grad():
        for p, coeffs in enumerate(coefficients):
            state = perturbed_state(base, directions, coeffs)
            total, correct, count, n = 0.0, 0, 0, 0
            for xb, yb in iter_batches(x, y, batch_size):
                n += len(yb)
                logits = logits_at(model, state, xb, bn_mode=bn_mode, output_fn=output_fn, keep=list(directions[0]))
                total += float(loss(logits, yb).double().sum())
                c, k = correct_count(logits, yb, task)
                correct, count = correct + int(c), count + k
            losses[p], accs[p] = total / n, (correct / count if count else float("nan"))
    return losses, accs


def evaluate_points_vmapped(
    model: nn.Module,
    base: dict[str, torch.Tensor],
    directions: list[dict[str, torch.Tensor]],
    coefficients: np.ndarray,
    x: Any,
    y: torch.Tensor | None,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    batch_size: int = 4096,
    points_per_call: int | None = 16,
    memory_budget_mb: float = 1024.0,
    output_fn: OutputFn | None = None,
    task: str | Task = "classification",
) -> tuple[np.ndarray, np.ndarray]:
    """As :func:`evaluate_points` (eval mode), with ``points_per_call`` grid points evaluated in one
    ``torch.func.vmap`` over stacked perturbed tensors: what keeps a GPU busy on a small model.
    Memory grows with ``points_per_call × (parameters + activations of a batch)``; with
    ``points_per_call=None`` that product is kept under ``memory_budget_mb``."""
    names = [n for n in directions[0] if base[n].is_floating_point()]
    fixed = {k: v for k, v in base.items() if k not in names}
    coeffs_all = torch.as_tensor(coefficients, dtype=base[names[0]].dtype, device=base[names[0]].device)

    def logits_at(stacked: dict[str, torch.Tensor], xb: torch.Tensor) -> torch.Tensor:
        return logits_of(call(model, {**fixed, **stacked}, xb), output_fn)

    batched = torch.func.vmap(logits_at, in_dims=(0, None))
    if points_per_call is None:
        per_point = _bytes_per_point(model, base, names, next(iter_batches(x, y, batch_size))[0])
        points_per_call = max(1, int(memory_budget_mb * 2**20 // per_point))
    losses, accs = [], []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(coeffs_all), points_per_call):
                c = coeffs_all[start : start + points_per_call]
                stacked = {}
                for n in names:
                    value = base[n].unsqueeze(0).expand(len(c), *base[n].shape)
                    for i, d in enumerate(directions):
                        value = value + c[:, i].view(-1, *[1] * base[n].ndim) * d[n]
                    stacked[n] = value
                total = torch.zeros(len(c), dtype=torch.float64, device=c.device)
                correct = torch.zeros(len(c), dtype=torch.long, device=c.device)
                count, n = 0, 0
                for xb, yb in iter_batches(x, y, batch_size):
                    n += len(yb)
                    logits = batched(stacked, xb)  # points × batch × (tokens ×) classes
                    total += torch.stack([loss(lg, yb).double().sum() for lg in logits])
                    ck, k = correct_count(logits, yb, task)
                    correct += ck
                    count += k
                losses.append((total / n).cpu().numpy())
                accs.append((correct.double() / count).cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(losses), np.concatenate(accs)


def _bytes_per_point(model: nn.Module, base: dict[str, torch.Tensor], names: list[str], xb: torch.Tensor) -> int:
    """Memory of one grid point in a vectorized call: its perturbed tensors plus the activations of
    one batch (every module's output, measured by one forward pass with hooks)."""
    sizes: list[int] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: sizes.append(out.numel() * out.element_size())
                                     if isinstance(out, torch.Tensor) else None)
             for m in model.modules()]
    try:
        with torch.no_grad():
            call(model, base, xb)
    finally:
        for h in hooks:
            h.remove()
    return sum(base[n].numel() * base[n].element_size() for n in names) + sum(sizes)


def _evaluator(cfg: SurfaceConfig, device: torch.device, output_fn: OutputFn | None = None,
               task: str | Task = "classification") -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    vmap = cfg.vectorize == "vmap" or (cfg.vectorize == "auto" and device.type == "cuda" and cfg.bn_mode == "eval")
    if vmap:
        return lambda *a: evaluate_points_vmapped(*a, batch_size=cfg.batch_size, points_per_call=cfg.points_per_call,
                                                  memory_budget_mb=cfg.memory_budget_mb, output_fn=output_fn,
                                                  task=task)
    return lambda *a: evaluate_points(*a, batch_size=cfg.batch_size, bn_mode=cfg.bn_mode, output_fn=output_fn,
                                      task=task)


def _chunks(n: int, size: int) -> list[np.ndarray]:
    return [np.arange(s, min(s + size, n)) for s in range(0, n, size)]


def _split_data(ctx: ProbeContext, cfg: SurfaceConfig) -> dict[str, tuple[Any, torch.Tensor | None]]:
    """``{split: (x, y)}`` on the device: the (fixed subset of the) split in memory, or a streamed
    split with ``y`` None (read batch by batch at every grid point). Made once per context."""
    key = f"surface:data:{cfg.splits}:{cfg.subset}:{cfg.seed}"
    if key in ctx.cache:
        return ctx.cache[key]
    data = {}
    for split in parse_splits(cfg.splits):
        s = ctx.split(split)
        check_subset(cfg, len(s), f"the {split} split has {len(s)}")
        if is_stream(s) and cfg.subset is None:
            data[split] = (s.to(ctx.device), None)
            continue
        taken = s if cfg.subset is None else s.take(fixed_subset(len(s), cfg.subset, cfg.seed))
        data[split] = (taken.x.to(ctx.device), taken.y.to(ctx.device))
    ctx.cache[key] = data
    return data


def evaluate_chunk(ctx: ProbeContext, shared: dict[str, Any],
                   item: tuple[SurfaceConfig, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """One chunk of the grid (:meth:`ProbeContext.map_chunks`): ``item = (cfg, coefficients)``,
    ``shared = {"base": θ's tensors, "directions": [d₀, (d₁)]}`` → ``{split: (losses, accuracies)}``."""
    cfg, coefficients = item
    task = getattr(ctx.data.train, "task", "classification")
    evaluate = _evaluator(cfg, ctx.device, ctx.output_fn, task)
    return {split: evaluate(ctx.model, shared["base"], shared["directions"], coefficients, x, y, ctx.loss)
            for split, (x, y) in _split_data(ctx, cfg).items()}


# ---- the probe ---------------------------------------------------------------------------------


def _directions(ctx: ProbeContext, cfg: SurfaceConfig) -> tuple[list[dict[str, torch.Tensor]], dict[str, Any]]:
    extra: dict[str, Any] = {}
    model = ctx.model
    if cfg.direction == "random":
        dirs = [D.filter_normalized_direction(model, kind=cfg.kind, norm=cfg.norm, ignore=cfg.ignore, seed=cfg.seed + i)
                for i in range(cfg.dim)]
        if cfg.dim == 2 and cfg.orthogonal:
            dirs[1] = D.orthogonalize(dirs[1], dirs[0])
    elif cfg.direction.startswith("interpolate:"):
        other = ctx.resolve_checkpoint(cfg.direction.split(":", 1)[1])
        theta = D.target_tensors(model, cfg.kind)
        other_state = {k: v.to(ctx.device) for k, v in other.items() if k in theta}
        dirs = [D.interpolation_direction(theta, other_state)]
        if cfg.dim == 2:
            dirs.append(D.filter_normalized_direction(model, kind=cfg.kind, norm=cfg.norm, ignore=cfg.ignore, seed=cfg.seed))
    else:  # pca
        if ctx.load_trajectory is None:
            raise ConfigError("direction 'pca' needs a RUN_DIR (it uses the run's checkpoint trajectory)")
        trajectory, steps = ctx.load_trajectory(cfg.kind)
        final = D.target_tensors(model, cfg.kind)
        pca = pca_directions([{k: v.to(ctx.device) for k, v in t.items()} for t in trajectory], final,
                               ignore=cfg.ignore, steps=steps)
        dirs = [pca.d0, pca.d1][: cfg.dim]
        extra = {"trajectory": np.asarray(pca.coords), "explained_variance_ratio": np.asarray(pca.explained_variance_ratio),
                 "trajectory_steps": np.asarray(steps)}
    return dirs, extra


@register_probe(
    "surface", SurfaceConfig, summary=("origin_loss",), figure="surface", unit="grid points",
    work=lambda cfg: math.prod(cfg.shape), cli_names={"splits": ("--split",)}, chunked=True,
    cli_help="Loss and accuracy on a 1D line or 2D plane through the weights (Li et al. 2018); resumes by itself.")
def run_surface(ctx: ProbeContext, cfg: SurfaceConfig) -> dict[str, Any]:
    """Loss/accuracy over the grid; resumes from ``ctx.partial`` and reports chunks through ``ctx.save_partial``."""
    xs = parse_grid(cfg.x)
    ys = parse_grid(cfg.y) if cfg.dim == 2 else None
    shape = cfg.shape
    grid = np.stack(np.meshgrid(xs, ys, indexing="ij"), -1).reshape(-1, 2) if ys is not None else xs[:, None]
    splits = parse_splits(cfg.splits)
    _split_data(ctx, cfg)  # checked (and made) before any work

    partial = ctx.partial or {}
    if "directions" in partial:  # resume with exactly the stored directions
        like = D.target_tensors(ctx.model, cfg.kind)
        dirs = [D.unflatten(torch.as_tensor(partial["directions"][f"d{i}"]).to(ctx.device), like) for i in range(cfg.dim)]
        extra = {k: partial[k] for k in ("trajectory", "explained_variance_ratio", "trajectory_steps") if k in partial}
    else:
        dirs, extra = _directions(ctx, cfg)
    base = {k: v.detach() for k, v in [*ctx.model.named_parameters(), *ctx.model.named_buffers()]}
    base = {k: v.to(ctx.device) for k, v in base.items()}

    n = len(grid)
    done = np.asarray(partial.get("done", np.zeros(shape, dtype=np.uint8))).reshape(-1).astype(bool)
    values = {f"{s}_{m}": np.asarray(partial.get(f"{s}_{m}", np.full(shape, np.nan))).reshape(-1).copy()
              for s in splits for m in ("loss", "acc")}
    result_dirs = {f"d{i}": D.flatten(d).cpu().numpy() for i, d in enumerate(dirs)}

    def snapshot() -> dict[str, Any]:
        out: dict[str, Any] = {"xcoords": xs, **({"ycoords": ys} if ys is not None else {})}
        out.update({k: v.reshape(shape) for k, v in values.items()})
        out["done"] = done.reshape(shape).astype(np.uint8)
        out["directions"] = result_dirs
        out.update(extra)
        return out

    todo = [c for c in _chunks(n, cfg.chunk) if not done[c].all()]
    ctx.advance(int(done.sum()))

    def record(points: np.ndarray, by_split: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
        for split, (loss_v, acc_v) in by_split.items():
            values[f"{split}_loss"][points] = loss_v
            values[f"{split}_acc"][points] = acc_v
        done[points] = True
        ctx.advance(int(done.sum()))
        ctx.save_partial(snapshot())

    shared = {"base": base, "directions": dirs}
    chunks = ctx.map_chunks(evaluate_chunk, shared, [(cfg, grid[c]) for c in todo], workers=cfg.workers)
    with closing(chunks):  # left early (an interrupt): the chunks still out are cancelled now
        for index, by_split in chunks:
            record(todo[index], by_split)  # as each comes back: saved, the unit of resume

    out = snapshot()
    origin = np.argmin(np.abs(grid).sum(1))
    out["origin_loss"] = float(values[f"{splits[0]}_loss"][origin])
    return out
