"""Checkpoints: the RUN_DIR format, safe loading, and model reconstruction.

Weights are stored as safetensors (``checkpoints/step_000500.safetensors``); the trainer's
resume state (optimizer, schedule, RNG) sits beside them in ``step_000500.state.pt`` and is
read with ``torch.load(weights_only=True)``. Nothing here unpickles code.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import pickle
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from landscape.errors import CheckpointError, ConfigError
from landscape.models import build_model

CHECKPOINT_DIR = "checkpoints"
_STEP_RE = re.compile(r"^step_(\d+)\.safetensors$")
_WRAPPER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")
_PREFIXES = ("module.", "_orig_mod.")


# ---- model specs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """How to rebuild a model: a registered ``name`` or a ``factory`` ``"pkg.module:fn"``.

    A registered model is built as ``build_model(name, input_shape, num_classes, **params)``;
    a factory is called as ``fn(**params)`` (plus ``num_classes``/``input_shape`` if it accepts them).
    """

    name: str | None = None
    input_shape: tuple[int, ...] | None = None
    num_classes: int | None = None
    params: dict[str, Any] = field(default_factory=dict)
    factory: str | None = None

    def build(self) -> nn.Module:
        if self.factory:
            return _call_factory(self.factory, self)
        if self.name is None or self.input_shape is None or self.num_classes is None:
            raise ConfigError(
                "a model spec needs a model name, input shape and class count "
                "(e.g. --model resnet20 --input-shape 3,32,32 --num-classes 10) or a --model-factory"
            )
        return build_model(self.name, self.input_shape, self.num_classes, **self.params)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "input_shape": list(self.input_shape) if self.input_shape else None,
            "num_classes": self.num_classes,
            "params": dict(self.params),
            "factory": self.factory,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelSpec:
        shape = d.get("input_shape")
        return cls(
            name=d.get("name"),
            input_shape=tuple(shape) if shape else None,
            num_classes=d.get("num_classes"),
            params=dict(d.get("params") or {}),
            factory=d.get("factory"),
        )


def _call_factory(spec: str, model_spec: ModelSpec) -> nn.Module:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"model factory {spec!r} must look like 'package.module:function'")
    try:
        fn: Callable[..., nn.Module] = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot import model factory {spec!r}: {exc}") from exc
    import inspect

    kwargs = dict(model_spec.params)
    accepted = inspect.signature(fn).parameters
    for key in ("num_classes", "input_shape"):
        value = getattr(model_spec, key)
        if value is not None and key in accepted and key not in kwargs:
            kwargs[key] = value
    model = fn(**kwargs)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model factory {spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


# ---- reading weights safely ------------------------------------------------------------------


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or ``.pt``/``.pth``/``.bin`` without unpickling code.

    Unwraps ``{"state_dict_ema"|"model_ema"|"state_dict"|"model": ...}`` (first found) and strips
    ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) prefixes.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path (or list the run's checkpoints/)")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state: Any = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(
                f"checkpoint {path} is not a readable safetensors file (corrupt or truncated: {exc}); "
                "use another checkpoint or re-save it"
            ) from exc
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            blocked = [ln.strip() for ln in str(exc).splitlines() if "GLOBAL" in ln]
            if not blocked:
                raise CheckpointError(
                    f"checkpoint {path} cannot be read (not a torch checkpoint, or corrupt/truncated); "
                    "use another checkpoint or re-save it"
                ) from exc
            raise CheckpointError(
                f"checkpoint {path} holds pickled objects that safe loading refuses ({blocked[0]}); "
                "if you trust it, load it yourself and save model.state_dict() with "
                "safetensors.torch.save_file or torch.save"
            ) from exc
        except (RuntimeError, EOFError, OSError, ValueError) as exc:
            raise CheckpointError(
                f"checkpoint {path} cannot be read (corrupt or truncated: {str(exc).splitlines()[0]}); "
                "use another checkpoint or re-save it"
            ) from exc
    return _unwrap(state, path)


def _unwrap(state: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(state, Mapping):
        for key in _WRAPPER_KEYS:
            if key in state and isinstance(state[key], Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {path} does not hold a state dict of tensors")
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for prefix in _PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value
    return out


def load_weights(model: nn.Module, state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> nn.Module:
    """Copy ``state`` into ``model`` strictly; a mismatch names exactly which keys differ."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
            if keys:
                shown = ", ".join(keys[:5]) + (f", … ({len(keys)} in all)" if len(keys) > 5 else "")
                parts.append(f"{label}: {shown}")
        raise CheckpointError(
            f"{source} does not fit the model architecture ({'; '.join(parts)}); "
            "check the model spec (name, width, depth, num_classes, batchnorm, …)"
        )
    model.load_state_dict(dict(state), strict=True)
    return model


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---- writing ----------------------------------------------------------------------------------


