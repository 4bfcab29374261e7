"""One call per probe on a model you already have in memory: ``import landscape as ls``.

>>> res = ls.hessian(model, nn.CrossEntropyLoss(), (x, y), top_k=5)
>>> res["eigenvalues"], res["trace"]
>>> res.save("mine.h5"); res.plot("plots/")

``data`` is the training data (``test=`` the held-out data, for probes that use both): a tuple
``(x, y)`` of tensors or numpy arrays, a map-style torch ``Dataset`` of ``(x, y)`` items, or any
iterable of ``(x, y)`` batches (a ``DataLoader``). It is used as given — no normalization, integer
inputs stay integer — and what it was is recorded with the results.

Hugging Face style dict batches work the same way: a DataLoader (or iterable) of Mapping batches,
a Dataset of Mapping items, or one dict of tensors. ``target_key="labels"`` (a keyword) names the
targets; the other keys (``input_ids``, ``attention_mask``, …) are the model's keyword inputs, so
the model is called as ``model(**inputs)`` — the user's module itself, no wrapper, so parameter and
layer names (``layer="classifier"``) are the model's own. ``x`` of an ``(x, y)`` pair may be such
a dict too.

>>> loader = DataLoader(hf_dataset, batch_size=32)   # {"input_ids", "attention_mask", "labels"}
>>> ls.hessian(bert, nn.CrossEntropyLoss(), loader, top_k=3)
>>> ls.coherence(bert, nn.CrossEntropyLoss(), loader)   # one example = one sequence

A Dataset, a DataLoader or an iterable of batches is streamed batch by batch in a fixed order
(:mod:`landscape.core.data`; a shuffling loader is read in index order, recorded), never gathered:
each batch may be padded to its own length; only the fixed subsets a probe asks for are gathered.

``task=`` (:mod:`landscape.tasks`): ``"classification"`` (default; logits ``[N, C]``, labels
``(N,)``), ``"causal_lm"`` or ``"token_classification"`` (logits ``[N, T, C]``, token targets
``[N, T]``, ``-100`` ignored; ``causal_lm`` shifts: the targets are the input ids, position ``t``
predicts ``t + 1``), ``"regression"`` (float targets ``(N,)`` / ``(N, D)``, e.g. ``nn.MSELoss()``
averaged per sample; no accuracy). For a token task ``loss`` is the per-token loss on ``(logits[M, C], y[M])``
(e.g. ``nn.CrossEntropyLoss()``); the task masks, shifts and reduces it: the dataset mean is the
token-weighted mean over the training split's valid tokens, one sequence is one sample, and the
accuracy is token accuracy (the convention and its subset approximation: :mod:`landscape.tasks`).

>>> ls.hessian(gpt2, nn.CrossEntropyLoss(), (ids, labels), task="causal_lm", top_k=3)

The model may return a tensor, a tuple (its first element is the logits), or a mapping / object
with ``logits`` (a Hugging Face output); ``output_fn(output) -> logits`` for anything else. The
loss receives the logits tensor. The representation probes (collapse, rankme, dse) read the input
of ``layer=`` (default: the last linear layer's) by a forward hook, pooled over tokens for a
sequence model with ``pool="mean"`` (over the attention mask) or ``"last"``; or
``features_fn(model, x) -> [N, D]`` gives them any features.

``loss`` may be per-sample (``reduction="none"``) or mean-reduced: a module with a ``reduction``
attribute is copied with ``reduction="none"``; any other mean loss is applied sample by sample
with ``torch.vmap``. Settings are the probe's config fields as keywords (``landscape probes``,
or the config dataclasses in :mod:`landscape.probes`), or ``config=`` a config object.

The model is not changed: it is evaluated functionally, in eval mode, on ``device`` (a copy is
moved there when it lives elsewhere); its train/eval mode is restored afterwards.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from landscape.analyze.chunks import context_runner
from landscape.batch import InputBatch, forward
from landscape.core.loss import per_sample_loss, regression_loss, task_loss  # noqa: F401 (re-exported)
from landscape.errors import ConfigError
from landscape.outputs import logits_of
from landscape.probes import PROBES, ProbeContext, make_config
from landscape.store import Store, group_name, settings_hash
from landscape.tasks import get_task
from landscape.user_data import as_dataset
from landscape.utils import keep_global_rng, resolve_device, seed_global_rng, versions
from landscape.weights import check_finite_weights

PROBE_NAMES = ("hessian", "surface", "sharpness", "coherence", "collapse", "rankme", "dse", "measures")


class Result(Mapping):
    """A probe's result: reads like a mapping of the arrays it stores (``res["eigenvalues"]``).

    ``attrs`` holds what :meth:`save` writes beside them (settings and their hash, versions,
    device, data and loss description, the model's sha256).
    """

    def __init__(self, probe: str, arrays: dict[str, Any], attrs: dict[str, Any]) -> None:
        self.probe = probe
        self.arrays = arrays
        self.attrs = attrs

    def __getitem__(self, key: str) -> Any:
        value: Any = self.arrays
        for part in key.split("/"):
            if not isinstance(value, Mapping) or part not in value:
                raise KeyError(f"{self.probe} result has no {key!r}; it has: {', '.join(self.arrays)}")
            value = value[part]
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self.arrays)

    def __len__(self) -> int:
        return len(self.arrays)

    def __repr__(self) -> str:
        return f"<landscape {self.probe} result: {', '.join(self.arrays)}>"

    def save(self, path: str | Path, name: str = "model", *, overwrite: bool = False) -> Path:
        """Write ``/<name>/<probe>`` into the HDF5 file ``path`` (the schema ``landscape analyze``
        writes, readable by ``landscape plot`` and ``ls.load_results``). A group already stored
        there is kept unless ``overwrite``."""
        from landscape.analyze import _storable

        store = Store(path)
        group = f"{group_name(name)}/{self.probe}"
        if not overwrite and group in store.groups():
            raise ConfigError(f"{store.path} already holds {group}; pass overwrite=True or another name")
        store.write(group, _storable(self.arrays), self.attrs,
                    {"name": name, "model_sha256": self.attrs["model_sha256"]})
        return store.path

    def plot(self, folder: str | Path = "plots", formats: tuple[str, ...] = ("png",)) -> list[Path]:
        """Draw this result's figures into ``folder`` (through a results file written beside them)."""
        from landscape.figures import probe_figures

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f".{self.probe}-{time.time_ns()}.h5"
        try:
            self.save(path)
            return probe_figures(path, self.probe, folder, formats)
        finally:
            path.unlink(missing_ok=True)


def _describe_loss(loss: Any) -> dict[str, Any]:
    spec = getattr(loss, "spec", None)
    if callable(spec):
        return spec()
    return {"name": type(loss).__name__ if isinstance(loss, nn.Module) else getattr(loss, "__name__", repr(loss)),
            "params": {"reduction": getattr(loss, "reduction", None)}}


def model_sha256(model: nn.Module) -> str:
    """SHA-256 over the model's state dict (names, dtypes, shapes and bytes, in order)."""
    h = hashlib.sha256()
    for name, value in model.state_dict().items():
        t = value.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# ---- one call per probe ------------------------------------------------------------------------


def run(probe: str, model: nn.Module, loss: Callable, data: Any, *, test: Any = None, config: Any = None,
        device: str | torch.device = "auto", output_fn: Callable[[Any], torch.Tensor] | None = None,
        target_key: str = "labels", task: str = "classification",
        features_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None, **settings: Any) -> Result:
    """Run ``probe`` on an in-memory ``model`` with the user's ``loss`` and ``data`` (``task``: see
    :mod:`landscape.facade`)."""
    spec = PROBES[probe]
    if config is not None and settings:
        raise ConfigError(f"give {probe} settings as keywords or as config=, not both")
    cfg = config if config is not None else make_config(spec.name, **settings)
    if not isinstance(cfg, spec.config):
        raise ConfigError(f"probe {probe!r} takes a {spec.config.__name__}, got {type(cfg).__name__}")
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    dev = resolve_device(device)
    t = get_task(task)
    dataset = as_dataset(data, test, target_key=target_key, task=t)
    if "test" in str(getattr(cfg, "splits", getattr(cfg, "split", ""))).replace("both", "test") and not len(dataset.test):
        raise ConfigError(f"{probe} is set to use the test split; pass test=(x, y) or choose splits='train'")
    check_finite_weights(model, "the model")
    on_device = next((p.device for p in model.parameters()), dev) == dev
    work = model if on_device else copy.deepcopy(model).to(dev)
    was_training = model.training
    work.eval()
    try:
        parts = (work, loss, dataset, t, dev, output_fn, features_fn)
        ctx = _context(*parts)
        per_sample = ctx.loss
        ctx.chunk_runner = context_runner(_context, parts, what=spec.name)  # workers rebuild it alike
        start = time.perf_counter()
        with keep_global_rng(dev):  # the probe's draws are seeded; the caller's RNG is left as it was
            seed_global_rng(getattr(cfg, "seed", 0), dev)
            arrays = spec.run(ctx, cfg)
        seconds = time.perf_counter() - start
    finally:
        model.train(was_training)
        work.train(was_training)
    settings_dict = dataclasses.asdict(cfg)
    attrs = {"probe": spec.name, "settings": settings_dict, "settings_hash": settings_hash(settings_dict),
             "versions": versions(), "device": str(dev),
             "data": {"dataset": "user", "n_train": len(dataset.train), "n_test": len(dataset.test),
                      "input_dtype": str(dataset.train.sample_inputs.dtype).removeprefix("torch."),
                      "normalization": dataset.normalization, "source": dataset.info["source"],
                      **({"inputs": dataset.info["inputs"]} if "inputs" in dataset.info else {}),
                      **({"task": {**dataset.info["task"], **({"token_scale": per_sample.scale} if t.tokens else {})}}
                         if "task" in dataset.info else {})},
             "loss": _describe_loss(loss), "seconds": seconds, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
             "complete": True, "model_sha256": model_sha256(model)}
    return Result(spec.name, arrays, attrs)


def _context(work: nn.Module, loss: Callable, dataset: Any, t: Any, dev: torch.device,
             output_fn: Callable[[Any], torch.Tensor] | None,
             features_fn: Callable[[nn.Module, Any], torch.Tensor] | None) -> ProbeContext:
    """The probe context of the model ``work`` (on ``dev``, in eval mode) and the user's ``loss``
    and ``dataset``: the per-sample loss read from the model's output on two samples. Module-level,
    so that a chunk worker builds the same context from a pickled copy of these parts."""
    with torch.no_grad():
        first = dataset.train.take(torch.arange(min(2, len(dataset.train)))).to(dev)
        logits = logits_of(_first_call(work, first.x), output_fn)
    per_sample = task_loss(loss, logits, first.y, t, dataset)
    return ProbeContext(model=work, loss=per_sample, data=dataset, device=dev, output_fn=output_fn,
                        features_fn=features_fn)


def _first_call(model: nn.Module, sample: Any) -> Any:
    """The model on two samples; a model that does not take a dict batch's keys says so in one line."""
    if not isinstance(sample, InputBatch):
        return forward(model, sample)
    try:
        return forward(model, sample)
    except TypeError as exc:
        raise ConfigError(f"the model does not take the dict batch's keys {', '.join(sample.keys())} as keyword "
                          f"inputs ({str(exc).splitlines()[0]}); name the targets with target_key= or give "
                          "(x, y) tensors") from None


_MISSING = object()  # no data given: ls.hessian(model, loader) left the loss out


def _facade(probe: str) -> Callable[..., Result]:
    def call(model: nn.Module, loss: Callable, data: Any = _MISSING, *, test: Any = None, config: Any = None,
             device: str | torch.device = "auto", output_fn: Callable[[Any], torch.Tensor] | None = None,
             target_key: str = "labels", task: str = "classification",
        features_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None, **settings: Any) -> Result:
        if data is _MISSING:
            raise ConfigError(f"ls.{probe}(model, loss, data): pass the loss before the data, e.g. "
                              f"ls.{probe}(model, torch.nn.CrossEntropyLoss(), loader)")
        return run(probe, model, loss, data, test=test, config=config, device=device, output_fn=output_fn,
                   target_key=target_key, task=task, features_fn=features_fn, **settings)

    cfg = PROBES[probe].config
    fields = ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(cfg)
                       if f.default is not dataclasses.MISSING)
    call.__name__ = call.__qualname__ = probe
    call.__doc__ = (f"Run the {probe} probe on ``model`` with ``loss`` over ``data`` (see :mod:`landscape.facade`).\n\n"
                    f"Settings ({cfg.__name__}): {fields}.\n\n{(PROBES[probe].run.__doc__ or '').strip()}")
    return call


hessian = _facade("hessian")
surface = _facade("surface")
sharpness = _facade("sharpness")
coherence = _facade("coherence")
collapse = _facade("collapse")
rankme = _facade("rankme")
dse = _facade("dse")
measures = _facade("measures")
