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
    seed_groups,
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
    out = conditional_mutual_information(
        cmi_records(0), "same", "gap", ["a", "b", "c"], variant="landscape"
    )
    assert out["score"] == pytest.approx(1.0)
    assert len(out["per_set"]) == 1 + 3 + 3  # ∅, singletons, pairs
    # reversing the measure is just as informative (MI ignores the sign of the relation)
    recs = cmi_records(0)
    for r in recs:
        r["neg"] = -r["gap"]
    out = conditional_mutual_information(recs, "neg", "gap", ["a", "b", "c"], variant="landscape")
    assert out["score"] == pytest.approx(1.0)


def test_cmi_near_zero_when_measure_independent():
    def score(seed, variant):
        recs = cmi_records(seed)
        return conditional_mutual_information(recs, "noise", "gap", ["a", "b", "c"], variant=variant)
    assert max(score(s, "landscape")["score"] for s in range(3)) < 0.05
    # PGDL's cells (a_i, b_i, a_j, b_j) hold only 4 × 4 pairs each here, and the plug-in MI of so
    # few pairs is biased upwards: small, but not as small
    assert max(score(s, "pgdl")["score"] for s in range(3)) < 0.15


def test_cmi_conditioning_explains_away_hyperparameter_driven_measure():
    # gap and measure both driven by axis a only (plus independent noise): unconditionally
    # informative, but conditioning on a removes it, so the min is ≈ 0.
    rng = np.random.default_rng(5)
    recs = [
        {"a": a, "b": b, "gap": 10 * a + rng.normal(), "mu": 10 * a + rng.normal()}
        for a, b in itertools.product(range(3), range(20))
    ]
    out = conditional_mutual_information(recs, "mu", "gap", ["a", "b"], variant="landscape")
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
            [{"a": 0, "g": 1.0, "m": math.nan}, {"a": 1, "g": 2.0, "m": 0.0}], "m", "g", ["a"],
            variant="landscape",
        ),
        lambda: conditional_mutual_information(grid_records(), "mu", "gap", ["a"]),  # PGDL: ≥ 2 axes
        lambda: conditional_mutual_information(grid_records(), "mu", "gap", ["a", "b"], variant="x"),
        lambda: conditional_mutual_information(
            grid_records(), "mu", "gap", ["a", "b"], max_set_size=1
        ),
        lambda: conditional_mutual_information(
            [{"a": a, "b": b, "g": 1.0, "m": a} for a in range(2) for b in range(2)], "m", "g", ["a", "b"]
        ),
        lambda: bootstrap_ci([1, 2, 3], [1, 2, 3], n_boot=0),
        lambda: seed_groups([{"seed": 0}], ["lr"]),
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


# --------------------------------------------------------------------------- PGDL scorer oracle
# A transcription of the PGDL 2020 scoring program's CMI (scoring_program/mutual_information.py
# of the competition's starting kit, by Y. Jiang; read from the copies in cadurosar/pgdl and
# samiul272/pgdl_proposal): a (2, 2, cells) table per ordered pair of hyper-parameters (h1, h2),
# cells = every combination of (h1_i h1_j h2_i h2_j) over the *possible* values, every ordered pair
# of models counted (self-pairs too), "greater" vs "not greater", per-cell MI and gap entropy
# averaged uniformly over cells, the ratio minimized over (h1, h2). ``eps`` is the 1e-12 that
# PGDL adds inside log2 of its entropy (eps=0: the exact plug-in entropy).


def _pgdl_entropy(p, eps):
    q = p / p.sum()
    q = q[q > 0]  # PGDL's zero entries contribute 0·log2(1e-12) = 0; skipping them allows eps=0
    return -np.sum(q * np.log2(q + eps))


def _pgdl_mi_from_table(t, eps):
    tot = t.sum()
    a0, a1 = t.sum(axis=1), t.sum(axis=0)
    mi = 0.0
    for i in range(t.shape[0]):
        for j in range(t.shape[1]):
            joint = t[i, j] / tot
            if joint == 0:
                continue
            mi += joint * np.log2(joint / ((a0[i] / tot) * (a1[j] / tot)))
    return mi, _pgdl_entropy(a0, eps), _pgdl_entropy(a1, eps)


def _pgdl_table(prediction, model_specs, cond):
    combos = [""]
    for values in cond.values():
        combos = [c + str(v) + str(w) for c in combos for v in values for w in values]
    a2 = {k: i for i, k in enumerate(combos)}
    table = np.zeros((2, 2, len(combos)))
    for m1 in model_specs:
        for m2 in model_specs:
            k0 = 0 if model_specs[m1]["metrics"]["gen_gap"] > model_specs[m2]["metrics"]["gen_gap"] else 1
            k1 = 0 if prediction[m1] > prediction[m2] else 1
            key = "".join(
                str(model_specs[m1]["hparams"][c]["current_value"])
                + str(model_specs[m2]["hparams"][c]["current_value"])
                for c in cond
            )
            table[k0, k1, a2[key]] += 1
    return table


