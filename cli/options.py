"""The options several commands share, declared once, and how their text is read.

- what to probe: :data:`TARGET`, :data:`CHECKPOINTS`, :data:`WEIGHTS`, :data:`STRIP_PREFIX`,
  :data:`OUTSIDE_LINKS`; where: :data:`OUT`, :data:`DEVICE`;
- a checkpoint from outside a RUN_DIR: the model (:data:`MODEL`, :data:`MODEL_PARAM`,
  :data:`NUM_CLASSES`, :data:`INPUT_SHAPE`, :data:`FACTORY`) and the data and loss
  (:data:`DATASET`, :data:`DATASET_PARAM`, :data:`DATA_FACTORY`, :data:`TASK`, :data:`TARGET_KEY`,
  :data:`LOSS`), turned into specs by :func:`foreign_specs`;
- what happens around the work: :data:`FORCE`, :data:`PLOTS`, :data:`PROGRESS`;
- text → values: :func:`parse_key_values` (``KEY=VALUE`` flags, JSON values), :func:`parse_pairs`
  (their text), :func:`parse_setting` (a probe setting of a tuple or union type).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import UnionType
from typing import Any, Optional, Union, get_args, get_origin

import typer

from landscape.checkpoints import ModelSpec
from landscape.errors import ConfigError
from landscape.probes.base import coerce_value
from landscape.targets import DataSpec, infer_model_shapes

TARGET = typer.Argument(..., help="RUN_DIR, one of its checkpoint files, or a foreign checkpoint file/folder.")
CHECKPOINTS_HELP = ("last, first, all, every:N, a step (or epoch), step:S, epoch:E, a name or a glob (epoch_1*); "
                    "comma lists mix them. Checkpoints are in training order (epoch_5 before epoch_10).")
CHECKPOINTS = typer.Option("last", "--checkpoints", help=CHECKPOINTS_HELP)
STRIP_PREFIX = typer.Option(None, "--strip-prefix", help="Load the weights under this key prefix, without it "
                            "(e.g. model. for a Lightning module's self.model); a prefix every key shares and the "
                            "model lacks is stripped by itself.")
DATA_FACTORY = typer.Option(None, "--data-factory", help="pkg.module:fn (or file.py:fn) returning your (train, test) "
                            "data: (x, y) arrays, a Dataset or a DataLoader each; called with the --dataset-param values.")
TASK = typer.Option("classification", "--task", help="What the --data-factory targets are: classification "
                    "(labels (N,)), causal_lm or token_classification (token ids (N, T), -100 ignored; the loss is "
                    "per token, token-weighted), regression (values; squared error, no accuracy).")
TARGET_KEY = typer.Option("labels", "--target-key", help="The key of a dict batch that holds the targets "
                          "(the other keys are the model's keyword inputs).")
OUTSIDE_LINKS = typer.Option(False, "--allow-outside-links", help="Follow checkpoints of a run that are symlinks "
                             "to files outside it (refused by default).")
WEIGHTS = typer.Option("auto", "--weights", help="ema, raw, or auto (EMA weights where the checkpoint has them); "
                       "the choice is recorded with the results.")
OUT = typer.Option(None, "--out", "-o", help="Results file (default RUN_DIR/analysis.h5).")
DEVICE = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N.")
MODEL = typer.Option(None, "--model", help="Model name, for a checkpoint outside a RUN_DIR.")
MODEL_PARAM = typer.Option(None, "--model-param", help="KEY=VALUE for --model, repeatable.")
NUM_CLASSES = typer.Option(None, "--num-classes", help="Class count, for --model.")
INPUT_SHAPE = typer.Option(None, "--input-shape", help="Input shape C,H,W (or D), for --model.")
FACTORY = typer.Option(None, "--model-factory", help="pkg.module:function building the model.")
DATASET = typer.Option(None, "--dataset", help="Dataset, required for a checkpoint outside a RUN_DIR, e.g. "
                       "npz with --dataset-param path=FILE.npz (used as given; normalize=standardize to standardize).")
DATASET_PARAM = typer.Option(None, "--dataset-param", help="KEY=VALUE for --dataset, repeatable.")
LOSS = typer.Option(None, "--loss", help="Loss, for a checkpoint outside a RUN_DIR (default ce).")
FORCE = typer.Option(False, "--force", help="Recompute results already stored with the same settings.")
PLOTS = typer.Option(True, "--plots/--no-plots", help="Write figures to the plots/ folder beside the results.")
PROGRESS = typer.Option(True, "--progress/--no-progress", help="Show progress.")


def probe_options(checkpoints: str) -> list[tuple[str, Any, Any]]:
    """``(parameter, annotation, option)`` of the options every probe command shares, with
    ``checkpoints`` (the probe's declared default) as the default of ``--checkpoints``."""
    return [
        ("checkpoints", str, typer.Option(checkpoints, "--checkpoints", help=CHECKPOINTS_HELP)),
        ("out", Optional[Path], OUT), ("device", str, DEVICE), ("model", Optional[str], MODEL),
        ("model_param", Optional[list[str]], MODEL_PARAM), ("num_classes", Optional[int], NUM_CLASSES),
        ("input_shape", Optional[str], INPUT_SHAPE), ("model_factory", Optional[str], FACTORY),
        ("dataset", Optional[str], DATASET), ("dataset_param", Optional[list[str]], DATASET_PARAM),
        ("loss", Optional[str], LOSS), ("force", bool, FORCE), ("plots", bool, PLOTS), ("progress", bool, PROGRESS),
        ("weights", str, WEIGHTS), ("strip_prefix", Optional[str], STRIP_PREFIX),
        ("allow_outside_links", bool, OUTSIDE_LINKS), ("data_factory", Optional[str], DATA_FACTORY),
        ("task", str, TASK), ("target_key", str, TARGET_KEY),
    ]


def parse_pairs(items: list[str] | None, flag: str) -> dict[str, str]:
    """``["top_k=3", "x=-1:1:5"]`` → ``{"top_k": "3", "x": "-1:1:5"}``: the text of each value."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} takes KEY=VALUE, got {item!r}")
        out[key.strip()] = value
    return out


def parse_key_values(items: list[str] | None, flag: str) -> dict[str, Any]:
    """``["width=256", "activation=gelu"]`` → ``{"width": 256, "activation": "gelu"}`` (values parsed as JSON when they can be)."""
    out: dict[str, Any] = {}
    for key, value in parse_pairs(items, flag).items():
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def scalar_type(tp: Any) -> Any:
    """``int``/``float``/``str`` for ``T`` or ``T | None`` (a type typer parses itself), else None."""
    if tp in (int, float, str):
        return tp
    args = [a for a in get_args(tp) if a is not type(None)]
    if get_origin(tp) in (Union, UnionType) and len(args) == 1 and args[0] in (int, float, str):
        return args[0]
    return None


def parse_setting(tp: Any, flag: str, text: str) -> Any:
    """The value of a setting of type ``tp`` (a tuple, a union such as ``float | str``) given as
    text: ``0.1,0.2`` for a tuple, ``none`` for None, each alternative of a union tried in order
    (:func:`landscape.probes.base.coerce_value`, as ``--setting KEY=VALUE`` is read)."""
    return coerce_value(tp, flag, text, text=True)


def foreign_specs(model, model_param, num_classes, input_shape, factory, dataset, dataset_param, loss,
                  data_factory=None, task="classification", target_key="labels"):
    """``(model_spec, data_spec)`` from the foreign-checkpoint options (a RUN_DIR ignores them); a
    registered model's missing input shape or class count comes from the named dataset
    (:func:`landscape.targets.infer_model_shapes`)."""
    shape = None
    if input_shape:
        try:
            shape = tuple(int(s) for s in input_shape.split(","))
        except ValueError:
            raise ConfigError(f"--input-shape takes integers like 3,32,32, got {input_shape!r}") from None
    model_spec = None
    if model or factory:
        model_spec = ModelSpec(name=model, input_shape=shape, num_classes=num_classes,
                               params=parse_key_values(model_param, "--model-param"), factory=factory)
    if dataset is not None and data_factory is not None:
        raise ConfigError("give --dataset or --data-factory, not both")
    data_spec = DataSpec(dataset=dataset, dataset_params=parse_key_values(dataset_param, "--dataset-param"),
                         loss=loss or "ce", factory=data_factory, task=task, target_key=target_key)
    # without --dataset the spec stays incomplete: a RUN_DIR ignores it, a foreign checkpoint is refused
    return infer_model_shapes(model_spec, data_spec), data_spec
