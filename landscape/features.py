"""Feature extraction for the representation probes (neural collapse, RankMe, DSE).

:func:`extract_features` runs a model over inputs in ``eval()`` mode, without
gradients and in batches, and returns what a named module *receives* (its input,
read by a forward pre-hook) together with the model's logits. The default module
is the last :class:`torch.nn.Linear` in ``model.modules()`` order — ``classifier``
for every model in :mod:`landscape.models` — so the default features are the
penultimate features ``h`` of Papyan, Han & Donoho (2020), exactly what the
authors' analysis code reads with a forward hook on the classifier.

:func:`find_classifier` returns the weight ``W`` (``C × D``) and bias of that
layer, the classifier the neural-collapse measures NC2–NC4 compare ``h`` with.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from landscape.batch import InputBatch, forward
from landscape.core.data import is_stream, samples_args, select
from landscape.core.subsets import fixed_subset, parse_splits
from landscape.errors import ConfigError, LandscapeError
from landscape.outputs import OutputFn, logits_of

__all__ = ["extract_features", "find_classifier", "find_module"]

_MAX_NAMES_LISTED = 12


def _last_linear_name(model: nn.Module) -> str:
    name = None
    for n, m in model.named_modules():
        if isinstance(m, nn.Linear):
            name = n
    if name is None:
        raise ConfigError(
            f"{type(model).__name__} has no nn.Linear layer; name the layer whose input to read, "
            f"one of: {', '.join(_module_names(model)[-_MAX_NAMES_LISTED:]) or '(no submodules)'}"
        )
    return name


def _module_names(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_modules() if n]


def find_module(model: nn.Module, name: str | None = None) -> tuple[str, nn.Module]:
    """The module called ``name`` (dotted path as in ``model.named_modules()``), or the last
    ``nn.Linear`` when ``name`` is ``None``; returns ``(name, module)``.

    An unknown name raises :class:`ConfigError` listing close matches and a few valid names.
    """
    if name is None:
        name = _last_linear_name(model)
    modules = dict(model.named_modules())
    if name not in modules or name == "":
        names = _module_names(model)
        close = difflib.get_close_matches(name, names, n=3)
        hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
        shown = names if len(names) <= _MAX_NAMES_LISTED else [*names[:6], "…", *names[-5:]]
        raise ConfigError(
            f"unknown layer {name!r} in {type(model).__name__}; {hint}"
            f"valid module names ({len(names)}): {', '.join(shown)}"
        )
    return name, modules[name]


def find_classifier(model: nn.Module, name: str | None = None) -> tuple[Tensor, Tensor | None]:
    """Weight (``C × D``) and bias (``C``, or ``None``) of the last ``nn.Linear`` of ``model``,
    or of the ``nn.Linear`` called ``name``; detached, on the parameters' device and dtype."""
    name, module = find_module(model, name)
    if not isinstance(module, nn.Linear):
        raise ConfigError(
            f"layer {name!r} is a {type(module).__name__}, not an nn.Linear; "
            f"the classifier must be a linear layer (default: the last one, {_last_linear_name(model)!r})"
        )
    bias = None if module.bias is None else module.bias.detach()
    return module.weight.detach(), bias


