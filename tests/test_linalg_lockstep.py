"""Lanczos recurrences in lockstep (one k-vector product per step) against one at a time, and SLQ
run that way against a dense float64 eigendecomposition's quadrature."""

import numpy as np
import pytest
import torch

from landscape.errors import ConfigError
from landscape.linalg import (
    HVP_METHODS,
    HessianOperator,
    _rademacher,
    lanczos,
    lanczos_lockstep,
    stochastic_lanczos_quadrature,
)
from tests.hessian_cases import CASES, CE, dense_hessian

F64 = torch.float64


def _dense(lam: np.ndarray, seed: int) -> torch.Tensor:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((len(lam), len(lam))))
    return torch.tensor((q * lam) @ q.T)


class _Products:
    """``A v`` and ``A V`` of a dense matrix, counting the calls of each."""

    def __init__(self, a: torch.Tensor) -> None:
        self.a, self.matvecs, self.matmats, self.rows = a, 0, 0, []

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        self.matvecs += 1
        return self.a @ v

    def matmat(self, block: torch.Tensor) -> torch.Tensor:
        self.matmats += 1
        self.rows.append(len(block))
        return block @ self.a  # a symmetric


def _starts(size: int, k: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [_rademacher(size, 1, g, F64, "cpu")[0] for _ in range(k)]


def test_slq_in_lockstep_is_the_dense_quadrature_of_each_probe():
    """With m = P steps the quadrature of probe v is exact: nodes = eigenvalues of A, weights =
    (uᵢᵀv)²/‖v‖² — computed here by numpy's eigh, independently of Lanczos."""
    lam = np.concatenate([np.linspace(-3.0, -1.0, 6), np.linspace(0.5, 8.0, 18)])
    A = _dense(lam, seed=4)
    ops = _Products(A)
    sd = stochastic_lanczos_quadrature(ops.matvec, len(lam), vectors=3, steps=len(lam), dtype=F64, seed=2,
                                       matmat=ops.matmat)
    assert ops.matvecs == 0 and ops.matmats == len(lam) and set(ops.rows) == {3}  # one 3-row product a step
    evals, u = np.linalg.eigh(A.numpy())
    for v, nodes, weights in zip(_starts(len(lam), 3, seed=2), sd.nodes, sd.weights, strict=True):
        q = v.numpy() / np.linalg.norm(v.numpy())
        np.testing.assert_allclose(nodes, evals, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(weights, (u.T @ q) ** 2, rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("method", HVP_METHODS[1:])
def test_slq_in_lockstep_equals_one_vector_at_a_time(method):
    """float64: the same nodes and weights (≤ 1e-10 relative), in 1/k of the passes over the batches."""
    model, x, y = CASES["cnn_bn"]()
    op = HessianOperator(model, CE, x, y, dtype=F64, batch_size=16, method=method)
    seq = stochastic_lanczos_quadrature(op.matvec, op.size, vectors=4, steps=15, dtype=F64, seed=1)
    passes = []
    inner = op.matmat
    lock = stochastic_lanczos_quadrature(op.matvec, op.size, vectors=4, steps=15, dtype=F64, seed=1,
                                         matmat=lambda v: passes.append(len(v)) or inner(v))
    assert passes == [4] * 15
    np.testing.assert_allclose(lock.nodes, seq.nodes, rtol=1e-10, atol=1e-10 * np.abs(seq.nodes).max())
    np.testing.assert_allclose(lock.weights, seq.weights, rtol=1e-10, atol=1e-12)
    # and each probe's quadrature is exact for low moments of the dense Hessian (degree ≤ 2m − 1)
    H = dense_hessian(model, x, y).numpy()
    for v, nodes, weights in zip(_starts(op.size, 4, seed=1), lock.nodes, lock.weights, strict=True):
        q = v.numpy() / np.linalg.norm(v.numpy())
        for p in (1, 2, 3):
            np.testing.assert_allclose(np.sum(weights * nodes**p), q @ np.linalg.matrix_power(H, p) @ q, rtol=1e-8)


def test_lockstep_recurrences_stop_each_by_its_own_rule():
    """Top-2 by the residual rule: each recurrence stops when its own Ritz pairs are converged, and
    gives what lanczos from that start gives (steps, values, vectors); the finished ones leave the block."""
    rng = np.random.default_rng(0)
    lam = np.concatenate([[40.0, 25.0, 12.0], np.geomspace(3.0, 1e-3, 117)])
    q, _ = np.linalg.qr(rng.standard_normal((120, 120)))
    A = torch.tensor((q * lam) @ q.T)
    starts = [torch.tensor(rng.standard_normal(120)) for _ in range(3)]
    starts[1] = torch.tensor(q[:, :3] @ [1.0, 2.0, 3.0])  # in an invariant subspace: stops after 3 steps
    ops = _Products(A)
    lock = lanczos_lockstep(ops.matmat, 120, starts, max_steps=120, top_k=2, bottom_k=1, dtype=F64,
                            eigenvectors=True)
    one = [lanczos(lambda v: A @ v, 120, max_steps=120, top_k=2, bottom_k=1, dtype=F64, v0=v0, eigenvectors=True)
           for v0 in starts]
    for a, b in zip(lock, one, strict=True):
        assert a.steps == b.steps and a.converged == b.converged
        np.testing.assert_allclose(a.eigenvalues.numpy(), b.eigenvalues.numpy(), rtol=1e-12)
        np.testing.assert_allclose(a.eigenvectors.numpy(), b.eigenvectors.numpy(), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(a.eigenvalues.numpy()[-2:], [25.0, 40.0], rtol=1e-9)
    steps = sorted(r.steps for r in lock)
    assert steps[0] == lock[1].steps == 3 and steps[-1] > 3  # they stop at different steps ...
    assert ops.rows == sorted(ops.rows, reverse=True) and ops.rows[0] == 3 and ops.rows[-1] == 1  # ... and leave
    assert len(ops.rows) == steps[-1]


def test_lockstep_refuses_what_lanczos_refuses():
    with pytest.raises(ConfigError, match="Lanczos rule"):
        lanczos_lockstep(lambda v: v, 5, [torch.ones(5)], rule="exact")
    with pytest.raises(ConfigError, match="max_steps"):
        lanczos(lambda v: v, 5, max_steps=0)
