"""The run layer's side of ``ProbeContext.map_chunks``: chunks on the executor analyze chose,
each worker rebuilding the probe's context from the task's identity and reading the shared tensors
the parent saved (and deleted afterwards)."""

import os

import pytest
import torch

from landscape import executors
from landscape.analyze.chunks import chunk_runner
from landscape.analyze.compute import probe_context
from landscape.analyze.tasks import ProbeTask
from landscape.probes import make_config
from landscape.targets import data_identity, resolve_targets


def scaled_sum(ctx, shared, item):
    """A chunk function at module level (picklable): where it ran, and a value from the shared
    tensors and the worker's own context (the number of training samples it loaded)."""
    return os.getpid(), float(shared["t"].sum()) * item + len(ctx.data.train), ctx.model.training


@pytest.mark.parametrize("executor,workers,probe_workers,elsewhere", [
    ("local", None, 1, False),  # here, in order
    ("local", None, 2, True),  # the probe's own workers: the warm process pool
    ("process", 2, 1, True),  # the executor analyze chose, with its workers
])
def test_chunks_run_where_the_run_layer_says_with_the_shared_tensors(tiny_run, tmp_path, executor, workers,
                                                                    probe_workers, elsewhere):
    (target,) = resolve_targets(tiny_run, "last")
    task = ProbeTask(target, "surface", make_config("surface"), "cpu")
    runner = chunk_runner(task, data_identity(target, None), tmp_path, executor=executor, workers=workers)
    ctx = probe_context(task, torch.device("cpu"), {}, None, chunk_runner=runner)
    shared = {"t": torch.arange(5.0, dtype=torch.float64), "nested": [{"a": torch.ones(2)}]}
    out = dict(ctx.map_chunks(scaled_sum, shared, [1, 2, 3, 4], workers=probe_workers))
    n = len(ctx.data.train)
    assert sorted(out) == [0, 1, 2, 3]
    assert [out[i][1] for i in range(4)] == [10.0 * k + n for k in (1, 2, 3, 4)]
    assert all(not training for _, _, training in out.values())  # the same model state as here: eval
    pids = {pid for pid, _, _ in out.values()}
    assert (os.getpid() not in pids) == elsewhere
    assert list(tmp_path.iterdir()) == []  # the shared tensors' file is gone


def test_a_context_without_a_runner_maps_here_in_order(tiny_run):
    (target,) = resolve_targets(tiny_run, "last")
    ctx = probe_context(ProbeTask(target, "surface", make_config("surface"), "cpu"), torch.device("cpu"), {}, None)
    out = list(ctx.map_chunks(scaled_sum, {"t": torch.ones(3)}, [5, 6], workers=4))
    assert [i for i, _ in out] == [0, 1] and {pid for _, (pid, _, _) in out} == {os.getpid()}
    assert [v for _, (_, v, _) in out] == [15.0 + len(ctx.data.train), 18.0 + len(ctx.data.train)]


def teardown_module():
    executors.shutdown_pool()
