"""Model registry: MLP (optionally on embedded token ids), small CNN, CIFAR-style ResNet-20
(BatchNorm and skips optional), GPT-style decoder-only transformer, tiny Vision Transformer.

Every model ends in a linear layer called ``classifier`` whose input is the
penultimate feature vector (what the neural-collapse probes read).
``build_model(name, input_shape, num_classes, **params)`` takes the input
shape and class count from the dataset.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from landscape.errors import ConfigError, DataError
from landscape.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")

ACTIVATIONS: Registry[Callable[[], nn.Module]] = Registry("activation")
ACTIVATIONS.register("relu")(nn.ReLU)
ACTIVATIONS.register("gelu")(nn.GELU)
ACTIVATIONS.register("tanh")(nn.Tanh)
ACTIVATIONS.register("silu", "swish")(nn.SiLU)
ACTIVATIONS.register("leaky_relu")(nn.LeakyReLU)
ACTIVATIONS.register("identity", "linear")(nn.Identity)


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


TRANSFORMER_HEADS = ("last_token", "lm")


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention(is_causal=causal)``.

    ``causal=True`` (the default, the ``transformer``) lets position ``i`` attend to ``j ≤ i``;
    ``causal=False`` (the ``vit``) lets every position attend to every position.
    With ``qk_layernorm`` the queries and keys are layer-normalized per head before the product
    (Dehghani et al. 2023; Wortsman et al. 2023). With ``track`` set, each forward pass also
    stores in :attr:`stats` the largest attention logit ``max |qᵀk|/√d`` over allowed (causal:
    ``j ≤ i``; otherwise all) pairs and the mean attention entropy ``−Σ_j a_ij log a_ij`` (nats)
    over queries, batch and heads (an explicit softmax, so tracking costs one extra
    ``[N, H, T, T]`` product).
    """

    def __init__(
        self, width: int, heads: int, qk_layernorm: bool, bias: bool, causal: bool = True
    ) -> None:
        super().__init__()
        self.causal = causal
        self.heads = heads
        self.head_dim = width // heads
        self.qkv = nn.Linear(width, 3 * width, bias=bias)
        self.proj = nn.Linear(width, width, bias=bias)
        self.q_norm: nn.Module = nn.LayerNorm(self.head_dim) if qk_layernorm else nn.Identity()
        self.k_norm: nn.Module = nn.LayerNorm(self.head_dim) if qk_layernorm else nn.Identity()
        self.track = False
        self.stats: dict[str, float] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, w = x.shape
        q, k, v = self.qkv(x).view(n, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.track:
            self.stats = _attention_stats(q.detach(), k.detach(), self.causal)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.proj(out.transpose(1, 2).reshape(n, t, w))


def _attention_stats(q: torch.Tensor, k: torch.Tensor, causal: bool = True) -> dict[str, float]:
    t = q.shape[-2]
    logits = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    allowed = torch.ones(t, t, dtype=torch.bool, device=q.device)
    if causal:
        allowed = allowed.tril()
    max_logit = logits.abs().masked_fill(~allowed, 0.0).amax()
    log_a = torch.log_softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)
    entropy = -(log_a.exp() * log_a.masked_fill(~allowed, 0.0)).sum(-1).mean()
    return {"max_logit": float(max_logit), "entropy": float(entropy)}


class DecoderBlock(nn.Module):
    """Pre-LN block: ``x + attn(LN(x))``, then ``x + MLP(LN(x))`` (MLP: width → ratio·width → width).

    ``causal=False`` makes it an encoder block (bidirectional attention; the ``vit``)."""

    def __init__(
        self,
        width: int,
        heads: int,
        mlp_ratio: int,
        activation: str,
        qk_layernorm: bool,
        bias: bool,
        causal: bool = True,
    ) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads, qk_layernorm, bias, causal)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, mlp_ratio * width, bias=bias),
            ACTIVATIONS[activation](),
            nn.Linear(mlp_ratio * width, width, bias=bias),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


