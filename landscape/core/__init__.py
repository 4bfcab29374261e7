"""What every probe stands on (ARCHITECTURE: ``core/``).

- :mod:`landscape.core.data`: the samples a probe reads — in memory (a ``Split``) or streamed
  batch by batch (a :class:`Stream` over a DataLoader, Dataset or iterable), one interface:
  ``len``, ``batches``, ``take``.
- :mod:`landscape.core.kernel`: the one functional evaluation kernel — the logits at given
  weights in a ``bn_mode`` (:func:`logits_at`), the state at ``θ + Σ cᵢ dᵢ``
  (:func:`perturbed_state`).
- :mod:`landscape.core.loss`: the per-sample loss a probe sees, from the user's loss and the task.

The problem a probe measures is its :class:`~landscape.probes.base.ProbeContext` (model, per-sample
loss, data, device, output function); ``bn_mode`` and ``dtype`` are the probe's own settings.
"""

from landscape.core.data import Stream, is_stream, iter_batches
from landscape.core.kernel import logits_at, perturbed_state

__all__ = ["Stream", "is_stream", "iter_batches", "logits_at", "perturbed_state"]
