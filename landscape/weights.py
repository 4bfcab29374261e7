"""Weight files read safely and written atomically; the one model loader (:func:`restore_model`).

Weights are safetensors, or ``.pt``/``.pth``/``.bin``/``.ckpt`` read with
``torch.load(weights_only=True)``; the trainer's resume state (optimizer, schedule, RNG) is read
the same way. Nothing here unpickles code.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from landscape.core.state_dict import fit_state_dict, shorten
from landscape.errors import CheckpointError, ConfigError
from landscape.model_spec import ModelSpec
from landscape.utils import atomic_write, make_temp_file, new_file_mode

_EMA_KEYS = ("state_dict_ema", "model_ema", "ema_state_dict", "ema")
_RAW_KEYS = ("state_dict", "model_state_dict", "model", "net", "network")
_PREFIXES = ("module.", "_orig_mod.")
WEIGHT_CHOICES = ("auto", "ema", "raw")
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_HF_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


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
            f"{shorten(keys) or 'none'}); landscape reads a name → tensor dict, or one under "
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


def hf_weight_file(folder: str | Path) -> Path | None:
    """The weights of a Hugging Face checkpoint folder (``model.safetensors``,
    ``pytorch_model.bin``, or the index of sharded ones), or ``None`` if it has none."""
    folder = Path(folder)
    for name in (*HF_WEIGHT_FILES, *_HF_INDEX_FILES):
        if (folder / name).is_file():
            return folder / name
    return None


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
