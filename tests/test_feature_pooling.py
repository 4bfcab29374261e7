"""Representation probes on sequence models: per-token features pooled (``pool="mean"`` over the
attention mask, ``pool="last"``) or given by ``features_fn``; RankMe checked against numpy on
features computed here directly from the Hugging Face model."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

import landscape as ls
from landscape.errors import LandscapeError
from landscape.features import pool_tokens

transformers = pytest.importorskip("transformers")
N, T, VOCAB = 20, 6, 30
CE = nn.CrossEntropyLoss()


def _rankme(z: np.ndarray, eps: float = 1e-7) -> float:
    s = np.linalg.svd(z, compute_uv=False)
    p = s / s.sum() + eps
    return float(np.exp(-(p * np.log(p)).sum()))


@pytest.fixture(scope="module")
def bert():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=VOCAB, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=16, max_position_embeddings=16, num_labels=3)
    model = transformers.BertForSequenceClassification(cfg).double().eval()
    ids = torch.randint(0, VOCAB, (N, T))
    mask = torch.ones(N, T, dtype=torch.long)
    mask[::2, 3:] = 0  # half the sequences are padded after 3 tokens
    y = torch.randint(0, 3, (N,))
    items = [{"input_ids": ids[i], "attention_mask": mask[i], "labels": y[i]} for i in range(N)]
    return model, ids, mask, DataLoader(items, batch_size=8)


def test_pool_tokens_mean_and_last_follow_the_mask():
    h = torch.arange(24, dtype=torch.float64).view(2, 3, 4)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    np.testing.assert_allclose(pool_tokens(h, "mean", mask), torch.stack([h[0, :2].mean(0), h[1].mean(0)]))
    np.testing.assert_allclose(pool_tokens(h, "last", mask), torch.stack([h[0, 1], h[1, 2]]))
    np.testing.assert_allclose(pool_tokens(h, "last"), h[:, -1])
    assert pool_tokens(h, "flatten", mask) is h and pool_tokens(h[:, 0], "mean") is not None


def test_mean_pooled_encoder_output_gives_rankme_of_the_masked_mean(bert):
    model, ids, mask, loader = bert
    with torch.no_grad():
        hidden = model.bert(input_ids=ids, attention_mask=mask).last_hidden_state  # the pooler's input
    m = mask.double().unsqueeze(-1)
    truth = _rankme(((hidden * m).sum(1) / m.sum(1)).numpy())
    res = ls.rankme(model, CE, loader, layer="bert.pooler", pool="mean", splits="train", device="cpu")
    assert abs(float(res["train"]["rankme"]) - truth) < 1e-9
    flat = ls.rankme(model, CE, loader, layer="bert.pooler", splits="train", device="cpu")  # T·D features
    assert abs(float(flat["train"]["rankme"]) - _rankme(hidden.reshape(N, -1).numpy())) < 1e-9


def test_last_token_of_a_causal_lm(bert):
    torch.manual_seed(1)
    gpt = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=VOCAB, n_positions=8, n_embd=8, n_layer=1,
                                                               n_head=2)).double().eval()
    ids = torch.randint(0, VOCAB, (N, T))
    with torch.no_grad():
        last = gpt.transformer(ids).last_hidden_state[:, -1]  # the LM head's input at the last position
    res = ls.rankme(gpt, CE, (ids, ids), task="causal_lm", layer="lm_head", pool="last", splits="train", device="cpu")
    assert abs(float(res["train"]["rankme"]) - _rankme(last.numpy())) < 1e-9


def test_features_fn_replaces_the_hook(bert):
    model, ids, mask, loader = bert
    with torch.no_grad():
        cls = model.bert(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]
    res = ls.rankme(model, CE, loader, splits="train", device="cpu",
                    features_fn=lambda m, xb: m.bert(**xb.as_kwargs()).last_hidden_state[:, 0])
    assert abs(float(res["train"]["rankme"]) - _rankme(cls.numpy())) < 1e-9
    with pytest.raises(LandscapeError, match="one row per sample") as err:
        ls.rankme(model, CE, loader, splits="train", device="cpu", features_fn=lambda m, xb: torch.zeros(3))
    assert "\n" not in str(err.value)
    with pytest.raises(LandscapeError, match="pool must be one of"):
        ls.rankme(model, CE, loader, splits="train", pool="max")