def pgdl_cmi(prediction, model_specs, eps=1e-12):
    for spec in model_specs.values():
        spec["metrics"]["gen_gap"] = spec["metrics"]["train_acc"] - spec["metrics"]["test_acc"]
    first = next(iter(model_specs.values()))["hparams"]
    values = {k: first[k]["possible_values"] for k in first}
    best = np.inf
    for h1 in values:
        for h2 in values:
            if h1 == h2:
                continue
            table = _pgdl_table(prediction, model_specs, {h1: values[h1], h2: values[h2]})
            e_mi = e_h = 0.0
            for k in range(table.shape[-1]):
                mi, h_gap, _ = _pgdl_mi_from_table(table[:, :, k], eps)
                e_mi, e_h = e_mi + mi, e_h + h_gap
            best = min((e_mi / table.shape[-1]) / (e_h / table.shape[-1]), best)
    return best


PGDL_GRID = {"a": [0, 1, 2], "b": [0, 1], "c": [0, 1, 2]}


def pgdl_grid_records(seed, measure_noise=0.03):
    """A complete 3×2×3 grid, one run per configuration, accuracies driven by the axes plus noise
    (so a few cells are pure), a measure = gap + noise; some measure ties."""
    rng = np.random.default_rng(seed)
    recs = []
    for a, b, c in itertools.product(*PGDL_GRID.values()):
        test_acc = 0.7 + 0.05 * a - 0.04 * b + 0.02 * c + 0.03 * rng.normal()
        recs.append({"a": a, "b": b, "c": c, "train_acc": 1.0, "test_acc": float(test_acc)})
    for r in recs:
        r["gap"] = r["train_acc"] - r["test_acc"]
        r["mu"] = float(np.round(r["gap"] + measure_noise * rng.normal(), 2))
    return recs


def as_pgdl(recs, measure="mu"):
    specs = {
        f"model_{k}": {
            "hparams": {h: {"current_value": r[h], "possible_values": v} for h, v in PGDL_GRID.items()},
            "metrics": {"train_acc": r["train_acc"], "test_acc": r["test_acc"]},
        }
        for k, r in enumerate(recs)
    }
    return {f"model_{k}": r[measure] for k, r in enumerate(recs)}, specs


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cmi_default_is_the_pgdl_scorer(seed):
    recs = pgdl_grid_records(seed)
    ours = conditional_mutual_information(recs, "mu", "gap", list(PGDL_GRID))
    assert ours["variant"] == "pgdl" and len(ours["per_set"]) == 3  # pairs of axes only
    assert ours["score"] == pytest.approx(pgdl_cmi(*as_pgdl(recs), eps=0.0), abs=1e-12)
    # PGDL's own entropy adds 1e-12 inside the log, which moves its score by a few 1e-12
    assert ours["score"] == pytest.approx(pgdl_cmi(*as_pgdl(recs)), abs=1e-10)
    old = conditional_mutual_information(recs, "mu", "gap", list(PGDL_GRID), variant="landscape")
    assert len(old["per_set"]) == 7 and old["score"] <= old["per_set"][old["argmin"]]
    assert old["score"] != pytest.approx(ours["score"], abs=1e-3)  # the conventions differ


def test_cmi_pgdl_measure_equal_to_gap_and_order_of_axes():
    recs = pgdl_grid_records(3)
    for r in recs:
        r["same"] = r["gap"]
    # self-pairs land in the (not greater, not greater) cell for both, so MI stays maximal
    out = conditional_mutual_information(recs, "same", "gap", ["c", "a", "b"])
    assert out["score"] == pytest.approx(1.0, abs=1e-12)
    assert out["score"] == pytest.approx(pgdl_cmi(*as_pgdl(recs, "same"), eps=0.0), abs=1e-12)
    base = conditional_mutual_information(recs, "mu", "gap", ["a", "b", "c"])["score"]
    assert conditional_mutual_information(recs, "mu", "gap", ["c", "b", "a"])["score"] == pytest.approx(
        base, abs=1e-15
    )


# --------------------------------------------------------------------------- Ψ vs brute force