def extract_features(
    model: nn.Module,
    x: Tensor,
    *,
    layer: str | None = None,
    batch_size: int = 1024,
    device: torch.device | str | None = None,
    output_fn: OutputFn | None = None,
    pool: str = "flatten",
    features_fn: FeaturesFn | None = None,
) -> tuple[Tensor, Tensor]:
    """Features at the input of ``layer`` and the logits of ``model`` on inputs ``x``.

    Args:
        model: any module; it is run in ``eval()`` mode under ``torch.no_grad()`` and its
            training mode (and device, if ``device`` moves it) is restored afterwards.
        x: inputs, ``N × …`` (e.g. a :class:`~landscape.datasets.Split`'s ``x``).
        layer: dotted module name (``model.named_modules()``) whose **input** is read by a
            forward pre-hook; ``None`` → the last ``nn.Linear`` (``classifier`` for our
            models), i.e. the penultimate features.
        batch_size: inputs per forward pass.
        device: where to run; ``None`` → the device of the model's first parameter (CPU for
            a parameter-free model).
        output_fn: model output → logits; ``None`` → :func:`landscape.outputs.logits_of`'s rule
            (a tensor, a tuple's first element, or ``.logits`` / ``["logits"]``).
        pool: for per-token features ``N × T × D`` (a sequence model's layer input):
            ``flatten`` (``N × T·D``), ``mean`` (over the tokens the batch's ``attention_mask``
            marks, all tokens without one) or ``last`` (the last such token) → ``N × D``
            (:func:`pool_tokens`). Features with no token axis are left as they are.
        features_fn: ``features_fn(model, xb) → N × D`` in place of the hook on ``layer``
            (called in eval mode under ``no_grad``, after the forward pass giving the logits).

    Returns:
        ``(features, logits)``: ``features`` is ``N × D`` (the module input flattened per
        sample, or pooled), ``logits`` ``N × C``; both on ``device``, in the model's dtype.

    Raises:
        ConfigError: unknown ``layer`` (the message lists valid module names) or bad ``batch_size``.
        LandscapeError: the module is not called exactly once per forward pass, or the model
            output holds no logits tensor (:class:`landscape.outputs.OutputError`).
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be ≥ 1, got {batch_size}")
    if pool not in POOLS:
        raise ConfigError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
    name, module = find_module(model, layer)
    params = list(model.parameters()) + list(model.buffers())
    home = params[0].device if params else torch.device("cpu")
    device = home if device is None else torch.device(device)

    captured: list[Tensor] = []

    def hook(_module: nn.Module, args: tuple) -> None:
        if not args or not isinstance(args[0], Tensor):
            raise LandscapeError(f"layer {name!r} was called without a tensor as first input")
        captured.append(args[0].detach())

    was_training = model.training
    handle = module.register_forward_pre_hook(hook) if features_fn is None else None
    moved = device != home
    feats: list[Tensor] = []
    logits: list[Tensor] = []
    try:
        if moved:
            model.to(device)
        model.eval()
        with torch.no_grad():
            for xb in _input_batches(x, batch_size):
                xb = xb.to(device)
                captured.clear()
                out = logits_of(forward(model, xb), output_fn)
                if features_fn is not None:
                    captured.append(_user_features(features_fn, model, xb))
                if len(captured) != 1:
                    raise LandscapeError(
                        f"layer {name!r} ran {len(captured)} times in one forward pass; "
                        "name a module that is called exactly once"
                    )
                mask = xb["attention_mask"] if isinstance(xb, InputBatch) and "attention_mask" in list(xb.keys()) else None
                feats.append(pool_tokens(captured[0], pool, mask).reshape(xb.shape[0], -1))
                logits.append(out.reshape(xb.shape[0], -1))
    finally:
        if handle is not None:
            handle.remove()
        model.train(was_training)
        if moved:
            model.to(home)
    if not feats:
        raise ConfigError("extract_features got no inputs (x has 0 rows)")
    return torch.cat(feats), torch.cat(logits)


POOLS = ("flatten", "mean", "last")
FeaturesFn = Callable[[nn.Module, Any], Tensor]


def pool_tokens(features: Tensor, pool: str, mask: Tensor | None = None) -> Tensor:
    r"""Per-token features ``N × T × …`` as one vector per sequence.

    ``mean``: :math:`\frac{1}{\sum_t m_t}\sum_t m_t h_t` with ``m`` the attention mask (1 = a real
    token; all ones without a mask); ``last``: ``h_{t*}``, ``t*`` the last position with
    ``m_t = 1`` (position ``T − 1`` without a mask); ``flatten`` (or features with fewer than 3
    dimensions): unchanged.
    """
    if pool == "flatten" or features.ndim < 3:
        return features
    n, t = features.shape[:2]
    if mask is None or tuple(mask.shape) != (n, t):
        mask = torch.ones(n, t, dtype=features.dtype, device=features.device)
    m = mask.to(features.dtype).reshape(n, t, *[1] * (features.ndim - 2))
    if pool == "mean":
        return (features * m).sum(1) / m.sum(1).clamp_min(1)
    positions = torch.arange(t, device=features.device).expand(n, t)
    last = torch.where(mask.bool(), positions, torch.zeros_like(positions)).amax(1)
    return features[torch.arange(n, device=features.device), last]


def _user_features(features_fn: FeaturesFn, model: nn.Module, xb: Any) -> Tensor:
    try:
        out = features_fn(model, xb)
    except Exception as exc:
        raise ConfigError(f"features_fn failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    if not isinstance(out, Tensor) or out.ndim < 1 or out.shape[0] != len(xb):
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ConfigError(f"features_fn must return a tensor with one row per sample ({len(xb)}), got {shape}")
    return out.detach()


@dataclass(frozen=True)
class FeatureSettings:
    """Which features a representation probe reads: the input of ``layer`` (default: the
    classifier's; or what the context's ``features_fn`` returns), on each of ``splits``, for a
    fixed seeded subset of ``samples`` points; per-token features pooled by ``pool``."""

    layer: str | None = field(default=None, metadata={"help": "Module whose input is the feature "
                                                              "(default: the classifier)."})
    splits: str = field(default="train,test", metadata={"help": "train, test or both."})
    samples: int | None = field(default=None, metadata={"help": "A fixed subset of N samples per "
                                                                "split (default: all)."})
    batch_size: int = field(default=1024, metadata={"help": "Samples per forward pass."})
    seed: int = field(default=0, metadata={"help": "Seed of the sample subset."})
    pool: str = field(default="flatten", metadata={"help": "Per-token features: flatten, mean or "
                                                           "last."})

    def __post_init__(self) -> None:
        if self.pool not in POOLS:
            raise ConfigError(f"pool must be one of {', '.join(POOLS)}, got {self.pool!r}")
        object.__setattr__(self, "splits", ",".join(parse_splits(self.splits)))  # "both" → "train,test"
        if self.samples is not None and self.samples < 2:
            raise ConfigError(f"samples must be ≥ 2, got {self.samples}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be ≥ 1, got {self.batch_size}")
        # a probe config mixes FeatureSettings with the probe's own config: validate that too
        after = super()
        if hasattr(after, "__post_init__"):
            after.__post_init__()


def _input_batches(x: Any, batch_size: int) -> Iterator[Any]:
    """Input batches of ``x``: slices of a tensor / InputBatch, the inputs of a ``Split`` /
    ``Stream``'s batches, or the items of any other iterator of input batches."""
    if isinstance(x, Tensor | InputBatch):
        for start in range(0, x.shape[0], batch_size):
            yield x[start : start + batch_size]
    elif hasattr(x, "batches"):
        for xb, _ in x.batches(batch_size):
            yield xb
    else:
        yield from x


