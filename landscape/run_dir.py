"""The RUN_DIR: ``config.json``, ``checkpoints/step_000500.safetensors``, ``metrics.jsonl``.

:class:`RunDir` is the only reader and writer of these files; :func:`load_model` rebuilds a
model from a RUN_DIR, one of its checkpoints, or a foreign file with a model spec.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from landscape.checkpoint_files import Checkpoint, select_checkpoints
from landscape.errors import CheckpointError, ConfigError
from landscape.model_spec import ModelSpec
from landscape.utils import atomic_write, atomic_write_json, read_jsonl, versions
from landscape.weights import hf_weight_file, restore_model

CHECKPOINT_DIR = "checkpoints"
_STEP_RE = re.compile(r"^step_(\d+)\.safetensors$")


def checkpoint_name(step: int) -> str:
    return f"step_{step:06d}"


_DAMAGED = "the run directory is damaged: restore config.json (or retrain)"


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return {dict: "object", list: "array", str: "string", type(None): "null"}.get(type(value), type(value).__name__)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_model_spec(d: Mapping[str, Any], file: Path) -> None:
    """A ``model_spec`` read from ``file``: the types :meth:`ModelSpec.from_dict` expects, and the
    keys a registered model needs; anything else is one :class:`CheckpointError` naming the key."""

    def bad(key: str, want: str) -> CheckpointError:
        return CheckpointError(
            f"{file}: model_spec.{key} must be {want}, got {json.dumps(d[key])[:60]}; {_DAMAGED}"
        )

    def positive_int(v: Any) -> bool:
        return _is_number(v) and isinstance(v, int) and v >= 1

    for key in ("name", "factory"):
        if d.get(key) is not None and not (isinstance(d[key], str) and d[key].strip()):
            raise bad(key, "a non-empty string or null")
    shape = d.get("input_shape")
    if shape is not None and not (isinstance(shape, list) and shape and all(positive_int(v) for v in shape)):
        raise bad("input_shape", "a list of positive integers or null")
    if d.get("num_classes") is not None and not positive_int(d["num_classes"]):
        raise bad("num_classes", "a positive integer or null")
    if d.get("params") is not None and not isinstance(d["params"], dict):
        raise bad("params", "an object or null")
    if d.get("factory") is None:
        missing = [k for k in ("name", "input_shape", "num_classes") if d.get(k) is None]
        if missing:
            raise CheckpointError(
                f"{file}: model_spec has no {', '.join(missing)} (and no factory); {_DAMAGED}"
            )


class RunDir:
    """A training run directory: ``config.json``, ``checkpoints/``, ``metrics.jsonl``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not (self.path / "config.json").is_file():
            raise CheckpointError(
                f"{self.path} is not a landscape run directory (no config.json); "
                "pass a RUN_DIR written by `landscape train`, or a checkpoint file with a model spec"
            )
        file = self.path / "config.json"
        try:
            meta = json.loads(file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{file} is not valid JSON ({exc.msg}); the run directory is damaged") from exc
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0]
            raise CheckpointError(f"cannot read {file} ({reason}); the run directory is damaged") from exc
        if not isinstance(meta, dict):
            raise CheckpointError(f"{file} holds a JSON {_json_type(meta)}, not an object; {_DAMAGED}")
        for key in ("config", "model_spec"):
            if key in meta and not isinstance(meta[key], dict):
                raise CheckpointError(f"{file}: {key!r} must be an object, got a {_json_type(meta[key])}; {_DAMAGED}")
        if "model_spec" in meta:
            _check_model_spec(meta["model_spec"], file)
        self.meta: dict[str, Any] = meta

    @classmethod
    def create(cls, path: str | Path, *, config: Mapping[str, Any], model_spec: ModelSpec,
               dataset: Mapping[str, Any], steps_per_epoch: int, total_steps: int,
               device: str | torch.device) -> RunDir:
        """Start a run directory at ``path`` (which must exist): write its ``config.json`` atomically.

        The file is the schema this class reads: ``config`` (the training config as a JSON object),
        ``model_spec`` (:meth:`ModelSpec.to_dict`), ``dataset`` (name, sizes, info), the run's
        ``steps_per_epoch`` and ``total_steps``, the ``device`` it trained on and package ``versions``.
        """
        meta = {
            "config": dict(config),
            "model_spec": model_spec.to_dict(),
            "dataset": dict(dataset),
            "steps_per_epoch": steps_per_epoch,
            "total_steps": total_steps,
            "device": str(device),
            "versions": versions(),
        }
        atomic_write_json(Path(path) / "config.json", meta)
        run = cls.__new__(cls)  # the run as just written (not read back: nothing to check)
        run.path, run.meta = Path(path), meta
        return run

    @property
    def config_file(self) -> Path:
        return self.path / "config.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    def damaged(self, what: str) -> CheckpointError:
        """The error for a damaged ``config.json``: ``<file>: <what>; restore config.json (or retrain)``."""
        return CheckpointError(f"{self.config_file}: {what}; {_DAMAGED}")

    @property
    def config(self) -> dict[str, Any]:
        """The training config as ``config.json`` records it (a JSON object, unchecked beyond that;
        :func:`landscape.train.config.run_config` reads it as a ``TrainConfig``)."""
        if "config" not in self.meta:
            raise CheckpointError(f"{self.config_file} has no 'config' (the training config); {_DAMAGED}")
        return dict(self.meta["config"])

    @property
    def model_spec(self) -> ModelSpec:
        if "model_spec" not in self.meta:
            raise CheckpointError(f"{self.path / 'config.json'} has no 'model_spec'; {_DAMAGED}")
        return ModelSpec.from_dict(self.meta["model_spec"])

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / CHECKPOINT_DIR

    def checkpoints(self) -> list[Checkpoint]:
        """The run's checkpoints, sorted by step."""
        found = []
        if self.checkpoint_dir.is_dir():
            for p in self.checkpoint_dir.iterdir():
                m = _STEP_RE.match(p.name)
                if m:
                    found.append(Checkpoint(p, int(m.group(1))))
        return sorted(found, key=lambda c: c.step)

    def checkpoint(self, which: str | int = "last") -> Checkpoint:
        """The one checkpoint ``which`` names (:func:`select_checkpoints`: ``last``, ``first``, a
        step, ``step:S``, a name, …)."""
        cps = self.checkpoints()
        if not cps:
            raise CheckpointError(f"run {self.path} has no checkpoints yet")
        try:
            chosen = select_checkpoints(cps, str(which))
        except ConfigError:
            chosen = []
        if len(chosen) == 1:
            return chosen[0]
        steps = ", ".join(str(c.step) for c in cps)
        if not chosen:
            raise CheckpointError(f"run {self.path} has no checkpoint {which!r}; available steps: {steps}")
        raise CheckpointError(f"{which!r} names {len(chosen)} checkpoints of run {self.path}; name one "
                              f"(available steps: {steps})")

    def metrics(self) -> list[dict[str, Any]]:
        """The records of ``metrics.jsonl`` in order; a half-written last line (a training run
        killed mid-write) is skipped, any other damage is one :class:`CheckpointError`."""
        path = self.path / "metrics.jsonl"
        if not path.is_file():
            return []
        records = []
        for number, (_, record) in enumerate(read_jsonl(path), start=1):
            step = record.get("step") if isinstance(record, dict) else None
            if not isinstance(record, dict) or not (step is None or _is_number(step)):
                what = "a step that is not a number" if isinstance(record, dict) else f"a JSON {_json_type(record)}"
                raise CheckpointError(f"{path}: record {number} holds {what}, not a metrics object; "
                                      "the file is damaged: delete that line (or the file) and rerun")
            records.append(record)
        return records

    def checkpoint_at(self, step: int) -> Checkpoint:
        """Where the checkpoint of ``step`` is written (``checkpoints/step_000500.safetensors``, its
        trainer state beside it in :attr:`Checkpoint.state_path`); it need not exist yet."""
        return Checkpoint(self.checkpoint_dir / f"{checkpoint_name(step)}.safetensors", step)

    def append_metrics(self, record: Mapping[str, Any]) -> None:
        """Append one record (a line of JSON) to ``metrics.jsonl``."""
        with open(self.metrics_path, "a") as fh:
            fh.write(json.dumps(record) + "\n")

    def keep_metrics(self, up_to_step: int | float) -> None:
        """Rewrite ``metrics.jsonl`` (atomically) with only its records of ``step ≤ up_to_step``, line
        for line; a half-written last line is dropped, a damaged line elsewhere is an error
        (:func:`landscape.utils.read_jsonl`). No file: an empty one."""
        keep = []
        if self.metrics_path.is_file():
            for line, record in read_jsonl(self.metrics_path):
                step = record.get("step", math.inf) if isinstance(record, dict) else None
                if _is_number(step) and step <= up_to_step:
                    keep.append(line)
        atomic_write(self.metrics_path, lambda fh: fh.write("".join(line + "\n" for line in keep)))

    def load_model(self, which: str | int = "last", device: str | torch.device = "cpu") -> nn.Module:
        """The model of checkpoint ``which`` (:meth:`checkpoint`) in eval mode on ``device``."""
        path = self.checkpoint(which).path
        return restore_model(self.model_spec, path, device)[0]


