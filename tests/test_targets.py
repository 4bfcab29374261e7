from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from landscape.checkpoints import (
    Checkpoint,
    CheckpointReadError,
    ModelSpec,
    RunDir,
    load_state_dict,
    parse_position,
)
from landscape.errors import ConfigError
from landscape.targets import Target, load_model, resolve_targets, select_checkpoints

SPEC = ModelSpec(name="mlp", input_shape=(1, 8, 8), num_classes=10, params={"width": 16, "depth": 1})


def _cps(steps):
    return [Checkpoint(Path(f"step_{s:06d}.safetensors"), s) for s in steps]


def _state(seed):
    torch.manual_seed(seed)
    return {k: v.clone() for k, v in SPEC.build().state_dict().items()}


def _epoch_folder(folder, epochs=(5, 10, 15)):
    """What a plain training loop writes: torch.save(model.state_dict(), f"ckpts/epoch_{e}.pt")."""
    folder.mkdir()
    states = {}
    for e in epochs:
        states[e] = _state(e)
        torch.save(states[e], folder / f"epoch_{e}.pt")
    return states


def test_select_checkpoints():
    cps = _cps([0, 5, 10, 15, 20])
    step = lambda sel: [c.step for c in select_checkpoints(cps, sel)]  # noqa: E731
    assert step("last") == [20] and step("first") == [0] and step("all") == [0, 5, 10, 15, 20]
    assert step("every:2") == [0, 10, 20] and step("every:3") == [0, 15, 20]
    assert step("5,15") == [5, 15] and step("15,5,15") == [5, 15]  # in training order, each once
    assert step("step:10") == [10] and step("step_000005") == [5] and step("step_000005.safetensors") == [5]
    assert step("first,every:2,last") == [0, 10, 20]
    with pytest.raises(ConfigError, match="no checkpoint at step\\(s\\) 7; available: step_000000, step_000005, "
                                          "step_000010, step_000015, step_000020$"):
        step("7")
    for bad in ("every:0", "every:x", "step:x", "sometimes", "", " , "):
        with pytest.raises(ConfigError):
            step(bad)


def test_select_by_name_glob_epoch_and_the_list_of_what_there_is():
    names = [f"epoch_{e}.pt" for e in range(1, 21)]
    cps = [Checkpoint.from_name(Path(n)) for n in names]
    pick = lambda sel: [c.name for c in select_checkpoints(cps, sel)]  # noqa: E731
    assert pick("epoch_15") == ["epoch_15"] and pick("epoch_15.pt") == ["epoch_15"]
    assert pick("epoch_1*") == ["epoch_1", *[f"epoch_{e}" for e in range(10, 20)]]
    assert pick("15") == ["epoch_15"]  # no steps in these names: an integer is an epoch
    assert pick("epoch:3,epoch_2?,last") == ["epoch_3", "epoch_20"]
    with pytest.raises(ConfigError) as err:
        pick("epoch_99")
    assert str(err.value) == ("no checkpoint matches 'epoch_99'; available: epoch_1, epoch_2, epoch_3, …, "
                              "epoch_19, epoch_20 (20 in all)")
    # Lightning names carry both: an integer is a step first, then an epoch
    lightning = [Checkpoint.from_name(Path(f"epoch={e}-step={100 * (e + 1)}.ckpt")) for e in range(3)]
    assert [c.name for c in select_checkpoints(lightning, "200")] == ["epoch=1-step=200"]
    assert [c.name for c in select_checkpoints(lightning, "2")] == ["epoch=2-step=300"]
    with pytest.raises(ConfigError, match=r"available: epoch=0-step=100, "):
        select_checkpoints(lightning, "7")


