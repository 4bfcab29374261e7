"""run_trajectory: a RUN_DIR's checkpoints as the tensors a direction perturbs (read back exactly)."""

import json

import pytest
import torch

from landscape.checkpoints import ModelSpec, checkpoint_name, save_weights
from landscape.directions import KINDS, target_tensors
from landscape.errors import CheckpointError, ConfigError
from landscape.trajectory import run_trajectory
from landscape.trajectory_pca import pca_directions

CNN_SPEC = ModelSpec(name="cnn", input_shape=(1, 8, 8), num_classes=4, params={"channels": 3, "width": 10, "batchnorm": True})


def _cnn(seed=0):
    torch.manual_seed(seed)
    model = CNN_SPEC.build()
    with torch.no_grad():  # non-trivial BN statistics and affine parameters
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_()
                m.bias.normal_()
                m.num_batches_tracked.fill_(7)
    return model


@pytest.fixture
def run_dir(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_spec": CNN_SPEC.to_dict()}))
    for i, step in enumerate((0, 5, 10, 20)):
        save_weights(tmp_path / "checkpoints" / f"{checkpoint_name(step)}.safetensors", _cnn(seed=i), {"step": step})
    return tmp_path


@pytest.mark.parametrize("kind", KINDS)
def test_run_trajectory_loads_the_checkpoints(run_dir, kind):
    states, steps = run_trajectory(run_dir, kind=kind)
    assert steps == [0, 5, 10, 20]
    like = target_tensors(_cnn(), kind)
    for i, s in enumerate(states):
        assert list(s) == list(like)
        expect = target_tensors(_cnn(seed=i), kind)
        assert all(torch.equal(s[k], expect[k]) for k in s)
    res = pca_directions(states, steps=steps)
    assert res.coords.shape == (4, 2) and res.steps == steps
    some, which = run_trajectory(run_dir, kind=kind, steps=[20, 5])
    assert which == [20, 5] and torch.equal(some[0]["classifier.weight"], states[3]["classifier.weight"])


def test_run_trajectory_errors(run_dir, tmp_path_factory):
    with pytest.raises(CheckpointError, match="available steps: 0, 5, 10, 20"):
        run_trajectory(run_dir, steps=[7])
    empty = tmp_path_factory.mktemp("empty")
    (empty / "config.json").write_text(json.dumps({"model_spec": CNN_SPEC.to_dict()}))
    with pytest.raises(CheckpointError, match="no checkpoints"):
        run_trajectory(empty)
    with pytest.raises(ConfigError, match="weights, states"):
        run_trajectory(run_dir, kind="grads")
