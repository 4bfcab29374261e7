"""Which checkpoint of each run to compare across runs: one rule for all of them.

A rule is ``last`` (and anything :func:`landscape.targets.select_checkpoints` accepts that names
exactly one checkpoint: ``first``, a step, ``step:S``, a name), ``step=S``, ``epoch=K`` (the
checkpoint at step ``K · steps_per_epoch`` of the run's ``config.json``), or
``stop_at_<metric>=X``: the first checkpoint (by step) whose record in ``metrics.jsonl`` has
``<metric> ≤ X`` — ``stop_at_train_loss=0.01`` is Jiang et al.'s equal-training-loss protocol
(the runs compared where each first reached the same loss). A run that never reaches X has no
checkpoint under that rule: :class:`NotReached` says so, with the lowest value logged at a
checkpoint.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from landscape.checkpoints import RunDir
from landscape.errors import ConfigError
from landscape.targets import Target, resolve_targets

RULE_HELP = ("last, first, step=S, epoch=K, stop_at_train_loss=X (the first checkpoint whose logged "
             "train loss is ≤ X; any logged metric: stop_at_train_ce=X), or a step/name")

_STOP = re.compile(r"^stop_at_(\w+)=(.+)$")


class NotReached(ConfigError):
    """A run none of whose checkpoints satisfies a ``stop_at_…`` rule; ``run`` and ``reason`` say which and why."""

    def __init__(self, run: str, reason: str) -> None:
        super().__init__(f"run {run}: {reason}")
        self.run, self.reason = run, reason

    def __reduce__(self):
        return (type(self), (self.run, self.reason))


def parse_rule(rule: str) -> tuple[str, str | float]:
    """``("select", selection)``, ``("step", S)``, ``("epoch", K)`` or ``("stop", (metric, X))``."""
    text = str(rule).strip()
    m = _STOP.match(text)
    if m:
        try:
            value = float(m.group(2))
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise ConfigError(f"bad checkpoint rule {rule!r}: {m.group(2)!r} is not a number; use {RULE_HELP}")
        return "stop", (m.group(1), value)  # type: ignore[return-value]
    kind, sep, number = text.partition("=")
    if sep:
        if kind not in ("step", "epoch"):
            raise ConfigError(f"bad checkpoint rule {rule!r}; use {RULE_HELP}")
        try:
            return kind, float(number) if kind == "epoch" else int(number)
        except ValueError:
            raise ConfigError(f"bad checkpoint rule {rule!r}: {kind}= needs a number; use {RULE_HELP}") from None
    if not text:
        raise ConfigError(f"empty checkpoint rule; use {RULE_HELP}")
    return "select", text


def select_run_checkpoint(run_dir: str | Path, rule: str = "last") -> Target:
    """The one checkpoint of ``run_dir`` (a RUN_DIR) that ``rule`` names (module docstring).

    Raises :class:`NotReached` for a ``stop_at_…`` rule the run never meets, and
    :class:`ConfigError` for a rule that names no checkpoint or several.
    """
    run = RunDir(run_dir)
    kind, arg = parse_rule(rule)
    if kind == "select":
        targets = resolve_targets(run_dir, str(arg))
        if len(targets) != 1:
            raise ConfigError(f"checkpoint rule {rule!r} names {len(targets)} checkpoints of {run_dir}; "
                              "correlating needs one per run")
        return targets[0]
    targets = resolve_targets(run_dir, "all")
    if kind in ("step", "epoch"):
        if kind == "epoch":
            spe = run.meta.get("steps_per_epoch")
            if not isinstance(spe, int) or spe < 1:
                raise ConfigError(f"{run_dir}/config.json records no steps_per_epoch; select by step=S instead")
            step = round(float(arg) * spe)  # type: ignore[arg-type]
        else:
            step = int(arg)  # type: ignore[arg-type]
        try:
            return resolve_targets(run_dir, f"step:{step}")[0]
        except ConfigError:
            steps = ", ".join(str(t.step) for t in targets)
            raise ConfigError(f"run {run_dir} has no checkpoint at {kind} {arg} (step {step}); "
                              f"checkpoints at steps {steps}") from None
    metric, threshold = arg  # type: ignore[misc]
    logged: dict[int, float] = {}
    for r in run.metrics():
        value = r.get(metric)
        if "event" not in r and isinstance(r.get("step"), int) and isinstance(value, int | float) \
                and not isinstance(value, bool):
            logged[r["step"]] = float(value)  # the last record of a step wins (as Target.metrics)
    at_checkpoints = [(t, logged[t.step]) for t in targets if t.step in logged]
    if not at_checkpoints:
        raise NotReached(str(run_dir), f"no checkpoint has a logged {metric!r} in metrics.jsonl")
    for target, value in at_checkpoints:
        if value <= threshold:
            return target
    lowest = min(v for _, v in at_checkpoints)
    raise NotReached(str(run_dir), f"never reached {metric} ≤ {threshold:g} at a checkpoint "
                                   f"(lowest {lowest:.4g})")
