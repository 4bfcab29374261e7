"""The training configuration: one frozen dataclass, round-tripped through JSON."""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from landscape.errors import ConfigError

if TYPE_CHECKING:
    from landscape.checkpoints import RunDir


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (the device does not; it is recorded beside it).

    ``*_params`` dicts hold the registered component's own keyword arguments, e.g.
    ``model_params={"width": 256}``, ``optimizer_params={"momentum": 0.9, "rho": 0.05}``.
    """

    # model
    model: str = "mlp"
    model_params: dict[str, Any] = field(default_factory=dict)
    # data
    dataset: str = "digits"
    dataset_params: dict[str, Any] = field(default_factory=dict)
    train_size: int | None = None
    label_noise: float = 0.0
    random_labels: bool = False
    imbalance_ratio: float = 1.0
    data_seed: int = 0
    # objective
    loss: str = "ce"
    loss_params: dict[str, Any] = field(default_factory=dict)
    z_loss: float = 0.0
    flooding: float | None = None
    # optimizer
    optimizer: str = "sgd"
    base_optimizer: str = "sgd"
    optimizer_params: dict[str, Any] = field(default_factory=dict)
    lr: float = 0.05
    weight_decay: float = 0.0
    decoupled_weight_decay: bool = False
    schedule: str = "constant"
    schedule_params: dict[str, Any] = field(default_factory=dict)
    warmup_epochs: float = 0.0
    # loop
    epochs: int = 30
    batch_size: int = 128
    eval_batch_size: int = 1024
    seed: int = 0
    checkpoints: str = "every:5"
    # stop at the first epoch end whose full-train-set ``train_loss`` (as logged) is ≤ this
    stop_at_train_loss: float | None = None
    # monitors (landscape.train.monitors): {name: {"every": K, "subset": N, <monitor settings>}}
    monitors: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, f"epochs must be ≥ 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch_size must be ≥ 1, got {self.batch_size}"),
            (self.eval_batch_size >= 1, f"eval_batch_size must be ≥ 1, got {self.eval_batch_size}"),
            (self.lr > 0 and math.isfinite(self.lr), f"lr must be a positive number, got {self.lr}"),
            (self.weight_decay >= 0, f"weight_decay must be ≥ 0, got {self.weight_decay}"),
            (self.warmup_epochs >= 0, f"warmup_epochs must be ≥ 0, got {self.warmup_epochs}"),
            (0.0 <= self.label_noise <= 1.0, f"label_noise must be in [0, 1], got {self.label_noise}"),
            (self.imbalance_ratio >= 1.0, f"imbalance_ratio must be ≥ 1, got {self.imbalance_ratio}"),
            (self.stop_at_train_loss is None or math.isfinite(self.stop_at_train_loss),
             f"stop_at_train_loss must be a finite number or null, got {self.stop_at_train_loss}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        parse_checkpoint_schedule(self.checkpoints)  # validates the syntax
        if self.monitors:
            from landscape.train.monitors import monitors_from_config

            monitors_from_config(self.monitors)  # validates names and settings

    # ---- JSON round trip -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a dict, rejecting unknown keys and values of the wrong type."""
        if not isinstance(data, dict):
            raise ConfigError(f"a training config must be a JSON object, got {type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ConfigError(
                f"unknown config key(s) {', '.join(unknown)}; valid keys: {', '.join(fields)}"
            )
        hints = typing.get_type_hints(cls)
        values = {k: _coerce(k, v, hints[k]) for k, v in data.items()}
        return cls(**values)

    @classmethod
    def from_json(cls, path: str | Path) -> TrainConfig:
        """Read a config file: either a bare config object or a run's ``config.json``."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"config file {path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
            ) from exc
        if isinstance(data, dict) and "config" in data and isinstance(data["config"], dict):
            data = data["config"]  # a RUN_DIR/config.json
        return cls.from_dict(data)

    @classmethod
    def from_run(cls, run: RunDir) -> TrainConfig:
        """The training config of a run directory (its ``config.json``'s ``config``); one that does
        not parse is the run's damage, one :class:`~landscape.errors.CheckpointError`."""
        try:
            return cls.from_dict(run.config)
        except ConfigError as exc:
            raise run.damaged(f"'config': {exc}") from None

    def replace(self, **changes: Any) -> TrainConfig:
        return self.from_dict({**self.to_dict(), **changes})

    def diff(self, other: TrainConfig) -> dict[str, tuple[Any, Any]]:
        """Keys whose values differ: ``{key: (self value, other value)}``."""
        a, b = self.to_dict(), other.to_dict()
        return {k: (a[k], b[k]) for k in a if a[k] != b[k]}


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against a simple type hint (int/float/bool/str/dict, optionally ``| None``)."""
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None:
        if type(None) in allowed:
            return None
        raise ConfigError(f"config key {key!r} must not be null")
    for t in allowed:
        origin = typing.get_origin(t) or t
        if origin is bool and isinstance(value, bool):
            return value
        if origin is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if origin is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if origin is str and isinstance(value, str):
            return value
        if origin is dict and isinstance(value, dict):
            return dict(value)
    names = " or ".join(getattr(typing.get_origin(t) or t, "__name__", str(t)) for t in allowed)
    raise ConfigError(f"config key {key!r} must be {names}, got {value!r}")


# ---- checkpoint schedules -----------------------------------------------------------------


def parse_checkpoint_schedule(spec: str) -> tuple[str, list[float]]:
    """Parse ``every:K`` (epochs), ``epochs:1,2,5``, ``steps:100,500``, ``log:N`` or ``none``."""
    kind, _, arg = spec.partition(":")
    kind = kind.strip().lower()
    try:
        if kind == "none" and not arg:
            return kind, []
        if kind in ("every", "log") and arg:
            n = int(arg)
            if n >= 1:
                return kind, [float(n)]
        if kind in ("epochs", "steps") and arg:
            values = [float(v) for v in arg.split(",") if v.strip()]
            if values and all(v >= 0 for v in values):
                return kind, values
    except ValueError:
        pass
    raise ConfigError(
        f"bad checkpoint schedule {spec!r}; use every:K (every K epochs), epochs:1,2,5, "
        "steps:100,500, log:N (N log-spaced steps) or none"
    )


def checkpoint_steps(spec: str, steps_per_epoch: int, total_steps: int) -> list[int]:
    """Global optimizer steps after which a checkpoint is written; always includes 0 and the last."""
    kind, values = parse_checkpoint_schedule(spec)
    steps = {0, total_steps}
    if kind == "every":
        k = int(values[0])
        steps |= {e * steps_per_epoch for e in range(k, total_steps // steps_per_epoch + 1, k)}
    elif kind == "epochs":
        steps |= {round(e * steps_per_epoch) for e in values}
    elif kind == "steps":
        steps |= {int(s) for s in values}
    elif kind == "log":
        n = int(values[0])
        steps |= {int(round(s)) for s in _logspace(1, total_steps, n)}
    return sorted(s for s in steps if 0 <= s <= total_steps)


def _logspace(lo: float, hi: float, n: int) -> list[float]:
    if n == 1:
        return [hi]
    a, b = math.log(lo), math.log(hi)
    return [math.exp(a + (b - a) * i / (n - 1)) for i in range(n)]
