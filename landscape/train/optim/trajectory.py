"""SAF and MESA (Du et al. NeurIPS 2022): a trajectory-KL loss term instead of extra gradient evaluations."""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.func import functional_call

from landscape.errors import ConfigError
from landscape.train.optim._ops import Closure, _evaluate
from landscape.train.optim.registry import OPTIMIZERS
from landscape.train.optim.sharpness_aware import SharpnessAware
from landscape.train.optim.validation import (
    _check_epoch_window,
    _check_nonnegative,
    _check_positive,
    _check_unit,
)


def trajectory_kl(z_now: Tensor, z_ref: Tensor, tau: float) -> Tensor:
    r"""Per-sample ``τ² · KL(softmax(z_ref/τ) ‖ softmax(z_now/τ))`` over the last dimension.

    .. math::
        τ^2 \sum_c p_c\,(\log p_c − \log q_c),\quad p = \mathrm{softmax}(z_{ref}/τ),\
        q = \mathrm{softmax}(z_{now}/τ),

    the reference's ``F.kl_div(log q, p).sum(-1) · τ²`` (AngusDujw/SAF). ``z_ref`` is a fixed
    target (detached); the gradient flows through ``z_now``. Shape ``z_now.shape[:-1]``.
    """
    log_q = torch.log_softmax(z_now / tau, dim=-1)
    log_p = torch.log_softmax(z_ref.detach().to(z_now.dtype) / tau, dim=-1)
    return (tau * tau) * (log_p.exp() * (log_p - log_q)).sum(-1)


class _TrajectoryLoss(SharpnessAware):
    """Base of SAF and MESA: a loss term instead of extra gradient evaluations.

    The trainer calls ``auxiliary_loss(model, inputs, logits, indices, epoch)`` inside its
    closure and adds the result to the batch loss before ``backward``; ``step`` then runs the
    base optimizer once (one closure call). The term is active for the 0-based epochs ``e``
    with ``start_epoch < e < end_epoch`` (the reference's ``epoch > kl_start_epoch and
    epoch < kl_end_epoch``; ``end_epoch=None``: no end). In a loop of your own: add
    ``optimizer.auxiliary_loss(...)`` to your loss the same way.
    """

    closure_calls: ClassVar[int] = 1
    step_only: ClassVar[str | None] = "{name} adds a loss term"

    def active(self, epoch: int) -> bool:
        group = self.param_groups[0]
        end = group["end_epoch"]
        return epoch > group["start_epoch"] and (end is None or epoch < end) and group["lam"] > 0

    def auxiliary_loss(self, model: nn.Module, inputs: Any, logits: Tensor, indices: Tensor,
                       epoch: int) -> Tensor:
        raise NotImplementedError

    def _after_step(self) -> None:
        """What changes once the base optimizer has updated the weights."""

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> Tensor:  # type: ignore[override]
        closure = self._require_closure(self, closure)
        loss = _evaluate(closure)
        self.base_optimizer.step()
        self._after_step()
        return loss

    def _device(self) -> torch.device:
        return self.param_groups[0]["params"][0].device


