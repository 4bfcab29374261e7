
import pytest
import torch

from landscape import directions as D
from landscape import trajectory_pca as TP
from landscape.checkpoints import ModelSpec
from landscape.errors import ConfigError
from landscape.models import build_model

CNN_SPEC = ModelSpec(name="cnn", input_shape=(1, 8, 8), num_classes=4, params={"channels": 3, "width": 10, "batchnorm": True})


def _cnn(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    model = CNN_SPEC.build().to(dtype)
    with torch.no_grad():  # non-trivial BN statistics and affine parameters
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_()
                m.bias.normal_()
                m.num_batches_tracked.fill_(7)
    return model


def _mlp(seed=0):
    torch.manual_seed(seed)
    return build_model("mlp", (6,), 3, width=5, depth=2)


MODELS = {"cnn": _cnn, "mlp": _mlp}


def _filter_norms(t):
    return torch.stack([s.double().norm() for s in t])  # one norm per slice along dim 0


def _reference_normalize(direction, weights, norm, ignore):
    """The normalization of tomgoldstein/loss-landscape written out loop by loop, on lists."""
    out = []
    for d, w in zip(direction, weights, strict=True):
        d = d.clone()
        if d.dim() <= 1:
            d = torch.zeros_like(d) if ignore == "biasbn" else w.clone()
        elif norm == "filter":
            d = torch.stack([di * (wi.norm() / (di.norm() + 1e-10)) for di, wi in zip(d, w, strict=True)])
        elif norm == "layer":
            d = d * (w.norm() / d.norm())
        elif norm == "weight":
            d = d * w
        out.append(d)
    return out


# ---- normalization ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("kind", D.KINDS)
def test_filter_normalization_matches_each_filter_norm(name, kind):
    model = MODELS[name]()
    w = D.target_tensors(model, kind)
    d = D.filter_normalized_direction(model, kind=kind, seed=3)
    assert list(d) == list(w)
    for k, t in d.items():
        assert t.shape == w[k].shape and t.dtype == w[k].dtype
        if t.ndim <= 1:
            assert torch.equal(t, torch.zeros_like(t)), k
        else:
            torch.testing.assert_close(_filter_norms(t), _filter_norms(w[k]), rtol=1e-6, atol=0)


def test_layer_weight_and_none_norms():
    model = _cnn()
    w = D.target_tensors(model)
    raw = D.random_direction(model, seed=1)
    layer = D.normalize_direction(raw, w, norm="layer")
    weight = D.normalize_direction(raw, w, norm="weight")
    none = D.normalize_direction(raw, w, norm="none")
    for k in w:
        if w[k].ndim <= 1:
            for d in (layer, weight, none):
                assert torch.equal(d[k], torch.zeros_like(w[k]))
            continue
        torch.testing.assert_close(layer[k].double().norm(), w[k].double().norm(), rtol=1e-6, atol=0)
        assert torch.equal(weight[k], raw[k] * w[k])
        assert torch.equal(none[k], raw[k])
    assert all(torch.equal(raw[k], D.random_direction(model, seed=1)[k]) for k in raw)  # input untouched


@pytest.mark.parametrize("norm", ["filter", "layer", "weight"])
@pytest.mark.parametrize("ignore", D.IGNORES)
@pytest.mark.parametrize("kind", D.KINDS)
def test_normalization_matches_reference(norm, ignore, kind):
    model = _cnn()
    w = D.target_tensors(model, kind)
    raw = D.random_direction(model, kind=kind, seed=5)
    ours = D.normalize_direction(raw, w, norm=norm, ignore=ignore)
    ref = _reference_normalize(list(raw.values()), list(w.values()), norm, ignore)
    for (k, a), b in zip(ours.items(), ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=k)


def test_ignore_none_copies_one_dimensional_tensors_and_keeps_the_rest():
    model = _cnn()
    w = D.target_tensors(model, "states")
    off = D.filter_normalized_direction(model, kind="states", ignore="none", seed=2)
    on = D.filter_normalized_direction(model, kind="states", ignore="biasbn", seed=2)
    assert "features.1.running_mean" in off
    for k in w:
        if w[k].ndim <= 1:
            assert torch.equal(off[k], w[k]) and off[k].data_ptr() != w[k].data_ptr()
        else:
            assert torch.equal(off[k], on[k])


# ---- kinds, seeding, purity ------------------------------------------------------------------------------


def test_states_kind_has_running_stats_and_never_perturbs_integer_buffers():
    model = _cnn()
    weights = D.target_tensors(model, "weights")
    states = D.target_tensors(model, "states")
    assert set(weights) == {n for n, _ in model.named_parameters()}
    assert {"features.1.running_mean", "features.1.running_var", "features.5.running_var"} <= set(states)
    assert not any("num_batches_tracked" in k for k in states)
    d = D.filter_normalized_direction(model, kind="states", ignore="none", seed=0)
    full = model.state_dict()
    moved = D.perturbed(full, [d], [0.5])
    assert moved["features.1.num_batches_tracked"] is full["features.1.num_batches_tracked"]
    assert int(moved["features.1.num_batches_tracked"]) == 7
    torch.testing.assert_close(moved["features.1.running_mean"], 1.5 * full["features.1.running_mean"])
    # a weights direction leaves every buffer alone
    dw = D.filter_normalized_direction(model, seed=0)
    moved = D.perturbed(full, [dw], [1.0])
    assert all(moved[k] is full[k] for k in full if k not in dw)


def test_seeding_is_reproducible_and_distinct():
    model = _cnn()
    a = D.filter_normalized_direction(model, seed=11)
    b = D.filter_normalized_direction(model, seed=11)
    c = D.filter_normalized_direction(model, seed=12)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["features.0.weight"], c["features.0.weight"])
    # the draw does not depend on the global RNG
    torch.manual_seed(123)
    assert torch.equal(D.random_direction(model, seed=11)["classifier.weight"],
                       D.random_direction(model, seed=11)["classifier.weight"])