def checkpoint_name(step: int) -> str:
    return f"step_{step:06d}"


def save_weights(path: str | Path, model: nn.Module, metadata: Mapping[str, Any]) -> None:
    """Write ``model.state_dict()`` to a safetensors file atomically (temp file + rename)."""
    import os
    import tempfile

    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(state, tmp, metadata={k: json.dumps(v) for k, v in metadata.items()})
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_state(path: str | Path, state: Mapping[str, Any]) -> None:
    """Write trainer state (tensors, numbers, lists, dicts only) atomically for ``weights_only`` loading."""
    from landscape.utils import atomic_write

    atomic_write(path, lambda fh: torch.save(dict(state), fh), mode="wb")


def load_state(path: str | Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"trainer state {path} cannot be read ({str(exc).splitlines()[0]})") from exc


# ---- run directories --------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint file, with its step when it comes from a RUN_DIR."""

    path: Path
    step: int | None = None

    @property
    def name(self) -> str:
        return self.path.name.removesuffix(".safetensors").removesuffix(".pt").removesuffix(".pth")

    @property
    def state_path(self) -> Path:
        return self.path.with_name(f"{self.name}.state.pt")


class RunDir:
    """A training run directory: ``config.json``, ``checkpoints/``, ``metrics.jsonl``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not (self.path / "config.json").is_file():
            raise CheckpointError(
                f"{self.path} is not a landscape run directory (no config.json); "
                "pass a RUN_DIR written by `landscape train`, or a checkpoint file with a model spec"
            )
        try:
            self.meta: dict[str, Any] = json.loads((self.path / "config.json").read_text())
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{self.path / 'config.json'} is not valid JSON ({exc.msg}); the run directory is damaged") from exc

    @property
    def config(self):  # -> TrainConfig (import here: config imports registries)
        from landscape.train.config import TrainConfig

        return TrainConfig.from_dict(self.meta["config"])

    @property
    def model_spec(self) -> ModelSpec:
        return ModelSpec.from_dict(self.meta["model_spec"])

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / CHECKPOINT_DIR

    def checkpoints(self) -> list[Checkpoint]:
        """The run's checkpoints, sorted by step."""
        found = []
        if self.checkpoint_dir.is_dir():
            for p in self.checkpoint_dir.iterdir():
                m = _STEP_RE.match(p.name)
                if m:
                    found.append(Checkpoint(p, int(m.group(1))))
        return sorted(found, key=lambda c: c.step)

    def checkpoint(self, which: str | int = "last") -> Checkpoint:
        cps = self.checkpoints()
        if not cps:
            raise CheckpointError(f"run {self.path} has no checkpoints yet")
        if which == "last":
            return cps[-1]
        if which == "first":
            return cps[0]
        for c in cps:
            if c.name == str(which) or str(c.step) == str(which).lstrip("0").rjust(1, "0"):
                return c
        raise CheckpointError(
            f"run {self.path} has no checkpoint {which!r}; available steps: "
            + ", ".join(str(c.step) for c in cps)
        )

    def metrics(self) -> list[dict[str, Any]]:
        path = self.path / "metrics.jsonl"
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def load_model(self, which: str | int = "last", device: str | torch.device = "cpu") -> nn.Module:
        cp = self.checkpoint(which)
        model = self.model_spec.build()
        load_weights(model, load_state_dict(cp.path), source=f"checkpoint {cp.path}")
        return model.to(device)


def load_model(
    checkpoint: str | Path,
    spec: ModelSpec | None = None,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """Rebuild a model and load its weights from a RUN_DIR, a RUN_DIR checkpoint, or a foreign file.

    For a file outside a RUN_DIR, ``spec`` says how to build the model.
    """
    path = Path(checkpoint)
    if path.is_dir():
        return RunDir(path).load_model("last", device)
    if spec is None:
        run = path.parent.parent
        if path.parent.name == CHECKPOINT_DIR and (run / "config.json").is_file():
            spec = RunDir(run).model_spec
        else:
            raise ConfigError(
                f"{path} is not inside a run directory; give a model spec "
                "(--model NAME --num-classes C --input-shape C,H,W, or --model-factory pkg.module:fn)"
            )
    model = spec.build()
    load_weights(model, load_state_dict(path), source=f"checkpoint {path}")
    return model.to(device)