def split_features(ctx, settings: FeatureSettings) -> dict[str, tuple[Tensor, Tensor, Tensor, Tensor]]:
    """``{split: (features, logits, labels, inputs)}`` for the probe context ``ctx`` (cached per checkpoint).

    ``inputs`` are the samples' input tensor; for a streamed split read whole (``samples=None``)
    it is the stream itself, read again batch by batch by a probe that needs the inputs."""
    out = {}
    for split in parse_splits(settings.splits):
        features_fn = getattr(ctx, "features_fn", None)
        key = f"features:{split}:{settings.layer}:{settings.samples}:{settings.seed}:{settings.pool}:{id(features_fn)}"
        extra = {"pool": settings.pool, "features_fn": features_fn}
        if key not in ctx.cache:
            data = ctx.split(split)
            if is_stream(data) and settings.samples is None:  # streamed: one batch of inputs at a time
                labels: list[Tensor] = []

                def inputs(data=data, labels=labels) -> Iterator[Any]:
                    for xb, yb in data.batches(settings.batch_size):
                        labels.append(yb)
                        yield xb

                feats, logits = extract_features(ctx.model, inputs(), layer=settings.layer,
                                                 batch_size=settings.batch_size, device=ctx.device,
                                                 output_fn=getattr(ctx, "output_fn", None), **extra)
                ctx.cache[key] = (feats, logits, torch.cat(labels).to(feats.device), data)
            else:
                idx = fixed_subset(len(data), settings.samples, settings.seed)
                x, y = select(*samples_args(data), idx)
                feats, logits = extract_features(ctx.model, x, layer=settings.layer,
                                                 batch_size=settings.batch_size, device=ctx.device,
                                                 output_fn=getattr(ctx, "output_fn", None), **extra)
                ctx.cache[key] = (feats, logits, y.to(feats.device), x)
        out[split] = ctx.cache[key]
    return out


def check_finite_features(feats: torch.Tensor, split: str, probe: str) -> None:
    """One line when the features of ``split`` hold NaN/inf: ``probe`` is undefined there."""
    bad = int((~torch.isfinite(feats)).sum())
    if bad:
        raise LandscapeError(
            f"the {split} features hold {bad:,} NaN/inf values (of {feats.numel():,}); {probe} is undefined "
            "at these weights (probe another checkpoint or layer)"
        )
