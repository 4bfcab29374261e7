"""Neural-collapse measures: closed forms on simplex ETFs and an independent numpy reference."""

import math

import numpy as np
import pytest
import torch
from scipy.sparse.linalg import svds

from landscape.errors import ConfigError
from landscape.probes.collapse import CollapseConfig, neural_collapse

SCALARS = (
    "nc1", "trace_ratio", "cdnv", "equinorm_means", "equinorm_weights", "equiangular_means",
    "equiangular_weights", "cos_std_means", "cos_std_weights", "self_duality", "ncc_mismatch",
    "orthogonal_frame_means", "orthogonal_frame_weights",
)  # fmt: skip


def simplex_etf(c: int, d: int, seed: int = 0) -> np.ndarray:
    """C × D unit-norm simplex ETF: rows with pairwise cosine −1/(C−1), summing to 0."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((d, c)))  # D × C orthonormal columns
    return math.sqrt(c / (c - 1)) * ((np.eye(c) - np.ones((c, c)) / c) @ u.T)


def reference(h, y, w, b, pred, c, rcond=1e-12, global_mean="class_means"):
    """Plain numpy/loops re-implementation of the formulas (np.linalg.pinv for Σ_B⁺)."""
    n, d = h.shape
    present = [k for k in range(c) if np.any(y == k)]
    cp = len(present)
    mu = {k: h[y == k].mean(0) for k in present}
    mu_g = np.mean([mu[k] for k in present], 0) if global_mean == "class_means" else h.mean(0)
    sw = np.zeros((d, d))
    for i in range(n):
        r = h[i] - mu[y[i]]
        sw += np.outer(r, r)
    sw /= n
    sb = sum(np.outer(mu[k] - mu_g, mu[k] - mu_g) for k in present) / cp
    out = {"nc1": np.trace(sw @ np.linalg.pinv(sb, rcond=rcond, hermitian=True)) / cp}
    out["trace_ratio"] = np.trace(sw) / np.trace(sb)
    var = {k: np.mean([np.sum((x - mu[k]) ** 2) for x in h[y == k]]) for k in present}
    pairs = [(a, b_) for i, a in enumerate(present) for b_ in present[i + 1 :]]
    with np.errstate(divide="ignore"):
        out["cdnv"] = np.mean(
            [(var[a] + var[b_]) / (2 * np.sum((mu[a] - mu[b_]) ** 2)) for a, b_ in pairs]
        )

    def nc2(vectors):
        norms = np.array([np.linalg.norm(v) for v in vectors])
        m = len(vectors)
        cos = {
            (i, j): vectors[i] @ vectors[j] / (norms[i] * norms[j])
            for i in range(m)
            for j in range(m)
            if i != j
        }
        equi = np.mean([abs(v + 1 / (m - 1)) for v in cos.values()])
        upper = [cos[i, j] for i in range(m) for j in range(i + 1, m)]
        return (
            norms.std(ddof=1) / norms.mean(),
            equi,
            (np.std(upper, ddof=1) if len(upper) > 1 else 0.0),
        )

    def frame(rows):
        g = rows @ rows.T
        return np.linalg.norm(g / np.linalg.norm(g) - np.eye(len(rows)) / math.sqrt(len(rows)))

    mc = np.array([mu[k] - mu_g for k in present])
    out["equinorm_means"], out["equiangular_means"], out["cos_std_means"] = nc2(list(mc))
    out["orthogonal_frame_means"] = frame(np.array([mu[k] for k in present]))
    if w is not None:
        out["equinorm_weights"], out["equiangular_weights"], out["cos_std_weights"] = nc2(list(w))
        wp = w[present]
        out["self_duality"] = (
            np.linalg.norm(wp.T / np.linalg.norm(wp) - mc.T / np.linalg.norm(mc)) ** 2
        )
        out["orthogonal_frame_weights"] = frame(w)
        if pred is None:
            pred = [int(np.argmax(w @ x + (0 if b is None else b))) for x in h]
    if pred is not None:
        mismatch = 0
        for i in range(n):
            dists = [np.linalg.norm(h[i] - mu[k]) for k in present]
            mismatch += present[int(np.argmin(dists))] != pred[i]
        out["ncc_mismatch"] = mismatch / n
    return out


def random_problem(n=240, d=12, c=6, seed=0, spread=1.5, weights=None):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((c, d)) * spread + 0.3
    y = rng.choice(c, size=n, p=weights)
    h = centres[y] + rng.standard_normal((n, d))
    w = centres + 0.5 * rng.standard_normal((c, d))
    b = 0.1 * rng.standard_normal(c)
    return h, y, w, b


def run(h, y, w=None, b=None, pred=None, **kw):
    t = lambda a: None if a is None else torch.as_tensor(a)  # noqa: E731
    return neural_collapse(t(h), t(y), t(w), t(b), t(pred), **kw)


def test_exact_simplex_etf_is_fully_collapsed():
    c, d = 10, 32
    means = simplex_etf(c, d)
    g = means @ means.T
    np.testing.assert_allclose(g[~np.eye(c, dtype=bool)], -1 / (c - 1), atol=1e-14)
    y = np.repeat(np.arange(c), 5)
    out = run(means[y], y, w=means, b=np.zeros(c))
    for key in ("nc1", "trace_ratio", "cdnv", "equinorm_means", "equinorm_weights", "equiangular_means",
                "equiangular_weights", "cos_std_means", "cos_std_weights", "self_duality"):  # fmt: skip
        assert abs(out[key]) < 1e-12, (key, out[key])
    assert out["ncc_mismatch"] == 0.0
    assert out["nc1_rank"] == c - 1
    np.testing.assert_allclose(out["class_means"], means, atol=1e-15)
    np.testing.assert_array_equal(out["num_samples_per_class"], np.full(c, 5))
    assert out["empty_classes"].size == 0
    # a simplex ETF is not an orthogonal frame; orthonormal means are
    assert out["orthogonal_frame_means"] > 0.1
    eye_means = np.eye(d)[:c]
    assert run(eye_means[y], y, w=eye_means)["orthogonal_frame_means"] < 1e-14


def test_noisy_simplex_etf_matches_closed_forms():
    # Unit-norm ETF means + isotropic noise of std s: Σ_W = s² I, Σ_B has C−1 eigenvalues
    # 1/(C−1), so NC1 = s²(C−1)²/C, Tr Σ_W / Tr Σ_B = D s², and with ‖μ_c − μ_c'‖² = 2C/(C−1),
    # V_c = D s²: CDNV = D s² (C−1)/(2C).
    c, d, s, n = 10, 32, 0.1, 2000  # n samples per class, N = nC
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(c), n)
    h = simplex_etf(c, d)[y] + s * rng.standard_normal((n * c, d))
    out = run(h, y)
    # Tolerance: each estimate is a normalized sum of squared Gaussians. The noisiest ingredient
    # is a per-class variance V_c, a χ² with nD degrees of freedom: relative std √(2/(nD)) =
    # 0.56 %; NC1 projects Σ_W on C−1 directions (√(2/(N(C−1))) = 0.33 %) and the sample
    # class means move Σ_B's eigenvalues by O(s/√n) ≈ 0.2 % each; biases are O(1/n) = 0.05 %.
    # 5 × 0.56 % ≈ 3 %.
    rtol = 5 * math.sqrt(2 / (n * d)) + 2 / n
    assert out["nc1"] == pytest.approx(s**2 * (c - 1) ** 2 / c, rel=rtol)  # 0.081
    assert out["trace_ratio"] == pytest.approx(d * s**2, rel=rtol)  # 0.32
    assert out["cdnv"] == pytest.approx(d * s**2 * (c - 1) / (2 * c), rel=rtol)  # 0.144


def test_matches_independent_numpy_reference_on_random_data():
    h, y, w, b = random_problem()
    ref = reference(h, y, w, b, None, 6)
    out = run(h, y, w, b)
    for key in SCALARS:
        assert out[key] == pytest.approx(ref[key], rel=1e-8, abs=1e-12), key
    # the network's own predictions
    pred = np.random.default_rng(1).integers(0, 6, size=len(y))
    assert run(h, y, w, b, pred)["ncc_mismatch"] == pytest.approx(
        reference(h, y, w, b, pred, 6)["ncc_mismatch"]
    )
    # sample-weighted global mean, imbalanced classes
    h, y, w, b = random_problem(seed=3, weights=[0.4, 0.3, 0.1, 0.1, 0.05, 0.05])
    ref = reference(h, y, w, b, None, 6, global_mean="samples")
    out = run(h, y, w, b, cfg=CollapseConfig(global_mean="samples"))
    for key in SCALARS:
        assert out[key] == pytest.approx(ref[key], rel=1e-8, abs=1e-12), key


def test_colab_sw_invsb_is_c_times_nc1():
    # The authors' Colab: eigvec, eigval, _ = svds(Sb, k=C-1); trace(Sw @ inv_Sb), no 1/C.
    h, y, _, _ = random_problem(seed=5)
    c = 6
    mu = np.stack([h[y == k].mean(0) for k in range(c)])
    mc = mu - mu.mean(0)
    r = h - mu[y]
    sw, sb = r.T @ r / len(h), mc.T @ mc / c
    vec, val, _ = svds(sb, k=c - 1)
    sw_invsb = np.trace(sw @ vec @ np.diag(1 / val) @ vec.T)
    assert c * run(h, y)["nc1"] == pytest.approx(sw_invsb, rel=1e-8)


@pytest.mark.parametrize("case", ["d_below_c", "collinear_means", "duplicate_means"])
def test_nc1_is_never_negative_on_rank_deficient_inputs(case):
    rng = np.random.default_rng(7)
    c = 10
    y = np.repeat(np.arange(c), 30)
    if case == "d_below_c":  # D = 3 < C − 1: Σ_B has rank 3
        h = rng.standard_normal((c, 3))[y] + 0.3 * rng.standard_normal((len(y), 3))
    elif case == "collinear_means":  # all means exactly on one line: rank 1
        noise = 0.1 * rng.standard_normal((len(y), 16))
        noise -= np.stack([noise[y == k].mean(0) for k in range(c)])[y]
        h = np.outer(np.arange(c, dtype=float), rng.standard_normal(16))[y] + noise
    else:  # two pairs of classes share a mean exactly
        centres = rng.standard_normal((c, 16))
        centres[1], centres[3] = centres[0], centres[2]
        h = centres[y] + 0.2 * rng.standard_normal((len(y), 16))
        h[y == 1] = h[y == 0]
        h[y == 3] = h[y == 2]
    out = run(h, y)
    ref = reference(h, y, None, None, None, c, rcond=1e-10)
    assert out["nc1"] >= 0.0 and math.isfinite(out["nc1"])
    assert out["nc1"] == pytest.approx(ref["nc1"], rel=1e-8)
    expected_rank = {"d_below_c": 3, "collinear_means": 1, "duplicate_means": c - 3}[case]
    assert out["nc1_rank"] == expected_rank
    if case == "duplicate_means":
        assert out["cdnv"] == math.inf  # two classes at distance 0


def test_empty_classes_are_excluded_and_reported():
    h, y, w, b = random_problem(n=200, c=6, seed=2)
    y = np.where(y == 3, 4, y)  # class 3 has no samples
    out = run(h, y, w, b)
    assert out["empty_classes"].tolist() == [3] and out["num_classes_present"] == 5
    assert out["num_samples_per_class"][3] == 0 and out["num_samples_per_class"].sum() == 200
    assert (
        np.isnan(out["class_means"][3]).all()
        and not np.isnan(np.delete(out["class_means"], 3, 0)).any()
    )
    ref = reference(h, y, w, b, None, 6)
    for key in SCALARS:
        assert out[key] == pytest.approx(ref[key], rel=1e-8, abs=1e-12), key
    # labels beyond the last class present need num_classes (or weight) to be counted as empty
    assert run(h[y < 5], y[y < 5], num_classes=6)["empty_classes"].tolist() == [3, 5]


def test_without_classifier_weight_dependent_measures_are_nan():
    h, y, _, _ = random_problem(seed=4)
    out = run(h, y)
    for key in ("equinorm_weights", "equiangular_weights", "cos_std_weights", "self_duality",
                "ncc_mismatch", "orthogonal_frame_weights"):  # fmt: skip
        assert math.isnan(out[key]), key
    assert math.isfinite(out["nc1"])
    assert "orthogonal_frame_means" not in run(
        h, y, cfg=CollapseConfig(include_orthogonal_frame=False)
    )


def test_float32_input_is_promoted_and_repeatable():
    h, y, w, b = random_problem(seed=6)
    out64 = run(h, y, w, b)
    out32 = neural_collapse(
        torch.tensor(h, dtype=torch.float32), torch.tensor(y), torch.tensor(w, dtype=torch.float32)
    )
    assert out32["nc1"] == pytest.approx(out64["nc1"], rel=1e-5)
    assert run(h, y, w, b)["nc1"] == out64["nc1"]


def test_bad_inputs_fail_clearly():
    h, y, w, _ = random_problem(seed=8)
    with pytest.raises(ConfigError, match="labels must lie in"):
        run(h, y, num_classes=3)
    with pytest.raises(ConfigError, match="at least 2 classes"):
        run(h, np.zeros(len(h), dtype=int))
    with pytest.raises(ConfigError, match="rows but num_classes"):
        run(h, y, w, num_classes=7)
    with pytest.raises(ConfigError, match="features have D"):
        run(h, y, w[:, :5])
    with pytest.raises(ConfigError, match="integers"):
        run(h, y.astype(float))
    with pytest.raises(ConfigError, match="global_mean"):
        CollapseConfig(global_mean="median")
