"""Diffusion spectral entropy / mutual information: closed forms and parity with dse-dsmi."""

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist

from landscape.errors import ConfigError
from landscape.probes.dse import (
    DSEConfig,
    diffusion_spectral_entropy,
    diffusion_spectral_mutual_information,
)


def blobs(n=300, d=10, c=3, spread=4.0, seed=0, sizes=None):
    rng = np.random.default_rng(seed)
    y = rng.choice(c, size=n, p=sizes)
    z = rng.standard_normal((c, d))[y] * spread + rng.standard_normal((n, d))
    return z, y


def test_far_apart_points_give_log2_n_and_identical_points_zero():
    n = 50
    far = diffusion_spectral_entropy(torch.eye(n) * 1e3, DSEConfig(sigma=1.0))
    assert far["dse"] == pytest.approx(math.log2(n), abs=1e-9)
    np.testing.assert_allclose(far["eigenvalues"], np.ones(n), atol=1e-12)
    same = diffusion_spectral_entropy(torch.ones(100, 7) * 3.0)
    assert 0.0 <= same["dse"] < 1e-9
    assert (
        same["eigenvalues"][0] == pytest.approx(1.0) and abs(same["eigenvalues"][1:]).max() < 1e-12
    )


def test_spectrum_is_that_of_the_diffusion_operator():
    z, _ = blobs(n=120)
    out = diffusion_spectral_entropy(torch.tensor(z), DSEConfig(sigma=3.0))
    d2 = np.square(z[:, None] - z[None]).sum(-1)
    g = np.exp(-d2 / (2 * 3.0**2))
    p = g / g.sum(1, keepdims=True)  # row-stochastic P = D⁻¹G
    eig_p = np.sort(np.linalg.eigvals(p).real)[::-1]
    np.testing.assert_allclose(out["eigenvalues"], eig_p, atol=1e-10)
    assert (
        out["eigenvalues"][0] == pytest.approx(1.0)
        and out["n_used"] == 120
        and out["sigma_used"] == 3.0
    )
    assert 0 < out["dse"] < math.log2(120)


def test_sigma_rules():
    z, _ = blobs(n=80, d=9)
    assert (
        diffusion_spectral_entropy(torch.tensor(z), DSEConfig(sigma="sqrt_d"))["sigma_used"] == 3.0
    )
    median = diffusion_spectral_entropy(torch.tensor(z), DSEConfig(sigma="median"))["sigma_used"]
    assert median == pytest.approx(float(np.median(pdist(z))), rel=1e-12)
    for bad in ("auto", 0.0, -1.0, float("nan")):
        with pytest.raises(ConfigError, match="sigma"):
            DSEConfig(sigma=bad)


def test_drop_trivial_matches_the_older_repository_api():
    # ChenLiu-1996/DiffusionSpectralEntropy api/dse.py: sort descending, drop the first, |·|^t.
    z, _ = blobs(n=100, seed=1)
    out = diffusion_spectral_entropy(torch.tensor(z), DSEConfig(sigma=3.0, t=2, drop_trivial=True))
    full = diffusion_spectral_entropy(torch.tensor(z), DSEConfig(sigma=3.0, t=2))
    lam = np.abs(np.sort(full["eigenvalues"])[::-1][1:]) ** 2
    prob = lam / lam.sum() + np.finfo(float).eps
    assert out["dse"] == pytest.approx(-np.sum(prob * np.log2(prob)), abs=1e-12)


dse_dsmi = pytest.importorskip(
    "dse_dsmi", reason="parity tests need the reference package: pip install dse-dsmi"
)


@pytest.mark.parametrize(("sigma", "t"), [(10.0, 1), (3.0, 1), (3.0, 3), (0.7, 2)])
def test_dse_parity_with_dse_dsmi(sigma, t):
    z, _ = blobs(n=300, seed=2)
    ref = dse_dsmi.diffusion_spectral_entropy(z, gaussian_kernel_sigma=sigma, t=t)
    out = diffusion_spectral_entropy(torch.tensor(z), DSEConfig(sigma=sigma, t=t))
    assert out["dse"] == pytest.approx(ref, abs=1e-6)


@pytest.mark.parametrize("seed", [0, 5])
def test_subsampling_parity_with_dse_dsmi(seed):
    z, _ = blobs(n=400, seed=3)
    ref = dse_dsmi.diffusion_spectral_entropy(
        z, gaussian_kernel_sigma=3.0, max_N=150, random_seed=seed
    )
    out = diffusion_spectral_entropy(
        torch.tensor(z, dtype=torch.float32).double(), DSEConfig(sigma=3.0, max_n=150, seed=seed)
    )
    assert out["n_used"] == 150
    assert out["dse"] == pytest.approx(ref, abs=1e-6)
    other = diffusion_spectral_entropy(
        torch.tensor(z), DSEConfig(sigma=3.0, max_n=150, seed=seed + 1)
    )
    assert other["dse"] != pytest.approx(ref, abs=1e-6)  # the seed matters


