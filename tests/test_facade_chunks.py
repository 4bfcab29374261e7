"""The façade's chunked probes on worker processes: ``ls.surface(model, loss, data, workers=2)``
sends its grid chunks to the warm process pool with a pickled copy of the user's model, loss and
data, and gets exactly the arrays of ``workers=1``; what cannot be sent runs here, said once."""

import os
import threading
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

import landscape as ls
from landscape import executors
from landscape.analyze import chunks
from landscape.analyze.chunks import InProcessWarning, context_runner
from landscape.facade import _context
from landscape.tasks import get_task
from landscape.user_data import as_dataset

GRIDS = [dict(dim=1, x="-1:1:9", chunk=3), dict(dim=2, x="-1:1:5", y="-0.5:0.5:4", chunk=4, splits="both")]


def problem():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(160, 8, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))
    return model, (x[:120], y[:120]), (x[120:], y[120:])


def flat(arrays, prefix=""):
    out = {}
    for key, value in arrays.items():
        out.update(flat(value, f"{prefix}{key}/") if isinstance(value, dict) else {prefix + key: np.asarray(value)})
    return out


def assert_same(a, b):
    fa, fb = flat(a.arrays), flat(b.arrays)
    assert sorted(fa) == sorted(fb)
    for key in fa:
        assert fa[key].dtype == fb[key].dtype and np.array_equal(fa[key], fb[key], equal_nan=True), key


def traced(task):
    """The worker's chunk function, with the process it ran in (module level: picklable)."""
    return os.getpid(), chunks._run_built_chunk(task)


@pytest.fixture
def pids(monkeypatch):
    """The processes the façade's chunks ran in, seen through the executor they were sent to."""
    seen: list[int] = []
    real = chunks.map_unordered

    def map_traced(fn, tasks, *, executor, workers):
        assert fn is chunks._run_built_chunk and executor == "process" and workers == 2
        for index, (pid, out) in real(traced, tasks, executor=executor, workers=workers):
            seen.append(pid)
            yield index, out

    monkeypatch.setattr(chunks, "map_unordered", map_traced)
    return seen