def load_model(
    checkpoint: str | Path,
    spec: ModelSpec | None = None,
    device: str | torch.device = "cpu",
    *,
    weights: str = "auto",
    strip_prefix: str | None = None,
) -> nn.Module:
    """Rebuild a model (in eval mode) and load its weights from a RUN_DIR, a RUN_DIR checkpoint, or a
    foreign file (:func:`restore_model`).

    For a file outside a RUN_DIR, ``spec`` says how to build the model; ``weights`` (ema | raw |
    auto) and ``strip_prefix`` are as in :func:`load_state_dict` and :func:`fit_state_dict`.
    """
    path = Path(checkpoint)
    if path.is_dir() and spec is not None and hf_weight_file(path) is not None:
        path = hf_weight_file(path)  # a Hugging Face checkpoint folder
    elif path.is_dir():
        return RunDir(path).load_model("last", device)
    if spec is None:
        run = path.parent.parent
        if path.parent.name == CHECKPOINT_DIR and (run / "config.json").is_file():
            spec = RunDir(run).model_spec
        else:
            raise ConfigError(
                f"{path} is not inside a run directory; give a model spec "
                "(--model NAME --num-classes C --input-shape C,H,W, or --model-factory pkg.module:fn)"
            )
    return restore_model(spec, path, device, weights=weights, strip_prefix=strip_prefix)[0]