@pytest.mark.cuda
def test_same_direction_on_cpu_and_gpu():
    model = _cnn()
    cpu = D.filter_normalized_direction(model, seed=4)
    gpu = D.filter_normalized_direction(model.to("cuda"), seed=4)
    for k in cpu:
        assert gpu[k].device.type == "cuda"
        torch.testing.assert_close(gpu[k].cpu(), cpu[k], rtol=1e-6, atol=1e-7)


def test_model_is_never_mutated():
    model = _cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ptrs = {k: v.data_ptr() for k, v in model.state_dict().items()}
    training = model.training
    for kind in D.KINDS:
        theta = D.target_tensors(model, kind)
        d0 = D.filter_normalized_direction(model, kind=kind, seed=0)
        d1 = D.orthogonalize(D.filter_normalized_direction(model, kind=kind, seed=1), d0, weights=theta)
        D.perturbed(theta, [d0, d1], [1.0, -2.0])
        D.perturbed(model.state_dict(), [d0], [3.0])
        for t in theta.values():
            t.add_(1.0)  # target tensors are copies
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) and after[k].data_ptr() == ptrs[k] for k in before)
    assert model.training == training


# ---- orthogonalization, interpolation, perturbation --------------------------------------------------


def _inner(a, b):
    return float(D.flatten(a).double() @ D.flatten(b).double())


def test_orthogonalize_removes_the_component_along_d0():
    model = _cnn()
    d0 = D.filter_normalized_direction(model, seed=0)
    d1 = D.filter_normalized_direction(model, seed=1)
    out = D.orthogonalize(d1, d0)
    scale = float(D.flatten(d0).double().norm() * D.flatten(d1).double().norm())
    assert abs(_inner(d1, d0)) > 1e-3 * scale  # there was something to remove
    assert abs(_inner(out, d0)) < 1e-6 * scale
    for t in out.values():
        if t.ndim <= 1:
            assert torch.equal(t, torch.zeros_like(t))
    # the part removed is along d0
    c = _inner(d1, d0) / _inner(d0, d0)
    for k in d1:
        torch.testing.assert_close(out[k], d1[k] - c * d0[k], rtol=1e-5, atol=1e-6)


def test_orthogonalize_keeps_ignored_tensors_zero_against_a_dense_d0():
    model = _cnn()
    theta = D.target_tensors(model)
    dense = D.interpolation_direction(theta, D.target_tensors(_cnn(seed=1)))  # biases/BN nonzero
    d1 = D.filter_normalized_direction(model, seed=1)
    out = D.orthogonalize(d1, dense)
    scale = float(D.flatten(dense).double().norm() * D.flatten(d1).double().norm())
    assert abs(_inner(out, dense)) < 1e-6 * scale
    assert all(torch.equal(out[k], torch.zeros_like(out[k])) for k in out if out[k].ndim <= 1)


