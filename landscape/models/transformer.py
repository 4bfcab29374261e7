"""The GPT-style decoder-only transformer on token ids."""

from __future__ import annotations

import torch
from torch import nn

from landscape.errors import ConfigError, DataError
from landscape.models.attention import (
    TRANSFORMER_HEADS,
    DecoderBlock,
    _gpt2_init,
    _tracked_attention_stats,
)
from landscape.models.registry import MODELS


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


