"""One call of :func:`~landscape.train.trainer.train` into a prepared run directory: the run's
state and the named steps of its loop — start or restore, evaluate and log, checkpoint, stop
early, and the optimizer step over the seeded epoch order (:func:`epoch_order`)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from landscape.checkpoints import (
    ModelSpec,
    RunDir,
    load_state,
    load_state_dict,
    load_weights,
    save_state,
    save_weights,
)
from landscape.errors import TrainingDiverged
from landscape.evaluate import evaluate
from landscape.tasks import correct_count
from landscape.train.components import Components, model_params_for
from landscape.train.config import TrainConfig
from landscape.train.losses import build_loss, task_objective
from landscape.train.monitors import MonitorSet, monitors_from_config
from landscape.train.optim import bn_first_pass_only
from landscape.train.progress import _Progress
from landscape.train.run_setup import _latest_resumable


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    steps: int
    final: dict[str, Any]
    resumed_from: int | None = None
    stopped: dict[str, Any] | None = None  # the "stopped" event when stop_at_train_loss ended the run


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)



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
