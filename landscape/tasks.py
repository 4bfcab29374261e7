r"""Tasks: what a target is, how per-token losses become one loss per sample, and the error metric.

``classification`` (the default): logits ``[N, C]``, integer targets ``(N,)``; accuracy
``(1/N) Σ_n 1[argmax f(x_n) = y_n]``.

``token_classification`` and ``causal_lm``: logits ``[N, T, C]``, integer targets ``[N, T]``
with ``ignore_index = -100`` marking positions that do not count (padding, prompts).
``causal_lm`` shifts as Hugging Face does: the targets are the input ids themselves and position
``t`` predicts token ``t + 1`` (``logits[:, :-1]`` against ``y[:, 1:]``);
``token_classification`` does not shift. One *sample* is one sequence (per-example probes such
as coherence take one gradient per sequence).

**Reduction convention.** The dataset mean is the token-weighted mean over the valid tokens,

.. math:: L = \frac{1}{T_{total}} \sum_{n,t:\ y_{n,t} ≠ -100} ℓ(f(x_n)_t, y_{n,t}),

with ``T_total`` the number of valid tokens (after the shift) of the training split. Probes
average one loss per sample, ``(1/N) Σ_n ℓ_n``, so each sequence gets

.. math:: ℓ_n = \frac{N}{T_{total}} \sum_{t\ valid} ℓ_{n,t},

which makes the split mean exactly ``L``. The factor ``c = N / T_total`` is fixed once, from the
training split: a probe working on a subset of sequences (a sharpness batch, a coherence
subset) or on the test split then sees the same per-token scale, and its mean equals that
subset's token-weighted mean only when its sequences have, on average, as many valid tokens as
the training split's (an approximation; the factor is recorded beside the results).

``regression``: outputs ``[N]`` or ``[N, D]`` (``[N, 1]`` against ``(N,)`` targets is read as
``[N]``), floating targets ``(N,)`` or ``(N, D)``; the loss is the user's (e.g. MSE per sample);
there is no accuracy: every accuracy / error a probe reports is NaN (``correct_count`` counts 0).

**Error metric.** Token accuracy = correct valid tokens / valid tokens (summed over batches, so
it is exact for any split or subset); :func:`correct_count` returns both numbers, and for
classification reduces to ``(argmax(logits) == y).sum(), N``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from landscape.errors import DataError

TASKS = ("classification", "causal_lm", "token_classification", "regression")
TOKEN_TASKS = ("causal_lm", "token_classification")
IGNORE_INDEX = -100

TokenLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class TaskError(DataError):
    """Model outputs or targets whose shapes the task cannot read."""


@dataclass(frozen=True)
class Task:
    """A task by name (one of :data:`TASKS`) and its ``ignore_index``."""

    name: str = "classification"
    ignore_index: int = IGNORE_INDEX

    def __post_init__(self) -> None:
        if self.name not in TASKS:
            raise TaskError(f"unknown task {self.name!r}; use one of {', '.join(TASKS)}")

    @property
    def tokens(self) -> bool:
        """Whether targets are per token (``[N, T]``)."""
        return self.name in TOKEN_TASKS

    @property
    def regression(self) -> bool:
        """Whether targets are real values (no accuracy)."""
        return self.name == "regression"

    @property
    def shift(self) -> bool:
        """Whether position ``t`` predicts target ``t + 1`` (causal LM)."""
        return self.name == "causal_lm"


def get_task(task: str | Task) -> Task:
    """``task`` as a :class:`Task` (a name is looked up; unknown names fail with the valid ones)."""
    return task if isinstance(task, Task) else Task(str(task))


def aligned(logits: torch.Tensor, y: torch.Tensor, task: str | Task) -> tuple[torch.Tensor, torch.Tensor]:
    """Token tasks: ``(logits[..., N, T', C], y[N, T'])`` with the causal shift applied
    (``T' = T − 1``) or not; classification: the inputs as they are."""
    t = get_task(task)
    if t.shift:
        return logits[..., :-1, :], y[:, 1:]
    return logits, y


def check_shapes(logits: tuple[int, ...], y: tuple[int, ...], task: str | Task) -> None:
    """Raise :class:`TaskError` (one line naming the shapes) unless logits of shape ``logits`` and
    targets of shape ``y`` fit ``task``."""
    t = get_task(task)
    lg, ys = tuple(logits), tuple(y)
    if t.regression:
        if lg == ys or (lg[:1] == ys[:1] and lg[1:] == (1,) and len(ys) == 1):
            return
        raise TaskError(f"task 'regression' needs outputs of the targets' shape; got outputs {lg} and targets {ys}")
    if not t.tokens:
        if len(lg) == 3 and len(ys) == 1:
            raise TaskError(f"the model returns per-token logits {lg} but the targets have shape {ys}; pass "
                            "task='causal_lm' or task='token_classification' with [N, T] targets")
        if len(lg) != 2 or len(ys) != 1 or lg[0] != ys[0]:
            raise TaskError(f"task 'classification' needs logits [N, C] and targets (N,); got logits {lg} "
                            f"and targets {ys}")
        return
    if len(lg) != 3 or len(ys) != 2 or lg[:2] != ys:
        raise TaskError(f"task {t.name!r} needs logits [N, T, C] and targets [N, T] of the same N, T; got "
                        f"logits {lg} and targets {ys}")
    if t.shift and ys[1] < 2:
        raise TaskError(f"task 'causal_lm' needs sequences of at least 2 tokens; got targets {ys}")


def valid_tokens(y: torch.Tensor, task: str | Task) -> int:
    """Number of targets that count: ``N`` for classification; tokens ``≠ ignore_index`` (after the
    shift) for token tasks."""
    t = get_task(task)
    if not t.tokens:
        return int(y.shape[0])
    ys = y[:, 1:] if t.shift else y
    return int((ys != t.ignore_index).sum())


def correct_count(logits: torch.Tensor, y: torch.Tensor, task: str | Task = "classification"
                  ) -> tuple[torch.Tensor, int]:
    """``(correct, count)`` over one batch: for classification ``((argmax_C logits == y).sum(), N)``;
    for token tasks the correct valid tokens and the number of valid tokens (after the shift).

    ``logits`` may carry leading dimensions (``[P, N, C]`` / ``[P, N, T, C]`` for ``P`` weight
    points); ``correct`` then has shape ``[P]``.
    """
    t = get_task(task)
    if t.regression:  # no accuracy: 0 of 0 (a probe reports NaN)
        k = y.ndim
        lead = logits.shape[:logits.ndim - k] if logits.shape[-k:] == y.shape else logits.shape[:logits.ndim - k - 1]
        return torch.zeros(lead, dtype=torch.long, device=logits.device), 0
    if not t.tokens:
        return (logits.argmax(-1) == y).sum(-1), int(y.shape[0])
    z, ys = aligned(logits, y, t)
    mask = ys != t.ignore_index
    return ((z.argmax(-1) == ys) & mask).sum((-2, -1)), int(mask.sum())


def sequence_loss(token_loss: TokenLoss, task: str | Task, scale: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """One loss per sequence from a per-token loss ``token_loss(logits[M, C], y[M]) → [M]``:
    ``ℓ_n = scale · Σ_{t valid} ℓ_{n,t}`` (``scale = N / T_total``, see the module docstring).

    Ignored positions get target 0 before ``token_loss`` is called (so any loss can be used) and
    contribute exactly 0; works under ``torch.vmap`` (per-sequence gradients).
    """
    t = get_task(task)

    def loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        z, ys = aligned(logits, y, t)
        mask = ys != t.ignore_index
        safe = torch.where(mask, ys, torch.zeros_like(ys))
        per_token = token_loss(z.reshape(-1, z.shape[-1]), safe.reshape(-1)).reshape(ys.shape)
        return torch.where(mask, per_token, torch.zeros_like(per_token)).sum(-1) * scale

    loss.task = t.name  # type: ignore[attr-defined]
    loss.scale = scale  # type: ignore[attr-defined]
    return loss