def brute_psi(recs, measure, gap, axes):
    """Ψ by enumerating, for each axis, every combination of the other axes' values."""
    values = {a: sorted({r[a] for r in recs}) for a in axes}
    per_axis = {}
    for a in axes:
        others = [b for b in axes if b != a]
        taus = []
        for combo in itertools.product(*(values[b] for b in others)):
            grp = [r for r in recs if all(r[b] == v for b, v in zip(others, combo, strict=True))]
            if len(grp) >= 2:
                m = [r[measure] for r in grp]
                g = [r[gap] for r in grp]
                taus.append(brute_tau(m, g))
        per_axis[a] = sum(taus) / len(taus)
    return sum(per_axis.values()) / len(axes), per_axis


@pytest.mark.parametrize("seed", [0, 1])
def test_granulated_kendall_equals_brute_force(seed):
    recs = pgdl_grid_records(seed, measure_noise=0.05)  # measure rounded: ties
    recs = [r for k, r in enumerate(recs) if k not in (4, 11)]  # a partial grid
    psi, per_axis = brute_psi(recs, "mu", "gap", list(PGDL_GRID))
    out = granulated_kendall(recs, "mu", "gap", list(PGDL_GRID))
    assert out["psi"] == pytest.approx(psi, abs=1e-12)
    for a in PGDL_GRID:
        assert out["per_axis"][a] == pytest.approx(per_axis[a], abs=1e-12)


# --------------------------------------------------------------------------- bootstrap, vectorized


def loop_bootstrap(m, g, stat, n_boot, level, seed):
    """The resampling loop, one resample at a time, on the same index draws."""
    m, g = np.asarray(m, float), np.asarray(g, float)
    idx = np.random.default_rng(seed).integers(0, m.size, size=(n_boot, m.size))
    stats_ = np.array([stat(m[row], g[row]) for row in idx])
    alpha = (1 - level) / 2
    return tuple(np.nanquantile(stats_, [alpha, 1 - alpha]))


@pytest.mark.parametrize("stat", [kendall_tau, spearman])
def test_bootstrap_ci_vectorized_equals_loop(stat):
    rng = np.random.default_rng(7)
    g = rng.normal(size=13)
    m = np.round(g + rng.normal(size=13), 1)
    for seed, level in ((0, 0.95), (5, 0.8)):
        got = bootstrap_ci(m, g, stat=stat, n_boot=257, level=level, seed=seed)
        want = loop_bootstrap(m, g, stat, 257, level, seed)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
        assert got == bootstrap_ci(m, g, stat=stat, n_boot=257, level=level, seed=seed)
    # a custom statistic goes through the per-resample path, on the same draws
    def mean_diff(a, b):
        return float(np.mean(a - b))

    got = bootstrap_ci(m, g, stat=mean_diff, n_boot=100, seed=2)
    np.testing.assert_allclose(got, loop_bootstrap(m, g, mean_diff, 100, 0.95, 2), atol=1e-15)


def test_bootstrap_kendall_many_runs_with_ties():
    rng = np.random.default_rng(8)
    g = np.round(rng.normal(size=60), 1)  # ties in both, beside the ties a resample makes
    m = np.round(g + rng.normal(size=60), 1)
    got = bootstrap_ci(m, g, n_boot=1200, seed=1)
    np.testing.assert_allclose(got, loop_bootstrap(m, g, kendall_tau, 1200, 0.95, 1), atol=1e-12)


# --------------------------------------------------------------------------- seeds


def test_seed_groups():
    recs = [
        {"lr": 0.1, "w": 4, "seed": 0},
        {"lr": 0.1, "w": 4, "seed": 1},
        {"lr": 0.2, "w": 4, "seed": 0},
        {"lr": 0.1, "w": 8, "seed": 0},
        {"lr": 0.1, "w": 4, "seed": 2},
        {"lr": 0.2, "w": 4, "seed": 0},  # a copy of run 2 (same seed): a second run, not a seed
        {"lr": 0.1, "w": 8, "seed": 1},
    ]
    assert seed_groups(recs, ["lr", "w", "seed"]) == [[0, 1, 4], [2], [3, 6], [5]]
    assert seed_groups(recs, ["lr"]) == [[0, 1, 3, 4, 6], [2], [5]]  # w not a config key
    assert seed_groups(recs, ["lr", "w"], seed="nokey") == [[k] for k in range(7)]


# --------------------------------------------------------------------------- correlation_table


