import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from landscape.analyze import run_probe
from landscape.checkpoints import RunDir
from landscape.datasets import Dataset, Split
from landscape.directions import filter_normalized_direction
from landscape.errors import ConfigError
from landscape.models import build_model
from landscape.probes import make_config
from landscape.probes.base import ProbeContext
from landscape.probes.surface import SurfaceConfig, evaluate_points, parse_grid, run_surface
from landscape.store import Store
from landscape.train.losses import build_loss


def test_parse_grid():
    np.testing.assert_allclose(parse_grid("-1:1:5"), [-1, -0.5, 0, 0.5, 1])
    assert parse_grid("0:1:1").tolist() == [0.0]
    for bad in ("-1:1", "1:-1:5", "a:b:c", "-1:1:0", "-1:1:5:7", "-inf:1:3"):
        with pytest.raises(ConfigError, match="bad grid"):
            parse_grid(bad)
    with pytest.raises(ConfigError, match="bad grid"):
        SurfaceConfig(y="0:1")
    SurfaceConfig(dim=1, y="junk is ignored in 1D")


def _ctx(model, x, y, loss="ce"):
    data = Dataset("t", Split(x, y), Split(x, y), tuple(x.shape[1:]), int(y.max()) + 1, {})
    return ProbeContext(model=model.eval(), loss=build_loss(loss).per_sample, data=data, device=torch.device("cpu"))


def test_quadratic_loss_gives_the_analytic_parabola():
    """A linear model with the squared loss is exactly quadratic in its weights."""
    torch.manual_seed(0)
    model = build_model("mlp", (5,), 3, depth=0).double()
    x, y = torch.randn(40, 5, dtype=torch.float64), torch.randint(0, 3, (40,))
    base = {k: v.detach() for k, v in model.named_parameters()}
    d = {k: torch.randn_like(v) for k, v in base.items()}
    alphas = np.linspace(-2, 2, 9)
    losses, _ = evaluate_points(model, base, [d], alphas[:, None], x, y, build_loss("mse").per_sample)
    W, b, DW, Db = (t.numpy() for t in (base["classifier.weight"], base["classifier.bias"],
                                        d["classifier.weight"], d["classifier.bias"]))
    onehot = np.eye(3)[y.numpy()]
    r0 = x.numpy() @ W.T + b - onehot          # residual at α = 0
    r1 = x.numpy() @ DW.T + Db                 # its derivative in α
    c0, c1, c2 = (r0**2).sum(1).mean(), 2 * (r0 * r1).sum(1).mean(), (r1**2).sum(1).mean()
    np.testing.assert_allclose(losses, c0 + c1 * alphas + c2 * alphas**2, rtol=1e-12)


def test_non_square_grid_is_indexed_x_then_y_and_origin_is_the_model_loss(tiny_run, tmp_path):
    cfg = make_config("surface", x="-1:1:5", y="-0.5:0.5:3", splits="train,test", chunk=4)
    res = run_probe(tiny_run, "surface", cfg, out=tmp_path / "s.h5", device="cpu")[0].result
    assert res["train_loss"].shape == (5, 3) and res["done"].all()
    np.testing.assert_allclose(res["xcoords"], [-1, -0.5, 0, 0.5, 1])
    np.testing.assert_allclose(res["ycoords"], [-0.5, 0, 0.5])
    # the value at [ix, iy] is the loss at θ + x[ix] d0 + y[iy] d1
    run = RunDir(tiny_run)
    model = run.load_model()
    d0 = filter_normalized_direction(model, seed=0)
    d1 = filter_normalized_direction(model, seed=1)
    from landscape.train.trainer import load_data

    data = load_data(run.config)
    base = dict(model.state_dict())
    (loss,), (acc,) = evaluate_points(model, base, [d0, d1], np.array([[0.5, -0.5]]), data.train.x, data.train.y,
                                      build_loss("ce").per_sample)
    assert res["train_loss"][3, 0] == pytest.approx(loss, rel=1e-12)
    assert res["train_acc"][3, 0] == pytest.approx(acc)
    # the origin is the model's own loss, as the trainer logged it
    logged = run.metrics()[-1]
    assert res["train_loss"][2, 1] == pytest.approx(logged["train_loss"], rel=1e-6)
    assert res["test_acc"][2, 1] == pytest.approx(logged["test_acc"])
    assert res["origin_loss"] == res["train_loss"][2, 1]
    stored, attrs = Store(tmp_path / "s.h5").read(f"{run.checkpoints()[-1].name}/surface")
    np.testing.assert_array_equal(stored["train_loss"], res["train_loss"])
    assert attrs["settings"]["norm"] == "filter" and attrs["settings"]["ignore"] == "biasbn"
    assert stored["directions"]["d0"].shape == (sum(p.numel() for p in model.parameters()),)


