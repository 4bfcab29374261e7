"""Transformer building blocks shared by the decoder and the ViT: attention, blocks, GPT-2 init, attention statistics."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from landscape.models.registry import ACTIVATIONS

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


