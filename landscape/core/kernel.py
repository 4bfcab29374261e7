r"""The one functional evaluation kernel: the model's logits at given weights, and the loss.

Every probe that evaluates a model at weights other than its own (a Hessian-vector product, a
sharpness ascent step, a surface point) goes through :func:`logits_at`:

- the model is called functionally (:func:`landscape.params.call`): ``state`` replaces its
  parameters and buffers, the module itself is never mutated, tied weights are one tensor;
- ``bn_mode="eval"`` runs the model in eval mode (running BatchNorm statistics);
  ``bn_mode="train"`` in train mode (the batch's statistics), with the running buffers cloned
  first so the call cannot update the ones in ``state``; the model's own flag is restored;
- the output is read by :func:`landscape.outputs.logits_of` (a tensor, a tuple's first element,
  ``.logits``) or ``output_fn``.

:func:`perturbed_state` is the state at ``θ + Σ_i c_i d_i`` (floating tensors only; integer
buffers such as ``num_batches_tracked`` stay as they are).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from landscape.outputs import OutputFn, logits_of
from landscape.params import call

BN_MODES = ("eval", "train")
PerSampleLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@contextlib.contextmanager
def bn_context(model: nn.Module, bn_mode: str) -> Iterator[None]:
    """The model's train flag set for ``bn_mode`` (``train`` → batch statistics), restored after."""
    was_training = model.training
    model.train(bn_mode == "train")
    try:
        yield
    finally:
        model.train(was_training)


def _axpy(value: torch.Tensor, d: torch.Tensor, c: float) -> torch.Tensor:
    """``value + c·d`` in one fused op; a ``c`` beyond the dtype's range gives inf/NaN, not an error."""
    if abs(c) <= torch.finfo(value.dtype).max:
        return torch.add(value, d, alpha=c)
    return value + c * d


def perturbed_state(base: dict[str, torch.Tensor], directions: Sequence[dict[str, torch.Tensor]],
                    coefficients: Sequence[float]) -> dict[str, torch.Tensor]:
    """``base`` with every floating tensor a direction names moved to ``θ + Σ_i c_i d_i``."""
    state = dict(base)
    for name in directions[0]:
        value = base[name]
        if not value.is_floating_point():  # integer buffers (num_batches_tracked) stay as they are
            continue
        value = _axpy(value, directions[0][name], float(coefficients[0]))
        for c, d in zip(coefficients[1:], directions[1:], strict=True):
            value = _axpy(value, d[name], float(c))
        state[name] = value
    return state


def logits_at(model: nn.Module, state: dict[str, torch.Tensor], x: Any, *, bn_mode: str = "eval",
              output_fn: OutputFn | None = None, keep: Sequence[str] = ()) -> torch.Tensor:
    """The logits of ``model`` with ``state`` in place of its tensors, on inputs ``x`` (a tensor or
    an :class:`~landscape.batch.InputBatch`), in ``bn_mode``. In ``train`` mode every entry of
    ``state`` not in ``keep`` (the tensors being differentiated or perturbed) is cloned first,
    so running statistics updated by the call never reach the caller's tensors."""
    if bn_mode == "train":
        kept = set(keep)
        state = {k: (v if k in kept else v.clone()) for k, v in state.items()}
    with bn_context(model, bn_mode):
        return logits_of(call(model, state, x), output_fn)
