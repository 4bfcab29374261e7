"""How to rebuild a model: a registered name or a factory the user names (:class:`ModelSpec`).

A spec read from a file is data only: it never imports or calls its factory (the trust boundary).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from landscape.errors import ConfigError
from landscape.models import build_model


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
