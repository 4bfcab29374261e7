r"""The generalization measures of Jiang et al. 2020 ("Fantastic Generalization Measures and Where
to Find Them", ICLR, arXiv 1912.02178, Appendix C), one number each per checkpoint.

Numbers in brackets are the paper's equation numbers. The reference implementation followed for
the exact forms is Dziugaite et al. 2020's ``robust-generalization-measures``
(``data/generation/measures.py``, after ``bneyshabur/generalization-bounds``); everything here is
computed in float64.

Weight matrices
    :math:`W_1,\dots,W_d` are the weights of the model's ``nn.Linear`` and ``nn.Conv1d/2d/3d``
    layers, in module order (a tensor shared by two layers once; biases, normalization layers and
    embeddings are not weight matrices). A conv kernel ``[out, in, k…]`` is reshaped to the matrix
    ``[out, in·∏k]`` (the reference's main measures; its ``_FFT`` variants, the exact operator
    norm of the convolution, are not computed here). With ``fold_batchnorm`` (default, as the
    reference's ``_reparam``) a BatchNorm that directly follows a layer in module registration order
    (parameter-free modules in between other than ``nn.Identity`` break the pair) is folded into
    it first: :math:`W \leftarrow \operatorname{diag}(s)W`, :math:`s = \gamma/\sqrt{v+\epsilon}`,
    bias :math:`\beta + s(b-\mu)`; the same is done to the initialization with its own statistics.

Output margin (22)
    :math:`\gamma` is the :math:`k`-th smallest of :math:`z_y - \max_{j\ne y} z_j` over the whole
    training split, :math:`k = \max(\lfloor N/10\rfloor, 1)` (the reference's
    ``kthvalue(m // 10)``: the 10th percentile), ``margin`` is that signed value and the
    measures use :math:`|\gamma|` as the reference does; ``inv_margin2`` :math:`= 1/\gamma^2`.

Norms (29–44), with :math:`\sigma_i = \lVert W_i\rVert_2`, :math:`F_i = \lVert W_i\rVert_F`,
:math:`W^0_i` the initialization, logs natural, following the paper's (and the reference's) log forms:

* ``log_prod_spectral`` (32) :math:`\sum_i \log\sigma_i^2`; ``log_prod_spectral_over_margin`` (31)
  the same :math:`-\,2\log|\gamma|`;
* ``log_sum_spectral`` (35) :math:`\log d + \frac1d\sum_i\log\sigma_i^2` — the paper's "sum of
  spectral norms" is :math:`d\,(\prod_i\sigma_i^2)^{1/d}` (the smallest sum over the rescalings
  that leave a ReLU net unchanged), not the literal :math:`\sum_i\sigma_i^2`;
  ``log_sum_spectral_over_margin`` (34) :math:`\log d + \frac1d(\sum_i\log\sigma_i^2 - 2\log|\gamma|)`;
* ``fro_over_spectral`` (33) :math:`\sum_i F_i^2/\sigma_i^2`; ``log_spec_orig_main`` (30)
  (31) :math:`+ \log\sum_i F_i^2/\sigma_i^2`; ``log_spec_init_main`` (29)
  (31) :math:`+ \log\sum_i \lVert W_i - W_i^0\rVert_F^2/\sigma_i^2`;
* ``log_prod_frobenius`` (37) :math:`\sum_i\log F_i^2`, ``log_prod_frobenius_over_margin`` (36),
  ``log_sum_frobenius`` (39) :math:`\log d + \frac1d\sum_i\log F_i^2`,
  ``log_sum_frobenius_over_margin`` (38), as for the spectral norm;
* ``dist_init_frobenius`` (40) :math:`\sum_i\lVert W_i-W_i^0\rVert_F^2`, ``dist_init_spectral`` (41)
  :math:`\sum_i\lVert W_i-W_i^0\rVert_2^2`, ``param_norm`` (42) :math:`\sum_i F_i^2`;
* ``path_norm`` (44): the sum of the model's outputs at the all-ones input (one sample of the
  input's shape), in eval mode, with every trainable parameter squared (the model's own forward,
  through :func:`torch.func.functional_call`; the reference's ``_path_norm``). For a ReLU net
  without biases this is :math:`\sum_{\text{paths}}\prod w^2`; biases enter squared as paths
  that start at them. A folded BatchNorm becomes the reference's identity (weight 1, running mean
  0, variance 1, so :math:`x/\sqrt{1+\epsilon}`), the folded bias squared; a normalization layer
  that is not folded (LayerNorm, a BatchNorm without a preceding layer) has its affine parameters
  squared and its statistics as stored, so the number is then not a sum over paths.
  ``path_norm_over_margin`` (43) :math:`=` ``path_norm`` :math:`/\gamma^2`.

The reference then "adjusts for dataset size" (``0.5·(v − log m)`` for logs, ``sqrt(v/m)`` else);
Jiang et al. do not, and with one training-set size it changes no rank, so it is not applied.

``num_params`` (20) counts every trainable parameter (a shared tensor once); ``num_weights`` the
entries of the weight matrices (what the reference counts).

Optimization (63, 64), from ``RUN_DIR/metrics.jsonl`` (the run's whole log, whatever checkpoint is
probed): ``steps_to_ce_0.1`` is the first logged step whose training cross-entropy
(``ce_key``, default ``train_ce``: the trainer's full-training-set evaluation) is ≤ 0.1, and
``steps_ce_0.1_to_0.01`` the first step at ≤ 0.01 minus that one; the resolution is the logging
interval (an epoch for ``landscape train``). The thresholds are ``ce_thresholds``.

Gradient noise (66): with the first :math:`K\cdot b` points of a fixed seeded subset cut into
:math:`K = \lfloor\texttt{grad_subset}/b\rfloor` disjoint mini-batches of ``b`` points (``b`` =
``grad_batch_size``, default the run's training batch size, else 128),
:math:`g_k = \nabla_w \frac1b\sum_{i\in B_k}\ell_i` over all trainable parameters and
:math:`\bar g = \frac1K\sum_k g_k` (the gradient on those :math:`Kb` points),
``gradient_noise`` :math:`= \frac1K\sum_k\lVert g_k-\bar g\rVert^2` — the variance of the
mini-batch gradient of size ``b``; ``grad_norm2`` :math:`= \lVert\bar g\rVert^2`.

Flatness (48–61), with :math:`w` the weight matrices above flattened into one vector (BatchNorm
folded; no biases, no normalization parameters: the reference's ``get_weights_only`` after
``_reparam``), :math:`w^0` the same of the initialization, :math:`\omega` = ``num_weights`` and
:math:`m` the training-set size :math:`N`:

* σ (``pac_sigma``): the largest std of isotropic noise :math:`u \sim N(0, \sigma^2 I)` on *all*
  trainable parameters (the reference perturbs ``model.parameters()``) with
  :math:`\mathrm{acc}(w) - \mathbb E_u\,\mathrm{acc}(w+u) \le` ``pac_target`` (0.1); σ′
  (``pac_sigma_mag``) the same for the magnitude-aware noise of std
  :math:`\sqrt{\sigma'^2 w_i^2 + \epsilon^2}` (ε = ``pac_eps``). Both come from the sharpness
  probe's own search (:func:`landscape.probes.sharpness._pac_bayes`: ``pac_draws`` draws, geometric
  bisection, on the sharpness probe's seeded subset of ``pac_subset`` points in batches of
  ``pac_m``), so with the same settings and seed the two probes store one σ;
* ``pacbayes_init`` (48) :math:`\frac{\lVert w-w^0\rVert^2}{4\sigma^2} + \log\frac m\sigma + 10`,
  ``pacbayes_orig`` (49) the same with :math:`\lVert w\rVert^2`, ``pacbayes_flatness`` (53)
  :math:`1/\sigma^2`;
* ``pacbayes_mag_init`` (56) :math:`\frac14\sum_{i=1}^{\omega}\log\frac{\epsilon^2 + (\sigma'^2+1)
  \lVert w-w^0\rVert^2/\omega}{\epsilon^2 + \sigma'^2(w_i-w^0_i)^2} + \log\frac m{\sigma'} + 10`,
  ``pacbayes_mag_orig`` (57) with :math:`\lVert w\rVert^2` in the numerator (the denominator keeps
  :math:`w-w^0`, as the reference code writes both), ``pacbayes_mag_flatness`` (61) :math:`1/\sigma'^2`;
* α (``sharpness_alpha``): the largest α with the error increase at the worst case of the box
  :math:`|u_i| \le \alpha` (all trainable parameters) ≤ ``worst_target`` (0.1), per batch of the same
  subset: Auto-PGD (:func:`~landscape.probes.sharpness.worst_case_ascent`, ``worst_iters`` steps from
  u = 0) *maximizes the batch loss* (cross-entropy, as Jiang et al.'s sample code ascends the
  cross-entropy) and the error is read at the loss maximizer; bisected as σ is
  (:func:`worst_case_alpha`, ``worst_steps`` steps); ``sharpness_alpha_hi`` is the bracket's upper end;
* ``sharpness_init`` (50) :math:`\frac{\lVert w-w^0\rVert^2\log(2\omega)}{4\alpha^2} + \log\frac m\alpha
  + 10`, ``sharpness_orig`` (51) with :math:`\lVert w\rVert^2`, ``sharpness_flatness`` (54) :math:`1/\alpha^2`.
  (The equation numbers 50, 51, 54 are our reading of the paper; the reference code numbers only
  the PAC-Bayes rows.)

Against the references: the robust-generalization-measures code draws its "σ" noise with
``torch.normal(0, σ²)`` (std σ², not σ) and its magnitude-aware noise with std
:math:`\sigma'^2 w^2 + \epsilon^2` (a variance passed as the std), bisects σ linearly on [0, 2] for
15 steps (returning the last midpoint, stopping early within 0.01 of the target) with 10 draws over
the whole training set; here the std is σ (resp. :math:`\sqrt{\sigma'^2w^2+\epsilon^2}`, Jiang et al.'s
noise), the answer is a σ known to meet the target, and the draws, steps and subset are the sharpness
probe's (``pac_draws=10, pac_subset=None`` is the reference's count and data). That code has no
worst-case family; Jiang et al.'s sample code starts the ascent from Gaussian noise, ascends
plain gradient steps and projects onto an l2 ball :math:`\lVert u\rVert_2 \le \alpha` (the paper
writes the box :math:`|u_i|\le\alpha`, used here), and takes the worst of 15 such draws.
Costs are in :class:`MeasuresConfig`.

A measure that cannot be computed (no initialization checkpoint, no RUN_DIR, a run that never
reached the cross-entropy, a task without class logits) is NaN, with the reason in ``reasons``.

The package, one concept a module:

* :mod:`~landscape.probes.measures.config` — :class:`MeasuresConfig`;
* :mod:`~landscape.probes.measures.weights` — the weight matrices, BatchNorm folded (:func:`weight_matrices`);
* :mod:`~landscape.probes.measures.norms` — the norm-based measures and the path norm;
* :mod:`~landscape.probes.measures.margins` — the output margin γ;
* :mod:`~landscape.probes.measures.optimization` — gradient noise and steps to a cross-entropy;
* :mod:`~landscape.probes.measures.bounds` — the PAC-Bayes and sharpness bounds' closed forms;
* :mod:`~landscape.probes.measures.flatness` — σ, σ′, the worst-case α and the flatness measures;
* :mod:`~landscape.probes.measures.probe` — :func:`run_measures` and the registration.
"""

from landscape.probes.measures.bounds import pac_bayes_bound, pac_bayes_mag_bound, sharpness_bound
from landscape.probes.measures.config import MeasuresConfig
from landscape.probes.measures.flatness import (
           _flatness_batches,
           flatness_measures,
           worst_case_alpha,
)
from landscape.probes.measures.margins import output_margin
from landscape.probes.measures.norms import _log, _logsum, norm_measures, path_norm
from landscape.probes.measures.optimization import gradient_noise, steps_to_ce
from landscape.probes.measures.probe import _init_matrices, _run_meta, run_measures
from landscape.probes.measures.weights import (
           F64,
           WEIGHT_LAYERS,
           _fold,
           _fold_pairs,
           _key,
           weight_matrices,
)

__all__ = ["MeasuresConfig", "weight_matrices", "norm_measures", "path_norm", "output_margin",
           "gradient_noise", "steps_to_ce", "pac_bayes_bound", "pac_bayes_mag_bound", "sharpness_bound",
           "worst_case_alpha", "flatness_measures", "run_measures", "F64", "WEIGHT_LAYERS",
           # private, kept importable from the former module's path
           "_flatness_batches", "_fold", "_fold_pairs", "_init_matrices", "_key", "_log", "_logsum", "_run_meta"]
