"""The model and activation registries."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from landscape.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")

ACTIVATIONS: Registry[Callable[[], nn.Module]] = Registry("activation")
ACTIVATIONS.register("relu")(nn.ReLU)
ACTIVATIONS.register("gelu")(nn.GELU)
ACTIVATIONS.register("tanh")(nn.Tanh)
ACTIVATIONS.register("silu", "swish")(nn.SiLU)
ACTIVATIONS.register("leaky_relu")(nn.LeakyReLU)
ACTIVATIONS.register("identity", "linear")(nn.Identity)


