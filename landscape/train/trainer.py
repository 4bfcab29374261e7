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

import math
import re
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from landscape.checkpoints import (
    Checkpoint,
    ModelSpec,
    RunDir,
    load_state,
    load_state_dict,
    load_weights,
    save_state,
    save_weights,
)
from landscape.datasets import Dataset
from landscape.errors import CheckpointError, ConfigError, TrainingDiverged
from landscape.evaluate import evaluate
from landscape.models import build_model, model_params
from landscape.run_data import load_run_data
from landscape.tasks import correct_count
from landscape.train.config import TrainConfig, checkpoint_steps
from landscape.train.losses import Loss, SequenceLoss, build_loss, task_objective
from landscape.train.monitors import MonitorSet, check_monitors, monitors_from_config, parse_monitor
from landscape.train.optim import bn_first_pass_only, build_optimizer
from landscape.train.schedules import build_schedule
from landscape.utils import disk_full_error, is_disk_full, resolve_device, seed_everything

RESUME_HINT = "free space and rerun with --resume"


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    steps: int
    final: dict[str, Any]
    resumed_from: int | None = None
    stopped: dict[str, Any] | None = None  # the "stopped" event when stop_at_train_loss ended the run


def load_data(config: TrainConfig | Mapping[str, Any], meta: dict[str, Any] | None = None) -> Dataset:
    """The data ``config`` (a TrainConfig, or a run's config dict: ``RunDir(...).config``) names, as
    :func:`landscape.run_data.load_run_data` rebuilds it; ``meta`` (a run's ``config.json``) keeps an
    old run on the data it was trained on."""
    if not isinstance(config, TrainConfig):
        config = TrainConfig.from_dict(dict(config))
    return load_run_data(config.to_dict(), meta)


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
        stored = TrainConfig.from_run(RunDir(out))
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


@dataclass(frozen=True)
class Components:
    """What a run is made of, built (and checked) before the output directory is touched."""

    data: Dataset
    model: torch.nn.Module
    loss_fn: Loss | SequenceLoss
    optimizer: Any
    scheduler: Any
    steps_per_epoch: int
    total_steps: int
    save_at: frozenset[int]


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
    config = with_monitors(config, monitors)
    dev = resolve_device(device)
    parts = build_components(config, dev, _recorded_meta(out) if resume else None)
    # Only now, with every component built and validated, touch the output directory.
    resuming = open_run_dir(out, config, resume, overwrite)
    writing = {"path": out}  # what is being written: named by a disk-full error
    try:
        return _Run(out, config, dev, parts, writing).run(resuming, progress, stop_after)
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        _clean_after_disk_full(out)
        raise disk_full_error(writing["path"], RESUME_HINT) from exc


def with_monitors(config: TrainConfig, monitors: list[Any] | None) -> TrainConfig:
    """``config`` with ``monitors`` (names, ``"name:every=K"`` strings or configs) added to its own."""
    if not monitors:
        return config
    added = {c.name: c.to_dict() for c in map(parse_monitor, monitors)}
    return config.replace(monitors={**config.monitors, **added})


def _recorded_meta(out: Path) -> dict[str, Any] | None:
    """The ``config.json`` of the run to resume in ``out``; None when there is none or it cannot be
    read (:func:`open_run_dir` reports a damaged one)."""
    try:
        return RunDir(out).meta
    except CheckpointError:
        return None


def build_components(config: TrainConfig, dev: torch.device, meta: dict[str, Any] | None = None) -> Components:
    """Data, model (seeded by ``config.seed``), objective, optimizer, schedule and checkpoint steps;
    ``meta`` (the resumed run's config.json) keeps the run on the data it was trained on
    (:func:`load_data`). Monitors are checked against the model here, before anything is written."""
    data = load_data(config, meta)
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
    spe = steps_per_epoch(len(data.train), config.batch_size)
    total = config.epochs * spe
    scheduler = build_schedule(
        config.schedule,
        optimizer,
        total_steps=total,
        steps_per_epoch=spe,
        warmup_steps=round(config.warmup_epochs * spe),
        **config.schedule_params,
    )
    save_at = frozenset(checkpoint_steps(config.checkpoints, spe, total))
    if config.monitors:  # a monitor that cannot measure this model says so before anything is written
        check_monitors(monitors_from_config(config.monitors), model)
    return Components(data, model, loss_fn, optimizer, scheduler, spe, total, save_at)


