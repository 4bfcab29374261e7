"""The tiny Vision Transformer (bidirectional blocks of the decoder)."""

from __future__ import annotations

import math

import torch
from torch import nn

from landscape.errors import ConfigError, DataError
from landscape.models.attention import DecoderBlock, _gpt2_init, _tracked_attention_stats
from landscape.models.convnets import _as_image_shape
from landscape.models.registry import MODELS

VIT_POOLS = ("cls", "mean")


@MODELS.register("vit")
class ViT(nn.Module):
    """Tiny Vision Transformer (Dosovitskiy et al. 2021) on images ``[N, C, H, W]`` (or flat
    ``[N, C·H·W]``, reshaped to the dataset's image shape, e.g. digits → ``[N, 1, 8, 8]``).

    Non-overlapping ``patch``×``patch`` patches, embedded linearly (a Conv2d with kernel = stride
    = ``patch``; ``patch`` must divide H and W) in row-major order → with ``pool="cls"`` a learned
    [CLS] token in front → + learned position embeddings (one per token) → ``layers`` pre-LN
    encoder blocks (the transformer's blocks with bidirectional, not causal, attention; optional
    qk-layernorm) → final LayerNorm → ``classifier`` on the [CLS] token (``pool="cls"``) or on the
    mean of the patch tokens (``pool="mean"``). Initialization as the ``transformer`` (GPT-2:
    weights incl. patch kernel, [CLS] and positions ``N(0, 0.02²)``, residual output projections
    ``N(0, 0.02²/(2·layers))``, zero biases). No dropout.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        layers: int = 2,
        width: int = 64,
        heads: int = 4,
        patch: int = 4,
        mlp_ratio: int = 4,
        activation: str = "gelu",
        qk_layernorm: bool = False,
        pool: str = "cls",
        bias: bool = True,
    ) -> None:
        super().__init__()
        c, h, w = _as_image_shape(input_shape, "vit")
        for name, value, low in (("layers", layers, 0), ("width", width, 1), ("heads", heads, 1),
                                 ("patch", patch, 1), ("mlp_ratio", mlp_ratio, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"vit {name} must be an integer ≥ {low}, got {value!r}")
        if width % heads:
            raise ConfigError(f"vit width ({width}) must be a multiple of heads ({heads})")
        if pool not in VIT_POOLS:
            raise ConfigError(f"vit pool must be one of {', '.join(VIT_POOLS)}, got {pool!r}")
        if h % patch or w % patch:
            g = math.gcd(h, w)
            fits = ", ".join(str(d) for d in range(1, g + 1) if g % d == 0)
            raise ConfigError(
                f"vit patch={patch} does not divide the {h}×{w} images; choose a patch that divides "
                f"both height and width ({fits})"
            )
        self.image_shape = (c, h, w)
        self.pool = pool
        self.num_patches = (h // patch) * (w // patch)
        tokens = self.num_patches + (pool == "cls")
        self.patch_emb = nn.Conv2d(c, width, patch, stride=patch, bias=bias)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width)) if pool == "cls" else None
        self.pos_emb = nn.Parameter(torch.zeros(1, tokens, width))
        self.blocks = nn.ModuleList(
            DecoderBlock(width, heads, mlp_ratio, activation, qk_layernorm, bias, causal=False)
            for _ in range(layers)
        )
        self.ln_f = nn.LayerNorm(width)
        self.classifier = nn.Linear(width, num_classes, bias=bias)
        _gpt2_init(self, layers)

    def _images(self, x: torch.Tensor) -> torch.Tensor:
        shape = self.image_shape
        if x.is_floating_point() and x.dim() == 2 and x.shape[1] == math.prod(shape):
            return x.reshape(len(x), *shape)
        if not x.is_floating_point() or tuple(x.shape[1:]) != shape:
            raise DataError(
                f"vit takes floating images of shape [N, {', '.join(map(str, shape))}] (or flat "
                f"[N, {math.prod(shape)}]), got {x.dtype} {tuple(x.shape)}"
            )
        return x

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """Final-LayerNorm tokens ``[N, T, width]`` (T = patches, + 1 in front for [CLS])."""
        h = self.patch_emb(self._images(x)).flatten(2).transpose(1, 2)
        if self.cls_token is not None:
            h = torch.cat([self.cls_token.expand(len(h), -1, -1), h], dim=1)
        h = h + self.pos_emb
        for block in self.blocks:
            h = block(h)
        return self.ln_f(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.hidden(x)
        return self.classifier(h[:, 0] if self.pool == "cls" else h.mean(1))

    @torch.no_grad()
    def attention_stats(self, x: torch.Tensor) -> list[dict[str, float]]:
        """Per layer: ``max_logit`` (max |qᵀk|/√d over all token pairs) and mean attention
        ``entropy`` (nats) on images ``x``, from one extra forward pass."""
        return _tracked_attention_stats(self.blocks, self.hidden, x)


