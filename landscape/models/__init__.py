"""Model registry: MLP (optionally on embedded token ids), small CNN, CIFAR-style ResNet-20
(BatchNorm and skips optional), GPT-style decoder-only transformer, tiny Vision Transformer.

Every model ends in a linear layer called ``classifier`` whose input is the
penultimate feature vector (what the neural-collapse probes read).
``build_model(name, input_shape, num_classes, **params)`` takes the input
shape and class count from the dataset.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from landscape.errors import ConfigError
from landscape.models.attention import TRANSFORMER_HEADS, CausalSelfAttention, DecoderBlock
from landscape.models.convnets import CNN, BasicBlock, ResNet
from landscape.models.mlp import MLP
from landscape.models.registry import ACTIVATIONS, MODELS
from landscape.models.transformer import Transformer
from landscape.models.vit import VIT_POOLS, ViT

__all__ = ["ACTIVATIONS", "MODELS", "TRANSFORMER_HEADS", "VIT_POOLS", "MLP", "CNN", "BasicBlock", "ResNet",
           "CausalSelfAttention", "DecoderBlock", "Transformer", "ViT", "build_model", "count_parameters",
           "model_params"]


def model_params(name: str) -> dict[str, Any]:
    """The tunable parameters of a registered model and their defaults."""
    sig = inspect.signature(MODELS[name])
    return {
        k: p.default
        for k, p in sig.parameters.items()
        if k not in ("self", "input_shape", "num_classes") and p.default is not inspect.Parameter.empty
    }


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, **params: Any) -> nn.Module:
    """Build a registered model for inputs of ``input_shape`` and ``num_classes`` outputs."""
    factory = MODELS[name]
    accepted = model_params(name)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ConfigError(
            f"unknown parameter(s) {', '.join(unknown)} for model {MODELS.canonical(name)!r}; "
            f"accepted: {', '.join(f'{k}={v!r}' for k, v in accepted.items())}"
        )
    if num_classes < 2:
        raise ConfigError(f"num_classes must be ≥ 2, got {num_classes}")
    return factory(tuple(int(s) for s in input_shape), int(num_classes), **params)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
