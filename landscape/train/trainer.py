"""The training loop: seeded, resumable, writing a RUN_DIR.

RUN_DIR/
  config.json                         {"config": TrainConfig, "model_spec", "dataset", "versions", ...}
  checkpoints/step_000000.safetensors model weights (state_dict incl. BatchNorm buffers)
  checkpoints/step_000000.state.pt    optimizer / schedule / RNG state for resume (weights_only)
  metrics.jsonl                       one object per evaluation: step, epoch, lr, train/test loss, CE, acc;
                                      monitor values (config.monitors) join the record of their step, or
                                      make one of their own ({"step", "epoch", "lr", values}) between evaluations

Early stop (``stop_at_train_loss=X``): at every epoch end (step 0 included) the evaluated full
train-set ``train_loss`` (the training objective's per-sample loss, no flooding; ``train_ce`` is
logged beside it) is compared with X; at the first one ≤ X the run saves a checkpoint there,
appends ``{"step", "epoch", "event": "stopped", "rule": "stop_at_train_loss", "threshold": X,
"value": train_loss}`` to metrics.jsonl and ends (:attr:`TrainResult.stopped`).

Determinism: the model is initialized from ``seed``; epoch ``e`` visits the training set in the
order ``randperm(N, generator=seed·1_000_003 + e)``; the torch RNG state (dropout) is saved with
every checkpoint. A run resumed from any checkpoint therefore ends with bit-identical weights
(on CPU) to an uninterrupted one. Monitors (:mod:`landscape.train.monitors`) read the model
functionally and touch no RNG; their states (warm-start vector, previous weights) are saved with
every checkpoint, so a resumed run repeats their values too.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from landscape.checkpoints import (
    Checkpoint,
    RunDir,
    checkpoint_name,
    load_state,
    load_state_dict,
    load_weights,
    save_state,
    save_weights,
)
from landscape.datasets import Dataset, load_dataset
from landscape.errors import ConfigError, TrainingDiverged
from landscape.evaluate import evaluate
from landscape.models import build_model, model_params
from landscape.tasks import correct_count
from landscape.train.config import TrainConfig, checkpoint_steps
from landscape.train.losses import Loss, SequenceLoss, build_loss, task_objective
from landscape.train.optim import bn_first_pass_only, build_optimizer
from landscape.train.schedules import build_schedule
from landscape.utils import (
    atomic_write,
    atomic_write_json,
    disk_full_error,
    is_disk_full,
    read_jsonl,
    resolve_device,
    seed_everything,
    versions,
)

RESUME_HINT = "free space and rerun with --resume"


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    steps: int
    final: dict[str, Any]
    resumed_from: int | None = None
    stopped: dict[str, Any] | None = None  # the "stopped" event when stop_at_train_loss ended the run


def load_data(config: TrainConfig, meta: dict[str, Any] | None = None) -> Dataset:
    """The data ``config`` names. ``meta`` (a run's ``config.json``) keeps an old run on the data it
    was trained on: a run whose record shows standardized inputs where the dataset's default is now
    "as given" (``npz`` before inputs were used as given) is loaded standardized again."""
    params = dict(config.dataset_params)

    def load() -> Dataset:
        return load_dataset(config.dataset, train_size=config.train_size, label_noise=config.label_noise,
                            random_labels=config.random_labels, imbalance_ratio=config.imbalance_ratio,
                            seed=config.data_seed, **params)

    data = load()
    dataset = (meta or {}).get("dataset")
    info = dataset.get("info") if isinstance(dataset, dict) else None
    recorded = info.get("normalization") if isinstance(info, dict) else None
    if isinstance(recorded, dict) and "mean" in recorded and "normalize" not in params \
            and data.normalization.get("method") == "none":
        params["normalize"] = "standardize"
        data = load()
    return data


def build_loss_from(config: TrainConfig, data: Dataset | None = None) -> Loss | SequenceLoss:
    """The training objective: the config's loss, per token when ``data`` has token targets."""
    loss = build_loss(config.loss, z_loss=config.z_loss, flooding=config.flooding, **config.loss_params)
    return loss if data is None else task_objective(loss, data)


def model_params_for(config: TrainConfig, data: Dataset) -> dict[str, Any]:
    """``config.model_params`` plus ``vocab`` from the dataset (``info["source"]["vocab"]``) when
    the model takes one and the config does not set it (recorded in config.json's model_spec)."""
    params = dict(config.model_params)
    vocab = (data.info.get("source") or {}).get("vocab") if isinstance(data.info, dict) else None
    if "vocab" not in params and vocab is not None and "vocab" in model_params(config.model):
        params["vocab"] = int(vocab)
    return params


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Batches per epoch; a last batch of a single sample is dropped (BatchNorm cannot train on it)."""
    full, rest = divmod(n_train, batch_size)
    return max(full + (1 if rest > 1 else 0), 1)


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def _prepare_run_dir(out: Path, config: TrainConfig, resume: bool, overwrite: bool) -> bool:
    """Check what is in ``out``; returns True when there is a run to resume."""
    if resume and overwrite:
        raise ConfigError("choose one of --resume and --overwrite")
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return False
    if not out.is_dir():
        raise ConfigError(f"output path {out} exists and is not a directory; choose another --out")
    has_config = (out / "config.json").is_file()
    if resume:
        if not has_config:
            raise ConfigError(
                f"{out} is not empty and holds no landscape run (no config.json); nothing to resume there"
            )
        stored = RunDir(out).config
        diff = stored.diff(config)
        if diff:
            shown = ", ".join(f"{k} (stored {a!r}, given {b!r})" for k, a, b in ((k, *v) for k, v in diff.items()))
            raise ConfigError(
                f"cannot resume {out}: the run was started with a different config: {shown}; "
                "resume without changing settings, or train into a new --out"
            )
        return True
    if overwrite:
        if not has_config:
            raise ConfigError(
                f"{out} is not empty and is not a landscape run directory (no config.json); "
                "refusing to overwrite it — choose another --out"
            )
        shutil.rmtree(out)
        return False
    raise ConfigError(
        f"run directory {out} already exists and is not empty; pass --resume to continue it, "
        "--overwrite to replace it, or choose another --out"
    )


def _latest_resumable(run: RunDir) -> Checkpoint | None:
    for cp in reversed(run.checkpoints()):
        if cp.state_path.is_file():
            return cp
    return None


def _read_metrics(path: Path, up_to_step: int) -> list[str]:
    """Lines of metrics.jsonl with ``step ≤ up_to_step``; a half-written last line is dropped, a
    damaged line elsewhere is an error (:func:`landscape.utils.read_jsonl`)."""
    if not path.is_file():
        return []
    keep = []
    for line, record in read_jsonl(path):
        step = record.get("step", math.inf) if isinstance(record, dict) else None
        if isinstance(step, int | float) and not isinstance(step, bool) and step <= up_to_step:
            keep.append(line)
    return keep


_STATE_RE = re.compile(r"^(step_\d+)\.state\.pt$")


def _clean_after_disk_full(out: Path) -> None:
    """Leave ``out`` as a kill would, minus the debris: a trainer state whose weights were never
    written is removed, and a half-written last line of metrics.jsonl is cut off (truncating
    needs no free space). The run then resumes from its newest complete checkpoint."""
    ckpt_dir = out / "checkpoints"
    if ckpt_dir.is_dir():
        for p in ckpt_dir.iterdir():
            m = _STATE_RE.match(p.name)
            if m and not (ckpt_dir / f"{m.group(1)}.safetensors").exists():
                p.unlink(missing_ok=True)
    metrics = out / "metrics.jsonl"
    if metrics.is_file():
        with open(metrics, "rb+") as fh:
            data = fh.read()
            if data and not data.endswith(b"\n"):
                fh.truncate(data.rfind(b"\n") + 1)


class _Progress:
    """A rich progress bar over optimizer steps, or nothing."""

    def __init__(self, enabled: bool, total: int, completed: int) -> None:
        self.bar = None
        if enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(
                TextColumn("[bold]train[/]"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                TimeRemainingColumn(),
            )
            self.task = self.bar.add_task("train", total=total, completed=completed, status="")
            self.bar.start()

    def update(self, completed: int, status: str | None = None) -> None:
        if self.bar is not None:
            fields = {"status": status} if status is not None else {}
            self.bar.update(self.task, completed=completed, **fields)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def train(
    config: TrainConfig,
    out: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    device: str | torch.device = "auto",
    progress: bool = True,
    stop_after: int | None = None,
    monitors: list[Any] | None = None,
) -> TrainResult:
    """Train ``config`` into the run directory ``out``.

    ``resume`` continues from the newest checkpoint that has its trainer state (a new run if ``out``
    is empty); ``overwrite`` replaces an existing run directory. ``stop_after`` ends this call after
    that many optimizer steps (as if interrupted; resume finishes the run). ``monitors``
    (names, ``"name:every=K,..."`` strings or :class:`~landscape.train.monitors.MonitorConfig`)
    are added to ``config.monitors`` (and so recorded in config.json); their values go into
    metrics.jsonl at every step they are due (:mod:`landscape.train.monitors`).
    """
    out = Path(out)
    if monitors:
        from landscape.train.monitors import parse_monitor

        added = {c.name: c.to_dict() for c in map(parse_monitor, monitors)}
        config = config.replace(monitors={**config.monitors, **added})
    dev = resolve_device(device)

    previous = None
    if resume and (out / "config.json").is_file():
        try:
            previous = json.loads((out / "config.json").read_text())
        except (OSError, ValueError):
            previous = None  # _prepare_run_dir reports a damaged config.json
    data = load_data(config, previous if isinstance(previous, dict) else None)
    seed_everything(config.seed)
    model = build_model(config.model, data.input_shape, data.num_classes,
                        **model_params_for(config, data)).to(dev)
    loss_fn = build_loss_from(config, data)
    optimizer = build_optimizer(
        config.optimizer,
        model,
        lr=config.lr,
        weight_decay=config.weight_decay,
        decoupled_weight_decay=config.decoupled_weight_decay,
        base=config.base_optimizer,
        **config.optimizer_params,
    )
    n_train = len(data.train)
    spe = steps_per_epoch(n_train, config.batch_size)
    total = config.epochs * spe
    scheduler = build_schedule(
        config.schedule,
        optimizer,
        total_steps=total,
        steps_per_epoch=spe,
        warmup_steps=round(config.warmup_epochs * spe),
        **config.schedule_params,
    )
    save_at = set(checkpoint_steps(config.checkpoints, spe, total))
    if config.monitors:  # a monitor that cannot measure this model says so before anything is written
        from landscape.train.monitors import check_monitors, monitors_from_config

        check_monitors(monitors_from_config(config.monitors), model)
    # Only now, with every component built and validated, touch the output directory.
    try:
        resuming = _prepare_run_dir(out, config, resume, overwrite)
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full_error(out, "free space and rerun") from exc
        raise ConfigError(f"cannot write to {out} ({exc.strerror}); choose another --out") from exc
    writing = {"path": out}  # what is being written: named by a disk-full error
    try:
        return _train_into(out, config, dev, data, model, loss_fn, optimizer, scheduler, spe, total, save_at,
                           resuming, progress, stop_after, writing)
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        _clean_after_disk_full(out)
        raise disk_full_error(writing["path"], RESUME_HINT) from exc


def _train_into(out: Path, config: TrainConfig, dev: torch.device, data: Dataset, model: torch.nn.Module,
                loss_fn: Loss, optimizer: Any, scheduler: Any, spe: int, total: int, save_at: set[int],
                resuming: bool, progress: bool, stop_after: int | None, writing: dict[str, Path]) -> TrainResult:
    """The loop of :func:`train`, into a prepared ``out``; ``writing["path"]`` names each file as it is written."""
    n_train = len(data.train)

    ckpt_dir = out / "checkpoints"
    metrics_path = out / "metrics.jsonl"
    step = 0
    running = {"loss": 0.0, "correct": 0, "count": 0}
    resumed_from = None
    monitor_state: dict[str, Any] = {}
    if resuming:
        cp = _latest_resumable(RunDir(out))
        if cp is not None:
            state = load_state(cp.state_path)
            load_weights(model, load_state_dict(cp.path), source=f"checkpoint {cp.path}")
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["torch_rng"])
            if dev.type == "cuda" and "cuda_rng" in state:
                torch.cuda.set_rng_state(state["cuda_rng"], dev)
            step, running = int(state["step"]), dict(state["running"])
            monitor_state = dict(state.get("monitors", {}))
            resumed_from = step
        kept = _read_metrics(metrics_path, step if cp is not None else -1)
        writing["path"] = metrics_path
        atomic_write(metrics_path, lambda fh: fh.write("".join(line + "\n" for line in kept)))
    else:
        # config.json first: if it cannot be written, ``out`` holds nothing and a rerun starts afresh
        writing["path"] = out / "config.json"
        atomic_write_json(
            out / "config.json",
            {
                "config": config.to_dict(),
                "model_spec": {
                    "name": config.model,
                    "input_shape": list(data.input_shape),
                    "num_classes": data.num_classes,
                    "params": model_params_for(config, data),
                    "factory": None,
                },
                "dataset": {"name": data.name, "n_train": n_train, "n_test": len(data.test), "info": data.info},
                "steps_per_epoch": spe,
                "total_steps": total,
                "device": str(dev),
                "versions": versions(),
            },
        )
        writing["path"] = metrics_path
        metrics_path.touch()
        writing["path"] = ckpt_dir
        ckpt_dir.mkdir(parents=True, exist_ok=True)

    x_train, y_train = data.train.x.to(dev), data.train.y.to(dev)
    x_test, y_test = data.test.x.to(dev), data.test.y.to(dev)
    eval_losses = {"loss": loss_fn.per_sample, "ce": task_objective(build_loss("ce"), data).per_sample}
    task = (data.info.get("task") or {}).get("name", "classification")
    monitor_set = None
    if config.monitors:  # on the training set, with the training objective per sample (no flooding)
        from landscape.train.monitors import MonitorSet, monitors_from_config

        monitor_set = MonitorSet(monitors_from_config(config.monitors), loss_fn.per_sample, x_train, y_train)
        monitor_set.load_state_dict(monitor_state, dev)

    def run_monitors(step: int) -> dict[str, Any]:
        return monitor_set.run(step, model, optimizer) if monitor_set is not None else {}

    def log_monitors(step: int, values: dict[str, Any]) -> None:
        """A record of monitor values at a step that is not evaluated."""
        record = {"step": step, "epoch": step / spe, "lr": optimizer.param_groups[0]["lr"], **values}
        writing["path"] = metrics_path
        with open(metrics_path, "a") as fh:
            fh.write(json.dumps(record) + "\n")

    def log_metrics(step: int, monitored: dict[str, Any] | None = None) -> dict[str, Any]:
        record: dict[str, Any] = {"step": step, "epoch": step / spe, "lr": optimizer.param_groups[0]["lr"]}
        for split, (x, y) in (("train", (x_train, y_train)), ("test", (x_test, y_test))):
            values = evaluate(model, x, y, eval_losses, config.eval_batch_size, task=task)
            record.update({f"{split}_{k}": v for k, v in values.items()})
        if running["count"]:
            record["train_loss_running"] = running["loss"] / running["count"]
            record["train_acc_running"] = running["correct"] / running.get("counted", running["count"])
        record.update(monitored or {})
        record["time"] = time.time()
        if not all(math.isfinite(v) for k, v in record.items() if k.endswith("loss")):
            _diverged(step, "evaluation loss")
        writing["path"] = metrics_path
        with open(metrics_path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        return record

    def save_checkpoint(step: int) -> None:
        name = checkpoint_name(step)
        state: dict[str, Any] = {
            "step": step,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "running": dict(running),
        }
        if monitor_set is not None:
            state["monitors"] = monitor_set.state_dict()
        if dev.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(dev)
        writing["path"] = ckpt_dir / f"{name}.state.pt"
        save_state(writing["path"], state)
        # Weights last: a .safetensors file is the mark of a complete checkpoint.
        writing["path"] = ckpt_dir / f"{name}.safetensors"
        save_weights(writing["path"], model, {"step": step, "epoch": step / spe})

    def _diverged(step: int, what: str) -> None:
        writing["path"] = metrics_path
        with open(metrics_path, "a") as fh:
            fh.write(json.dumps({"step": step, "event": "diverged", "what": what}) + "\n")
        last = RunDir(out).checkpoints()
        keep = f"last good checkpoint: {last[-1].path}" if last else "no checkpoint was written"
        raise TrainingDiverged(
            f"{what} became NaN/inf at step {step} (epoch {step / spe:.2f}); {keep}; "
            "lower the learning rate or change the loss/optimizer settings"
        )

    stopped: dict[str, Any] | None = None
    threshold = config.stop_at_train_loss

    def stop_event(step: int, value: float) -> dict[str, Any]:
        """The record of the early stop at ``step``: appended once to metrics.jsonl."""
        event = {"step": step, "epoch": step / spe, "event": "stopped", "rule": "stop_at_train_loss",
                 "threshold": threshold, "value": value}
        writing["path"] = metrics_path
        with open(metrics_path, "a") as fh:
            fh.write(json.dumps(event) + "\n")
        return event

    def reached(step: int, record: dict[str, Any]) -> bool:
        return threshold is not None and step % spe == 0 and record.get("train_loss", math.inf) <= threshold

    record: dict[str, Any] = {}
    if step == 0 and resumed_from is None:
        record = log_metrics(0, run_monitors(0))
        save_checkpoint(0)
        if reached(0, record):
            stopped = stop_event(0, record["train_loss"])
    elif threshold is not None and step % spe == 0:
        # resumed at an epoch end: did the run stop here? (its event may have been lost with a kill)
        rows = RunDir(out).metrics()
        events = [r for r in rows if r.get("event") == "stopped" and r.get("step") == step]
        logged = [r for r in rows if "event" not in r and r.get("step") == step]
        if events:
            stopped = events[-1]
        else:
            if not logged:  # the record of this checkpoint was lost (a half-written line): evaluate again
                logged = [log_metrics(step)]
            if reached(step, logged[-1]):
                stopped = stop_event(step, logged[-1]["train_loss"])

    bar = _Progress(progress, total, step)
    start_step = step
    model.train()
    order = None
    try:
        while step < total and stopped is None:
            epoch, i = divmod(step, spe)
            if order is None or i == 0:
                order = epoch_order(config.seed, epoch, n_train).to(dev)
            idx = order[i * config.batch_size : (i + 1) * config.batch_size]
            xb, yb = x_train[idx], y_train[idx]
            first: dict[str, torch.Tensor] = {}

            def closure(xb: torch.Tensor = xb, yb: torch.Tensor = yb, first: dict = first,
                        idx: torch.Tensor = idx, epoch: int = epoch) -> torch.Tensor:
                optimizer.zero_grad(set_to_none=True)
                logits = model(xb)
                loss = loss_fn(logits, yb)
                objective = loss
                if hasattr(optimizer, "auxiliary_loss"):  # SAF / MESA: a term that enters the backward
                    objective = loss + optimizer.auxiliary_loss(model, xb, logits, idx, epoch)
                objective.backward()  # the returned (logged) loss stays the task loss alone
                if not first:
                    first["logits"] = logits.detach()
                return loss.detach()

            loss = optimizer.step(bn_first_pass_only(model, closure))
            scheduler.step()
            loss_value = float(loss)
            if not math.isfinite(loss_value):
                _diverged(step, "training loss")
            step += 1
            running["loss"] += loss_value * len(yb)
            correct, counted = correct_count(first["logits"], yb, task)
            running["correct"] += int(correct)
            running["counted"] = running.get("counted", running["count"]) + counted
            running["count"] += len(yb)

            epoch_end = step % spe == 0
            monitored = run_monitors(step)
            if epoch_end or step in save_at:
                record = log_metrics(step, monitored)
                bar.update(
                    step,
                    f"epoch {step / spe:.1f}  loss {record['train_loss']:.4f}  "
                    f"train acc {record['train_acc']:.3f}  test acc {record['test_acc']:.3f}",
                )
            elif monitored:
                log_monitors(step, monitored)
            if epoch_end:
                running = {"loss": 0.0, "correct": 0, "count": 0}
            stop = epoch_end and reached(step, record)
            if step in save_at or stop:
                save_checkpoint(step)
            if stop:
                stopped = stop_event(step, record["train_loss"])
            bar.update(step)
            if stop_after is not None and step - start_step >= stop_after:
                break
    finally:
        bar.close()
    if not record:  # nothing evaluated in this call (a finished run resumed): the last logged record
        logged = [r for r in RunDir(out).metrics() if "event" not in r]
        record = logged[-1] if logged else {}
        if step == total and record.get("step") != step:
            # the final record was lost (a half-written last line, dropped on reading): evaluate again
            model.eval()
            record = log_metrics(step)
    return TrainResult(run_dir=out, steps=step, final=record, resumed_from=resumed_from, stopped=stopped)