def open_run_dir(out: Path, config: TrainConfig, resume: bool, overwrite: bool) -> bool:
    """Make ``out`` ready to be written (:func:`_prepare_run_dir`, then create it and check that a
    file can be made there); True when there is a run to resume."""
    try:
        resuming = _prepare_run_dir(out, config, resume, overwrite)
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full_error(out, "free space and rerun") from exc
        raise ConfigError(f"cannot write to {out} ({exc.strerror}); choose another --out") from exc
    return resuming


class _Run:
    """One call of :func:`train` into a prepared ``out``: the run's state and the named steps of
    its loop. ``writing["path"]`` names each file as it is written (for a disk-full error)."""

    def __init__(self, out: Path, config: TrainConfig, dev: torch.device, parts: Components,
                 writing: dict[str, Path]) -> None:
        self.out, self.config, self.dev, self.writing = out, config, dev, writing
        self.data, self.model, self.loss_fn = parts.data, parts.model, parts.loss_fn
        self.optimizer, self.scheduler = parts.optimizer, parts.scheduler
        self.spe, self.total, self.save_at = parts.steps_per_epoch, parts.total_steps, parts.save_at
        self.n_train = len(parts.data.train)
        self.step = 0
        self.running: dict[str, Any] = {"loss": 0.0, "correct": 0, "count": 0}
        self.resumed_from: int | None = None
        self.stopped: dict[str, Any] | None = None
        self.threshold = config.stop_at_train_loss
        self.monitor_set = None
        self.run_dir: RunDir

    # ---- restore or start --------------------------------------------------------------------

    def restore(self) -> dict[str, Any]:
        """Continue the run in ``out`` from its newest resumable checkpoint (if any): weights,
        optimizer, schedule, RNG, running sums; metrics.jsonl is cut back to that step. Returns
        the monitors' saved state."""
        self.run_dir = RunDir(self.out)
        cp = _latest_resumable(self.run_dir)
        monitor_state: dict[str, Any] = {}
        if cp is not None:
            state = load_state(cp.state_path)
            load_weights(self.model, load_state_dict(cp.path), source=f"checkpoint {cp.path}")
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["torch_rng"])
            if self.dev.type == "cuda" and "cuda_rng" in state:
                torch.cuda.set_rng_state(state["cuda_rng"], self.dev)
            self.step, self.running = int(state["step"]), dict(state["running"])
            monitor_state = dict(state.get("monitors", {}))
            self.resumed_from = self.step
        self.writing["path"] = self.run_dir.metrics_path
        self.run_dir.keep_metrics(self.step if cp is not None else -1)
        return monitor_state

    def start(self) -> None:
        """A new run: config.json first (if it cannot be written, ``out`` holds nothing and a rerun
        starts afresh), then an empty metrics.jsonl and checkpoints/."""
        config, data = self.config, self.data
        self.writing["path"] = self.out / "config.json"
        self.run_dir = RunDir.create(
            self.out,
            config=config.to_dict(),
            model_spec=ModelSpec(name=config.model, input_shape=tuple(data.input_shape),
                                 num_classes=data.num_classes, params=model_params_for(config, data)),
            dataset={"name": data.name, "n_train": self.n_train, "n_test": len(data.test), "info": data.info},
            steps_per_epoch=self.spe,
            total_steps=self.total,
            device=self.dev,
        )
        self.writing["path"] = self.run_dir.metrics_path
        self.run_dir.metrics_path.touch()
        self.writing["path"] = self.run_dir.checkpoint_dir
        self.run_dir.checkpoint_dir.mkdir(parents=True, exist_ok=True)

    def prepare(self, monitor_state: dict[str, Any]) -> None:
        """The data on the device, the evaluation losses, and the monitors (with their saved state)."""
        data, dev = self.data, self.dev
        self.x_train, self.y_train = data.train.x.to(dev), data.train.y.to(dev)
        self.x_test, self.y_test = data.test.x.to(dev), data.test.y.to(dev)
        self.eval_losses = {"loss": self.loss_fn.per_sample,
                            "ce": task_objective(build_loss("ce"), data).per_sample}
        self.task = (data.info.get("task") or {}).get("name", "classification")
        if self.config.monitors:  # on the training set, with the training objective per sample (no flooding)
            self.monitor_set = MonitorSet(monitors_from_config(self.config.monitors), self.loss_fn.per_sample,
                                          self.x_train, self.y_train)
            self.monitor_set.load_state_dict(monitor_state, dev)

    # ---- evaluate and log ----------------------------------------------------------------------

    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def append(self, record: dict[str, Any]) -> None:
        self.writing["path"] = self.run_dir.metrics_path
        self.run_dir.append_metrics(record)

    def run_monitors(self, step: int) -> dict[str, Any]:
        return self.monitor_set.run(step, self.model, self.optimizer) if self.monitor_set is not None else {}

    def log_monitors(self, step: int, values: dict[str, Any]) -> None:
        """A record of monitor values at a step that is not evaluated."""
        self.append({"step": step, "epoch": step / self.spe, "lr": self.lr(), **values})

    def log_metrics(self, step: int, monitored: dict[str, Any] | None = None) -> dict[str, Any]:
        """Evaluate on the full train and test sets, append the record (with the running means and
        ``monitored`` values) and return it; a NaN/inf loss ends the run (:meth:`diverged`)."""
        record: dict[str, Any] = {"step": step, "epoch": step / self.spe, "lr": self.lr()}
        for split, (x, y) in (("train", (self.x_train, self.y_train)), ("test", (self.x_test, self.y_test))):
            values = evaluate(self.model, x, y, self.eval_losses, self.config.eval_batch_size, task=self.task)
            record.update({f"{split}_{k}": v for k, v in values.items()})
        running = self.running
        if running["count"]:
            record["train_loss_running"] = running["loss"] / running["count"]
            record["train_acc_running"] = running["correct"] / running.get("counted", running["count"])
        record.update(monitored or {})
        record["time"] = time.time()
        if not all(math.isfinite(v) for k, v in record.items() if k.endswith("loss")):
            self.diverged(step, "evaluation loss")
        self.append(record)
        return record

    def diverged(self, step: int, what: str) -> None:
        self.append({"step": step, "event": "diverged", "what": what})
        last = self.run_dir.checkpoints()
        keep = f"last good checkpoint: {last[-1].path}" if last else "no checkpoint was written"
        raise TrainingDiverged(
            f"{what} became NaN/inf at step {step} (epoch {step / self.spe:.2f}); {keep}; "
            "lower the learning rate or change the loss/optimizer settings"
        )

    # ---- checkpoint and stop -------------------------------------------------------------------

    def save_checkpoint(self, step: int) -> None:
        """Trainer state first, weights last: a ``.safetensors`` file marks a complete checkpoint."""
        cp = self.run_dir.checkpoint_at(step)
        state: dict[str, Any] = {
            "step": step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "running": dict(self.running),
        }
        if self.monitor_set is not None:
            state["monitors"] = self.monitor_set.state_dict()
        if self.dev.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.dev)
        self.writing["path"] = cp.state_path
        save_state(cp.state_path, state)
        self.writing["path"] = cp.path
        save_weights(cp.path, self.model, {"step": step, "epoch": step / self.spe})

    def stop_event(self, step: int, value: float) -> dict[str, Any]:
        """The record of the early stop at ``step``: appended once to metrics.jsonl."""
        event = {"step": step, "epoch": step / self.spe, "event": "stopped", "rule": "stop_at_train_loss",
                 "threshold": self.threshold, "value": value}
        self.append(event)
        return event

    def reached(self, step: int, record: dict[str, Any]) -> bool:
        return (self.threshold is not None and step % self.spe == 0
                and record.get("train_loss", math.inf) <= self.threshold)

    def begin(self) -> dict[str, Any]:
        """Step 0 of a new run (evaluated, checkpointed, maybe already stopped), or, resumed at an
        epoch end with an early-stop rule, whether the run stopped there. Returns the record made."""
        step = self.step
        record: dict[str, Any] = {}
        if step == 0 and self.resumed_from is None:
            record = self.log_metrics(0, self.run_monitors(0))
            self.save_checkpoint(0)
            if self.reached(0, record):
                self.stopped = self.stop_event(0, record["train_loss"])
        elif self.threshold is not None and step % self.spe == 0:
            # resumed at an epoch end: did the run stop here? (its event may have been lost with a kill)
            rows = self.run_dir.metrics()
            events = [r for r in rows if r.get("event") == "stopped" and r.get("step") == step]
            logged = [r for r in rows if "event" not in r and r.get("step") == step]
            if events:
                self.stopped = events[-1]
            else:
                if not logged:  # the record of this checkpoint was lost (a half-written line): evaluate again
                    logged = [self.log_metrics(step)]
                if self.reached(step, logged[-1]):
                    self.stopped = self.stop_event(step, logged[-1]["train_loss"])
        return record

    # ---- the step loop ----------------------------------------------------------------------------

    def optimizer_step(self, xb: torch.Tensor, yb: torch.Tensor, idx: torch.Tensor, epoch: int) -> None:
        """One optimizer step on the batch; the running sums take its (task) loss and accuracy."""
        model, optimizer, loss_fn = self.model, self.optimizer, self.loss_fn
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
        self.scheduler.step()
        loss_value = float(loss)
        if not math.isfinite(loss_value):
            self.diverged(self.step, "training loss")
        self.step += 1
        running = self.running
        running["loss"] += loss_value * len(yb)
        correct, counted = correct_count(first["logits"], yb, self.task)
        running["correct"] += int(correct)
        running["counted"] = running.get("counted", running["count"]) + counted
        running["count"] += len(yb)

    def loop(self, record: dict[str, Any], bar: _Progress, stop_after: int | None) -> dict[str, Any]:
        """Optimizer steps until the run ends, stops early, or ``stop_after`` steps were taken;
        evaluations, monitor records and checkpoints where they are due. Returns the last record."""
        config, spe = self.config, self.spe
        start_step = self.step
        self.model.train()
        order = None
        while self.step < self.total and self.stopped is None:
            epoch, i = divmod(self.step, spe)
            if order is None or i == 0:
                order = epoch_order(config.seed, epoch, self.n_train).to(self.dev)
            idx = order[i * config.batch_size : (i + 1) * config.batch_size]
            self.optimizer_step(self.x_train[idx], self.y_train[idx], idx, epoch)
            step = self.step

            epoch_end = step % spe == 0
            monitored = self.run_monitors(step)
            if epoch_end or step in self.save_at:
                record = self.log_metrics(step, monitored)
                bar.update(
                    step,
                    f"epoch {step / spe:.1f}  loss {record['train_loss']:.4f}  "
                    f"train acc {record['train_acc']:.3f}  test acc {record['test_acc']:.3f}",
                )
            elif monitored:
                self.log_monitors(step, monitored)
            if epoch_end:
                self.running = {"loss": 0.0, "correct": 0, "count": 0}
            stop = epoch_end and self.reached(step, record)
            if step in self.save_at or stop:
                self.save_checkpoint(step)
            if stop:
                self.stopped = self.stop_event(step, record["train_loss"])
            bar.update(step)
            if stop_after is not None and step - start_step >= stop_after:
                break
        return record

    def final_record(self, record: dict[str, Any]) -> dict[str, Any]:
        """``record``, or when nothing was evaluated in this call (a finished run resumed) the last
        logged one, evaluated again if the final record was lost (a half-written last line)."""
        if record:
            return record
        logged = [r for r in self.run_dir.metrics() if "event" not in r]
        record = logged[-1] if logged else {}
        if self.step == self.total and record.get("step") != self.step:
            self.model.eval()
            record = self.log_metrics(self.step)
        return record

    def run(self, resuming: bool, progress: bool, stop_after: int | None) -> TrainResult:
        monitor_state: dict[str, Any] = {}
        if resuming:
            monitor_state = self.restore()
        else:
            self.start()
        self.prepare(monitor_state)
        record = self.begin()
        bar = _Progress(progress, self.total, self.step)
        try:
            record = self.loop(record, bar, stop_after)
        finally:
            bar.close()
        record = self.final_record(record)
        return TrainResult(run_dir=self.out, steps=self.step, final=record, resumed_from=self.resumed_from,
                           stopped=self.stopped)
