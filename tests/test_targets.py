import pytest
import torch

from landscape.checkpoints import Checkpoint, ModelSpec, RunDir
from landscape.errors import ConfigError
from landscape.targets import load_model, resolve_targets, select_checkpoints


def _cps(steps):
    return [Checkpoint(__import__("pathlib").Path(f"step_{s:06d}.safetensors"), s) for s in steps]


def test_select_checkpoints():
    cps = _cps([0, 5, 10, 15, 20])
    step = lambda sel: [c.step for c in select_checkpoints(cps, sel)]  # noqa: E731
    assert step("last") == [20] and step("first") == [0] and step("all") == [0, 5, 10, 15, 20]
    assert step("every:2") == [0, 10, 20] and step("every:3") == [0, 15, 20]
    assert step("5,15") == [5, 15]
    with pytest.raises(ConfigError, match="no checkpoint at step\\(s\\) 7; available: 0, 5, 10, 15, 20"):
        step("7")
    for bad in ("every:0", "sometimes"):
        with pytest.raises(ConfigError):
            step(bad)


def test_resolve_run_dir_checkpoint_file_and_foreign(tiny_run, tmp_path):
    run = RunDir(tiny_run)
    all_steps = [c.step for c in run.checkpoints()]
    targets = resolve_targets(tiny_run, "all")
    assert [t.step for t in targets] == all_steps and all(t.run_dir == tiny_run for t in targets)
    assert targets[-1].metrics()["test_acc"] == run.metrics()[-1]["test_acc"]
    one = resolve_targets(run.checkpoints()[1].path)
    assert one[0].step == all_steps[1] and one[0].run_dir == tiny_run
    # a folder of foreign weights
    foreign = tmp_path / "weights"
    foreign.mkdir()
    for c in run.checkpoints()[:2]:
        (foreign / f"epoch{c.step}.safetensors").write_bytes(c.path.read_bytes())
    targets = resolve_targets(foreign, "all")
    assert [t.name for t in targets] == ["epoch0", f"epoch{all_steps[1]}"] and targets[0].run_dir is None
    spec = ModelSpec(name="mlp", input_shape=(1, 8, 8), num_classes=10, params={"width": 16, "depth": 1})
    model = load_model(targets[0], spec, torch.device("cpu"))
    ref = run.load_model(0)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values(), strict=True))
    with pytest.raises(ConfigError, match="give a model spec"):
        load_model(targets[0], None, torch.device("cpu"))
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_targets(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no .safetensors"):
        resolve_targets(tmp_path / "empty")
