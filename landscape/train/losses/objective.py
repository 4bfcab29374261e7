"""The training objective: Loss (a registered loss plus z-loss and flooding), SequenceLoss for token tasks."""

from __future__ import annotations

import difflib
from typing import Any

import torch
from torch import Tensor

from landscape.errors import ConfigError
from landscape.tasks import TOKEN_TASKS, sequence_loss
from landscape.train.losses.registry import _NONNEG, _RANGES, LOSSES, _Interval, _param_defaults


def _describe_params(name: str) -> str:
    defaults = _param_defaults(LOSSES[name])
    if not defaults:
        return f"loss {name!r} accepts no parameters"
    ranges = _RANGES.get(name, {})
    parts = []
    for p, d in defaults.items():
        rng = f" ({p} {ranges[p]})" if p in ranges else ""
        parts.append(f"{p}={d!r}{rng}")
    return f"accepted parameters of loss {name!r}: " + ", ".join(parts)


def _check_number(what: str, value: Any, interval: _Interval, hint: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{what} must be a number, got {value!r}; {hint}")
    value = float(value)
    if value not in interval:
        raise ConfigError(f"{what} must be {interval}, got {value!r}; {hint}")
    return value


def _resolve_params(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """Check ``params`` against the signature and ranges of loss ``name``; add defaults."""
    defaults = _param_defaults(LOSSES[name])
    hint = _describe_params(name)
    for key in params:
        if key not in defaults:
            close = difflib.get_close_matches(key, list(defaults), n=1)
            guess = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"loss {name!r} got an unknown parameter {key!r}{guess}; {hint}")
    ranges = _RANGES.get(name, {})
    resolved: dict[str, Any] = {}
    for key, default in defaults.items():
        value = params.get(key, default)
        what = f"loss {name!r}: {key}"
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{what} must be true or false, got {value!r}; {hint}")
        elif isinstance(default, (int, float)):
            value = _check_number(what, value, ranges.get(key, _Interval()), hint)
        resolved[key] = value
    return resolved


class Loss(torch.nn.Module):
    r"""A registered loss (name + params) plus optional terms: the training objective.

    .. math::
        \ell_n = f(z_n, y_n; \theta) + \lambda_z \big(\log\textstyle\sum_k e^{z_{nk}}\big)^2,
        \qquad
        L = \frac1N \sum_n \ell_n, \qquad
        L_\text{flood} = |L - b| + b

    - ``z_loss`` (:math:`\lambda_z`): PaLM's auxiliary logit z-loss (Chowdhery
      et al. 2022 use 1e-4), per sample; 0 (off) by default.
    - ``flooding`` (:math:`b`): flooding (Ishida et al. 2020, "Do We Need Zero
      Training Loss After Achieving Zero Training Loss?") of the batch-mean
      loss (z-loss included): below ``b`` the gradient is reversed (gradient
      ascent). ``None`` (off) by default; ``0`` is a no-op for non-negative losses.

    :meth:`per_sample` gives :math:`\ell_n` (no flooding: it acts on the mean);
    :meth:`forward` gives the scalar objective. Unknown names raise the
    registry's error; bad parameters raise :class:`~landscape.errors.ConfigError`.
    """

    def __init__(
        self,
        name: str = "ce",
        *,
        z_loss: float = 0.0,
        flooding: float | None = None,
        **params: Any,
    ) -> None:
        super().__init__()
        self.name = LOSSES.canonical(name)
        self.fn = LOSSES[self.name]
        self.params = _resolve_params(self.name, params)
        self.z_loss = _check_number("z_loss", z_loss, _NONNEG, "z_loss is the PaLM z-loss weight")
        self.flooding = (
            None
            if flooding is None
            else _check_number(
                "flooding", flooding, _NONNEG, "flooding is the flood level b, or None for off"
            )
        )

    def per_sample(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Per-sample objective ``[N]``: the base loss plus the z-loss term, no flooding."""
        if logits.shape[:-1] != targets.shape:
            raise ValueError(
                f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} do not fit: "
                "expected logits [N, C] and targets [N]"
            )
        out = self.fn(logits, targets, **self.params)
        if self.z_loss:
            out = out + self.z_loss * torch.logsumexp(logits, dim=-1).square()
        return out

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Scalar objective: the mean of :meth:`per_sample`, then flooding if set."""
        loss = self.per_sample(logits, targets).mean()
        if self.flooding is not None:
            loss = (loss - self.flooding).abs() + self.flooding
        return loss

    def spec(self) -> dict[str, Any]:
        """``{"name", "params", "z_loss", "flooding"}``, canonical name and all params resolved.

        ``build_loss(s["name"], z_loss=s["z_loss"], flooding=s["flooding"], **s["params"])``
        rebuilds the same loss.
        """
        return {
            "name": self.name,
            "params": dict(self.params),
            "z_loss": self.z_loss,
            "flooding": self.flooding,
        }

    def extra_repr(self) -> str:
        parts = [repr(self.name), *(f"{k}={v!r}" for k, v in self.params.items())]
        if self.z_loss:
            parts.append(f"z_loss={self.z_loss!r}")
        if self.flooding is not None:
            parts.append(f"flooding={self.flooding!r}")
        return ", ".join(parts)


def build_loss(
    name: str = "ce",
    *,
    z_loss: float = 0.0,
    flooding: float | None = None,
    **params: Any,
) -> Loss:
    """The :class:`Loss` for a registered name (or alias) and its parameters."""
    return Loss(name, z_loss=z_loss, flooding=flooding, **params)


class SequenceLoss(torch.nn.Module):
    r"""The training objective of a token task from a per-token :class:`Loss`:
    ``ℓ_n = c · Σ_{t valid} ℓ(z_{n,t}, y_{n,t})`` with ``c = N / T_total`` of the training split
    (:func:`landscape.tasks.sequence_loss`), so the batch mean is the token-weighted mean at the
    training split's scale; the loss's z-loss term is per token, flooding acts on the batch mean."""

    def __init__(self, loss: Loss, task: str, scale: float) -> None:
        super().__init__()
        self.loss, self.task, self.scale = loss, task, float(scale)
        self.per_sample = sequence_loss(loss.per_sample, task, self.scale)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        loss = self.per_sample(logits, targets).mean()
        if self.loss.flooding is not None:
            loss = (loss - self.loss.flooding).abs() + self.loss.flooding
        return loss

    def spec(self) -> dict[str, Any]:
        return {**self.loss.spec(), "task": self.task, "token_scale": self.scale}


def task_objective(loss: Loss, data: Any) -> Loss | SequenceLoss:
    """``loss`` as the objective of ``data``'s task (``data.info["task"]``, classification when
    absent): itself for classification, a :class:`SequenceLoss` for per-token targets."""
    task = (data.info or {}).get("task") or {}
    if task.get("name") not in TOKEN_TASKS:
        return loss
    return SequenceLoss(loss, task["name"], len(data.train) / task["valid_tokens"]["train"])

