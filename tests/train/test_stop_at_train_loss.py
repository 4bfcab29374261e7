"""``stop_at_train_loss``: the trainer stops at the first epoch end at or below the threshold, and
``collect_runs`` picks each run's first checkpoint at or below it (Jiang et al.'s equal-loss protocol)."""

import json

import pytest
import torch

from landscape.checkpoints import RunDir, load_state_dict
from landscape.errors import ConfigError
from landscape.run_selection import NotReached, select_run_checkpoint
from landscape.study import collect_runs
from landscape.train.config import TrainConfig
from landscape.train.trainer import steps_per_epoch, train

SMALL = TrainConfig(model="mlp", model_params={"width": 32, "depth": 1}, optimizer_params={"momentum": 0.9},
                    epochs=8, batch_size=64, checkpoints="every:1", train_size=400, lr=0.1)
SPE = steps_per_epoch(400, 64)


def _rows(run_dir, events=False):
    rows = RunDir(run_dir).metrics()
    return [{k: v for k, v in r.items() if k != "time"} for r in rows if events or "event" not in r]


def _weights(run_dir, which="last"):
    return load_state_dict(RunDir(run_dir).checkpoint(which).path)


def _same(a, b):
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """An uninterrupted run without a stop, checkpointed every epoch: the reference."""
    out = tmp_path_factory.mktemp("full") / "run"
    train(SMALL, out, progress=False, device="cpu")
    return out


def _threshold(full, epoch):
    """A threshold first met at ``epoch`` in the reference run (its loss there), and that step."""
    losses = {r["step"]: r["train_loss"] for r in _rows(full) if r["step"] % SPE == 0}
    x = losses[epoch * SPE]
    first = min(s for s, v in losses.items() if v <= x)
    assert 0 < first < SMALL.epochs * SPE
    return x, first


def test_stops_at_the_first_epoch_at_or_below_and_records_it(full, tmp_path):
    x, first = _threshold(full, 4)
    cfg = SMALL.replace(stop_at_train_loss=x, checkpoints="every:3")  # the stop epoch is not scheduled
    result = train(cfg, tmp_path / "stop", progress=False, device="cpu")
    assert result.steps == first and result.stopped is not None
    run = RunDir(tmp_path / "stop")
    assert run.checkpoints()[-1].step == first  # the checkpoint of the stop, beside every:3's
    assert [c.step for c in run.checkpoints()] == sorted({0, *range(3 * SPE, first + 1, 3 * SPE), first})
    _same(_weights(tmp_path / "stop"), load_state_dict(RunDir(full).checkpoint(str(first)).path))
    (event,) = [r for r in _rows(tmp_path / "stop", events=True) if "event" in r]
    logged = [r for r in _rows(full) if r["step"] == first][0]
    assert event == {"step": first, "epoch": first / SPE, "event": "stopped", "rule": "stop_at_train_loss",
                     "threshold": x, "value": logged["train_loss"]}
    assert result.stopped == event and result.final["train_loss"] == logged["train_loss"] <= x
    assert json.loads((tmp_path / "stop" / "config.json").read_text())["config"]["stop_at_train_loss"] == x


def test_resume_before_the_stop_is_bit_identical(full, tmp_path):
    x, first = _threshold(full, 5)
    cfg = SMALL.replace(stop_at_train_loss=x, checkpoints="steps:9,16")
    train(cfg, tmp_path / "a", progress=False, device="cpu")
    cut = train(cfg, tmp_path / "b", progress=False, device="cpu", stop_after=first - 3)
    assert cut.stopped is None and cut.steps == first - 3
    resumed = train(cfg, tmp_path / "b", resume=True, progress=False, device="cpu")
    assert resumed.resumed_from == 16 and resumed.steps == first and resumed.stopped["step"] == first
    _same(_weights(tmp_path / "a"), _weights(tmp_path / "b"))
    assert _rows(tmp_path / "a", events=True) == _rows(tmp_path / "b", events=True)


def test_resuming_a_stopped_run_changes_nothing_and_a_lost_event_is_written_again(full, tmp_path):
    x, first = _threshold(full, 3)
    cfg = SMALL.replace(stop_at_train_loss=x)
    out = tmp_path / "run"
    train(cfg, out, progress=False, device="cpu")
    before = (out / "metrics.jsonl").read_text()
    w = _weights(out)
    again = train(cfg, out, resume=True, progress=False, device="cpu")
    assert again.steps == first and again.stopped["step"] == first
    assert (out / "metrics.jsonl").read_text() == before
    _same(w, _weights(out))
    # killed after the stop's checkpoint, before its event line: the resume stops there and records it
    lines = before.splitlines(keepends=True)
    assert '"event": "stopped"' in lines[-1]
    (out / "metrics.jsonl").write_text("".join(lines[:-1]))
    again = train(cfg, out, resume=True, progress=False, device="cpu")
    assert again.steps == first and again.stopped["value"] <= x
    assert [r for r in _rows(out, events=True) if "event" in r] == [{k: v for k, v in again.stopped.items()}]
    _same(w, _weights(out))