def test_dsmi_parity_with_class_labels():
    z, y = blobs(n=300, seed=4, sizes=[0.5, 0.3, 0.2])
    ref, ref_clusters = dse_dsmi.diffusion_spectral_mutual_information(
        z, y.reshape(-1, 1), gaussian_kernel_sigma=3.0
    )
    out = diffusion_spectral_mutual_information(
        torch.tensor(z), torch.tensor(y), DSEConfig(sigma=3.0)
    )
    assert out["dsmi"] == pytest.approx(ref, abs=1e-6)
    np.testing.assert_array_equal(out["clusters"], ref_clusters.reshape(-1))
    assert out["groups"].tolist() == [0, 1, 2] and out["group_sizes"].sum() == 300
    np.testing.assert_allclose(
        out["mi_per_group"], out["baseline_per_group"] - out["entropy_per_group"]
    )
    assert out["dsmi"] == pytest.approx(
        float(np.sum(out["group_sizes"] / 300 * out["mi_per_group"]))
    )
    # labels carry information about well-separated blobs; shuffled labels carry none
    shuffled = diffusion_spectral_mutual_information(
        torch.tensor(z), torch.tensor(np.random.default_rng(0).permutation(y)), DSEConfig(sigma=3.0)
    )
    assert out["dsmi"] > 0.5 and abs(shuffled["dsmi"]) < 0.1 * out["dsmi"]


def test_dsmi_parity_with_continuous_references():
    z, y = blobs(n=240, seed=6)
    rng = np.random.default_rng(7)
    scalars = y + 0.3 * rng.standard_normal(240)  # binned into n_clusters bins
    ref, ref_clusters = dse_dsmi.diffusion_spectral_mutual_information(
        z, scalars, gaussian_kernel_sigma=3.0, n_clusters=4
    )
    out = diffusion_spectral_mutual_information(
        torch.tensor(z), torch.tensor(scalars), DSEConfig(sigma=3.0, n_clusters=4)
    )
    np.testing.assert_array_equal(out["clusters"], ref_clusters.reshape(-1))
    assert out["dsmi"] == pytest.approx(ref, abs=1e-6)

    # N × 5 float inputs → spectral clustering
    inputs = np.concatenate(
        [np.eye(3)[y] * 1.5, np.zeros((240, 2))], axis=1
    ) + 0.5 * rng.standard_normal((240, 5))
    ref, ref_clusters = dse_dsmi.diffusion_spectral_mutual_information(
        z, inputs, gaussian_kernel_sigma=3.0, n_clusters=3
    )
    out = diffusion_spectral_mutual_information(
        torch.tensor(z), torch.tensor(inputs), DSEConfig(sigma=3.0, n_clusters=3)
    )
    np.testing.assert_array_equal(out["clusters"], ref_clusters)
    assert out["dsmi"] == pytest.approx(ref, abs=1e-6)
    # reusing the clusters as labels gives the same answer without re-clustering
    again = diffusion_spectral_mutual_information(
        torch.tensor(z), torch.tensor(out["clusters"]), DSEConfig(sigma=3.0)
    )
    assert again["dsmi"] == out["dsmi"]


def test_dsmi_input_checks():
    z, y = blobs(n=30)
    with pytest.raises(ConfigError, match="rows but Z has"):
        diffusion_spectral_mutual_information(torch.tensor(z), torch.tensor(y[:20]))
    with pytest.raises(ConfigError, match="one label per row"):
        diffusion_spectral_mutual_information(torch.tensor(z), torch.tensor(np.stack([y, y], 1)))
    with pytest.raises(ConfigError, match="NaN"):
        diffusion_spectral_entropy(torch.full((4, 2), float("nan")))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_matches_cpu():
    z, y = blobs(n=400, seed=8)
    cfg = DSEConfig(sigma=3.0)
    cpu = diffusion_spectral_entropy(torch.tensor(z), cfg)
    gpu = diffusion_spectral_entropy(torch.tensor(z, device="cuda"), cfg)
    assert gpu["dse"] == pytest.approx(cpu["dse"], abs=1e-8)
    mi_cpu = diffusion_spectral_mutual_information(torch.tensor(z), torch.tensor(y), cfg)["dsmi"]
    mi_gpu = diffusion_spectral_mutual_information(
        torch.tensor(z, device="cuda"), torch.tensor(y), cfg
    )["dsmi"]
    assert mi_gpu == pytest.approx(mi_cpu, abs=1e-8)
