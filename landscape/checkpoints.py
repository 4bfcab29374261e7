"""Checkpoints: the RUN_DIR format, safe loading, and model reconstruction.

Weights are stored as safetensors (``checkpoints/step_000500.safetensors``); the trainer's
resume state (optimizer, schedule, RNG) sits beside them in ``step_000500.state.pt`` and is
read with ``torch.load(weights_only=True)``. Nothing here unpickles code.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
import os
import pickle
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from landscape.errors import CheckpointError, ConfigError
from landscape.models import build_model
from landscape.utils import (
    atomic_write,
    atomic_write_json,
    make_temp_file,
    new_file_mode,
    read_jsonl,
    versions,
)

CHECKPOINT_DIR = "checkpoints"
_STEP_RE = re.compile(r"^step_(\d+)\.safetensors$")
_EMA_KEYS = ("state_dict_ema", "model_ema", "ema_state_dict", "ema")
_RAW_KEYS = ("state_dict", "model_state_dict", "model", "net", "network")
_PREFIXES = ("module.", "_orig_mod.")
WEIGHT_CHOICES = ("auto", "ema", "raw")
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_HF_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
# files beside weights that hold no weights: optimizer/trainer state (ours: step_N.state.pt; HF Trainer's)
_NOT_WEIGHTS = re.compile(r"^(optimizer|scheduler|scaler|rng_state.*|training_args|.*\.state)\.(pt|pth|bin)$")


# ---- model specs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """How to rebuild a model: a registered ``name`` or a ``factory`` the user names.

    A registered model is built as ``build_model(name, input_shape, num_classes, **params)``;
    a factory (``"pkg.module:fn"``, ``"module:fn"`` found from the current directory, or
    ``"path/to/file.py:fn"``) is called as ``fn(**params)`` (plus ``num_classes``/``input_shape``
    if it accepts them).

    Trust boundary: a spec read from a file (:meth:`from_dict`, e.g. a run's ``config.json``) is
    ``trusted=False`` and never imports or calls its factory; only a spec the user constructs
    (command line, Python) does. ``trusted`` is not part of the spec's identity.
    """

    name: str | None = None
    input_shape: tuple[int, ...] | None = None
    num_classes: int | None = None
    params: dict[str, Any] = field(default_factory=dict)
    factory: str | None = None
    trusted: bool = field(default=True, compare=False, repr=False)

    def build(self) -> nn.Module:
        if self.factory:
            if not self.trusted:
                raise ConfigError(untrusted_factory_message(self.factory))
            return _call_factory(self.factory, self)
        if self.name is None or self.input_shape is None or self.num_classes is None:
            raise ConfigError(
                "a model spec needs a model name, input shape and class count "
                "(e.g. --model resnet20 --input-shape 3,32,32 --num-classes 10) or a --model-factory"
            )
        return build_model(self.name, self.input_shape, self.num_classes, **self.params)

    def check(self) -> None:
        """Fail now, with one line, if the factory cannot be found (before any work starts)."""
        if self.factory:
            if not self.trusted:
                raise ConfigError(untrusted_factory_message(self.factory))
            resolve_factory(self.factory)

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
        """A spec read from a file: data only, so its factory (if any) is not trusted."""
        shape = d.get("input_shape")
        return cls(
            name=d.get("name"),
            input_shape=tuple(shape) if shape else None,
            num_classes=d.get("num_classes"),
            params=dict(d.get("params") or {}),
            factory=d.get("factory"),
            trusted=False,
        )


def untrusted_factory_message(factory: str) -> str:
    return (
        f"this run's config.json names the model factory {factory!r}; landscape runs no code named "
        "in a file it reads. If you trust it, name it yourself: --model-factory "
        f"{factory} (Python: model_spec=ModelSpec(factory={factory!r}))"
    )


def resolve_factory(spec: str, kind: str = "model factory") -> Callable[..., Any]:
    """The callable named by ``spec``: ``pkg.module:fn``, ``module:fn`` (the current directory is
    searched too, like ``python -m``) or ``path/to/file.py:fn``."""
    import importlib.util
    import os
    import sys

    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(
            f"{kind} {spec!r} must look like 'package.module:function' or 'path/to/file.py:function'"
        )
    try:
        if module_name.endswith(".py") or "/" in module_name or os.sep in module_name:
            path = Path(module_name).expanduser()
            if not path.is_file():
                raise ConfigError(f"{kind} {spec!r}: file {module_name!r} does not exist")
            key = f"landscape_user_factory_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]}"
            module = sys.modules.get(key)
            if module is None:
                module_spec = importlib.util.spec_from_file_location(key, path)
                if module_spec is None or module_spec.loader is None:
                    raise ConfigError(f"{kind} {spec!r}: {str(path)!r} is not a Python file")
                module = importlib.util.module_from_spec(module_spec)
                sys.path.insert(0, str(path.resolve().parent))  # its own sibling imports
                try:
                    sys.modules[key] = module
                    module_spec.loader.exec_module(module)
                except BaseException:
                    sys.modules.pop(key, None)
                    raise
                finally:
                    sys.path.remove(str(path.resolve().parent))
        else:
            cwd = os.getcwd()
            added = cwd not in sys.path and "" not in sys.path
            if added:
                sys.path.append(cwd)
            try:
                module = importlib.import_module(module_name)
            finally:
                if added:
                    sys.path.remove(cwd)
        fn = getattr(module, attr)
    except ConfigError:
        raise
    except AttributeError:
        raise ConfigError(f"{kind} {spec!r}: module {module_name!r} has no {attr!r}") from None
    except ImportError as exc:
        raise ConfigError(
            f"cannot import {kind} {spec!r} ({exc}); run from the folder that holds the module, "
            "or name the file: --model-factory path/to/file.py:function"
        ) from None
    except Exception as exc:  # the user's module raised while being imported
        raise ConfigError(f"importing {kind} {spec!r} failed: {type(exc).__name__}: {exc}") from None
    if not callable(fn):
        raise ConfigError(f"{kind} {spec!r} is a {type(fn).__name__}, not a function")
    return fn


def _call_factory(spec: str, model_spec: ModelSpec) -> nn.Module:
    import inspect

    fn = resolve_factory(spec)
    kwargs = dict(model_spec.params)
    try:
        accepted = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        accepted = {}
    for key in ("num_classes", "input_shape"):
        value = getattr(model_spec, key)
        if value is not None and key in accepted and key not in kwargs:
            kwargs[key] = value
    try:
        model = fn(**kwargs)
    except Exception as exc:
        raise ConfigError(f"model factory {spec!r} failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model factory {spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


# ---- reading weights safely ------------------------------------------------------------------


class CheckpointReadError(CheckpointError):
    """A checkpoint file that cannot be read as weights; ``path`` names it (a folder's other
    checkpoints can still be analyzed)."""

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        super().__init__(message)
        self.path = None if path is None else Path(path)

    def __reduce__(self):  # picklable across worker processes, path included
        return (type(self), (str(self), self.path))


class LoadedState(dict):
    """A state dict (name → tensor) as read from a checkpoint, with ``info`` on how it was read.

    ``info``: ``format`` (safetensors | torch | lightning), ``weights`` (ema | raw), ``state_key``
    (the key of the wrapper dict the tensors came from, ``""`` for a bare state dict),
    ``other_weights`` (wrapper keys holding weights that were not used), ``stripped_prefixes``
    (``module.``/``_orig_mod.`` removed). A plain ``dict`` everywhere else.
    """

    def __init__(self, tensors: Mapping[str, torch.Tensor] = (), info: Mapping[str, Any] | None = None) -> None:
        super().__init__(tensors)
        self.info: dict[str, Any] = dict(info or {})


def load_state_dict(path: str | Path, *, weights: str = "auto") -> LoadedState:
    """Read a state dict from ``.safetensors`` or ``.pt``/``.pth``/``.bin``/``.ckpt`` (Lightning)
    without unpickling code (``torch.load(weights_only=True)``).

    A wrapper dict is unwrapped: EMA weights under one of ``state_dict_ema``, ``model_ema``,
    ``ema_state_dict``, ``ema``; raw weights under ``state_dict`` (Lightning), ``model_state_dict``,
    ``model``, ``net``, ``network``. ``weights`` chooses: ``ema``, ``raw``, or ``auto`` (EMA when
    present, as timm does; the choice is in ``info["weights"]``). ``module.`` (DDP) and
    ``_orig_mod.`` (torch.compile) prefixes are stripped. Errors are :class:`CheckpointReadError`.
    """
    if weights not in WEIGHT_CHOICES:
        raise ConfigError(f"weights must be one of {', '.join(WEIGHT_CHOICES)}, got {weights!r}")
    path = Path(path)
    if path.is_dir() and hf_weight_file(path) is not None:
        path = hf_weight_file(path)  # type: ignore[assignment]
    if not path.is_file():
        raise CheckpointReadError(
            f"checkpoint {path} does not exist; check the path (or list the run's checkpoints/)", path)
    if path.name.endswith(".index.json"):
        raise CheckpointReadError(
            f"checkpoint {path} is sharded (an index of several files), which is not supported; "
            "save it as one file (save_pretrained(..., max_shard_size='100GB'))", path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state: Any = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointReadError(
                f"checkpoint {path} is not a readable safetensors file (corrupt or truncated: {exc}); "
                "use another checkpoint or re-save it", path
            ) from exc
        fmt = "safetensors"
    else:
        state = _torch_load(path)
        fmt = "lightning" if isinstance(state, Mapping) and (_is_lightning(state) or path.suffix == ".ckpt") else "torch"
    return _unwrap(state, path, weights, fmt)


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        blocked = [ln.strip() for ln in str(exc).splitlines() if "GLOBAL" in ln]
        if not blocked:
            raise CheckpointReadError(
                f"checkpoint {path} cannot be read (not a torch checkpoint, or corrupt/truncated); "
                "use another checkpoint or re-save it", path
            ) from exc
        raise CheckpointReadError(
            f"checkpoint {path} holds pickled objects that safe loading refuses ({blocked[0]}); "
            "if you trust it, load it yourself and save model.state_dict() with "
            "safetensors.torch.save_file or torch.save", path
        ) from exc
    except Exception as exc:  # any other failure to parse an untrusted file: it cannot be read
        raise CheckpointReadError(
            f"checkpoint {path} cannot be read (corrupt or truncated: {_first_line(exc)}); "
            "use another checkpoint or re-save it", path
        ) from exc


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _is_lightning(state: Mapping[str, Any]) -> bool:
    return any(k in state for k in ("pytorch-lightning_version", "optimizer_states", "lr_schedulers"))


def _is_tensor_dict(value: Any) -> bool:
    return isinstance(value, Mapping) and bool(value) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())


def _shorten(items: list[str], n: int = 8) -> str:
    """``a, b, c, … , y, z (30 in all)`` for long lists."""
    if len(items) <= n:
        return ", ".join(items)
    return ", ".join(items[: n - 2]) + ", …, " + ", ".join(items[-2:]) + f" ({len(items)} in all)"


def _unwrap(state: Any, path: Path, weights: str = "auto", fmt: str = "torch") -> LoadedState:
    """The tensors of ``state`` (bare, or under a wrapper key chosen by ``weights``), prefixes stripped."""
    if not isinstance(state, Mapping):
        raise CheckpointReadError(
            f"checkpoint {path} holds a {type(state).__name__}, not a state dict; "
            "re-save it with torch.save(model.state_dict(), path)", path)
    if _is_tensor_dict(state):
        found, kind = {"": state}, {"": "raw"}
    else:
        found = {k: state[k] for k in (*_EMA_KEYS, *_RAW_KEYS) if k in state and _is_tensor_dict(state[k])}
        kind = {k: "ema" if k in _EMA_KEYS else "raw" for k in found}
    if not found:
        keys = [str(k) for k in state]
        raise CheckpointReadError(
            f"checkpoint {path} does not hold a state dict of tensors (top-level keys: "
            f"{_shorten(keys) or 'none'}); landscape reads a name → tensor dict, or one under "
            f"{', '.join((*_RAW_KEYS, *_EMA_KEYS))}: re-save it with torch.save(model.state_dict(), path)",
            path)
    wanted = [k for k in found if weights == "auto" or kind[k] == weights]  # EMA keys come first
    if not wanted:
        has = ", ".join(f"{k or 'a bare state dict'} ({kind[k]})" for k in found)
        other = "raw" if weights == "ema" else "ema"
        raise CheckpointReadError(
            f"checkpoint {path} holds no {weights.upper() if weights == 'ema' else weights} weights "
            f"(it has {has}); use --weights {other} or auto", path)
    key = wanted[0]
    out: dict[str, torch.Tensor] = {}
    stripped: set[str] = set()
    for name, value in found[key].items():
        changed = True
        while changed:
            changed = False
            for prefix in _PREFIXES:
                if name.startswith(prefix):
                    name, changed = name[len(prefix):], True
                    stripped.add(prefix)
        out[name] = value
    info = {"format": fmt, "weights": kind[key], "state_key": key,
            "other_weights": [k for k in found if k != key], "stripped_prefixes": sorted(stripped)}
    return LoadedState(out, info)


def fit_state_dict(state: Mapping[str, torch.Tensor], model_keys: Iterable[str],
                   strip_prefix: str | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """``(state, applied_prefix)``: ``state`` with a key prefix removed so that it fits a model
    whose state-dict keys are ``model_keys``.

    With ``strip_prefix`` (``"model."``), only the keys under it are kept, without it (the
    submodule's weights; the rest, e.g. a loss's buffers, is left out). Without it, a prefix is
    stripped automatically while every key shares one first component (``model.``) that no model
    key has (a Lightning module's ``self.model``). Where the model's weights are found under one
    prefix beside other keys, a :class:`CheckpointError` says which ``--strip-prefix`` to pass.
    ``applied_prefix`` is ``""`` when nothing was stripped.
    """
    expected = set(model_keys)
    if strip_prefix:
        prefix = strip_prefix if strip_prefix.endswith(".") else strip_prefix + "."
        under = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not under:
            heads = sorted({k.split(".", 1)[0] + "." for k in state if "." in k})
            raise CheckpointError(
                f"no key of the checkpoint starts with {prefix!r} (--strip-prefix); its keys start with "
                f"{_shorten([repr(h) for h in heads]) or 'no prefix'}")
        return under, prefix
    out, applied = dict(state), ""
    while out and set(out) != expected:
        heads = {k.split(".", 1)[0] for k in out}
        if len(heads) != 1 or any("." not in k for k in out):
            break
        head = heads.pop() + "."
        if any(k.startswith(head) for k in expected):
            break
        out, applied = {k[len(head):]: v for k, v in out.items()}, applied + head
    if set(out) != expected:
        for head in sorted({k.split(".", 1)[0] + "." for k in out if "." in k}):
            if {k[len(head):] for k in out if k.startswith(head)} == expected:
                others = sorted(k for k in out if not k.startswith(head))
                raise CheckpointError(
                    f"the model's weights are under {applied + head!r} in the checkpoint, beside other "
                    f"keys ({_shorten(others, 4)}); pass --strip-prefix {applied + head} to load them")
    return out, applied


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


_SHA_CACHE: dict[tuple[str, int, int, int], str] = {}


def file_fingerprint(path: str | Path) -> dict[str, int]:
    """``{"checkpoint_size", "checkpoint_mtime_ns"}``: the fast path of :func:`checkpoint_matches`."""
    st = os.stat(path)
    return {"checkpoint_size": int(st.st_size), "checkpoint_mtime_ns": int(st.st_mtime_ns)}


def check_finite_weights(model: nn.Module, source: str = "checkpoint") -> nn.Module:
    """Refuse a model with NaN/inf in any floating-point parameter or buffer: every probe is
    undefined there. ``source`` names it in the one-line :class:`CheckpointError`."""
    bad, first = 0, None
    seen: set[int] = set()
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if id(tensor) in seen or not tensor.is_floating_point():
            continue
        seen.add(id(tensor))
        n = int((~torch.isfinite(tensor.detach())).sum())
        if n and first is None:
            first = name
        bad += n
    if bad:
        raise CheckpointError(
            f"{source} has {bad:,} non-finite weight{'s' if bad != 1 else ''} (first: {first}); the probe is "
            "undefined there: probe an earlier checkpoint, or retrain (e.g. with a lower learning rate)"
        )
    return model


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (cached per process by path, inode, size and mtime)."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def checkpoint_matches(path: str | Path, stored: Mapping[str, Any]) -> bool:
    """Whether results stored with attributes ``stored`` were computed from the file at ``path``.

    The stored sha256 must equal the file's; when size and mtime also match the stored ones the
    hash is taken as known (the fast path), otherwise the file is hashed. No stored hash: False.
    """
    sha = stored.get("checkpoint_sha256")
    if not sha:
        return False
    fp = file_fingerprint(path)
    if all(stored.get(k) == v for k, v in fp.items()):
        return True
    return file_sha256(path) == sha


# ---- writing ----------------------------------------------------------------------------------


def checkpoint_name(step: int) -> str:
    return f"step_{step:06d}"


def save_weights(path: str | Path, model: nn.Module, metadata: Mapping[str, Any]) -> None:
    """Write ``model.state_dict()`` to a safetensors file atomically (temp file + rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    fd, tmp = make_temp_file(path)
    os.close(fd)
    try:
        save_file(state, tmp, metadata={k: json.dumps(v) for k, v in metadata.items()})
        os.chmod(tmp, new_file_mode())  # safetensors writes a new file: give it the umask's mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_state(path: str | Path, state: Mapping[str, Any]) -> None:
    """Write trainer state (tensors, numbers, lists, dicts only) atomically for ``weights_only`` loading."""
    atomic_write(path, lambda fh: torch.save(dict(state), fh), mode="wb")


def load_state(path: str | Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"trainer state {path} cannot be read ({_first_line(exc)})") from exc


# ---- run directories --------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint file, with the step and epoch its name (or its RUN_DIR) gives.

    ``label`` names it where the file name does not (``checkpoint-500/model.safetensors``).
    """

    path: Path
    step: int | None = None
    epoch: int | None = None
    label: str | None = None

    @classmethod
    def from_name(cls, path: str | Path, label: str | None = None) -> Checkpoint:
        """A foreign checkpoint, its step/epoch parsed from its name (:func:`parse_position`)."""
        cp = cls(Path(path), label=label)
        step, epoch = parse_position(cp.name)
        return cls(cp.path, step, epoch, label)

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        for suffix in WEIGHT_SUFFIXES:
            if self.path.name.endswith(suffix) and self.path.name != suffix:
                return self.path.name[: -len(suffix)]
        return self.path.name

    @property
    def state_path(self) -> Path:
        return self.path.with_name(f"{self.name}.state.pt")


_EPOCH_IN_NAME = re.compile(r"(?<![a-z])(?:epochs?|ep)[_=-]?(\d+)", re.IGNORECASE)
_STEP_IN_NAME = re.compile(r"(?<![a-z])(?:global_step|steps?|iter(?:ation)?s?)[_=-]?(\d+)", re.IGNORECASE)
_NUMBER_NAME = re.compile(r"^(?:[a-z][a-z_-]*[_-])?(\d+)$", re.IGNORECASE)


def parse_position(name: str) -> tuple[int | None, int | None]:
    """``(step, epoch)`` from a checkpoint name, ``None`` where it says nothing.

    ``epoch_15``, ``epoch=3``, ``ep7`` give an epoch; ``step_000500``, ``step-1200``,
    ``global_step=9``, ``iter100`` a step; Lightning's ``epoch=3-step=1200`` both. A name that is
    one word and a number (``ckpt_000300``, ``checkpoint-500`` as the Hugging Face Trainer names
    its folders, ``model_10``, ``300``) gives a step.
    """
    epoch = _EPOCH_IN_NAME.search(name)
    step = _STEP_IN_NAME.search(name)
    if epoch is None and step is None:
        step = _NUMBER_NAME.match(name)
    return (int(step.group(1)) if step else None, int(epoch.group(1)) if epoch else None)


def natural_key(name: str) -> tuple[tuple[int, Any], ...]:
    """Sort key putting ``epoch_5`` before ``epoch_10`` (numbers compared as numbers)."""
    return tuple((1, int(part)) if part.isdigit() else (0, part.lower())
                 for part in re.split(r"(\d+)", name) if part)


def hf_weight_file(folder: str | Path) -> Path | None:
    """The weights of a Hugging Face checkpoint folder (``model.safetensors``,
    ``pytorch_model.bin``, or the index of sharded ones), or ``None`` if it has none."""
    folder = Path(folder)
    for name in (*HF_WEIGHT_FILES, *_HF_INDEX_FILES):
        if (folder / name).is_file():
            return folder / name
    return None


def folder_checkpoints(folder: str | Path) -> list[Checkpoint]:
    """The checkpoints in a folder of foreign weights, in natural order (:func:`order_checkpoints`):
    its ``.safetensors``/``.pt``/``.pth``/``.bin``/``.ckpt`` files (not optimizer or trainer
    state) and its Hugging Face checkpoint subfolders (``checkpoint-500/``). Reads no weights."""
    folder = Path(folder)
    entries = sorted(folder.iterdir())
    found = [Checkpoint.from_name(p) for p in entries
             if p.is_file() and p.suffix in WEIGHT_SUFFIXES and not p.name.startswith(".")
             and not _NOT_WEIGHTS.match(p.name)]
    found += [Checkpoint.from_name(w, label=d.name) for d in entries
              if d.is_dir() and not d.name.startswith(".") and (w := hf_weight_file(d)) is not None]
    names = [c.name for c in found]
    # two files differing only in extension (epoch_5.pt, epoch_5.safetensors) keep their file names
    found = [c if names.count(c.name) == 1 else Checkpoint(c.path, c.step, c.epoch, c.path.name) for c in found]
    return order_checkpoints(found)


def order_checkpoints(checkpoints: Iterable[Checkpoint]) -> list[Checkpoint]:
    """By step where every checkpoint has one, else by epoch where every one has one, else by name;
    names in natural order (``epoch_5`` < ``epoch_10``) break ties."""
    cps = list(checkpoints)
    for attr in ("step", "epoch"):
        if cps and all(getattr(c, attr) is not None for c in cps):
            return sorted(cps, key=lambda c, a=attr: (getattr(c, a), natural_key(c.name)))
    return sorted(cps, key=lambda c: natural_key(c.name))


# ---- selecting checkpoints --------------------------------------------------------------------


SELECTION_HELP = ("last, first, all, every:N, a step (or epoch) S, step:S, epoch:E, a name or a glob "
                  "(epoch_1*); comma lists mix them")


def _available(checkpoints: list[Checkpoint]) -> str:
    def label(c: Checkpoint) -> str:  # the step/epoch where the name does not show it
        extra = [f"{k} {v}" for k, v in (("step", c.step), ("epoch", c.epoch)) if v is not None and str(v) not in c.name]
        return f"{c.name} ({', '.join(extra)})" if extra else c.name

    names = [label(c) for c in checkpoints]
    return ", ".join(names) if len(names) <= 6 else \
        ", ".join(names[:3]) + ", …, " + ", ".join(names[-2:]) + f" ({len(names)} in all)"


def _match(item: str, checkpoints: list[Checkpoint]) -> list[int]:
    """Indices of the checkpoints one selection item names (empty: none)."""
    n = len(checkpoints)
    if item == "last":
        return [n - 1]
    if item == "first":
        return [0]
    if item == "all":
        return list(range(n))
    if item.startswith("every:"):
        try:
            k = int(item.split(":", 1)[1])
        except ValueError:
            k = 0
        if k < 1:
            raise ConfigError(f"bad checkpoint selection {item!r}; every:N needs an integer N ≥ 1")
        return sorted({*range(0, n, k), n - 1})
    kind, sep, number = item.partition(":")
    if sep and kind in ("step", "epoch"):
        try:
            value = int(number)
        except ValueError:
            raise ConfigError(f"bad checkpoint selection {item!r}; {kind}:N needs an integer N") from None
        return [i for i, c in enumerate(checkpoints) if getattr(c, kind) == value]
    if any(ch in item for ch in "*?["):
        return [i for i, c in enumerate(checkpoints)
                if fnmatch.fnmatchcase(c.name, item) or fnmatch.fnmatchcase(c.path.name, item)]
    by_name = [i for i, c in enumerate(checkpoints) if item in (c.name, c.path.name)]
    if by_name or not item.lstrip("-").isdigit():
        return by_name
    value = int(item)
    for kind in ("step", "epoch"):
        hits = [i for i, c in enumerate(checkpoints) if getattr(c, kind) == value]
        if hits:
            return hits
    return []


def select_checkpoints(checkpoints: list[Checkpoint], which: str) -> list[Checkpoint]:
    """The checkpoints ``which`` names, in the given order, each once.

    ``which`` is a comma list of: ``last``, ``first``, ``all``, ``every:N`` (every N-th, always the
    last), an integer (the checkpoint at that step, else at that epoch), ``step:S``, ``epoch:E``, a
    name (with or without its file extension) or a glob over names (``epoch_1*``). An item that
    names nothing is a :class:`ConfigError` listing what there is.
    """
    if not checkpoints:
        return []
    items = [s.strip() for s in str(which).split(",") if s.strip()]
    if not items:
        raise ConfigError(f"empty checkpoint selection {which!r}; use {SELECTION_HELP}")
    chosen: set[int] = set()
    for item in items:
        hits = _match(item, checkpoints)
        if not hits:
            what = f"at step(s) {item}" if item.lstrip("-").isdigit() else f"matches {item!r}"
            raise ConfigError(f"no checkpoint {what}; available: {_available(checkpoints)}")
        chosen.update(hits)
    return [checkpoints[i] for i in sorted(chosen)]


_DAMAGED = "the run directory is damaged: restore config.json (or retrain)"


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return {dict: "object", list: "array", str: "string", type(None): "null"}.get(type(value), type(value).__name__)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_model_spec(d: Mapping[str, Any], file: Path) -> None:
    """A ``model_spec`` read from ``file``: the types :meth:`ModelSpec.from_dict` expects, and the
    keys a registered model needs; anything else is one :class:`CheckpointError` naming the key."""

    def bad(key: str, want: str) -> CheckpointError:
        return CheckpointError(
            f"{file}: model_spec.{key} must be {want}, got {json.dumps(d[key])[:60]}; {_DAMAGED}"
        )

    def positive_int(v: Any) -> bool:
        return _is_number(v) and isinstance(v, int) and v >= 1

    for key in ("name", "factory"):
        if d.get(key) is not None and not (isinstance(d[key], str) and d[key].strip()):
            raise bad(key, "a non-empty string or null")
    shape = d.get("input_shape")
    if shape is not None and not (isinstance(shape, list) and shape and all(positive_int(v) for v in shape)):
        raise bad("input_shape", "a list of positive integers or null")
    if d.get("num_classes") is not None and not positive_int(d["num_classes"]):
        raise bad("num_classes", "a positive integer or null")
    if d.get("params") is not None and not isinstance(d["params"], dict):
        raise bad("params", "an object or null")
    if d.get("factory") is None:
        missing = [k for k in ("name", "input_shape", "num_classes") if d.get(k) is None]
        if missing:
            raise CheckpointError(
                f"{file}: model_spec has no {', '.join(missing)} (and no factory); {_DAMAGED}"
            )


class RunDir:
    """A training run directory: ``config.json``, ``checkpoints/``, ``metrics.jsonl``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not (self.path / "config.json").is_file():
            raise CheckpointError(
                f"{self.path} is not a landscape run directory (no config.json); "
                "pass a RUN_DIR written by `landscape train`, or a checkpoint file with a model spec"
            )
        file = self.path / "config.json"
        try:
            meta = json.loads(file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{file} is not valid JSON ({exc.msg}); the run directory is damaged") from exc
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0]
            raise CheckpointError(f"cannot read {file} ({reason}); the run directory is damaged") from exc
        if not isinstance(meta, dict):
            raise CheckpointError(f"{file} holds a JSON {_json_type(meta)}, not an object; {_DAMAGED}")
        for key in ("config", "model_spec"):
            if key in meta and not isinstance(meta[key], dict):
                raise CheckpointError(f"{file}: {key!r} must be an object, got a {_json_type(meta[key])}; {_DAMAGED}")
        if "model_spec" in meta:
            _check_model_spec(meta["model_spec"], file)
        self.meta: dict[str, Any] = meta

    @classmethod
    def create(cls, path: str | Path, *, config: Mapping[str, Any], model_spec: ModelSpec,
               dataset: Mapping[str, Any], steps_per_epoch: int, total_steps: int,
               device: str | torch.device) -> RunDir:
        """Start a run directory at ``path`` (which must exist): write its ``config.json`` atomically.

        The file is the schema this class reads: ``config`` (the training config as a JSON object),
        ``model_spec`` (:meth:`ModelSpec.to_dict`), ``dataset`` (name, sizes, info), the run's
        ``steps_per_epoch`` and ``total_steps``, the ``device`` it trained on and package ``versions``.
        """
        meta = {
            "config": dict(config),
            "model_spec": model_spec.to_dict(),
            "dataset": dict(dataset),
            "steps_per_epoch": steps_per_epoch,
            "total_steps": total_steps,
            "device": str(device),
            "versions": versions(),
        }
        atomic_write_json(Path(path) / "config.json", meta)
        run = cls.__new__(cls)  # the run as just written (not read back: nothing to check)
        run.path, run.meta = Path(path), meta
        return run

    @property
    def config_file(self) -> Path:
        return self.path / "config.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    def damaged(self, what: str) -> CheckpointError:
        """The error for a damaged ``config.json``: ``<file>: <what>; restore config.json (or retrain)``."""
        return CheckpointError(f"{self.config_file}: {what}; {_DAMAGED}")

    @property
    def config(self) -> dict[str, Any]:
        """The training config as ``config.json`` records it (a JSON object, unchecked beyond that;
        :func:`landscape.train.config.run_config` reads it as a ``TrainConfig``)."""
        if "config" not in self.meta:
            raise CheckpointError(f"{self.config_file} has no 'config' (the training config); {_DAMAGED}")
        return dict(self.meta["config"])

    @property
    def model_spec(self) -> ModelSpec:
        if "model_spec" not in self.meta:
            raise CheckpointError(f"{self.path / 'config.json'} has no 'model_spec'; {_DAMAGED}")
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
        """The one checkpoint ``which`` names (:func:`select_checkpoints`: ``last``, ``first``, a
        step, ``step:S``, a name, …)."""
        cps = self.checkpoints()
        if not cps:
            raise CheckpointError(f"run {self.path} has no checkpoints yet")
        try:
            chosen = select_checkpoints(cps, str(which))
        except ConfigError:
            chosen = []
        if len(chosen) == 1:
            return chosen[0]
        steps = ", ".join(str(c.step) for c in cps)
        if not chosen:
            raise CheckpointError(f"run {self.path} has no checkpoint {which!r}; available steps: {steps}")
        raise CheckpointError(f"{which!r} names {len(chosen)} checkpoints of run {self.path}; name one "
                              f"(available steps: {steps})")

    def metrics(self) -> list[dict[str, Any]]:
        """The records of ``metrics.jsonl`` in order; a half-written last line (a training run
        killed mid-write) is skipped, any other damage is one :class:`CheckpointError`."""
        path = self.path / "metrics.jsonl"
        if not path.is_file():
            return []
        records = []
        for number, (_, record) in enumerate(read_jsonl(path), start=1):
            step = record.get("step") if isinstance(record, dict) else None
            if not isinstance(record, dict) or not (step is None or _is_number(step)):
                what = "a step that is not a number" if isinstance(record, dict) else f"a JSON {_json_type(record)}"
                raise CheckpointError(f"{path}: record {number} holds {what}, not a metrics object; "
                                      "the file is damaged: delete that line (or the file) and rerun")
            records.append(record)
        return records

    def checkpoint_at(self, step: int) -> Checkpoint:
        """Where the checkpoint of ``step`` is written (``checkpoints/step_000500.safetensors``, its
        trainer state beside it in :attr:`Checkpoint.state_path`); it need not exist yet."""
        return Checkpoint(self.checkpoint_dir / f"{checkpoint_name(step)}.safetensors", step)

    def append_metrics(self, record: Mapping[str, Any]) -> None:
        """Append one record (a line of JSON) to ``metrics.jsonl``."""
        with open(self.metrics_path, "a") as fh:
            fh.write(json.dumps(record) + "\n")

    def keep_metrics(self, up_to_step: int | float) -> None:
        """Rewrite ``metrics.jsonl`` (atomically) with only its records of ``step ≤ up_to_step``, line
        for line; a half-written last line is dropped, a damaged line elsewhere is an error
        (:func:`landscape.utils.read_jsonl`). No file: an empty one."""
        keep = []
        if self.metrics_path.is_file():
            for line, record in read_jsonl(self.metrics_path):
                step = record.get("step", math.inf) if isinstance(record, dict) else None
                if _is_number(step) and step <= up_to_step:
                    keep.append(line)
        atomic_write(self.metrics_path, lambda fh: fh.write("".join(line + "\n" for line in keep)))

    def load_model(self, which: str | int = "last", device: str | torch.device = "cpu") -> nn.Module:
        """The model of checkpoint ``which`` (:meth:`checkpoint`) in eval mode on ``device``."""
        path = self.checkpoint(which).path
        return restore_model(self.model_spec, path, device)[0]


def restore_model(
    spec: ModelSpec,
    path: str | Path,
    device: str | torch.device = "cpu",
    *,
    weights: str = "auto",
    strip_prefix: str | None = None,
    check_finite: bool = False,
) -> tuple[nn.Module, dict[str, Any]]:
    """The one model loader: ``(model, record)``, ``spec``'s model with the weights at ``path``, in
    eval mode on ``device``.

    The weights are read safely (:func:`load_state_dict`, ``weights``: ema | raw | auto), their
    keys fitted to the model (:func:`fit_state_dict`, ``strip_prefix``) and loaded strictly
    (:func:`load_weights`); ``check_finite`` refuses NaN/inf weights (:func:`check_finite_weights`).
    ``record`` says how they were read (what was asked, the file's format, the wrapper key used,
    EMA or raw, the prefix stripped), to be stored beside results.
    """
    model = spec.build()
    loaded = load_state_dict(path, weights=weights)
    state, prefix = fit_state_dict(loaded, model.state_dict().keys(), strip_prefix)
    load_weights(model, state, source=f"checkpoint {path}")
    if check_finite:
        check_finite_weights(model, source=f"checkpoint {path}")
    record = {"requested": {"weights": weights, "strip_prefix": strip_prefix}, **loaded.info, "applied_prefix": prefix}
    return model.to(device).eval(), record


def load_model(
    checkpoint: str | Path,
    spec: ModelSpec | None = None,
    device: str | torch.device = "cpu",
    *,
    weights: str = "auto",
    strip_prefix: str | None = None,
) -> nn.Module:
    """Rebuild a model (in eval mode) and load its weights from a RUN_DIR, a RUN_DIR checkpoint, or a
    foreign file (:func:`restore_model`).

    For a file outside a RUN_DIR, ``spec`` says how to build the model; ``weights`` (ema | raw |
    auto) and ``strip_prefix`` are as in :func:`load_state_dict` and :func:`fit_state_dict`.
    """
    path = Path(checkpoint)
    if path.is_dir() and spec is not None and hf_weight_file(path) is not None:
        path = hf_weight_file(path)  # a Hugging Face checkpoint folder
    elif path.is_dir():
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
    return restore_model(spec, path, device, weights=weights, strip_prefix=strip_prefix)[0]
