"""Convolutional models: the small CNN and the CIFAR-style ResNet-20 (BatchNorm and skips optional)."""

from __future__ import annotations

import torch
from torch import nn

from landscape.errors import ConfigError
from landscape.models.registry import ACTIVATIONS, MODELS


def _as_image_shape(input_shape: tuple[int, ...], model: str) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ConfigError(
            f"{model} needs image inputs (channels, height, width), got input shape {tuple(input_shape)}; "
            "use the mlp model, or a dataset with image_shape=…"
        )
    return tuple(input_shape)  # type: ignore[return-value]


@MODELS.register("cnn")
class CNN(nn.Module):
    """Small CNN: 2 × [conv3×3 → (BN) → act → maxpool2] with ``channels``, 2·``channels``, then a
    hidden linear layer of ``width`` units and the classifier."""

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        channels: int = 32,
        width: int = 128,
        activation: str = "relu",
        batchnorm: bool = False,
    ) -> None:
        super().__init__()
        c_in, h, w = _as_image_shape(input_shape, "cnn")
        act = ACTIVATIONS[activation]
        layers: list[nn.Module] = []
        for c_out in (channels, 2 * channels):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=not batchnorm)]
            if batchnorm:
                layers.append(nn.BatchNorm2d(c_out))
            layers += [act(), nn.MaxPool2d(2) if min(h, w) >= 2 else nn.Identity()]
            if min(h, w) >= 2:
                h, w = h // 2, w // 2
            c_in = c_out
        layers += [nn.Flatten(), nn.Linear(c_in * h * w, width), act()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    """ResNet basic block: conv3×3 → BN → ReLU → conv3×3 → BN, plus the shortcut, → ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int, batchnorm: bool, skip: bool) -> None:
        super().__init__()

        def norm(c: int) -> nn.Module:
            return nn.BatchNorm2d(c) if batchnorm else nn.Identity()

        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=not batchnorm)
        self.bn1 = norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=not batchnorm)
        self.bn2 = norm(c_out)
        self.skip = skip
        self.shortcut: nn.Module = nn.Identity()
        if skip and (stride != 1 or c_in != c_out):
            # Projection shortcut (option B), as in tomgoldstein/loss-landscape's CIFAR ResNets.
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=not batchnorm), norm(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.skip:
            out = out + self.shortcut(x)
        return torch.relu(out)


@MODELS.register("resnet20", "resnet")
class ResNet(nn.Module):
    """CIFAR-style ResNet (He et al. 2016): conv3×3(w) → 3 stages × ``blocks`` basic blocks with
    w, 2w, 4w channels (stride 2 between stages) → global average pool → classifier.

    ``blocks=3`` is ResNet-20 (6·3+2 layers). ``skip=False`` removes every shortcut (the
    "ResNet-20-noshort" of Li et al. 2018); ``batchnorm=False`` removes BatchNorm (convs get biases).
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        width: int = 16,
        blocks: int = 3,
        batchnorm: bool = True,
        skip: bool = True,
    ) -> None:
        super().__init__()
        c_in, _, _ = _as_image_shape(input_shape, "resnet20")
        if width < 1 or blocks < 1:
            raise ConfigError(f"resnet needs width ≥ 1 and blocks ≥ 1, got width={width}, blocks={blocks}")
        layers: list[nn.Module] = [nn.Conv2d(c_in, width, 3, padding=1, bias=not batchnorm)]
        layers += [nn.BatchNorm2d(width) if batchnorm else nn.Identity(), nn.ReLU()]
        c = width
        for stage, c_out in enumerate((width, 2 * width, 4 * width)):
            for b in range(blocks):
                stride = 2 if (stage > 0 and b == 0) else 1
                layers.append(BasicBlock(c, c_out, stride, batchnorm, skip))
                c = c_out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


