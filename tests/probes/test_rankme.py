"""RankMe / effective rank / α-ReQ against closed forms and the values in REFERENCES.md."""

import math

import numpy as np
import pytest
import torch

from landscape.errors import ConfigError
from landscape.probes.rankme import RankMeConfig, power_law_fit, rankme


def numpy_rankme(z: np.ndarray, eps: float = 1e-7) -> float:
    s = np.linalg.svd(z, compute_uv=False)
    p = s / s.sum() + eps
    return float(np.exp(-(p * np.log(p)).sum()))


def test_rank_one_and_identity():
    rng = np.random.default_rng(0)
    rank1 = np.outer(rng.standard_normal(50), rng.standard_normal(20))
    out = rankme(torch.tensor(rank1))
    assert out["rankme"] == pytest.approx(1.0, abs=1e-4)
    assert out["effective_rank"] == pytest.approx(1.0, abs=1e-6)
    eye = rankme(torch.eye(64))
    assert eye["rankme"] == pytest.approx(64.0, abs=0.01)  # 64.0013: ε adds 64·ε·log terms
    assert eye["effective_rank"] == pytest.approx(64.0, rel=1e-12)
    np.testing.assert_allclose(eye["singular_values"], np.ones(64))


@pytest.mark.parametrize(
    ("n", "stated", "rng_value", "legacy_value"),
    [(256, 118.4, 118.47758843, 118.46554544), (25_600, 127.9, 127.92495799, 127.92387546)],
)
def test_isotropic_gaussian_reproduces_reference_values(n, stated, rng_value, legacy_value):
    # REFERENCES.md: "numpy, seed 0": 256×128 → ≈118.4, 25,600×128 → ≈127.9. Both numpy
    # generators give these to the stated precision only when truncated (118.47 / 118.47),
    # not rounded; the 0.1 band below covers both.
    z_rng = np.random.default_rng(0).standard_normal((n, 128))
    np.random.seed(0)
    z_legacy = np.random.randn(n, 128)
    for z, value in ((z_rng, rng_value), (z_legacy, legacy_value)):
        out = rankme(torch.from_numpy(z))["rankme"]
        assert out == pytest.approx(value, abs=1e-6)
        assert out == pytest.approx(numpy_rankme(z), rel=1e-10)
        assert abs(out - stated) < 0.1


def test_float32_input_and_centering_option():
    z = np.random.default_rng(1).standard_normal((300, 40)) + 3.0  # a large common offset
    plain = rankme(torch.tensor(z, dtype=torch.float32))
    assert plain["rankme"] == pytest.approx(numpy_rankme(z), rel=1e-5)
    centred = rankme(torch.tensor(z), RankMeConfig(center=True))
    assert centred["rankme"] == pytest.approx(numpy_rankme(z - z.mean(0)), rel=1e-10)
    assert plain["rankme"] < centred["rankme"]  # the offset is one dominant direction
    # effective rank = RankMe with ε = 0
    assert rankme(torch.tensor(z), RankMeConfig(eps=0.0))["rankme"] == pytest.approx(
        plain["effective_rank"], rel=1e-5
    )


def embeddings_with_spectrum(lam: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """N × K centred data whose covariance (1/(N−1)) has exactly the eigenvalues ``lam``."""
    rng = np.random.default_rng(seed)
    k = lam.size
    a = rng.standard_normal((n, k))
    u, _ = np.linalg.qr(a - a.mean(0))  # orthonormal columns orthogonal to 1
    v, _ = np.linalg.qr(rng.standard_normal((k, k)))
    return u @ np.diag(np.sqrt(lam * (n - 1))) @ v.T


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_alpha_req_recovers_a_power_law(alpha):
    k = 64
    lam = np.arange(1, k + 1, dtype=float) ** -alpha
    z = embeddings_with_spectrum(lam, n=500) + 5.0  # α-ReQ centres; the offset must not matter
    out = rankme(torch.tensor(z))
    np.testing.assert_allclose(out["covariance_eigenvalues"][:k], lam, rtol=1e-9)
    assert out["alpha_req"] == pytest.approx(alpha, rel=1e-8)
    assert out["alpha_req_r2"] == pytest.approx(1.0, abs=1e-10)
    assert out["alpha_fit_ranks"].tolist() == [1, k // 2]
    # the reference preset (reptrix 0.1.0: ranks 11…100 weighted by 1/k) on the same spectrum
    preset = RankMeConfig(
        alpha_rank_min=11, alpha_rank_max=100, alpha_fraction=1.0, alpha_weighting="inverse_rank"
    )
    out = rankme(torch.tensor(z), preset)
    assert out["alpha_req"] == pytest.approx(alpha, rel=1e-8)
    assert out["alpha_fit_ranks"].tolist() == [11, k]


def test_power_law_fit_range_and_weights():
    k = np.arange(1, 201, dtype=float)
    lam = np.where(k <= 100, k**-1.0, 100.0 * k**-2.0)  # slope changes at k = 100
    assert power_law_fit(lam, RankMeConfig(alpha_fraction=0.5))[0] == pytest.approx(1.0)
    alpha, _, r2, ranks = power_law_fit(lam, RankMeConfig(alpha_rank_min=101, alpha_fraction=1.0))
    assert alpha == pytest.approx(2.0) and r2 == pytest.approx(1.0) and ranks == (101, 200)
    # exactly zero eigenvalues (rank-deficient data) are not part of the numerical rank
    padded = np.concatenate([lam[:50], np.zeros(50)])
    assert power_law_fit(padded, RankMeConfig(alpha_fraction=1.0))[3] == (1, 50)
    # too few ranks → NaN, not an error
    assert math.isnan(power_law_fit(np.array([1.0, 0.5]), RankMeConfig())[0])


def test_degenerate_inputs_and_bad_config():
    out = rankme(torch.zeros(10, 4))
    assert math.isnan(out["rankme"]) and math.isnan(out["alpha_req"])
    with pytest.raises(ConfigError, match="alpha_weighting"):
        RankMeConfig(alpha_weighting="log")
    with pytest.raises(ConfigError, match="alpha_fraction"):
        RankMeConfig(alpha_fraction=0.0)
    with pytest.raises(ConfigError, match="N × K"):
        rankme(torch.ones(5))
