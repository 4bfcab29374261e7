import json
import os

import pytest
import torch
from safetensors.torch import save_file

from landscape.checkpoints import (
    ModelSpec,
    RunDir,
    load_model,
    load_state_dict,
    load_weights,
    save_weights,
)
from landscape.errors import CheckpointError, ConfigError
from landscape.models import build_model

SPEC = ModelSpec(name="mlp", input_shape=(1, 8, 8), num_classes=10, params={"width": 16, "depth": 1})


def _model():
    torch.manual_seed(0)
    return SPEC.build()


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_safetensors_round_trip_with_metadata(tmp_path):
    model = _model()
    save_weights(tmp_path / "w.safetensors", model, {"step": 5})
    other = SPEC.build()
    load_weights(other, load_state_dict(tmp_path / "w.safetensors"))
    assert _same(model, other)
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


@pytest.mark.parametrize("wrapper", [None, "state_dict", "model", "state_dict_ema"])
@pytest.mark.parametrize("prefix", ["", "module.", "_orig_mod.", "module._orig_mod."])
def test_foreign_pt_files_unwrapped_and_prefixes_stripped(tmp_path, wrapper, prefix):
    model = _model()
    state = {prefix + k: v for k, v in model.state_dict().items()}
    obj = {wrapper: state, "epoch": 3} if wrapper else state
    torch.save(obj, tmp_path / "foreign.pth")
    loaded = load_model(tmp_path / "foreign.pth", SPEC)
    assert _same(model, loaded)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_pickled_code_is_never_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"state_dict": _model().state_dict(), "evil": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="pickled objects that safe loading refuses.*posix.system"):
        load_state_dict(tmp_path / "evil.pt")
    assert not (tmp_path / "PWNED").exists()


def test_missing_and_corrupt_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_state_dict(tmp_path / "nope.safetensors")
    save_weights(tmp_path / "w.safetensors", _model(), {})
    data = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_state_dict(tmp_path / "cut.safetensors")
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_state_dict(tmp_path / "junk.pt")


def test_architecture_mismatch_names_the_keys(tmp_path):
    save_file({k: v.contiguous() for k, v in _model().state_dict().items()}, str(tmp_path / "w.safetensors"))
    wider = ModelSpec(name="mlp", input_shape=(1, 8, 8), num_classes=10, params={"width": 32, "depth": 1})
    with pytest.raises(CheckpointError, match=r"shape mismatch: features.1.weight \(16, 64\) vs model \(32, 64\)"):
        load_model(tmp_path / "w.safetensors", wider)
    deeper = ModelSpec(name="mlp", input_shape=(1, 8, 8), num_classes=10, params={"width": 16, "depth": 2})
    with pytest.raises(CheckpointError, match="missing: features.4.weight, features.4.bias"):
        load_model(tmp_path / "w.safetensors", deeper)
    cnn = ModelSpec(name="cnn", input_shape=(1, 8, 8), num_classes=10)
    with pytest.raises(CheckpointError, match=r"missing: .*\(\d+ in all\); unexpected: "):
        load_model(tmp_path / "w.safetensors", cnn)


def test_model_factory_spec(tmp_path):
    spec = ModelSpec(factory="landscape.models:build_model",
                     params={"name": "mlp", "input_shape": (4,), "num_classes": 3})
    assert spec.build()(torch.randn(2, 4)).shape == (2, 3)
    with pytest.raises(ConfigError, match="must look like"):
        ModelSpec(factory="nocolon").build()
    with pytest.raises(ConfigError, match="has no 'nothing_here'"):
        ModelSpec(factory="landscape.models:nothing_here").build()


def test_foreign_file_without_spec_is_a_clear_error(tmp_path):
    save_weights(tmp_path / "w.safetensors", _model(), {})
    with pytest.raises(ConfigError, match="give a model spec"):
        load_model(tmp_path / "w.safetensors")


def test_run_dir_lists_and_loads_checkpoints(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "config.json").write_text(json.dumps({"config": {}, "model_spec": SPEC.to_dict()}))
    models = {}
    for step in (0, 10, 2):
        models[step] = build_model("mlp", (1, 8, 8), 10, width=16, depth=1)
        save_weights(tmp_path / "checkpoints" / f"step_{step:06d}.safetensors", models[step], {"step": step})
    run = RunDir(tmp_path)
    assert [c.step for c in run.checkpoints()] == [0, 2, 10]
    assert run.checkpoint("last").step == 10 and run.checkpoint(2).name == "step_000002"
    assert _same(run.load_model(2), models[2])
    assert _same(load_model(tmp_path), models[10])
    assert _same(load_model(tmp_path / "checkpoints" / "step_000000.safetensors"), models[0])
    with pytest.raises(CheckpointError, match="available steps: 0, 2, 10"):
        run.checkpoint(5)
    with pytest.raises(CheckpointError, match="not a landscape run directory"):
        RunDir(tmp_path / "checkpoints")
