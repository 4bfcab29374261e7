"""The MLP (optionally on embedded token ids)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from landscape.errors import ConfigError, DataError
from landscape.models.registry import ACTIVATIONS, MODELS


def _norm1d(norm: str, width: int) -> nn.Module:
    table: dict[str, Callable[[], nn.Module]] = {
        "none": nn.Identity,
        "batchnorm": lambda: nn.BatchNorm1d(width),
        "layernorm": lambda: nn.LayerNorm(width),
    }
    if norm not in table:
        raise ConfigError(f"unknown norm {norm!r}; valid: {', '.join(table)}")
    return table[norm]()


@MODELS.register("mlp")
class MLP(nn.Module):
    """Fully connected net: flatten → ``depth`` × [Linear(width) → norm → activation] → classifier.

    With ``vocab`` the inputs are integer token ids (e.g. the ``modular`` dataset's ``pairs``):
    each is embedded by ``nn.Embedding(vocab, embed_dim)`` first and the embeddings are
    concatenated (``features[0]`` is the embedding).
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        width: int = 128,
        depth: int = 2,
        activation: str = "relu",
        norm: str = "none",
        bias: bool = True,
        vocab: int | None = None,
        embed_dim: int = 32,
    ) -> None:
        super().__init__()
        if width < 1 or depth < 0:
            raise ConfigError(f"mlp needs width ≥ 1 and depth ≥ 0, got width={width}, depth={depth}")
        if vocab is not None and (vocab < 1 or embed_dim < 1):
            raise ConfigError(f"mlp needs vocab ≥ 1 and embed_dim ≥ 1, got {vocab}, {embed_dim}")
        act = ACTIVATIONS[activation]
        self.embedded = vocab is not None
        layers: list[nn.Module] = [nn.Flatten()]
        fan_in = math.prod(input_shape)
        if vocab is not None:
            layers.insert(0, nn.Embedding(vocab, embed_dim))
            fan_in *= embed_dim
        for _ in range(depth):
            layers += [nn.Linear(fan_in, width, bias=bias), _norm1d(norm, width), act()]
            fan_in = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(fan_in, num_classes, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_floating_point() == self.embedded:
            raise DataError(
                "mlp with vocab=… takes integer token ids, got floating inputs"
                if self.embedded
                else f"mlp got integer inputs ({x.dtype}, e.g. token ids); give vocab=… to embed them"
            )
        return self.classifier(self.features(x))


