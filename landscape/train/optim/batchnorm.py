"""BatchNorm and normalization-layer helpers shared by the trainer and the optimizers."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase


def bn_first_pass_only(model: nn.Module, closure: Callable[[], Tensor]) -> Callable[[], Tensor]:
    """Wrap closure: first call normal; later calls with every _BatchNorm's momentum set to 0 (restored after each call).

    ``num_batches_tracked`` is restored after the later calls as well, so the
    BatchNorm buffers after a multi-pass step equal those after one plain
    forward pass on the same batch (this also holds for ``momentum=None``,
    the cumulative average). The counter of calls belongs to the returned
    closure: wrap a fresh closure for every step.
    """
    calls = 0

    def wrapped() -> Tensor:
        nonlocal calls
        calls += 1
        if calls == 1:
            return closure()
        saved = []
        for module in model.modules():
            if isinstance(module, _BatchNorm):
                tracked = module.num_batches_tracked
                saved.append(
                    (module, module.momentum, None if tracked is None else tracked.clone())
                )
                module.momentum = 0.0
        try:
            return closure()
        finally:
            for module, momentum, tracked in saved:
                module.momentum = momentum
                if tracked is not None and module.num_batches_tracked is not None:
                    module.num_batches_tracked.copy_(tracked)

    return wrapped


def normalization_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Weights and biases of the normalization layers of ``model``.

    BatchNorm / SyncBatchNorm / InstanceNorm (affine), LayerNorm, GroupNorm
    and RMSNorm (where torch has it).
    """
    kinds: tuple[type[nn.Module], ...] = (_NormBase, nn.LayerNorm, nn.GroupNorm)
    if hasattr(nn, "RMSNorm"):
        kinds = (*kinds, nn.RMSNorm)
    found: dict[int, nn.Parameter] = {}
    for module in model.modules():
        if isinstance(module, kinds):
            for p in module.parameters(recurse=False):
                found.setdefault(id(p), p)
    return list(found.values())