@pytest.mark.parametrize("name, step, epoch", [
    ("epoch_15", None, 15), ("epoch15", None, 15), ("epoch=3-step=1200", 1200, 3), ("step-1200", 1200, None),
    ("step_000500", 500, None), ("global_step=9", 9, None), ("ckpt_000300", 300, None), ("model_10", 10, None),
    ("checkpoint-500", 500, None), ("300", 300, None), ("ep7", None, 7), ("iter100", 100, None),
    ("last", None, None), ("resnet18", None, None), ("deep_net", None, None), ("last-v1", None, None),
    ("best_model", None, None), ("resnet18_epoch_4", None, 4),
])
def test_step_and_epoch_parsed_from_names(name, step, epoch):
    assert parse_position(name) == (step, epoch)


def test_folder_in_natural_order_with_epochs_from_names(tmp_path):
    states = _epoch_folder(tmp_path / "ckpts")
    targets = resolve_targets(tmp_path / "ckpts", "all")
    assert [t.name for t in targets] == ["epoch_5", "epoch_10", "epoch_15"]  # not epoch_10, epoch_15, epoch_5
    assert [(t.epoch, t.step) for t in targets] == [(5, None), (10, None), (15, None)]
    last = resolve_targets(tmp_path / "ckpts", "last")
    assert [t.name for t in last] == ["epoch_15"] and last[0].attrs() == {"name": "epoch_15", "epoch": 15}
    loaded = load_state_dict(last[0].path)
    assert all(torch.equal(loaded[k], states[15][k]) for k in states[15])
    assert [t.name for t in resolve_targets(tmp_path / "ckpts", "epoch_15")] == ["epoch_15"]
    assert [t.name for t in resolve_targets(tmp_path / "ckpts", "epoch_1*")] == ["epoch_10", "epoch_15"]
    assert [t.name for t in resolve_targets(tmp_path / "ckpts", "every:2")] == ["epoch_5", "epoch_15"]
    with pytest.raises(ConfigError, match="no checkpoint at step\\(s\\) 20; available: epoch_5, epoch_10, epoch_15"):
        resolve_targets(tmp_path / "ckpts", "20")