@MODELS.register("transformer", "gpt")
class Transformer(nn.Module):
    """GPT-style decoder-only transformer on int64 token ids ``[N, T]`` (``T ≤ context``).

    Token + learned position embeddings → ``layers`` pre-LN blocks (causal attention with
    ``heads`` heads, optional qk-layernorm) → final LayerNorm → ``classifier``. ``head``:
    ``last_token`` gives class logits ``[N, num_classes]`` from the last position (e.g. the
    ``=`` of the ``modular`` dataset's tokens); ``lm`` gives next-token logits ``[N, T, vocab]``
    (task ``causal_lm``; ``vocab`` defaults to ``num_classes``). ``tie_embeddings`` makes the
    classifier's weight the token-embedding matrix itself (one tensor; needs an output of
    ``vocab`` classes). ``context`` defaults to the dataset's sequence length. Initialization as
    GPT-2: weights ``N(0, 0.02²)``, residual output projections ``N(0, 0.02²/(2·layers))``,
    zero biases, unit LayerNorm gains. No dropout.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        vocab: int | None = None,
        layers: int = 2,
        width: int = 128,
        heads: int = 4,
        context: int | None = None,
        mlp_ratio: int = 4,
        activation: str = "gelu",
        qk_layernorm: bool = False,
        tie_embeddings: bool = False,
        head: str = "last_token",
        bias: bool = True,
    ) -> None:
        super().__init__()
        if len(input_shape) != 1:
            raise ConfigError(
                f"transformer needs token-id inputs of shape (T,), got input shape {tuple(input_shape)}"
            )
        if head not in TRANSFORMER_HEADS:
            raise ConfigError(f"transformer head must be one of {', '.join(TRANSFORMER_HEADS)}, got {head!r}")
        if vocab is None:
            if head != "lm":
                raise ConfigError(
                    "transformer needs vocab=<number of token ids> (the dataset's info['vocab'], "
                    "e.g. p + 2 for modular tokens)"
                )
            vocab = num_classes
        context = int(input_shape[0]) if context is None else context
        for name, value, low in (("vocab", vocab, 1), ("layers", layers, 0), ("width", width, 1),
                                 ("heads", heads, 1), ("context", context, 1), ("mlp_ratio", mlp_ratio, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"transformer {name} must be an integer ≥ {low}, got {value!r}")
        if width % heads:
            raise ConfigError(f"transformer width ({width}) must be a multiple of heads ({heads})")
        if context < input_shape[0]:
            raise ConfigError(f"transformer context={context} is shorter than the inputs' {input_shape[0]} tokens")
        out = vocab if head == "lm" else num_classes
        if tie_embeddings and out != vocab:
            raise ConfigError(
                f"tie_embeddings needs the output size to equal vocab ({vocab}), got {out} classes; "
                "use head='lm' or untied embeddings"
            )
        self.head, self.vocab, self.context = head, vocab, context
        self.tok_emb = nn.Embedding(vocab, width)
        self.pos_emb = nn.Embedding(context, width)
        self.blocks = nn.ModuleList(
            DecoderBlock(width, heads, mlp_ratio, activation, qk_layernorm, bias) for _ in range(layers)
        )
        self.ln_f = nn.LayerNorm(width)
        self.classifier = nn.Linear(width, out, bias=bias and not tie_embeddings)
        _gpt2_init(self, layers)
        if tie_embeddings:
            self.classifier.weight = self.tok_emb.weight

    def hidden(self, ids: torch.Tensor) -> torch.Tensor:
        """Final-LayerNorm hidden states ``[N, T, width]`` (the classifier's input)."""
        if ids.is_floating_point() or ids.dim() != 2:
            raise DataError(
                f"transformer takes int64 token ids of shape [N, T], got {ids.dtype} {tuple(ids.shape)}"
            )
        t = ids.shape[1]
        if t > self.context:
            raise DataError(f"sequence of {t} tokens is longer than the transformer's context {self.context}")
        h = self.tok_emb(ids) + self.pos_emb(torch.arange(t, device=ids.device))
        for block in self.blocks:
            h = block(h)
        return self.ln_f(h)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.hidden(ids)
        return self.classifier(h if self.head == "lm" else h[:, -1])

    @torch.no_grad()
    def attention_stats(self, ids: torch.Tensor) -> list[dict[str, float]]:
        """Per layer: ``max_logit`` (max |qᵀk|/√d over causal pairs) and mean attention ``entropy``
        (nats) on ``ids``, from one extra forward pass."""
        return _tracked_attention_stats(self.blocks, self.hidden, ids)


def _gpt2_init(model: nn.Module, layers: int) -> None:
    """GPT-2 initialization: every weight of ≥ 2 dims ``N(0, 0.02²)``, the residual output
    projections (``attn.proj``, ``mlp.2``) ``N(0, 0.02²/(2·layers))``, zero biases; LayerNorm
    gains stay 1."""
    for name, p in model.named_parameters():
        if p.dim() >= 2:
            std = 0.02 / math.sqrt(2 * max(layers, 1)) if name.endswith(("proj.weight", "mlp.2.weight")) else 0.02
            nn.init.normal_(p, 0.0, std)
        elif name.endswith("bias"):
            nn.init.zeros_(p)


def _tracked_attention_stats(
    blocks: nn.ModuleList, hidden: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor
) -> list[dict[str, float]]:
    """Each block's attention statistics from one forward pass ``hidden(x)`` with tracking on."""
    attns = [b.attn for b in blocks]
    for a in attns:
        a.track = True
    try:
        hidden(x)
    finally:
        for a in attns:
            a.track = False
    return [dict(a.stats) for a in attns]


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


def model_names() -> list[str]:
    return MODELS.names()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
