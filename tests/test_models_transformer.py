"""The GPT-style ``transformer`` and the token-embedding ``mlp`` (``landscape.models``).

References are independent of the module code: the forward pass written out with explicit
LayerNorm, masked softmax attention and erf-GELU on the model's tensors (float64), and dense
Hessians from ``torch.autograd.functional.hessian`` of the loss with one flat vector written
into a copy of the model by attribute assignment (``tests.test_tied_weights.plain_loader``).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import landscape as ls
from landscape.datasets import load_dataset
from landscape.errors import ConfigError, DataError
from landscape.models import build_model, count_parameters, model_params
from landscape.params import second_order, tied_aliases
from tests.test_tied_weights import plain_loader


def _tiny(head: str = "last_token", **kw):
    torch.manual_seed(0)
    params = {"vocab": 7, "width": 8, "heads": 2, "layers": 1, "mlp_ratio": 2, "head": head, **kw}
    return build_model("transformer", (4,), 7 if head == "lm" else 3, **params).double().eval()


def _ln(x, mod):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + mod.eps) * mod.weight + mod.bias


def _linear(x, mod):
    out = x @ mod.weight.T
    return out if mod.bias is None else out + mod.bias


def reference_forward(model, ids):
    """The transformer by hand; also returns per-layer (max |qᵀk|/√d, mean entropy)."""
    n, t = ids.shape
    h = model.tok_emb.weight[ids] + model.pos_emb.weight[:t]
    stats = []
    for blk in model.blocks:
        a = _ln(h, blk.ln1)
        w = a.shape[-1]
        hd = w // blk.attn.heads
        qkv = _linear(a, blk.attn.qkv)
        q, k, v = (qkv[..., i * w:(i + 1) * w].reshape(n, t, blk.attn.heads, hd).transpose(1, 2)
                   for i in range(3))
        if isinstance(blk.attn.q_norm, nn.LayerNorm):
            q, k = _ln(q, blk.attn.q_norm), _ln(k, blk.attn.k_norm)
        s = q @ k.transpose(-1, -2) / math.sqrt(hd)
        mask = torch.ones(t, t, dtype=torch.bool).tril()
        att = torch.softmax(s.masked_fill(~mask, -math.inf), -1)
        ent = -(att * torch.log(torch.where(att > 0, att, torch.ones_like(att)))).sum(-1).mean()
        stats.append((float(s.detach().abs()[..., mask].max()), float(ent.detach())))
        out = (att @ v).transpose(1, 2).reshape(n, t, w)
        h = h + _linear(out, blk.attn.proj)
        z = _linear(_ln(h, blk.ln2), blk.mlp[0])
        h = h + _linear(0.5 * z * (1 + torch.erf(z / math.sqrt(2))), blk.mlp[2])
    h = _ln(h, model.ln_f)
    return _linear(h if model.head == "lm" else h[:, -1], model.classifier), stats


IDS = torch.randint(0, 7, (6, 4), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("qk", [False, True])
@pytest.mark.parametrize("head", ["last_token", "lm"])
def test_forward_matches_the_hand_written_transformer(head, qk):
    model = _tiny(head, qk_layernorm=qk, layers=2)
    out = model(IDS)
    assert out.shape == ((6, 4, 7) if head == "lm" else (6, 3))
    want, stats = reference_forward(model, IDS)
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-12)
    got = model.attention_stats(IDS)
    assert len(got) == 2
    for g, (max_logit, entropy) in zip(got, stats, strict=True):
        assert g["max_logit"] == pytest.approx(max_logit, rel=1e-10)
        assert g["entropy"] == pytest.approx(entropy, rel=1e-10)
    assert 0 < stats[0][1] < math.log(4)  # between one-hot and uniform over 4 positions


def test_causality_later_tokens_do_not_change_earlier_logits():
    model = _tiny("lm", layers=2)
    base = model(IDS).detach()
    for j in range(1, 4):
        changed = IDS.clone()
        changed[:, j] = (changed[:, j] + 1) % 7
        out = model(changed).detach()
        torch.testing.assert_close(out[:, :j], base[:, :j], rtol=0, atol=1e-12)
        assert float((out[:, j:] - base[:, j:]).abs().max()) > 1e-6  # the test can fail
    # the last-token head sees every position
    clf = _tiny("last_token")
    changed = IDS.clone()
    changed[:, 0] = (changed[:, 0] + 1) % 7
    assert float((clf(changed) - clf(IDS)).detach().abs().max()) > 1e-6


def test_tied_embeddings_are_one_tensor():
    tied, untied = _tiny("lm", tie_embeddings=True), _tiny("lm")
    assert tied.classifier.weight is tied.tok_emb.weight
    assert tied_aliases(tied) == {"classifier.weight": "tok_emb.weight"}
    assert tied.classifier.bias is None
    assert count_parameters(untied) - count_parameters(tied) == 7 * 8 + 7  # weight + bias
    F.cross_entropy(tied(IDS).reshape(-1, 7), IDS.reshape(-1)).backward()
    assert tied.tok_emb.weight.grad is not None
    with pytest.raises(ConfigError, match="tie_embeddings needs the output size to equal vocab"):
        build_model("transformer", (4,), 3, vocab=7, tie_embeddings=True)
    # a classification head over exactly the vocabulary may be tied
    m = build_model("transformer", (4,), 7, vocab=7, tie_embeddings=True)
    assert m.classifier.weight is m.tok_emb.weight


def test_qk_layernorm_present_only_when_asked():
    with_ln, without = _tiny(qk_layernorm=True, layers=2), _tiny(layers=2)
    for blk in with_ln.blocks:
        assert isinstance(blk.attn.q_norm, nn.LayerNorm) and isinstance(blk.attn.k_norm, nn.LayerNorm)
        assert blk.attn.q_norm.normalized_shape == (4,)  # head dim = 8 / 2
    assert not any(isinstance(blk.attn.q_norm, nn.LayerNorm) for blk in without.blocks)
    assert count_parameters(with_ln) - count_parameters(without) == 2 * 2 * (4 + 4)


def test_defaults_context_and_init():
    m = build_model("transformer", (4,), 97, vocab=99)
    assert model_params("transformer")["width"] == 128 and len(m.blocks) == 2
    assert m.context == 4 and m.pos_emb.weight.shape == (4, 128)
    assert float(m.tok_emb.weight.detach().std()) == pytest.approx(0.02, rel=0.05)
    assert float(m.blocks[0].attn.proj.weight.detach().std()) == pytest.approx(0.01, rel=0.1)  # 0.02/√(2·2)
    assert float(m.blocks[0].attn.qkv.bias.detach().abs().max()) == 0.0
    longer = build_model("transformer", (4,), 97, vocab=99, context=16)
    assert longer(torch.randint(0, 99, (2, 9))).shape == (2, 97)  # any T ≤ context


@pytest.mark.parametrize(
    "params, message",
    [
        ({}, "transformer needs vocab="),
        ({"vocab": 7, "width": 10, "heads": 4}, "multiple of heads"),
        ({"vocab": 7, "head": "pool"}, "head must be one of last_token, lm"),
        ({"vocab": 7, "context": 2}, "context=2 is shorter"),
        ({"vocab": 7, "layers": -1}, "layers must be an integer"),
    ],
)
def test_bad_transformer_specs(params, message):
    with pytest.raises(ConfigError, match=message):
        build_model("transformer", (4,), 3, **params)
    with pytest.raises(ConfigError, match="token-id inputs of shape"):
        build_model("transformer", (1, 8, 8), 3, vocab=7)


def test_bad_transformer_inputs():
    m = _tiny()
    with pytest.raises(DataError, match="int64 token ids"):
        m(torch.randn(2, 4))
    with pytest.raises(DataError, match="longer than the transformer's context 4"):
        m(torch.zeros(2, 5, dtype=torch.long))


# --------------------------------------------------------------------------- second order


def _dense_hessian(model, x, loss_of_output):
    ref = copy.deepcopy(model)
    load, theta0 = plain_loader(ref)

    def loss(theta):
        load(theta)
        return loss_of_output(ref(x))

    with second_order():
        return torch.autograd.functional.hessian(loss, theta0)


@pytest.mark.parametrize("head", ["last_token", "lm"])
def test_hessian_probe_matches_dense_float64(head):
    if head == "lm":
        model = _tiny("lm", tie_embeddings=True, qk_layernorm=True)
        y, task = IDS, "causal_lm"

        def mean_loss(z):  # token mean over the shifted targets (every token valid)
            return F.cross_entropy(z[:, :-1].reshape(-1, 7), IDS[:, 1:].reshape(-1))
    else:
        model = _tiny("last_token", qk_layernorm=True)
        y, task = torch.tensor([0, 1, 2, 0, 1, 2]), "classification"

        def mean_loss(z):
            return F.cross_entropy(z, y)
    n = count_parameters(model)
    assert n <= 3000
    H = _dense_hessian(model, IDS, mean_loss)
    assert H.shape == (n, n)
    res = ls.hessian(model, nn.CrossEntropyLoss(), (IDS, y), task=task, top_k=2, bottom_k=0,
                     lanczos_steps=n, trace=False, dtype="float64", device="cpu")
    want = torch.linalg.eigvalsh(H).numpy()[::-1][:2]
    np.testing.assert_allclose(res["eigenvalues"], want, rtol=0, atol=1e-6)
    assert want[0] > 1e-3  # not a trivially flat point


# --------------------------------------------------------------------------- mlp on token ids


def test_mlp_embeds_token_pairs():
    torch.manual_seed(0)
    m = build_model("mlp", (2,), 5, vocab=5, embed_dim=3, width=4, depth=1)
    ids = torch.tensor([[0, 4], [3, 3], [2, 1]])
    emb, lin = m.features[0].weight, m.features[2]
    want = m.classifier(torch.relu(torch.cat([emb[ids[:, 0]], emb[ids[:, 1]]], 1) @ lin.weight.T
                                   + lin.bias))
    torch.testing.assert_close(m(ids), want)
    d = load_dataset("modular", p=5, format="pairs")
    assert m(d.train.x).shape == (len(d.train), 5)
    with pytest.raises(DataError, match="give vocab="):
        build_model("mlp", (2,), 5)(ids)
    with pytest.raises(DataError, match="takes integer token ids"):
        m(torch.randn(3, 2))
