"""The tiny Vision Transformer ``vit`` (``landscape.models``).

References are independent of the module code: patches cut out of the images by numpy slicing
and multiplied by the flattened kernel, and the whole forward pass (LayerNorm, unmasked softmax
attention, erf-GELU, pooling) written out in numpy float64 on the model's weights, which also
gives each layer's max |qᵀk|/√d and mean attention entropy.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.special import erf
from torch import nn

import landscape as ls
from landscape.errors import ConfigError, DataError
from landscape.models import CausalSelfAttention, build_model, count_parameters, model_params
from landscape.train.config import TrainConfig
from landscape.train.monitors import MonitorSet


def _tiny(shape=(3, 8, 12), classes=5, **kw):
    torch.manual_seed(0)
    params = {"width": 8, "heads": 2, "layers": 2, "mlp_ratio": 2, "patch": 4, **kw}
    return build_model("vit", shape, classes, **params).double().eval()


def _images(n=6, shape=(3, 8, 12), seed=1):
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _np(t):
    return t.detach().double().numpy()


def _patches(x, p):
    """[N, L, C·p·p]: patch (i, j) in row-major order, each flattened channel, row, column."""
    n, _, h, w = x.shape
    return np.stack([x[:, :, i:i + p, j:j + p].reshape(n, -1)
                     for i in range(0, h, p) for j in range(0, w, p)], axis=1)


def _ln(x, mod):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + mod.eps) * _np(mod.weight) + _np(mod.bias)


def _linear(x, mod):
    return x @ _np(mod.weight).T + _np(mod.bias)


def reference_forward(model, x):
    """The ViT by hand in numpy float64; also returns per-layer (max |qᵀk|/√d, mean entropy)."""
    x = _np(x)
    p = model.patch_emb.kernel_size[0]
    kernel = _np(model.patch_emb.weight).reshape(len(model.patch_emb.weight), -1)
    h = _patches(x, p) @ kernel.T + _np(model.patch_emb.bias)
    if model.pool == "cls":
        h = np.concatenate([np.broadcast_to(_np(model.cls_token), (len(h), 1, h.shape[-1])), h], axis=1)
    h = h + _np(model.pos_emb)
    n, t, w = h.shape
    stats = []
    for blk in model.blocks:
        heads = blk.attn.heads
        d = w // heads
        qkv = _linear(_ln(h, blk.ln1), blk.attn.qkv)
        q, k, v = (qkv[..., i * w:(i + 1) * w].reshape(n, t, heads, d).transpose(0, 2, 1, 3)
                   for i in range(3))
        if isinstance(blk.attn.q_norm, nn.LayerNorm):
            q, k = _ln(q, blk.attn.q_norm), _ln(k, blk.attn.k_norm)
        s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d)  # every pair: no mask
        a = np.exp(s - s.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        stats.append((np.abs(s).max(), -(a * np.log(a)).sum(-1).mean()))
        h = h + _linear((a @ v).transpose(0, 2, 1, 3).reshape(n, t, w), blk.attn.proj)
        z = _linear(_ln(h, blk.ln2), blk.mlp[0])
        h = h + _linear(0.5 * z * (1 + erf(z / math.sqrt(2))), blk.mlp[2])
    h = _ln(h, model.ln_f)
    return _linear(h[:, 0] if model.pool == "cls" else h.mean(1), model.classifier), stats


def test_defaults_shapes_and_flat_inputs():
    assert {k: model_params("vit")[k] for k in ("layers", "width", "heads", "patch", "mlp_ratio",
                                                  "qk_layernorm", "pool")} == {
        "layers": 2, "width": 64, "heads": 4, "patch": 4, "mlp_ratio": 4, "qk_layernorm": False, "pool": "cls"}
    model = build_model("vit", (1, 8, 8), 10)  # digits
    x = torch.randn(5, 1, 8, 8)
    out = model(x)
    assert out.shape == (5, 10)
    torch.testing.assert_close(model(x.reshape(5, 64)), out, rtol=0, atol=0)  # flat digits rows
    assert _tiny(pool="mean")(_images()).shape == (6, 5)
    with pytest.raises(DataError, match=r"vit takes floating images of shape \[N, 1, 8, 8\]"):
        model(torch.randn(5, 1, 8, 9))
    with pytest.raises(DataError, match="vit takes floating images"):
        model(torch.zeros(5, 1, 8, 8, dtype=torch.long))


def test_patch_embedding_equals_unfold_and_matmul():
    model = _tiny()
    x = _images()
    got = _np(model.patch_emb(x).flatten(2).transpose(1, 2))
    kernel = _np(model.patch_emb.weight).reshape(8, -1)  # [width, C·p·p]
    want = _patches(_np(x), 4) @ kernel.T + _np(model.patch_emb.bias)
    assert got.shape == (6, 2 * 3, 8)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("qk", [False, True])
@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_forward_and_attention_stats_match_the_hand_written_vit(pool, qk):
    model = _tiny(pool=pool, qk_layernorm=qk)
    with torch.no_grad():
        for blk in model.blocks:
            blk.attn.qkv.weight.mul_(30)  # attention logits well away from 0
    x = _images()
    want, stats = reference_forward(model, x)
    np.testing.assert_allclose(_np(model(x)), want, rtol=1e-10, atol=1e-12)
    got = model.attention_stats(x)
    assert len(got) == 2
    tokens = 6 + (pool == "cls")
    for g, (max_logit, entropy) in zip(got, stats, strict=True):
        assert g["max_logit"] == pytest.approx(max_logit, rel=1e-10)
        assert g["entropy"] == pytest.approx(entropy, rel=1e-10)
        assert 0 < entropy < math.log(tokens) - 1e-3  # between one-hot and uniform over all tokens
    if not qk:
        assert stats[0][0] > 1.0  # the max-logit check is not about numbers near 0
    assert not any(blk.attn.track for blk in model.blocks)  # tracking switched off again


@torch.no_grad()
def test_attention_is_bidirectional_unlike_the_causal_blocks():
    model = _tiny()
    x = _images()
    changed = x.clone()
    changed[:, :, 4:, 8:] += 1.0  # the last patch only
    cls_before, cls_after = model.hidden(x)[:, 0], model.hidden(changed)[:, 0]
    assert float((cls_after - cls_before).abs().max()) > 1e-3  # [CLS] (first token) sees the last patch
    assert float((model(changed) - model(x)).abs().max()) > 1e-6
    assert not any(blk.attn.causal for blk in model.blocks)
    for blk in model.blocks:
        blk.attn.causal = True  # the same weights with causal attention: the first token sees itself only
    torch.testing.assert_close(model.hidden(changed)[:, 0], model.hidden(x)[:, 0], rtol=0, atol=1e-12)
    # the attention module itself: with causal=False the first position's output depends on the last
    torch.manual_seed(0)
    attn = CausalSelfAttention(8, 2, qk_layernorm=False, bias=True, causal=False).double()
    tokens = torch.randn(3, 5, 8, dtype=torch.float64)
    moved = tokens.clone()
    moved[:, -1] += 1.0
    assert float((attn(moved)[:, 0] - attn(tokens)[:, 0]).abs().max()) > 1e-6
    attn.causal = True
    torch.testing.assert_close(attn(moved)[:, :-1], attn(tokens)[:, :-1], rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape, patch, pool, tokens", [
    ((1, 8, 8), 4, "cls", 2 * 2 + 1), ((1, 8, 8), 4, "mean", 2 * 2), ((1, 8, 8), 2, "cls", 4 * 4 + 1),
    ((3, 8, 12), 4, "cls", 2 * 3 + 1), ((3, 32, 32), 8, "mean", 4 * 4),
])
def test_position_count_and_parameter_count(shape, patch, pool, tokens):
    c = shape[0]
    w, layers, ratio, classes = 16, 2, 4, 10
    model = build_model("vit", shape, classes, width=w, heads=4, layers=layers, patch=patch, pool=pool)
    assert model.pos_emb.shape == (1, tokens, w)
    assert model.num_patches == tokens - (pool == "cls")
    n = len(_images(2, shape))
    assert model.hidden(_images(n, shape).float()).shape == (n, tokens, w)
    block = 2 * 2 * w + (w * 3 * w + 3 * w) + (w * w + w) + (w * ratio * w + ratio * w) + (ratio * w * w + w)
    expected = (c * patch * patch * w + w) + (w if pool == "cls" else 0) + tokens * w \
        + layers * block + 2 * w + (w * classes + classes)
    assert count_parameters(model) == expected


def test_init_is_gpt2_style():
    model = build_model("vit", (3, 32, 32), 10, width=64, layers=2)
    assert float(model.patch_emb.weight.detach().std()) == pytest.approx(0.02, rel=0.05)
    assert float(model.pos_emb.detach().std()) == pytest.approx(0.02, rel=0.1)
    assert float(model.blocks[0].attn.proj.weight.detach().std()) == pytest.approx(0.01, rel=0.1)  # 0.02/√(2·2)
    assert float(model.patch_emb.bias.detach().abs().max()) == 0.0
    assert float(model.blocks[1].ln1.weight.detach().min()) == 1.0


@pytest.mark.parametrize("shape, params, message", [
    ((1, 8, 8), {"patch": 3}, r"vit patch=3 does not divide the 8×8 images.*\(1, 2, 4, 8\)"),
    ((1, 8, 12), {"patch": 8}, r"patch=8 does not divide the 8×12 images.*\(1, 2, 4\)"),
    ((64,), {}, r"vit needs image inputs \(channels, height, width\)"),
    ((1, 8, 8), {"width": 10, "heads": 4}, "multiple of heads"),
    ((1, 8, 8), {"pool": "max"}, "pool must be one of cls, mean"),
    ((1, 8, 8), {"patch": 0}, "patch must be an integer ≥ 1"),
    ((1, 8, 8), {"context": 4}, "unknown parameter.*context"),
])
def test_config_errors(shape, params, message):
    with pytest.raises(ConfigError, match=message):
        build_model("vit", shape, 10, **params)


def test_attention_logits_monitor_on_a_vit():
    model = _tiny().float()
    with torch.no_grad():
        for blk in model.blocks:
            blk.attn.qkv.weight.mul_(30)
    x = _images(12).float()
    y = torch.randint(0, 5, (12,), generator=torch.Generator().manual_seed(2))
    out = MonitorSet(["attention_logits:batch_size=5"], lambda o, t: nn.functional.cross_entropy(
        o, t, reduction="none"), x, y).run(0, model)
    _, stats = reference_forward(model, x)
    for i, (peak, ent) in enumerate(stats):
        assert out[f"attn_max_logit/{i}"] == pytest.approx(peak, rel=1e-4)
        assert out[f"attn_entropy/{i}"] == pytest.approx(ent, rel=1e-4)
    assert out["attn_max_logit"] == pytest.approx(max(p for p, _ in stats), rel=1e-4)


def test_vit_trains_on_digits_with_the_attention_monitor(tmp_path):
    cfg = TrainConfig(model="vit", dataset="digits", epochs=1, optimizer="adam", lr=1e-3, batch_size=64,
                      train_size=512, checkpoints="none")
    result = ls.train(cfg, tmp_path / "run", progress=False, device="cpu",
                      monitors=["attention_logits:every=4,subset=64"])
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
               if line.strip()]
    first = next(r for r in records if "train_loss" in r and r["step"] == 0)
    assert result.steps == 8
    assert first["train_loss"] == pytest.approx(math.log(10), rel=0.02)  # near-uniform at init
    assert result.final["train_loss"] < first["train_loss"] - 0.2
    assert result.final["test_loss"] < first["test_loss"] - 0.2
    monitored = [r for r in records if "attn_max_logit/1" in r]
    assert [r["step"] for r in monitored] == [0, 4, 8]
    for r in monitored:
        assert 0 < r["attn_entropy/0"] <= math.log(5) + 1e-6  # 4 patches + [CLS]
