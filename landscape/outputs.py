"""What a model returned → the logits tensor a probe measures.

Researchers' models return more than a tensor: a tuple ``(logits, aux)``, a dict
``{"logits": ..., "hidden_states": ...}``, or a Hugging Face ``ModelOutput`` (both a Mapping and
an object with a ``logits`` attribute). Every place in ``landscape`` that consumes a model output
goes through :func:`logits_of`, so the per-sample loss a probe is given always receives the
logits tensor, never the raw output.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from landscape.errors import ConfigError

OutputFn = Callable[[Any], torch.Tensor]


class OutputError(ConfigError):
    """A model output that no rule turns into a logits tensor."""


def logits_of(output: Any, output_fn: OutputFn | None = None) -> torch.Tensor:
    """The logits in ``output``, by the first rule that applies:

    1. ``output_fn`` given → ``output_fn(output)`` (it must return a tensor);
    2. a tensor → itself;
    3. a tuple or list → its first element (which must be a tensor);
    4. a Mapping with a ``"logits"`` key → ``output["logits"]``; an object with a ``logits``
       attribute → ``output.logits`` (a Hugging Face ``ModelOutput`` is both);
    5. anything else → :class:`OutputError` (a :class:`~landscape.errors.ConfigError`) naming the
       type and asking for an ``output_fn``.
    """
    if output_fn is not None:
        return _tensor(output_fn(output), "output_fn", output)
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        if not output:
            raise OutputError(f"the model returned an empty {type(output).__name__}; pass an output_fn "
                              "that picks the logits tensor from the model's output")
        return _tensor(output[0], f"the first element of the {type(output).__name__}", output)
    if isinstance(output, Mapping) and "logits" in output:
        return _tensor(output["logits"], 'output["logits"]', output)
    if not isinstance(output, Mapping) and hasattr(output, "logits"):
        return _tensor(output.logits, "output.logits", output)
    raise OutputError(f"cannot find logits in a model output of type {_name(output)} (expected a tensor, a tuple "
                      "whose first element is the logits, or a mapping/object with 'logits'); pass an output_fn "
                      "that returns the logits tensor")


def _tensor(value: Any, what: str, output: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    raise OutputError(f"{what} of a model output of type {_name(output)} is {_name(value)}, not a tensor; "
                      "pass an output_fn that returns the logits tensor")


def _name(obj: Any) -> str:
    cls = type(obj)
    return cls.__name__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