@OPTIMIZERS.register("saf")
class SAF(_TrajectoryLoss):
    r"""Sharpness-Aware Training for Free (Du, Zhou, Feng, Tan & Zhou, NeurIPS 2022;
    AngusDujw/SAF): the trajectory loss against the outputs recorded ``E`` epochs earlier.

    .. math::
        L = L_B(w) + λ\,\frac{1}{|B'|}\sum_{i ∈ B'} τ^2\,
            \mathrm{KL}\big(\mathrm{softmax}(z_i^{(e−E)}/τ)\ \big\|\ \mathrm{softmax}(z_i(w)/τ)\big),

    where ``z_i^{(e−E)}`` are the outputs the model gave sample ``i`` (by its index in the
    training set) in epoch ``e − E`` and ``B'`` the samples of the batch that have such a
    record (all of them, except after an epoch that skipped a sample). Every call records the
    current outputs (detached), in a ring of ``E + 1`` epochs: memory
    ``(E + 1) · N · (outputs per sample)`` numbers, allocated on the first call and grown with
    the largest index seen. Defaults: the reference's README and ImageNet script ``lam=0.3``,
    ``tau=5``, ``start_epoch=5``; ``E=3`` (its ``--minus_epoch`` default; the script uses 2).
    The memory and its epoch tags are saved in ``state_dict()`` (``saf_memory``,
    ``saf_epochs``), so a resumed run is bit-identical. The training loss the trainer logs is
    the task loss alone, without the λ·KL term.
    """

    def __init__(
        self,
        params: Iterable[Any],
        base_optimizer: Any = None,
        *,
        lam: float = 0.3,
        tau: float = 5.0,
        E: int = 3,
        start_epoch: int = 5,
        end_epoch: int | None = None,
        **base_kwargs: Any,
    ) -> None:
        _check_nonnegative("lam", lam)
        _check_positive("tau", tau)
        if isinstance(E, bool) or not isinstance(E, numbers.Integral) or E < 1:
            raise ConfigError(f"invalid E={E!r}: how many epochs back, an integer ≥ 1")
        _check_epoch_window(start_epoch, end_epoch)
        hyper = {"lam": lam, "tau": float(tau), "E": int(E), "start_epoch": int(start_epoch),
                 "end_epoch": None if end_epoch is None else int(end_epoch)}
        super().__init__(params, base_optimizer, hyper, base_kwargs)
        self._memory: Tensor | None = None  # [E + 1, N, *output shape]
        self._epochs: Tensor | None = None  # [E + 1, N]: the epoch each record is from, -1 = none

    def _room(self, indices: Tensor, logits: Tensor) -> None:
        """Allocate (or grow) the memory so that every index of the batch has a row."""
        slots, shape = int(self.param_groups[0]["E"]) + 1, tuple(logits.shape[1:])
        if self._memory is not None and tuple(self._memory.shape[2:]) != shape:
            raise ConfigError(
                f"saf records {tuple(self._memory.shape[2:])} outputs per sample, got {shape}: "
                "the model's output shape must stay the same during training"
            )
        n = int(indices.max()) + 1 if indices.numel() else 0
        have = 0 if self._memory is None else self._memory.shape[1]
        if n <= have:
            return
        memory = logits.new_zeros((slots, n, *shape))
        epochs = torch.full((slots, n), -1, dtype=torch.long, device=logits.device)
        if self._memory is not None and self._epochs is not None:
            memory[:, :have] = self._memory
            epochs[:, :have] = self._epochs
        self._memory, self._epochs = memory, epochs

    def auxiliary_loss(self, model: nn.Module, inputs: Any, logits: Tensor, indices: Tensor,
                       epoch: int) -> Tensor:
        """``λ`` times the mean trajectory KL of the batch (0 outside the active epochs); records the outputs."""
        group = self.param_groups[0]
        E, epoch = int(group["E"]), int(epoch)
        idx = torch.as_tensor(indices, device=logits.device).long().reshape(-1)
        if idx.numel() != logits.shape[0]:
            raise ConfigError(f"saf needs one sample index per output row, got {idx.numel()} "
                              f"indices for {logits.shape[0]} rows")
        self._room(idx, logits)
        assert self._memory is not None and self._epochs is not None
        term = logits.new_zeros(())
        if self.active(epoch):
            past = (epoch - E) % (E + 1)
            valid = self._epochs[past, idx] == epoch - E
            kl = trajectory_kl(logits, self._memory[past, idx], group["tau"])
            weight = valid.reshape(-1, *([1] * (kl.dim() - 1))).to(kl.dtype)
            count = valid.sum().to(kl.dtype) * (kl.numel() // max(kl.shape[0], 1))
            # no record in the batch: the weighted sum is 0 (clamp, not where: finite gradient)
            term = group["lam"] * (kl * weight).sum() / count.clamp(min=1)
        now = epoch % (E + 1)
        self._memory[now, idx] = logits.detach().to(self._memory.dtype)
        self._epochs[now, idx] = epoch
        return term

    def state_dict(self) -> dict[str, Any]:
        out = dict(self.base_optimizer.state_dict())
        out["saf_memory"] = self._memory
        out["saf_epochs"] = self._epochs
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        memory, epochs = state_dict.pop("saf_memory", None), state_dict.pop("saf_epochs", None)
        super().load_state_dict(state_dict)
        device = self._device()
        self._memory = None if memory is None else memory.detach().to(device).clone()
        self._epochs = None if epochs is None else epochs.detach().to(device).clone()


@OPTIMIZERS.register("mesa")
class MESA(_TrajectoryLoss):
    r"""Memory-efficient SAF (Du et al. 2022, same paper and code): the trajectory loss against
    the outputs of an exponential moving average of the model.

    .. math::
        \bar θ ← β\,\bar θ + (1 − β)\,θ \ \text{(after every step)},\qquad
        L = L_B(w) + λ\,\frac{1}{|B|}\sum_{i ∈ B} τ^2\,
            \mathrm{KL}\big(\mathrm{softmax}(f_{\bar θ}(x_i)/τ)\ \big\|\ \mathrm{softmax}(z_i(w)/τ)\big).

    ``θ̄`` holds every parameter and floating-point buffer of ``model`` (BatchNorm running
    statistics included, as timm's ``ModelEmaV2`` that the reference uses) and starts as a copy
    of the model when the optimizer is built. The EMA model is evaluated with
    ``torch.func.functional_call`` on the model in eval mode, without gradient (one extra
    forward pass per active step; no RNG is drawn). Defaults: the reference's README and
    ImageNet script ``lam=0.8``, ``tau=5``, ``start_epoch=5``, and timm's EMA decay
    ``decay=0.9998``. ``θ̄`` is saved in ``state_dict()["mesa_ema"]`` (name → tensor). The
    training loss the trainer logs is the task loss alone, without the λ·KL term.
    """

    def __init__(
        self,
        params: Iterable[Any],
        base_optimizer: Any = None,
        *,
        model: nn.Module | None = None,
        lam: float = 0.8,
        tau: float = 5.0,
        decay: float = 0.9998,
        start_epoch: int = 5,
        end_epoch: int | None = None,
        **base_kwargs: Any,
    ) -> None:
        if model is None:
            raise ConfigError("mesa keeps a moving average of the model's weights: pass model=")
        _check_nonnegative("lam", lam)
        _check_positive("tau", tau)
        _check_unit("decay", decay, closed=True)
        _check_epoch_window(start_epoch, end_epoch)
        hyper = {"lam": lam, "tau": float(tau), "decay": float(decay), "start_epoch": int(start_epoch),
                 "end_epoch": None if end_epoch is None else int(end_epoch)}
        super().__init__(params, base_optimizer, hyper, base_kwargs)
        self._model = model
        self._ema: dict[str, Tensor] = {n: t.detach().clone() for n, t in self._tracked().items()}

    def _tracked(self) -> dict[str, Tensor]:
        """The model's parameters and floating-point buffers, by name (shared ones once)."""
        out = dict(self._model.named_parameters())
        out.update({n: b for n, b in self._model.named_buffers() if b.is_floating_point()})
        return out

    @torch.no_grad()
    def _after_step(self) -> None:
        beta = float(self.param_groups[0]["decay"])
        for name, t in self._tracked().items():
            self._ema[name].mul_(beta).add_(t.detach(), alpha=1.0 - beta)

    def ema_outputs(self, model: nn.Module, inputs: Any) -> Tensor:
        """The EMA model's outputs on ``inputs`` (eval mode, no gradient)."""
        modes = [(m, m.training) for m in model.modules()]
        model.eval()
        try:
            with torch.no_grad():
                out = functional_call(model, self._ema, (inputs,), strict=False)
        finally:
            for m, mode in modes:
                m.training = mode
        return out.logits if not isinstance(out, Tensor) and hasattr(out, "logits") else out

    def auxiliary_loss(self, model: nn.Module, inputs: Any, logits: Tensor, indices: Tensor,
                       epoch: int) -> Tensor:
        """``λ`` times the mean KL to the EMA model's outputs (0, and no EMA forward, outside the active epochs)."""
        if not self.active(int(epoch)):
            return logits.new_zeros(())
        group = self.param_groups[0]
        kl = trajectory_kl(logits, self.ema_outputs(model, inputs), group["tau"])
        return group["lam"] * kl.mean()

    def state_dict(self) -> dict[str, Any]:
        out = dict(self.base_optimizer.state_dict())
        out["mesa_ema"] = dict(self._ema)
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        ema = state_dict.pop("mesa_ema", None)
        tracked = self._tracked()
        if ema is not None and set(ema) != set(tracked):  # checked before anything is loaded
            raise ConfigError(
                "mesa: the saved moving average is of another model (its tensors are named "
                f"differently: {', '.join(sorted(set(ema) ^ set(tracked))[:5])}); resume with the same model"
            )
        super().load_state_dict(state_dict)
        if ema is None:
            return
        self._ema = {n: ema[n].detach().to(device=t.device, dtype=t.dtype).clone() for n, t in tracked.items()}
