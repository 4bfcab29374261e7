r"""Classification losses the trainer implements, and the objective wrapper :class:`Loss`.

Every registered loss is a plain function of logits ``z`` (``[..., C]``, usually
``N × C``) and integer targets ``y`` (``[...]``, long) that returns **per-sample**
values (shape ``[...]``, usually ``[N]``)::

    f(logits, targets, *, **params) -> Tensor[N]

Reduction convention: a loss is summed over classes inside each sample (where
it has a sum over classes at all) and averaged over samples by
:meth:`Loss.forward`, i.e. :math:`L = \frac{1}{N}\sum_n \ell(z_n, y_n)`
(``c = 1/N``). Notation below: :math:`p = \mathrm{softmax}(z)`,
:math:`p_t = p_y`, :math:`e_y` the one-hot vector of ``y``,
:math:`\mathrm{CE} = -\log p_t = \log\sum_k e^{z_k} - z_y`.

The functions work with any leading batch shape (also an unbatched ``[C]``
logit vector with a ``[]`` target, as under ``torch.func.vmap``), call no
``.item()`` and build no one-hot with ``F.one_hot``, so per-example gradients
(``vmap(grad(...))``) and HVPs go through them.

The registered functions trust their parameters; :class:`Loss` /
:func:`build_loss` check names, types and ranges and raise
:class:`~landscape.errors.ConfigError` with one line saying what is wrong.

Weight decay is not here: the optimizers apply it (coupled L2 or decoupled).
"""


from landscape.train.losses.registry import LOSSES  # noqa: I001 — the registry, then the losses it holds
from landscape.train.losses.cross_entropy import cross_entropy, focal, label_smoothing, maxsup, poly1, temperature_ce
from landscape.train.losses.robust import generalized_ce, mae, mse, symmetric_ce
from landscape.train.losses.normalizers import sparsemax, sparsemax_loss, spherical_zloss, stablemax, stablemax_ce
from landscape.train.losses.objective import Loss, SequenceLoss, build_loss, task_objective

__all__ = [
    "LOSSES",
    "Loss",
    "build_loss",
    "SequenceLoss",
    "task_objective",
    "sparsemax",
    "cross_entropy",
    "label_smoothing",
    "maxsup",
    "focal",
    "poly1",
    "symmetric_ce",
    "generalized_ce",
    "mae",
    "mse",
    "temperature_ce",
    "sparsemax_loss",
    "stablemax",
    "stablemax_ce",
    "spherical_zloss",
]

