"""The warm process pool, one task per checkpoint, and ``--executor auto`` (issue #17, item 5).

Numbers are compared with the in-process executor's, element for element; no timing is asserted:
the tests count loads, tasks and worker processes instead.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from landscape import executors
from landscape.errors import CheckpointError, ConfigError
from landscape.store import Store

FAST = {"hessian": dict(top_k=2, bottom_k=1, trace_samples=10, subset=100, lanczos_steps=30),
        "rankme": {"samples": 100}, "collapse": {"samples": 100}}
ONLY_HESSIAN = {"hessian": FAST["hessian"]}  # analyze refuses settings of a probe it does not run


def _same_files(a_path, b_path) -> None:
    a, b = Store(a_path), Store(b_path)
    assert a.groups() == b.groups()

    def same(x, y):
        if isinstance(x, dict):
            assert x.keys() == y.keys()
            for k in x:
                same(x[k], y[k])
        else:
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

    for group in a.groups():
        same(a.read(group)[0], b.read(group)[0])


def test_auto_stays_in_process_for_a_light_job(tiny_run, tmp_path):
    from landscape.analyze import analyze

    executors.shutdown_pool()  # a cold start: no pool to reuse
    report = analyze(tiny_run, "hessian", settings=ONLY_HESSIAN, checkpoints="all", device="cpu",
                     out=tmp_path / "auto.h5", executor="auto", workers=2)
    assert report.executor == "local" and "in-process" in report.executor_reason
    assert executors._POOL["pool"] is None  # no worker was started


@pytest.mark.parametrize(("n", "seconds", "first_call", "device", "expected"), [
    (7, 0.3, False, "cpu", "local"),      # the light case: 2 s of work, 4 s to start workers
    (7, 20.0, False, "cpu", "process"),   # the heavy case
    (7, 20.0, False, "cuda", "local"),    # one device: workers would share it
    (1, 60.0, False, "cpu", "local"),     # one task left: nothing to share
    (7, 0.2, True, "cpu", "local"),       # in-process even if the first task paid nothing once
    (7, 40.0, True, "cpu", "process"),    # the pool even if it paid the most it can
    (7, 3.0, True, "cpu", None),          # the choice turns on what it paid: measure one more
])
def test_choose_executor_compares_the_work_with_the_start_up(n, seconds, first_call, device, expected,
                                                             monkeypatch):
    monkeypatch.setattr(executors, "cpu_count", lambda: 2)
    executors.shutdown_pool()
    choice = executors.choose_executor(n, seconds, workers=2, device=device, first_call=first_call)
    assert (choice.executor if choice else None) == expected


def test_choose_executor_with_a_warm_pool_costs_no_start_up():
    executors.shutdown_pool()
    assert executors.choose_executor(7, 1.0, workers=2).executor == "local"
    list(executors.map_tasks(abs, [1, 2], executor="process", workers=2))
    assert executors.pool_is_warm(2)
    choice = executors.choose_executor(7, 1.0, workers=2)
    assert choice.executor == "process" and "already started" in choice.reason


def _worker_state(_: int) -> tuple[int, bool, int]:
    import torch

    return os.getpid(), executors.lazy_imports_done(), torch.get_num_threads()


def test_process_pool_is_warm_and_kept_for_later_calls():
    first = list(executors.map_tasks(_worker_state, range(4), executor="process", workers=2))
    pool = executors._POOL["pool"]
    second = list(executors.map_tasks(_worker_state, range(4), executor="process", workers=2))
    assert executors._POOL["pool"] is pool  # the same pool served both calls
    pids = {pid for pid, _, _ in first + second}
    assert pids <= set(pool._processes) and len(pool._processes) == 2 and os.getpid() not in pids
    assert all(warm and threads == 1 for _, warm, threads in first + second)  # warm_up ran in each worker
    assert executors.pool_is_warm(2)


def test_map_tasks_keeps_the_order_and_map_unordered_gives_every_index():
    assert list(executors.map_tasks(abs, [-3, 1, -2], executor="process", workers=2)) == [3, 1, 2]
    got = dict(executors.map_unordered(abs, [-3, 1, -2], executor="process", workers=2))
    assert got == {0: 3, 1: 1, 2: 2}
    with pytest.raises(ConfigError, match="unknown executor 'auto'"):
        list(executors.map_tasks(abs, [1], executor="auto"))


def test_process_and_auto_give_the_arrays_of_the_local_executor(tiny_run, tmp_path):
    from landscape.analyze import analyze

    probes = "hessian,rankme,collapse"
    local = analyze(tiny_run, probes, settings=FAST, checkpoints="all", device="cpu", out=tmp_path / "local.h5")
    pooled = analyze(tiny_run, probes, settings=FAST, checkpoints="all", device="cpu", out=tmp_path / "pool.h5",
                     executor="process", workers=2)
    auto = analyze(tiny_run, probes, settings=FAST, checkpoints="all", device="cpu", out=tmp_path / "auto.h5",
                   executor="auto", workers=2)
    assert not local.failures and not pooled.failures and not auto.failures
    assert (local.executor, pooled.executor) == ("local", "process")
    assert list(pooled.results) == list(local.results) == probes.split(",")
    for name in local.results:
        assert [r.group for r in pooled.results[name]] == [r.group for r in local.results[name]]
    _same_files(tmp_path / "local.h5", tmp_path / "pool.h5")
    _same_files(tmp_path / "local.h5", tmp_path / "auto.h5")


def test_auto_with_workers_forced_cheap_runs_the_rest_on_the_pool(tiny_run, tmp_path, monkeypatch):
    from landscape.analyze import analyze

    monkeypatch.setattr(executors, "WORKER_START_SECONDS", 0.0)
    monkeypatch.setattr(executors, "FIRST_CALL_SECONDS", 0.0)
    monkeypatch.setattr(executors, "AUTO_MARGIN", 1e-9)  # any estimate favours the pool
    local = analyze(tiny_run, "hessian", settings=ONLY_HESSIAN, checkpoints="all", device="cpu", out=tmp_path / "l.h5")
    auto = analyze(tiny_run, "hessian", settings=ONLY_HESSIAN, checkpoints="all", device="cpu", out=tmp_path / "a.h5",
                   executor="auto", workers=2)
    assert auto.executor == "process" and "workers" in auto.executor_reason
    assert [r.group for r in auto.results["hessian"]] == [r.group for r in local.results["hessian"]]
    _same_files(tmp_path / "l.h5", tmp_path / "a.h5")


def test_grouping_loads_each_checkpoint_once(tiny_run, tmp_path, monkeypatch):
    """One task per checkpoint, holding all its probes; the worker reads the checkpoint once. (The
    worker function runs in this process here, so that the loads can be counted.)"""
    import landscape.analyze as an
    from landscape.analyze import compute, schedule
    from landscape.checkpoints import RunDir

    loads: list[str] = []
    real_load = compute.load_model_and_record

    def counting(target, *args, **kwargs):
        loads.append(target.name)
        return real_load(target, *args, **kwargs)

    submitted: list = []

    def here(fn, tasks, **kwargs):
        submitted.extend(tasks)
        return executors.map_unordered(fn, tasks, executor="local")

    monkeypatch.setattr(compute, "load_model_and_record", counting)  # where the worker looks them up
    monkeypatch.setattr(schedule, "map_unordered", here)
    probes = "hessian,rankme,collapse"
    report = an.analyze(tiny_run, probes, settings=FAST, checkpoints="all", device="cpu",
                        out=tmp_path / "grouped.h5", executor="process", workers=2)
    names = [c.name for c in RunDir(tiny_run).checkpoints()]
    assert not report.failures
    assert [t.probes[0].target.name for t in submitted] == names  # one task per checkpoint
    assert all([p.probe for p in t.probes] == probes.split(",") for t in submitted)
    assert sorted(loads) == sorted(names)  # each checkpoint read once, for its three probes
    loads.clear()
    an.analyze(tiny_run, probes, settings=FAST, checkpoints="all", device="cpu", out=tmp_path / "local.h5")
    assert sorted(loads) == sorted(names * 3)  # in-process: once per (probe, checkpoint)
    _same_files(tmp_path / "local.h5", tmp_path / "grouped.h5")


def test_probes_of_a_checkpoint_get_their_own_copy_of_its_model(tiny_run, monkeypatch):
    import landscape.analyze as an
    from landscape.targets import resolve_targets

    (target,) = resolve_targets(tiny_run, "last")
    task = an.ProbeTask(target, "rankme", None, "cpu")
    loaded = {"left": 3}
    models = [an._load_model(task, an.torch.device("cpu"), loaded)[0] for _ in range(3)]
    assert len({id(m) for m in models}) == 3
    first = models[0].state_dict()
    for m in models[1:]:
        assert all(an.torch.equal(first[k], v) for k, v in m.state_dict().items())

    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise CheckpointError("unreadable")

    monkeypatch.setattr(an.compute, "load_model_and_record", broken)
    loaded = {"left": 2}
    for _ in range(2):
        with pytest.raises(CheckpointError, match="unreadable"):
            an._load_model(task, an.torch.device("cpu"), loaded)
    assert calls == [1]  # the failing file is read once, and each probe is told


def test_an_interrupted_pooled_analysis_keeps_what_was_written(run_copy):
    """Results are stored one by one as they come back; an interrupt ends the pool's workers, and
    the rerun computes only what is missing."""
    from landscape.analyze import analyze

    seen: list[str] = []

    def stop_after_one(target, state):
        if state == "done":
            seen.append(target.name)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        analyze(run_copy, "hessian", settings=ONLY_HESSIAN, checkpoints="all", device="cpu", executor="process",
                workers=2, on_target=stop_after_one)
    assert len(seen) == 1
    stored = [g for g in Store(run_copy / "analysis.h5").groups() if g.endswith("/hessian")]
    assert len(stored) == 1
    report = analyze(run_copy, "hessian", settings=ONLY_HESSIAN, checkpoints="all", device="cpu")
    skipped = [r.target.name for r in report.results["hessian"] if r.skipped]
    assert skipped == seen and len(report.results["hessian"]) > 1


def test_analyze_rejects_an_unknown_executor_before_any_work(tiny_run, tmp_path):
    from landscape.analyze import analyze

    with pytest.raises(ConfigError, match="unknown executor 'threads'; valid: local, auto, process, ray"):
        analyze(tiny_run, "hessian", executor="threads", out=tmp_path / "x.h5")
    with pytest.raises(ConfigError, match="workers must be ≥ 1"):
        analyze(tiny_run, "hessian", executor="process", workers=0, out=tmp_path / "x.h5")
    assert not (tmp_path / "x.h5").exists()


def test_cli_analyze_says_what_auto_chose_and_rejects_an_unknown_executor(tiny_run, tmp_path, capsys):
    from landscape_cli.main import main

    args = ["analyze", str(tiny_run), "--probes", "rankme", "--setting", "rankme.samples=100", "--checkpoints",
            "all", "--device", "cpu", "--no-progress", "--no-plots"]
    executors.shutdown_pool()
    assert main([*args, "--out", str(tmp_path / "a.h5"), "--executor", "auto"]) == 0
    assert "executor: local (" in capsys.readouterr().out
    assert main([*args, "--out", str(tmp_path / "b.h5"), "--executor", "threads"]) == 2
    err = capsys.readouterr().err
    assert "unknown executor 'threads'; valid: local, auto, process, ray" in err and "Traceback" not in err
    assert not (tmp_path / "b.h5").exists()


def test_a_warm_pool_serves_a_call_asking_fewer_workers_with_no_more_in_flight():
    executors.shutdown_pool()
    list(executors.map_tasks(_worker_state, range(4), executor="process", workers=2))
    pool = executors._POOL["pool"]
    spans = list(executors.map_tasks(_busy_span, range(4), executor="process", workers=1))
    assert executors._POOL["pool"] is pool and executors.pool_is_warm(1)  # not restarted for fewer workers
    ordered = sorted(spans)
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(ordered, ordered[1:], strict=False))  # one at a time
    list(executors.map_tasks(abs, [1, 2, 3], executor="process", workers=3))
    assert executors._POOL["pool"] is not pool and executors._POOL["workers"] == 3  # more workers: a new pool
    executors.shutdown_pool()


def _busy_span(_: int) -> tuple[float, float]:
    import time

    start = time.time()
    time.sleep(0.05)
    return start, time.time()
