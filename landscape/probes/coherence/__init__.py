r"""Gradient coherence (Chatterjee & Zielinski 2022) and the gradient signal-to-noise ratio (GSNR,
Liu et al. 2020) from per-example gradients.

With per-example gradients :math:`g_i = \nabla_\theta \ell(f_\theta(x_i), y_i)`, :math:`i = 1…m`
(of the per-sample losses, not of their mean), the probe reports

.. math::

    \alpha = \frac{\lVert \mathbb{E}_i g_i \rVert^2}{\mathbb{E}_i \lVert g_i \rVert^2}
           = \frac{\lVert \sum_i g_i \rVert^2}{m \sum_i \lVert g_i \rVert^2},
    \qquad m\alpha = \frac{\lVert \sum_i g_i \rVert^2}{\sum_i \lVert g_i \rVert^2},

the coherence and its normalized form :math:`\alpha/\alpha_\perp = m\alpha` (:math:`\alpha_\perp =
1/m` for mutually orthogonal gradients): ``m_alpha`` is m for identical gradients, 1 for mutually
orthogonal ones, 0 when they cancel (Chatterjee & Zielinski, "On the Generalization Mystery in Deep
Learning", 2022). The same is reported for each layer's block of parameters. The GSNR of parameter
j (Liu et al., "Understanding Why Neural Networks Generalize Well Through GSNR of Parameters",
ICLR 2020) is

.. math::

    r_j = \frac{\bar g_j^2}{\operatorname{Var}(g_j)},\qquad
    \bar g_j = \frac1m \sum_i g_{ij},\qquad
    \operatorname{Var}(g_j) = \frac{1}{m-1}\Bigl(\sum_i g_{ij}^2 - m\,\bar g_j^2\Bigr),

with the **unbiased** (``1/(m−1)``) sample variance as in Liu et al. (``ddof=1``, the default;
``ddof=0`` gives ``1/m``). Everything is a function of three sums over the examples: :math:`S =
\sum_i g_i`, :math:`Q = \sum_i g_i^{\odot 2}` (elementwise) and :math:`\sum_i \lVert g_i\rVert^2 =
\sum_j Q_j` (per layer: the sum of that layer's entries of Q).

How the sums are computed (one batched backward with module hooks, or ``vmap`` of per-example
gradients) is in :mod:`~landscape.probes.coherence.per_example`. The package, one concept a module:

* :mod:`~landscape.probes.coherence.config` — :class:`CoherenceConfig`;
* :mod:`~landscape.probes.coherence.per_example` — :func:`gradient_statistics`: the three sums;
* :mod:`~landscape.probes.coherence.statistics` — :class:`GradientStatistics`, :func:`gsnr`,
  :func:`summarize` (coherence, GSNR summaries, per layer);
* :mod:`~landscape.probes.coherence.probe` — :func:`coherence` on a fixed subset, and the registration.
"""

from landscape.probes.coherence.config import METHODS, CoherenceConfig
from landscape.probes.coherence.per_example import (
    _CACHE_BUDGET,
    _MATMUL_BUDGET,
    Loss,
    _hook_sums,
    _hookable,
    _looped_grads,
    _module_sum_sq,
    _vmap_sums,
    gradient_statistics,
)
from landscape.probes.coherence.probe import coherence, run_coherence
from landscape.probes.coherence.statistics import (
    QUANTILE_LEVELS,
    GradientStatistics,
    _flat,
    _per_layer,
    _segment_sums,
    gsnr,
    summarize,
)

__all__ = ["METHODS", "QUANTILE_LEVELS", "CoherenceConfig", "GradientStatistics", "Loss", "coherence",
           "gradient_statistics", "gsnr", "run_coherence", "summarize",
           # private, kept importable from the former module's path (the tests use some)
           "_CACHE_BUDGET", "_MATMUL_BUDGET", "_flat", "_hook_sums", "_hookable", "_looped_grads",
           "_module_sum_sq", "_per_layer", "_segment_sums", "_vmap_sums"]