def test_divergent_regions_are_stored_as_nan_without_crashing():
    torch.manual_seed(0)
    model = build_model("mlp", (4,), 3, width=8, depth=1)
    ctx = _ctx(model, torch.randn(20, 4), torch.randint(0, 3, (20,)))
    res = run_surface(ctx, SurfaceConfig(dim=1, x="-1e39:1e39:3", norm="none"))
    assert res["done"].all()
    assert not np.isfinite(res["train_loss"][[0, 2]]).any() and np.isfinite(res["train_loss"][1])


def test_interrupted_surface_resumes_to_the_uninterrupted_values(tiny_run, tmp_path, monkeypatch):
    cfg = make_config("surface", x="-1:1:6", y="-1:1:5", chunk=7)
    full = run_probe(tiny_run, "surface", cfg, out=tmp_path / "full.h5", device="cpu")[0].result
    import landscape.probes.surface as S

    real, calls = S.evaluate_points, {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 2:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C during the third chunk
        return real(*args, **kwargs)

    monkeypatch.setattr(S, "evaluate_points", flaky)
    with pytest.raises(KeyboardInterrupt):
        run_probe(tiny_run, "surface", cfg, out=tmp_path / "cut.h5", device="cpu")
    store = Store(tmp_path / "cut.h5")
    group = store.groups()[0]
    partial, attrs = store.read(group)
    assert attrs["complete"] is False and partial["done"].sum() == 14
    assert not store.has(group)
    monkeypatch.setattr(S, "evaluate_points", real)
    resumed = run_probe(tiny_run, "surface", cfg, out=tmp_path / "cut.h5", device="cpu")[0]
    assert not resumed.skipped
    for key in ("train_loss", "train_acc", "done"):
        np.testing.assert_array_equal(resumed.result[key], full[key])
    np.testing.assert_array_equal(resumed.result["directions"]["d0"], full["directions"]["d0"])
    assert run_probe(tiny_run, "surface", cfg, out=tmp_path / "cut.h5", device="cpu")[0].skipped


_KILL = """
import sys
from landscape.analyze import run_probe
from landscape.probes import make_config
run_probe(sys.argv[1], "surface", make_config("surface", x="-1:1:25", y="-1:1:25", chunk=5), out=sys.argv[2], device="cpu")
"""


def test_resume_after_kill(tiny_run, tmp_path):
    script = tmp_path / "s.py"
    script.write_text(_KILL)
    out = tmp_path / "killed.h5"
    proc = subprocess.Popen([sys.executable, str(script), str(tiny_run), str(out)])
    deadline = time.time() + 120
    done = 0
    while proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
        try:
            groups = Store(out).groups() if out.exists() else []
            if groups:
                done = int(Store(out).read(groups[0])[0]["done"].sum())
        except Exception:  # the writer holds the file; try again
            continue
        if done >= 100:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the surface finished before it could be killed"
    assert 0 < done < 625
    subprocess.run([sys.executable, str(script), str(tiny_run), str(out)], check=True)
    subprocess.run([sys.executable, str(script), str(tiny_run), str(tmp_path / "full.h5")], check=True)
    a, b = Store(out), Store(tmp_path / "full.h5")
    ra, rb = a.read(a.groups()[0])[0], b.read(b.groups()[0])[0]
    assert ra["done"].all()
    np.testing.assert_array_equal(ra["train_loss"], rb["train_loss"])


@pytest.mark.parametrize("executor,workers,surface_workers", [
    ("process", 2, 1),  # the surface runs here, its chunks on the executor's workers
    ("local", None, 2),  # its own workers: chunks on the warm process pool
    ("local", None, 1),  # all here
])
def test_a_surface_interrupted_under_any_executor_resumes_from_its_stored_chunks(tiny_run, tmp_path, executor,
                                                                                 workers, surface_workers):
    """Ctrl-C in the storing process after two chunks came back: those two are stored, the chunks
    still out are cancelled, and the rerun computes only the rest, to the uninterrupted values."""
    cfg = make_config("surface", x="-1:1:6", y="-1:1:5", chunk=5, workers=surface_workers)
    full = run_probe(tiny_run, "surface", make_config("surface", x="-1:1:6", y="-1:1:5", chunk=5),
                     out=tmp_path / "full.h5", device="cpu")[0].result
    calls = {"n": 0}

    def interrupt_at_the_third_chunk(target, n):
        calls["n"] += 1  # the first call tells the points already done (0)
        if calls["n"] == 4:
            raise KeyboardInterrupt

    out = tmp_path / "cut" / "s.h5"
    out.parent.mkdir()
    with pytest.raises(KeyboardInterrupt):
        run_probe(tiny_run, "surface", cfg, out=out, device="cpu", executor=executor, workers=workers,
                  on_progress=interrupt_at_the_third_chunk)
    store = Store(out)
    (group,) = store.groups()
    partial, attrs = store.read(group)
    assert attrs["complete"] is False and partial["done"].sum() == 10  # two chunks of five points
    done = partial["done"].astype(bool)
    np.testing.assert_array_equal(partial["train_loss"][done], full["train_loss"][done])
    seen: list[int] = []
    resumed = run_probe(tiny_run, "surface", cfg, out=out, device="cpu", executor=executor, workers=workers,
                        on_progress=lambda t, n: seen.append(n))[0]
    assert not resumed.skipped and seen[0] == 10 and seen[-1] == 30  # resumed from the stored chunks
    for key in ("train_loss", "train_acc", "done"):
        np.testing.assert_array_equal(resumed.result[key], full[key])
    np.testing.assert_array_equal(resumed.result["directions"]["d0"], full["directions"]["d0"])
    assert not [p.name for p in out.parent.iterdir() if "chunks" in p.name]  # no shared-tensor file left


def test_worker_processes_give_the_same_values(tiny_run, tmp_path):
    cfg = make_config("surface", x="-1:1:4", y="-1:1:4", chunk=4)
    one = run_probe(tiny_run, "surface", cfg, out=tmp_path / "a.h5", device="cpu")[0].result
    two = run_probe(tiny_run, "surface", make_config("surface", x="-1:1:4", y="-1:1:4", chunk=4, workers=2),
                    out=tmp_path / "b.h5", device="cpu")[0].result
    np.testing.assert_array_equal(one["train_loss"], two["train_loss"])


def test_interpolation_and_pca_directions(tiny_run, tmp_path):
    run = RunDir(tiny_run)
    cfg = make_config("surface", dim=1, x="0:1:3", direction="interpolate:0")
    res = run_probe(tiny_run, "surface", cfg, out=tmp_path / "i.h5", device="cpu")[0].result
    logged = {r["step"]: r for r in run.metrics()}
    # α = 1 lands exactly on the first checkpoint
    assert res["train_loss"][2] == pytest.approx(logged[0]["train_loss"], rel=1e-5)
    assert res["train_loss"][0] == pytest.approx(logged[run.checkpoints()[-1].step]["train_loss"], rel=1e-5)
    pca = run_probe(tiny_run, "surface", make_config("surface", x="-1:1:3", y="-1:1:3", direction="pca"),
                    out=tmp_path / "p.h5", device="cpu")[0].result
    assert pca["trajectory"].shape == (len(run.checkpoints()), 2)
    np.testing.assert_allclose(pca["trajectory"][-1], [0, 0], atol=1e-6)  # the final checkpoint is the origin
    assert 0 < pca["explained_variance_ratio"].sum() <= 1 + 1e-9
    with pytest.raises(Exception, match="no checkpoint"):
        run_probe(tiny_run, "surface", make_config("surface", dim=1, x="0:1:3", direction="interpolate:12345"),
                  out=tmp_path / "j.h5", device="cpu")


def test_vmapped_evaluation_equals_the_loop():
    torch.manual_seed(0)
    model = build_model("cnn", (1, 8, 8), 4, channels=3, width=10, batchnorm=True)
    x, y = torch.randn(30, 1, 8, 8), torch.randint(0, 4, (30,))
    model.train()
    model(x)  # move the running statistics
    loop = run_surface(_ctx(model, x, y), SurfaceConfig(x="-1:1:3", y="-1:1:4", vectorize="loop", batch_size=7))
    vmap = run_surface(_ctx(model, x, y), SurfaceConfig(x="-1:1:3", y="-1:1:4", vectorize="vmap", batch_size=7,
                                                        points_per_call=5))
    np.testing.assert_allclose(vmap["train_loss"], loop["train_loss"], rtol=1e-5)
    np.testing.assert_array_equal(vmap["train_acc"], loop["train_acc"])
    # with the number of points per call chosen from a memory budget (a tiny one: one point per call)
    budget = run_surface(_ctx(model, x, y), SurfaceConfig(x="-1:1:3", y="-1:1:4", vectorize="vmap", batch_size=7,
                                                          memory_budget_mb=1e-6))
    np.testing.assert_allclose(budget["train_loss"], loop["train_loss"], rtol=1e-5)
    with pytest.raises(ConfigError, match="vectorize=vmap needs bn_mode=eval"):
        SurfaceConfig(vectorize="vmap", bn_mode="train")