def test_a_threshold_never_reached_trains_to_the_end(tmp_path):
    result = train(SMALL.replace(epochs=2, stop_at_train_loss=-1.0), tmp_path / "run", progress=False, device="cpu")
    assert result.stopped is None and result.steps == 2 * SPE
    assert not [r for r in _rows(tmp_path / "run", events=True) if "event" in r]


def test_config_rejects_a_non_finite_threshold():
    with pytest.raises(ConfigError, match="stop_at_train_loss"):
        SMALL.replace(stop_at_train_loss=float("nan"))


# ---- per-run checkpoint selection -------------------------------------------------------------


def test_select_run_checkpoint_rules(full):
    rows = {r["step"]: r["train_loss"] for r in _rows(full)}
    x = rows[3 * SPE]
    want = min(s for s, v in rows.items() if v <= x)  # the first checkpoint at or below, by hand
    assert select_run_checkpoint(full, f"stop_at_train_loss={x}").step == want
    ce = {r["step"]: r["train_ce"] for r in _rows(full)}
    assert select_run_checkpoint(full, f"stop_at_train_ce={ce[2 * SPE]}").step == \
        min(s for s, v in ce.items() if v <= ce[2 * SPE])
    assert select_run_checkpoint(full, "last").step == SMALL.epochs * SPE
    assert select_run_checkpoint(full, "epoch=2").step == 2 * SPE
    assert select_run_checkpoint(full, f"step={SPE}").step == SPE
    with pytest.raises(NotReached, match="never reached train_loss ≤ -1"):
        select_run_checkpoint(full, "stop_at_train_loss=-1")
    with pytest.raises(NotReached, match="no checkpoint has a logged 'nope'"):
        select_run_checkpoint(full, "stop_at_nope=1")
    for bad, message in [("epoch=99", "no checkpoint at epoch 99"), ("stop_at_train_loss=abc", "not a number"),
                         ("size=3", "bad checkpoint rule"), ("all", "names 9 checkpoints")]:
        with pytest.raises(ConfigError, match=message):
            select_run_checkpoint(full, bad)


def test_collect_runs_takes_each_runs_own_checkpoint_and_reports_runs_that_never_reach_it(full, tmp_path):
    other = tmp_path / "other"
    train(SMALL.replace(lr=0.01, epochs=3), other, progress=False, device="cpu")  # slower: a higher loss
    low = {r["step"]: r["train_loss"] for r in _rows(other)}
    high = {r["step"]: r["train_loss"] for r in _rows(full)}
    x = min(low.values())  # reached by `other` at its end only, by `full` earlier
    assert x < low[0]
    records = collect_runs([full, other], f"stop_at_train_loss={x}")
    assert [r["step"] for r in records] == [min(s for s, v in high.items() if v <= x), 3 * SPE]
    assert [r["train_loss"] for r in records] == [high[records[0]["step"]], x]
    assert records[0]["checkpoint"] == RunDir(full).checkpoint(str(records[0]["step"])).name
    skipped = []
    tighter = min(high.values())
    assert tighter < x
    records = collect_runs([full, other], f"stop_at_train_loss={tighter}", on_skip=lambda r, why: skipped.append((r, why)))
    assert [r["run"] for r in records] == [str(full)]
    assert skipped == [(str(other), f"never reached train_loss ≤ {tighter:g} at a checkpoint (lowest {x:.4g})")]
    with pytest.raises(ConfigError, match="1 of 2 runs have no checkpoint under"):
        collect_runs([full, other], f"stop_at_train_loss={tighter}")


def test_cli_train_flag(tmp_path, capsys, full):
    from landscape_cli.main import main

    x, first = _threshold(full, 2)
    out = tmp_path / "run"
    rc = main(["train", "--out", str(out), "--epochs", "8", "--train-size", "400", "--width", "32", "--depth", "1",
               "--momentum", "0.9", "--batch-size", "64", "--lr", "0.1", "--checkpoints", "every:1",
               "--stop-at-train-loss", repr(x), "--no-progress", "--device", "cpu"])
    assert rc == 0
    assert f"stopped at step {first}" in capsys.readouterr().out
    assert TrainConfig.from_run(RunDir(out)) == SMALL.replace(stop_at_train_loss=x)
    _same(_weights(out), load_state_dict(RunDir(full).checkpoint(str(first)).path))
