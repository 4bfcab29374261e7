"""The SAM family: SAM (and ASAM via ``adaptive``), ASAM, SAM-ON."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import Tensor, nn

from landscape.errors import ConfigError
from landscape.train.optim.batchnorm import normalization_parameters
from landscape.train.optim.registry import OPTIMIZERS
from landscape.train.optim.sharpness_aware import ADAPTIVE_ETA, SharpnessAware
from landscape.train.optim.validation import _check_nonnegative


@OPTIMIZERS.register("sam")
class SAM(SharpnessAware):
    r"""Sharpness-aware minimization (Foret et al. 2021); ASAM with ``adaptive=True``.

    Two closure calls per step:

    .. math::
        g = ∇L(w),\quad ε = ρ\,\frac{T_w^2 g}{\lVert T_w g\rVert_2},\quad
        w ← \mathrm{base}(w, ∇L(w + ε)),

    with ``T_w = I`` (SAM) or ``T_w = diag(|w| + η)`` (``adaptive=True``,
    Kwon et al. 2021; ``eta=0`` gives davda54's ``adaptive``). The norm is
    global over all parameters with a gradient. ``ε = 0`` when ``g = 0``.
    """

    def __init__(
        self,
        params: Iterable[Any],
        base_optimizer: Any = None,
        *,
        rho: float = 0.05,
        adaptive: bool = False,
        eta: float = ADAPTIVE_ETA,
        **base_kwargs: Any,
    ) -> None:
        _check_nonnegative("rho", rho)
        _check_nonnegative("eta", eta)
        super().__init__(
            params,
            base_optimizer,
            {"rho": rho, "adaptive": bool(adaptive), "eta": eta},
            base_kwargs,
        )


@OPTIMIZERS.register("asam")
class ASAM(SAM):
    r"""Adaptive SAM (Kwon et al. 2021): :class:`SAM` with ``adaptive=True`` and ``rho=2.0``.

    .. math::
        ε = ρ\,\frac{T_w^2 g}{\lVert T_w g\rVert_2},\qquad T_w = \mathrm{diag}(|w| + η),\ η = 0.01.
    """

    def __init__(
        self,
        params: Iterable[Any],
        base_optimizer: Any = None,
        *,
        rho: float = 2.0,
        eta: float = ADAPTIVE_ETA,
        **base_kwargs: Any,
    ) -> None:
        super().__init__(params, base_optimizer, rho=rho, adaptive=True, eta=eta, **base_kwargs)


@OPTIMIZERS.register("sam_on", "samon")
class SAMON(SAM):
    r"""SAM-ON (Mueller et al. 2023): the (A)SAM perturbation on normalization parameters only.

    .. math::
        ε_N = ρ\,\frac{T^2 g_N}{\lVert T g_N\rVert_2},\quad ε_{\bar N} = 0,\quad
        w ← \mathrm{base}(w, ∇L(w + ε)),

    where ``N`` are the weights and biases of the normalization layers
    (BatchNorm, LayerNorm, GroupNorm, …) and the norm runs over ``N`` only, as
    in mueller-mp/SAM-ON (``only_bn``). Every parameter is still updated by
    the base optimizer with the gradient at ``w + ε``. Two closure calls.

    Pass the ``model`` (its normalization parameters are found by module
    type, not by name) or the ``norm_params`` themselves. Defaults follow the
    reference's ``train.py``: ``rho=0.5``.
    """

    def __init__(
        self,
        params: Iterable[Any],
        base_optimizer: Any = None,
        *,
        model: nn.Module | None = None,
        norm_params: Iterable[Tensor] | None = None,
        rho: float = 0.5,
        adaptive: bool = False,
        eta: float = ADAPTIVE_ETA,
        **base_kwargs: Any,
    ) -> None:
        if (model is None) == (norm_params is None):
            raise ConfigError("sam_on needs exactly one of model= or norm_params=")
        norm = list(norm_params) if norm_params is not None else normalization_parameters(model)  # type: ignore[arg-type]
        if not norm:
            raise ConfigError(
                "sam_on perturbs normalization layers only, and the model has none "
                "(BatchNorm/LayerNorm/GroupNorm with affine parameters); use sam or asam"
            )
        super().__init__(params, base_optimizer, rho=rho, adaptive=adaptive, eta=eta, **base_kwargs)
        optimized = {id(p) for group in self.param_groups for p in group["params"]}
        self._norm_ids = {id(p) for p in norm if id(p) in optimized}
        if not self._norm_ids:
            raise ConfigError("sam_on: none of the normalization parameters is being optimized")

    def _perturbable(self, p: Tensor) -> bool:
        return id(p) in self._norm_ids
