"""Whole-split evaluation: sample-weighted mean loss and accuracy, in eval mode, without grad."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from landscape.batch import forward
from landscape.outputs import OutputFn, logits_of
from landscape.tasks import Task, correct_count

PerSampleLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    losses: dict[str, PerSampleLoss],
    batch_size: int = 1024,
    output_fn: OutputFn | None = None,
    task: str | Task = "classification",
) -> dict[str, float]:
    """Mean of each per-sample loss over ``(x, y)`` and the accuracy, in ``eval()`` mode.

    Returns ``{name: (1/N) Σ_n loss(f(x_n), y_n) for each loss} ∪ {"acc": (1/N) Σ_n 1[argmax f(x_n) = y_n]}``;
    ``f(x)`` is :func:`landscape.outputs.logits_of` of the model's output (or ``output_fn``'s);
    the model's train/eval mode is restored afterwards. For a token ``task`` the accuracy is
    token accuracy, correct valid tokens / valid tokens (:func:`landscape.tasks.correct_count`).
    """
    was_training = model.training
    model.eval()
    totals = {name: torch.zeros((), dtype=torch.float64, device=x.device) for name in losses}
    correct = torch.zeros((), dtype=torch.long, device=x.device)
    count = 0
    try:
        for start in range(0, len(x), batch_size):
            xb, yb = x[start : start + batch_size], y[start : start + batch_size]
            logits = logits_of(forward(model, xb), output_fn)
            for name, fn in losses.items():
                totals[name] += fn(logits, yb).double().sum()
            c, k = correct_count(logits, yb, task)
            correct += c
            count += k
    finally:
        model.train(was_training)
    n = max(len(x), 1)
    out = {name: float(total) / n for name, total in totals.items()}
    out["acc"] = float(correct) / count if count else float("nan")  # regression: no accuracy
    return out
