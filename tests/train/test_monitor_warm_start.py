import math

import torch

from landscape.train.monitors import remember, warm_start

F64 = torch.float64


def _unit(angle: float) -> torch.Tensor:
    return torch.tensor([math.cos(angle), math.sin(angle), 0.0], dtype=F64)


def test_a_steady_drift_is_continued():
    """Ritz vectors rotating by a fixed angle per call: displacements agree (cos = cos(step)),
    the start is v + cos(step)·(v − v_prev), closer to the next vector than v itself."""
    state: dict = {}
    for angle in (0.0, 0.1, 0.2):
        remember(state, {"vector": _unit(angle), "gap": 0.5})
    start = warm_start(state)
    v, p = _unit(0.2), _unit(0.1)
    d, d1 = v - p, p - _unit(0.0)
    c = float(torch.dot(d, d1) / (d.norm() * d1.norm()))
    assert abs(c - math.cos(0.1)) < 1e-12
    torch.testing.assert_close(start, v + c * d)
    angle_to_next = lambda u: math.acos(float(torch.dot(u, _unit(0.3)) / u.norm()))  # noqa: E731
    assert angle_to_next(start) < 0.02 < angle_to_next(v)
    assert state["gap"] == 0.5


def test_opposing_steps_and_sign_flips_give_the_previous_vector():
    state: dict = {}
    for u in (_unit(0.0), _unit(0.1), -_unit(0.0)):  # back again (and a flipped sign): no drift
        remember(state, {"vector": u, "gap": 0.5})
    torch.testing.assert_close(warm_start(state), -_unit(0.0))
    assert warm_start(state, extrapolate=False) is state["vector"]
    assert warm_start({}) is None
    one: dict = {}
    remember(one, {"vector": _unit(0.3), "gap": 0.1})
    assert warm_start(one) is one["vector"]  # a single previous vector: nothing to extrapolate