def seeded_records(n_seeds=3):
    """A 3 (lr) × 2 (width) grid, ``n_seeds`` seeds each: the measure depends on the configuration
    only; the gap is that plus seed noise (zero-mean over the seeds)."""
    recs = []
    noise = np.linspace(-0.01, 0.01, n_seeds)
    for (k, lr), (w, width) in itertools.product(enumerate((0.01, 0.1, 1.0)), enumerate((8, 16))):
        for s in range(n_seeds):
            gap = 0.1 * k - 0.05 * w + 0.003 * k * w
            recs.append({"run": f"r{k}{w}{s}", "step": 100 + s, "lr": lr, "model_params.width": width,
                         "seed": s, "epochs": 5, "train_acc": 1.0, "test_acc": 0.9 - gap - noise[s],
                         "lambda_max": 10.0 * k - 3.0 * w + 0.1 * s * 0})
    return recs


def test_correlation_table_averages_seeds():
    from landscape.study import HYPERPARAMETERS, correlation_table, varying_axes

    recs = seeded_records()
    assert "seed" not in HYPERPARAMETERS
    assert varying_axes(recs) == ["lr", "model_params.width"]
    assert varying_axes(recs, seed=True) == ["lr", "model_params.width", "seed"]
    (row,) = correlation_table(recs, n_boot=20, cmi=True, cmi_variant="landscape")
    assert (row["n"], row["runs"], row["seeds_per_config"]) == (6, 18, 3)
    # by hand: one point per configuration, gap averaged over its seeds
    g = np.array([np.mean([1.0 - r["test_acc"] for r in recs[i : i + 3]]) for i in range(0, 18, 3)])
    mu = np.array([recs[i]["lambda_max"] for i in range(0, 18, 3)])
    assert row["tau"] == pytest.approx(brute_tau(mu, g), abs=1e-12)
    configs = [{"lr": recs[i]["lr"], "w": recs[i]["model_params.width"], "mu": mu[k], "g": g[k]}
               for k, i in enumerate(range(0, 18, 3))]
    psi, per_axis = brute_psi(configs, "mu", "g", ["lr", "w"])
    assert row["psi"] == pytest.approx(psi, abs=1e-12)
    assert row["psi(lr)"] == pytest.approx(per_axis["lr"], abs=1e-12)
    assert row["psi(model_params.width)"] == pytest.approx(per_axis["w"], abs=1e-12)
    assert row["cmi"] == pytest.approx(
        conditional_mutual_information(configs, "mu", "g", ["lr", "w"], variant="landscape")["score"],
        abs=1e-15,
    )
    # PGDL's cells fix both axes of both runs: with 2 axes and one point per configuration each
    # cell holds one pair, the gap's order is fixed in every cell, and the score is undefined
    (pgdl,) = correlation_table(recs, n_boot=20, cmi=True)
    assert math.isnan(pgdl["cmi"])
    assert row["psi"] == pytest.approx(1.0)  # the measure orders the configurations' mean gaps


def test_correlation_table_seed_as_an_axis_when_asked():
    from landscape.study import correlation_table

    recs = seeded_records()
    (row,) = correlation_table(recs, axes=["lr", "model_params.width", "seed"], n_boot=20)
    assert (row["n"], row["runs"], row["seeds_per_config"]) == (18, 18, 1)
    # along seed the measure is constant while the gap moves: τ = 0 there, Ψ drops
    assert row["psi(seed)"] == 0.0
    assert row["psi"] == pytest.approx((row["psi(lr)"] + row["psi(model_params.width)"]) / 3)
    (kept,) = correlation_table(recs, average_seeds=False, n_boot=20)  # seeds kept apart, not an axis
    assert kept["n"] == 18
    assert kept["tau"] == pytest.approx(
        brute_tau([r["lambda_max"] for r in recs], [1.0 - r["test_acc"] for r in recs]), abs=1e-12
    )


def test_correlation_table_copies_of_one_run_are_not_seeds_and_cmi_variants():
    from landscape.study import correlation_table

    recs = seeded_records(1)  # one seed: nothing to average
    copy = dict(recs[0], run="copy", test_acc=0.5)
    (row,) = correlation_table([*recs, copy], n_boot=20)
    assert (row["n"], row["seeds_per_config"]) == (7, 1)
    recs3 = seeded_records()
    mixed = recs3[:-1]  # the last configuration has 2 seeds, the others 3
    (row,) = correlation_table(mixed, n_boot=20, cmi=True, cmi_variant="landscape")
    assert (row["n"], row["runs"], row["seeds_per_config"]) == (6, 17, "2-3")
    (one_axis,) = correlation_table(recs3, axes=["lr"], n_boot=20, cmi=True)
    assert math.isnan(one_axis["cmi"])  # the PGDL form conditions on pairs of axes
    with pytest.raises(ConfigError, match="unknown CMI variant"):
        correlation_table(recs3, cmi=True, cmi_variant="nope")
    with pytest.raises(ConfigError, match="1 configuration"):
        correlation_table(recs3[:3])