@pytest.mark.parametrize("grid", GRIDS, ids=["1d", "2d"])
def test_surface_on_two_workers_is_bit_identical_and_runs_elsewhere(grid, pids):
    model, data, test = problem()
    with warnings.catch_warnings():
        warnings.simplefilter("error", InProcessWarning)
        two = ls.surface(model, nn.CrossEntropyLoss(), data, test=test, workers=2, **grid)
    assert pids and os.getpid() not in pids  # every chunk came back from a worker process
    n_chunks = -(-int(np.prod(two["done"].shape)) // grid["chunk"])
    assert len(pids) == n_chunks
    one = ls.surface(model, nn.CrossEntropyLoss(), data, test=test, workers=1, **grid)
    assert_same(one, two)
    assert two["done"].all() and np.isfinite(two["train_loss"]).all()


def test_a_mean_loss_function_and_a_streamed_loader_go_to_the_workers(pids):
    """``F.cross_entropy`` (mean-reduced: the per-sample loss is a vmap the workers rebuild) over a
    DataLoader the façade streams: both pickle, so the chunks run in the workers."""
    model, (x, y), _ = problem()
    loader = DataLoader(TensorDataset(x, y), batch_size=32)
    grid = dict(dim=1, x="-1:1:6", chunk=2)
    two = ls.surface(model, F.cross_entropy, loader, workers=2, **grid)
    assert len(pids) == 3 and os.getpid() not in pids
    assert_same(ls.surface(model, F.cross_entropy, loader, workers=1, **grid), two)


class _Locked(IterableDataset):
    """Batches read again on every pass, from an object holding a lock (which cannot be pickled)."""

    def __init__(self, x, y):
        self.x, self.y, self.lock = x, y, threading.Lock()

    def __iter__(self):
        for i in range(len(self.y)):
            yield self.x[i], self.y[i]


def _here_only(pid):
    if os.getpid() != pid:
        raise RuntimeError("this loss exists only in the process that made it")
    return _ProcessBound(pid)


class _ProcessBound(nn.CrossEntropyLoss):
    """A loss that pickles, but whose copy cannot be read in another process (as a class of a file
    only this process can import)."""

    def __init__(self, pid):
        super().__init__()
        self.pid = pid

    def __reduce__(self):
        return _here_only, (self.pid,)


def unsendable(x, y):
    return [
        ("a lambda loss", lambda z, t: F.cross_entropy(z, t, reduction="none"), (x, y)),
        ("a loader over a dataset holding a lock", nn.CrossEntropyLoss(), DataLoader(_Locked(x, y), batch_size=40)),
        ("a loss no worker can read", _ProcessBound(os.getpid()), (x, y)),
    ]


@pytest.mark.parametrize("case", range(3), ids=["lambda", "stream", "worker"])
def test_what_cannot_go_to_a_worker_runs_here_said_once(case, monkeypatch):
    model, (x, y), _ = problem()
    what, loss, data = unsendable(x, y)[case]
    sent: list[int] = []
    real = chunks.map_unordered

    def map_counted(fn, tasks, **kw):
        sent.append(len(tasks))
        yield from real(fn, tasks, **kw)

    monkeypatch.setattr(chunks, "map_unordered", map_counted)
    grid = dict(dim=2, x="-1:1:3", y="-1:1:3", chunk=2)
    with pytest.warns(InProcessWarning) as caught:
        two = ls.surface(model, loss, data, workers=2, **grid)
    said = [w for w in caught if issubclass(w.category, InProcessWarning)]
    assert len(said) == 1, what
    assert "workers=2" in str(said[0].message) and "run in this process" in str(said[0].message)
    assert sent == ([5] if case == 2 else [])  # only the last one got as far as the pool
    assert_same(ls.surface(model, loss, data, workers=1, **grid), two)


def test_an_interactive_sessions_class_is_kept_here(monkeypatch):
    """A model class of ``__main__`` when ``__main__`` is no file (a REPL, a notebook) cannot be
    imported by a spawned worker: it is refused before any chunk is sent."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 3)

        def forward(self, x):
            return self.fc(x)

    Net.__module__, Net.__qualname__ = "__main__", "Net"
    main = __import__("__main__")
    monkeypatch.setattr(main, "Net", Net, raising=False)
    monkeypatch.delattr(main, "__file__", raising=False)
    monkeypatch.setattr(chunks, "map_unordered", lambda *a, **k: pytest.fail("sent to the pool"))
    torch.manual_seed(0)
    model = Net()
    _, data, _ = problem()
    with pytest.warns(InProcessWarning, match="interactive session"):
        two = ls.surface(model, nn.CrossEntropyLoss(), data, workers=2, dim=1, x="-1:1:4", chunk=2)
    assert_same(ls.surface(model, nn.CrossEntropyLoss(), data, workers=1, dim=1, x="-1:1:4", chunk=2), two)


def where(ctx, shared, item):
    """Where a chunk ran, how many chunks that context has served, and a value from both."""
    ctx.cache["served"] = ctx.cache.get("served", 0) + 1
    return os.getpid(), ctx.cache["served"], float(shared["t"].sum()) * item + len(ctx.data.train)


def test_a_worker_builds_the_context_once_per_call():
    model, data, _ = problem()
    parts = (model.eval(), nn.CrossEntropyLoss(), as_dataset(data), get_task("classification"),
             torch.device("cpu"), None, None)
    runner = context_runner(_context, parts)
    ctx = _context(*parts)
    out = dict(runner(ctx, where, {"t": torch.arange(4.0)}, list(range(12)), 2))
    assert sorted(out) == list(range(12))
    assert [out[i][2] for i in range(12)] == [6.0 * i + 120 for i in range(12)]
    served: dict[int, list[int]] = {}
    for pid, count, _ in out.values():
        served.setdefault(pid, []).append(count)
    assert os.getpid() not in served
    assert all(sorted(counts) == list(range(1, len(counts) + 1)) for counts in served.values())


def test_one_worker_or_one_chunk_stays_here(monkeypatch):
    monkeypatch.setattr(chunks, "map_unordered", lambda *a, **k: pytest.fail("sent to the pool"))
    model, data, _ = problem()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ls.surface(model, nn.CrossEntropyLoss(), data, workers=1, dim=1, x="-1:1:4", chunk=2)
        ls.surface(model, nn.CrossEntropyLoss(), data, workers=2, dim=1, x="-1:1:4", chunk=4)


def teardown_module():
    executors.shutdown_pool()