def test_folder_kinds_of_files(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    torch.save({"state_dict": _state(0), "epoch": 0, "global_step": 10}, folder / "epoch=0-step=10.ckpt")
    torch.save({"state_dict": _state(1)}, folder / "epoch=10-step=110.ckpt")
    torch.save({"state_dict": _state(2)}, folder / "epoch=1-step=20.ckpt")
    save_file(_state(3), str(folder / "epoch=1-step=20.safetensors"))  # same name, other format
    torch.save({"momentum_buffer": torch.zeros(3)}, folder / "optimizer.pt")  # not weights: left out
    torch.save({}, folder / "epoch=0-step=10.state.pt")  # our trainer state: left out
    (folder / "notes.txt").write_text("hello")
    (folder / ".hidden.pt").write_bytes(b"")
    targets = resolve_targets(folder, "all")
    assert [t.name for t in targets] == ["epoch=0-step=10", "epoch=1-step=20.ckpt", "epoch=1-step=20.safetensors",
                                         "epoch=10-step=110"]
    assert [(t.step, t.epoch) for t in targets] == [(10, 0), (20, 1), (20, 1), (110, 10)]
    assert [t.name for t in resolve_targets(folder, "110")] == ["epoch=10-step=110"]


def test_hugging_face_checkpoint_folders(tmp_path):
    out = tmp_path / "hf_out"
    for step, fmt in ((500, "safetensors"), (1000, "bin"), (1500, "safetensors")):
        d = out / f"checkpoint-{step}"
        d.mkdir(parents=True)
        (d / "config.json").write_text("{}")  # HF writes the model's config beside its weights
        if fmt == "safetensors":
            save_file(_state(step), str(d / "model.safetensors"))
        else:
            torch.save(_state(step), d / "pytorch_model.bin")
        torch.save({"state": {}}, d / "optimizer.pt")
        torch.save({}, d / "rng_state.pth")
        torch.save({}, d / "training_args.bin")
    (out / "runs").mkdir()  # tensorboard logs: no weights, ignored
    targets = resolve_targets(out, "all")
    assert [t.name for t in targets] == ["checkpoint-500", "checkpoint-1000", "checkpoint-1500"]
    assert [t.step for t in targets] == [500, 1000, 1500]
    assert [t.path.name for t in targets] == ["model.safetensors", "pytorch_model.bin", "model.safetensors"]
    loaded = load_state_dict(targets[1].path)
    assert all(torch.equal(loaded[k], v) for k, v in _state(1000).items())
    # one checkpoint folder (config.json and all) is one target, not a RUN_DIR
    one = resolve_targets(out / "checkpoint-1000")
    assert [(t.name, t.step, t.run_dir) for t in one] == [("checkpoint-1000", 1000, None)]
    # a file inside one is named by its folder
    assert resolve_targets(out / "checkpoint-500" / "model.safetensors")[0].name == "checkpoint-500"


def test_resolving_reads_no_weights_and_an_unreadable_file_names_itself(tmp_path):
    _epoch_folder(tmp_path / "ckpts", epochs=(5, 15))
    (tmp_path / "ckpts" / "epoch_10.pt").write_bytes(b"\x00not a checkpoint" * 8)
    targets = resolve_targets(tmp_path / "ckpts", "all")
    assert [t.name for t in targets] == ["epoch_5", "epoch_10", "epoch_15"]
    with pytest.raises(CheckpointReadError, match="epoch_10.pt cannot be read") as err:
        load_state_dict(targets[1].path)
    assert err.value.path == targets[1].path
    assert len(load_state_dict(targets[0].path)) == len(load_state_dict(targets[2].path)) == 4


def test_how_to_load_travels_with_the_targets(tmp_path):
    _epoch_folder(tmp_path / "ckpts", epochs=(1, 2))
    targets = resolve_targets(tmp_path / "ckpts", "all", weights="raw", strip_prefix="model.")
    assert {(t.weights, t.strip_prefix) for t in targets} == {("raw", "model.")}
    assert resolve_targets(tmp_path / "ckpts")[0].weights == "auto"
    with pytest.raises(ConfigError, match="--weights takes auto, ema, raw, got 'best'"):
        resolve_targets(tmp_path / "ckpts", weights="best")
    assert Target("a", Path("a.pt"), step=3).attrs() == {"name": "a", "step": 3}


def test_resolve_run_dir_checkpoint_file_and_foreign(tiny_run, tmp_path):
    run = RunDir(tiny_run)
    all_steps = [c.step for c in run.checkpoints()]
    targets = resolve_targets(tiny_run, "all")
    assert [t.step for t in targets] == all_steps and all(t.run_dir == tiny_run for t in targets)
    assert targets[-1].metrics()["test_acc"] == run.metrics()[-1]["test_acc"]
    assert targets[-1].attrs() == {"name": targets[-1].name, "step": all_steps[-1]}
    one = resolve_targets(run.checkpoints()[1].path)
    assert one[0].step == all_steps[1] and one[0].run_dir == tiny_run
    # a folder of foreign weights
    foreign = tmp_path / "weights"
    foreign.mkdir()
    for c in run.checkpoints()[:2]:
        (foreign / f"epoch{c.step}.safetensors").write_bytes(c.path.read_bytes())
    targets = resolve_targets(foreign, "all")
    assert [t.name for t in targets] == ["epoch0", f"epoch{all_steps[1]}"] and targets[0].run_dir is None
    assert [t.epoch for t in targets] == [0, all_steps[1]]
    model = load_model(targets[0], SPEC, torch.device("cpu"))
    ref = run.load_model(0)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values(), strict=True))
    with pytest.raises(ConfigError, match="give a model spec"):
        load_model(targets[0], None, torch.device("cpu"))
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_targets(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no .safetensors/.pt/.pth/.bin/.ckpt checkpoint files"):
        resolve_targets(tmp_path / "empty")
