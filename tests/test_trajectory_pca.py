"""PCA directions of a trajectory (landscape.trajectory_pca) against sklearn's PCA and an SVD."""

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from landscape import directions as D
from landscape import trajectory_pca as TP
from landscape.errors import ConfigError
from tests.test_directions import _cnn, _mlp

# ---- PCA of a trajectory ------------------------------------------------------------------------------


def _trajectory(model, steps=7, seed=0):
    """A random-walk trajectory of float64 states ending at the model's state."""
    final = D.target_tensors(model.double(), "states")
    gen = torch.Generator().manual_seed(seed)
    traj, cur = [], {k: v.clone() for k, v in final.items()}
    for _ in range(steps - 1):
        traj.append({k: v.clone() for k, v in cur.items()})
        cur = {k: v + 0.1 * torch.randn(v.shape, generator=gen, dtype=v.dtype) * (1 + (i % 3)) for i, (k, v) in enumerate(cur.items())}
    traj = [{k: v + (final[k] - cur[k]) for k, v in t.items()} for t in traj]  # shift so the walk ends at final
    return [*traj, final]


def _matrix(traj, final, ignore):
    rows = []
    for t in traj:
        rows.append(torch.cat([(t[k] - final[k]).reshape(-1) * (0 if ignore == "biasbn" and final[k].ndim <= 1 else 1)
                               for k in final]))
    return torch.stack(rows).numpy()


@pytest.mark.parametrize("ignore", D.IGNORES)
def test_pca_matches_sklearn_and_svd(ignore):
    traj = _trajectory(_cnn())
    final = traj[-1]
    res = TP.pca_directions(traj, ignore=ignore, steps=[10 * i for i in range(len(traj))])
    X = _matrix(traj, final, ignore)
    sk = PCA(n_components=2).fit(X)
    ours = np.stack([D.flatten(res.d0).numpy(), D.flatten(res.d1).numpy()])
    np.testing.assert_allclose(ours, sk.components_, rtol=0, atol=1e-9)  # same sign convention too
    _, s, vt = np.linalg.svd(X - X.mean(0), full_matrices=False)
    for i in range(2):
        assert abs(abs(ours[i] @ vt[i]) - 1) < 1e-10
    np.testing.assert_allclose(res.explained_variance_ratio, sk.explained_variance_ratio_, rtol=1e-10)
    np.testing.assert_allclose(res.explained_variance_ratio, s[:2] ** 2 / (s**2).sum(), rtol=1e-10)
    # reference cos projection of the uncentered rows: x = <θ_t − θ_f, d> / ||d||
    np.testing.assert_allclose(res.coords, X @ ours.T / np.linalg.norm(ours, axis=1), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(res.coords[-1], 0.0, atol=1e-12)
    assert res.steps == [0, 10, 20, 30, 40, 50, 60]
    if ignore == "biasbn":
        assert all(torch.equal(d[k], torch.zeros_like(d[k])) for d in (res.d0, res.d1) for k in d if d[k].ndim <= 1)


@pytest.mark.parametrize("projection", D.PROJECTIONS)
def test_pca_coordinates_reconstruct_a_planar_trajectory(projection):
    final = D.target_tensors(_cnn().double(), "states")
    gen = torch.Generator().manual_seed(0)
    u = {k: torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in final.items()}
    v = {k: torch.randn(t.shape, generator=gen, dtype=t.dtype) for k, t in final.items()}
    ab = np.array([[3.0, -1.0], [2.0, 0.5], [1.5, 1.0], [0.5, -0.2], [0.0, 0.0]])
    traj = [D.perturbed(final, [u, v], list(c)) for c in ab]
    res = TP.pca_directions(traj, final, ignore="none", projection=projection)
    assert res.coords.shape == (5, 2)
    for c, theta in zip(res.coords, traj, strict=True):
        back = D.perturbed(final, [res.d0, res.d1], list(c))
        for k in final:
            torch.testing.assert_close(back[k], theta[k], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(res.explained_variance_ratio.sum(), 1.0, rtol=1e-10)


def test_pca_lstsq_differs_from_cos_only_for_non_orthogonal_directions():
    traj = _trajectory(_mlp().double())
    final = traj[-1]
    d0 = D.random_direction(_mlp().double(), kind="states", seed=0)
    d1 = D.random_direction(_mlp().double(), kind="states", seed=1)
    X = _matrix(traj, final, "none")
    A = np.stack([D.flatten(d0).numpy(), D.flatten(d1).numpy()]).T
    lstsq = TP.project_trajectory(traj, final, [d0, d1], projection="lstsq")
    np.testing.assert_allclose(lstsq, np.linalg.lstsq(A, X.T, rcond=None)[0].T, rtol=1e-8, atol=1e-10)
    cos = TP.project_trajectory(traj, final, [d0, d1], projection="cos")
    np.testing.assert_allclose(cos, X @ A / np.linalg.norm(A, axis=0), rtol=1e-10)


def test_pca_rejects_degenerate_and_mismatched_trajectories():
    traj = _trajectory(_mlp())
    with pytest.raises(ConfigError, match="at least 3"):
        TP.pca_directions(traj[:2])
    final = traj[-1]
    line = [D.perturbed(final, [traj[0]], [c]) for c in (1.0, 2.0, 3.0)]
    with pytest.raises(ConfigError, match="fewer than two dimensions"):
        TP.pca_directions(line, final, ignore="none")
    bad = [*traj[:-1], {k: v for k, v in final.items() if k != "classifier.weight"}]
    with pytest.raises(ConfigError, match="classifier.weight"):
        TP.pca_directions(bad, final)
