"""The faster paths of the coherence probe against plain references: Σ_i g_i² of a Conv2d from
cache-sized chunks (squared in place) against a per-example autograd loop, the per-parameter block
sums and the GSNR quantiles of :func:`summarize` against the former formulas (``np.bincount`` over
a segment index, ``np.quantile`` of the unsorted values), and the one-pass hook statistics of a
whole CNN against the loop, with the forward / backward passes counted on the model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from landscape.errors import LandscapeError
from landscape.probes.coherence import (
    QUANTILE_LEVELS,
    CoherenceConfig,
    GradientStatistics,
    _module_sum_sq,
    _segment_sums,
    coherence,
    gradient_statistics,
    gsnr,
    summarize,
)


def ce(z, t):
    return F.cross_entropy(z, t, reduction="none")


def per_example_sq(model, x, y):
    """Σ_i g_i and Σ_i g_i² from one autograd.grad per example (float64)."""
    names = [n for n, _ in model.named_parameters()]
    total = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    sq = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for i in range(len(x)):
        grads = torch.autograd.grad(ce(model(x[i:i + 1]), y[i:i + 1]).sum(), list(model.parameters()))
        for n, g in zip(names, grads, strict=True):
            total[n] += g
            sq[n] += g * g
    return total, sq


@pytest.mark.parametrize("conv", [dict(stride=1, padding=1), dict(stride=2, padding=2, dilation=2)])
def test_conv_sum_sq_over_several_cache_sized_chunks_matches_the_loop(conv):
    torch.manual_seed(0)
    module = nn.Conv2d(16, 48, 3, **conv).double()  # 6,912 weights: 37 examples per chunk, 3 chunks
    x = torch.randn(100, 16, 6, 6, dtype=torch.float64)
    out = module(x)
    d = torch.randn_like(out)  # output gradients δ_i of Σ_i ⟨δ_i, out_i⟩
    got = _module_sum_sq(module, ["weight", "bias"], x, d, chunk=64)
    ref_w, ref_b = torch.zeros_like(module.weight), torch.zeros_like(module.bias)
    for i in range(len(x)):
        gw, gb = torch.autograd.grad((module(x[i:i + 1]) * d[i:i + 1]).sum(), [module.weight, module.bias])
        ref_w += gw * gw
        ref_b += gb * gb
    torch.testing.assert_close(got["weight"], ref_w, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got["bias"], ref_b, rtol=1e-10, atol=1e-12)


def test_cnn_hook_statistics_in_one_pass_match_the_loop():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(8, 40, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(40 * 16, 10)).double()
    with torch.no_grad():  # non-trivial running statistics, then eval
        model.train()(torch.randn(64, 1, 8, 8, dtype=torch.float64) + 0.3)
    model.eval()
    x = torch.randn(60, 1, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 10, (60,))
    passes = {"forward": 0, "backward": 0}

    def on_forward(module, inputs, output):
        passes["forward"] += 1
        output.register_hook(lambda g: passes.__setitem__("backward", passes["backward"] + 1))

    handle = model.register_forward_hook(on_forward)
    try:
        stats = gradient_statistics(model, ce, x, y, chunk=64)
    finally:
        handle.remove()
    assert passes == {"forward": 1, "backward": 1} and set(stats.method.values()) == {"hooks"}
    total, sq = per_example_sq(model, x, y)
    for n in total:
        torch.testing.assert_close(stats.sum[n], total[n], rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(stats.sum_sq[n], sq[n], rtol=1e-10, atol=1e-13)


def test_segment_sums_match_bincount_with_empty_blocks():
    rng = np.random.default_rng(0)
    sizes = [3, 0, 5, 1, 0]
    values = rng.standard_normal(sum(sizes))
    segment = np.repeat(np.arange(len(sizes)), sizes)
    ref = np.bincount(segment, weights=values, minlength=len(sizes))
    np.testing.assert_allclose(_segment_sums(values, sizes), ref, rtol=1e-14, atol=1e-15)
    assert _segment_sums(values, sizes)[[1, 4]].tolist() == [0.0, 0.0]


def test_summarize_matches_the_former_formulas():
    rng = np.random.default_rng(3)
    m = 40
    shapes = {"a.weight": (6, 5), "a.bias": (6,), "b.weight": (4, 6)}
    g = {n: rng.standard_normal((m, *s)) * (1 + rng.random(s)) + rng.standard_normal(s) for n, s in shapes.items()}
    g["a.bias"][:, 0] = 0.0  # an undefined GSNR entry (zero for every example)
    stats = GradientStatistics(m, {n: torch.tensor(v.sum(0)) for n, v in g.items()},
                               {n: torch.tensor((v * v).sum(0)) for n, v in g.items()})
    out = summarize(stats, histogram_bins=7)
    # former formulas: per-parameter sums by bincount over the entries' parameter index
    s = np.concatenate([v.sum(0).ravel() for v in g.values()])
    q = np.concatenate([(v * v).sum(0).ravel() for v in g.values()])
    sizes = [int(np.prod(sh)) for sh in shapes.values()]
    segment = np.repeat(np.arange(len(sizes)), sizes)
    norm_of_sum = np.bincount(segment, weights=s * s)
    sum_of_norm = np.bincount(segment, weights=q)
    assert out["m_alpha"] == pytest.approx(norm_of_sum.sum() / sum_of_norm.sum(), rel=1e-13)
    assert out["mean_grad_norm_sq"] == pytest.approx(norm_of_sum.sum() / m**2, rel=1e-13)
    layers = {"a": [0, 1], "b": [2]}
    np.testing.assert_allclose(out["layers"]["m_alpha"],
                               [norm_of_sum[k].sum() / sum_of_norm[k].sum() for k in layers.values()], rtol=1e-13)
    # GSNR quantiles: numpy's quantile of the unsorted finite values, bit for bit
    r = gsnr(stats)["gsnr"]
    finite = r[np.isfinite(r)]
    assert np.array_equal(out["gsnr_quantiles"], np.quantile(finite, QUANTILE_LEVELS))
    assert out["gsnr_num_undefined"] == 1 and out["gsnr_num_finite"] == finite.size == s.size - 1
    hist, edges = np.histogram(np.log10(finite[finite > 0]), bins=7)
    assert np.array_equal(out["gsnr_hist"], hist) and np.array_equal(out["gsnr_bin_edges"], edges)


def test_nan_gradients_still_name_the_first_bad_tensor():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)).double()
    with torch.no_grad():
        model[0].weight[:, 0] = 0.0  # the huge feature leaves the forward pass finite …
    x, y = torch.randn(6, 3, dtype=torch.float64), torch.randint(0, 2, (6,))
    x[:, 0] = 1e200  # … but Σ_i g_i² of the first weight overflows: one bad tensor of four
    with pytest.raises(LandscapeError, match=r"NaN/inf in 1 of 4 parameter tensors \(first: 0.weight\)"):
        coherence(model, ce, x, y, CoherenceConfig(subset=None, dtype="float64"))
