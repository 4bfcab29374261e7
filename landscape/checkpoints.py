"""Checkpoints: the public path (``from landscape.checkpoints import RunDir, ModelSpec, …``).

A short re-export module kept for the ~40 places and the docs that import from here; the code
lives in one module per concept (all in the io layer, except the pure key fitting):

- :mod:`landscape.model_spec` — :class:`ModelSpec`, building a model from a spec or a factory;
- :mod:`landscape.weights` — safe loading of weight files (safetensors, restricted ``torch.load``),
  writing them atomically, fingerprints, and the one model loader :func:`restore_model`;
- :mod:`landscape.core.state_dict` — :func:`fit_state_dict` (a pure function on dicts);
- :mod:`landscape.checkpoint_files` — :class:`Checkpoint`, listing a folder, the one selector;
- :mod:`landscape.run_dir` — :class:`RunDir` (the RUN_DIR's files) and :func:`load_model`.

New code may import from those modules directly.
"""

from __future__ import annotations

from landscape.checkpoint_files import (
    SELECTION_HELP,
    WEIGHT_SUFFIXES,
    Checkpoint,
    folder_checkpoints,
    natural_key,
    order_checkpoints,
    parse_position,
    select_checkpoints,
)
from landscape.core.state_dict import fit_state_dict
from landscape.model_spec import ModelSpec, resolve_factory, untrusted_factory_message
from landscape.run_dir import CHECKPOINT_DIR, RunDir, checkpoint_name, load_model
from landscape.weights import (
    HF_WEIGHT_FILES,
    WEIGHT_CHOICES,
    CheckpointReadError,
    LoadedState,
    check_finite_weights,
    checkpoint_matches,
    file_fingerprint,
    file_sha256,
    hf_weight_file,
    load_state,
    load_state_dict,
    load_weights,
    restore_model,
    save_state,
    save_weights,
)

__all__ = [
    "CHECKPOINT_DIR", "HF_WEIGHT_FILES", "SELECTION_HELP", "WEIGHT_CHOICES", "WEIGHT_SUFFIXES",
    "Checkpoint", "CheckpointReadError", "LoadedState", "ModelSpec", "RunDir",
    "check_finite_weights", "checkpoint_matches", "checkpoint_name", "file_fingerprint", "file_sha256",
    "fit_state_dict", "folder_checkpoints", "hf_weight_file", "load_model", "load_state",
    "load_state_dict", "load_weights", "natural_key", "order_checkpoints", "parse_position",
    "resolve_factory", "restore_model", "save_state", "save_weights", "select_checkpoints",
    "untrusted_factory_message",
]
