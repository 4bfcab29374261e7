"""Tests for landscape.correlate (Jiang et al. 2019 rank correlations and the CMI score)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from landscape.correlate import (
    bootstrap_ci,
    conditional_mutual_information,
    generalization_gap,
    granulated_kendall,
    kendall_tau,
    spearman,
)
from landscape.errors import ConfigError


def brute_tau(m, g):
    n = len(m)
    s = sum(
        np.sign(m[i] - m[j]) * np.sign(g[i] - g[j]) for i in range(n) for j in range(n) if i != j
    )
    return s / (n * (n - 1))


# --------------------------------------------------------------------------- Kendall τ


def test_tau_matches_scipy_and_brute_force_without_ties():
    rng = np.random.default_rng(0)
    g = rng.normal(size=30)
    m = g + rng.normal(size=30)
    t = kendall_tau(m, g)
    assert t == pytest.approx(stats.kendalltau(m, g, variant="b").statistic, abs=1e-12)
    assert t == pytest.approx(brute_tau(m, g), abs=1e-12)


def test_tau_with_ties_matches_brute_force_not_tau_b():
    m = np.array([1, 1, 2, 3, 3, 3, 5.0])
    g = np.array([0, 1, 1, 2, 2, 4, 4.0])
    t = kendall_tau(m, g)
    assert t == pytest.approx(brute_tau(m, g), abs=1e-12)
    assert t < stats.kendalltau(m, g, variant="b").statistic  # ties shrink tau-a


def test_tau_extremes():
    g = np.arange(10.0)
    assert kendall_tau(2 * g + 1, g) == 1.0
    assert kendall_tau(-g, g) == -1.0
    assert kendall_tau(np.ones(10), g) == 0.0


# --------------------------------------------------------------------------- Ψ


def grid_records():
    """3×3×3 grid. gap = a + b + 0.01c; measure = a − b + 0.01·perm(c), perm = (0, 2, 1).

    Along a (b, c fixed): measure and gap both increase → τ = 1 in each of 9 groups.
    Along b: measure decreases while gap increases → τ = −1.
    Along c: measure order (0, 2, 1) vs gap order (0, 1, 2): pairs (+, +, −) → τ = 1/3.
    Ψ = (1 − 1 + 1/3)/3 = 1/9.
    """
    perm = (0, 2, 1)
    return [
        {"a": a, "b": b, "c": c, "gap": a + b + 0.01 * c, "mu": a - b + 0.01 * perm[c]}
        for a, b, c in itertools.product(range(3), repeat=3)
    ]


def test_granulated_kendall_hand_grid():
    out = granulated_kendall(grid_records(), "mu", "gap", ["a", "b", "c"])
    assert out["per_axis"]["a"] == pytest.approx(1.0)
    assert out["per_axis"]["b"] == pytest.approx(-1.0)
    assert out["per_axis"]["c"] == pytest.approx(1 / 3)
    assert out["psi"] == pytest.approx(1 / 9)
    assert out["groups"] == {"a": 9, "b": 9, "c": 9}


def test_granulated_kendall_skips_singleton_groups():
    recs = [
        {"a": 0, "b": 0, "gap": 0.0, "mu": 0.0},
        {"a": 1, "b": 0, "gap": 1.0, "mu": 1.0},
        {"a": 0, "b": 1, "gap": 2.0, "mu": -1.0},
    ]
    out = granulated_kendall(recs, "mu", "gap", ["a", "b"])
    assert out["groups"] == {"a": 1, "b": 1}  # the b=1 (resp. a=1) singleton is skipped
    assert out["per_axis"] == {"a": 1.0, "b": -1.0}
    assert out["psi"] == 0.0


# --------------------------------------------------------------------------- Spearman, bootstrap


def test_spearman_matches_scipy():
    rng = np.random.default_rng(1)
    g = rng.normal(size=40)
    m = np.round(g + rng.normal(size=40), 1)  # some ties
    assert spearman(m, g) == pytest.approx(stats.spearmanr(m, g).statistic, abs=1e-12)
    assert spearman(g**3, g) == pytest.approx(1.0)


def test_bootstrap_ci_contains_tau_and_narrows():
    rng = np.random.default_rng(2)
    widths = []
    for n in (20, 200):
        g = rng.normal(size=n)
        m = g + rng.normal(size=n)
        low, high = bootstrap_ci(m, g, n_boot=300, seed=0)
        assert low <= kendall_tau(m, g) <= high
        widths.append(high - low)
    assert widths[1] < 0.6 * widths[0]
    # reproducible, and works with another statistic
    assert bootstrap_ci(m, g, n_boot=50, seed=3) == bootstrap_ci(m, g, n_boot=50, seed=3)
    low, high = bootstrap_ci(m, g, stat=spearman, n_boot=100)
    assert low <= spearman(m, g) <= high


# --------------------------------------------------------------------------- CMI


def cmi_records(seed):
    rng = np.random.default_rng(seed)
    recs = [
        {"a": a, "b": b, "c": c, "gap": rng.normal(), "noise": rng.normal()}
        for a, b, c in itertools.product(range(4), repeat=3)
    ]
    for r in recs:
        r["same"] = 2 * r["gap"] + 1
    return recs


def test_cmi_maximal_when_measure_is_gap():
    out = conditional_mutual_information(cmi_records(0), "same", "gap", ["a", "b", "c"])
    assert out["score"] == pytest.approx(1.0)
    assert len(out["per_set"]) == 1 + 3 + 3  # ∅, singletons, pairs
    # reversing the measure is just as informative (MI ignores the sign of the relation)
    recs = cmi_records(0)
    for r in recs:
        r["neg"] = -r["gap"]
    out = conditional_mutual_information(recs, "neg", "gap", ["a", "b", "c"])
    assert out["score"] == pytest.approx(1.0)


def test_cmi_near_zero_when_measure_independent():
    scores = [
        conditional_mutual_information(cmi_records(s), "noise", "gap", ["a", "b", "c"])["score"]
        for s in range(3)
    ]
    assert max(scores) < 0.05


def test_cmi_conditioning_explains_away_hyperparameter_driven_measure():
    # gap and measure both driven by axis a only (plus independent noise): unconditionally
    # informative, but conditioning on a removes it, so the min is ≈ 0.
    rng = np.random.default_rng(5)
    recs = [
        {"a": a, "b": b, "gap": 10 * a + rng.normal(), "mu": 10 * a + rng.normal()}
        for a, b in itertools.product(range(3), range(20))
    ]
    out = conditional_mutual_information(recs, "mu", "gap", ["a", "b"])
    assert out["per_set"][()] > 0.3
    assert out["score"] < 0.1
    assert "a" in out["argmin"]


# --------------------------------------------------------------------------- gaps, errors


def test_generalization_gap():
    recs = [
        {"train_acc": 1.0, "test_acc": 0.9, "train_loss": 0.1, "test_loss": 0.5},
        {"train_acc": 0.8, "test_acc": 0.8, "train_loss": 0.3, "test_loss": 0.2},
    ]
    np.testing.assert_allclose(generalization_gap(recs), [0.1, 0.0])
    np.testing.assert_allclose(generalization_gap(recs, kind="loss"), [0.4, -0.1])


@pytest.mark.parametrize(
    "call",
    [
        lambda: kendall_tau([1, 2, 3], [1, 2]),
        lambda: kendall_tau([1], [1]),
        lambda: kendall_tau([1, math.nan, 3], [1, 2, 3]),
        lambda: spearman([1, 2], [1, np.inf]),
        lambda: bootstrap_ci([1, 2, 3], [1, 2, 3], level=1.5),
        lambda: granulated_kendall(grid_records(), "mu", "gap", ["a", "zzz"]),
        lambda: granulated_kendall(grid_records()[:1], "mu", "gap", ["a"]),
        lambda: granulated_kendall(grid_records(), "mu", "nogap", ["a"]),
        lambda: conditional_mutual_information(grid_records(), "mu", "gap", ["q"]),
        lambda: conditional_mutual_information(
            [{"a": 0, "g": 1.0, "m": math.nan}, {"a": 1, "g": 2.0, "m": 0.0}], "m", "g", ["a"]
        ),
        lambda: generalization_gap([{"train_acc": 1.0, "test_acc": 0.5}], kind="acc"),
        lambda: generalization_gap([{"train_acc": 1.0}, {"train_acc": 1.0}]),
        lambda: generalization_gap([{"train_acc": 1.0, "test_acc": 0.5}] * 2, kind="bogus"),
    ],
)
def test_bad_input_raises_config_error(call):
    with pytest.raises(ConfigError) as e:
        call()
    assert "\n" not in str(e.value)


def test_granulated_kendall_with_a_single_valued_axis():
    # axis "c" takes one value: varying it alone never changes anything, so it has no usable group
    records = [{"a": a, "b": b, "c": 0, "mu": a + 0.1 * b, "gap": a - 0.1 * b} for a in range(3) for b in range(2)]
    out = granulated_kendall(records, "mu", "gap", ["a", "b", "c"])
    assert out["per_axis"]["a"] == 1.0 and out["per_axis"]["b"] == -1.0
    assert np.isnan(out["per_axis"]["c"]) and out["groups"]["c"] == 0
    assert out["psi"] == 0.0  # mean over the axes that have groups: (1 − 1) / 2