def test_orthogonalize_can_renormalize():
    model = _cnn()
    w = D.target_tensors(model)
    d0 = D.filter_normalized_direction(model, seed=0)
    out = D.orthogonalize(D.filter_normalized_direction(model, seed=1), d0, weights=w, norm="filter")
    for k, t in out.items():
        if t.ndim > 1:
            torch.testing.assert_close(_filter_norms(t), _filter_norms(w[k]), rtol=1e-6, atol=0)


def test_interpolation_reaches_the_other_model_exactly():
    theta0, theta1 = D.target_tensors(_cnn(seed=0), "states"), D.target_tensors(_cnn(seed=1), "states")
    exact = D.interpolation_direction(theta0, theta1, dtype=torch.float64)
    end = D.perturbed(theta0, [exact], [1.0])
    assert all(end[k].dtype == torch.float32 and torch.equal(end[k], theta1[k]) for k in theta1)
    start = D.perturbed(theta0, [exact], [0.0])
    assert all(torch.equal(start[k], theta0[k]) for k in theta0)
    # in the weights' own dtype the end point is off by at most the rounding of the difference
    d = D.interpolation_direction(theta0, theta1)
    assert all(d[k].dtype == torch.float32 for k in d)
    end = D.perturbed(theta0, [d], [1.0])
    for k in theta1:
        bound = torch.finfo(torch.float32).eps * (theta0[k].abs() + theta1[k].abs())
        assert bool(((end[k] - theta1[k]).abs() <= bound).all()), k
    # full state dicts: integer buffers are no part of the direction
    full = D.interpolation_direction(_cnn(seed=0).state_dict(), _cnn(seed=1).state_dict())
    assert set(full) == set(theta0)


def test_interpolation_rejects_mismatched_keys_and_shapes():
    theta0 = D.target_tensors(_cnn())
    missing = {k: v for k, v in theta0.items() if k != "classifier.bias"}
    with pytest.raises(ConfigError, match="classifier.bias"):
        D.interpolation_direction(theta0, missing)
    reshaped = dict(theta0, **{"classifier.weight": torch.zeros(2, 2)})
    with pytest.raises(ConfigError, match=r"shape mismatch: classifier.weight \(4, 10\) vs \(2, 2\)"):
        D.interpolation_direction(theta0, reshaped)
    with pytest.raises(ConfigError, match="features.0.weight"):
        D.interpolation_direction(theta0, D.target_tensors(_mlp()))


def test_perturbed_sums_the_directions():
    model = _mlp()
    w = D.target_tensors(model)
    d0 = D.filter_normalized_direction(model, seed=0, ignore="none")
    d1 = D.filter_normalized_direction(model, seed=1, ignore="none")
    out = D.perturbed(w, [d0, d1], [0.25, -1.5])
    for k in w:
        torch.testing.assert_close(out[k], w[k] + 0.25 * d0[k] - 1.5 * d1[k])
    with pytest.raises(ConfigError, match="coefficient"):
        D.perturbed(w, [d0, d1], [1.0])
    with pytest.raises(ConfigError, match="not in the weights: extra"):
        D.perturbed(w, [dict(d0, extra=torch.zeros(1))], [1.0])


def test_flatten_unflatten_round_trip():
    model = _cnn()
    d = D.filter_normalized_direction(model, seed=0)
    flat = D.flatten(d)
    assert flat.shape == (sum(p.numel() for p in model.parameters()),)
    back = D.unflatten(flat.double(), d)
    assert list(back) == list(d) and all(back[k].dtype == d[k].dtype and torch.equal(back[k], d[k]) for k in d)
    with pytest.raises(ConfigError, match="does not unflatten"):
        D.unflatten(flat[:-1], d)


@pytest.mark.parametrize(
    "call, valid",
    [
        (lambda m: D.filter_normalized_direction(m, norm="unit"), "filter, layer, weight, none"),
        (lambda m: D.filter_normalized_direction(m, ignore="bias"), "biasbn, none"),
        (lambda m: D.target_tensors(m, "buffers"), "weights, states"),
        (lambda m: D.random_direction(m, kind="grads"), "weights, states"),
        (lambda m: TP.pca_directions([D.target_tensors(m)] * 3, projection="ortho"), "cos, lstsq"),
    ],
)
def test_bad_options_list_the_valid_values(call, valid):
    with pytest.raises(ConfigError) as info:
        call(_mlp())
    assert valid in str(info.value) and "\n" not in str(info.value)
