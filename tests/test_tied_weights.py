"""Tied / shared weights are one parameter everywhere (``landscape.params``).

References are independent of ``torch.func.functional_call``: each model's forward pass is
written out by hand as a function of one flat float64 vector (the shared tensor appears once in
it and is used at both places), and its dense Hessian is ``torch.autograd.functional.hessian``
of that function; the GPT-2 reference loads the flat vector into a copy of the model by plain
attribute assignment. Before the fix (``tie_weights=False``) the operator held the second use
of a tied matrix fixed and these tests fail.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from landscape.directions import flatten, random_direction, target_tensors
from landscape.linalg import HVP_METHODS, HessianOperator, lanczos
from landscape.params import layer_blocks, second_order, select_parameters, tied_aliases
from landscape.probes.hessian import HessianConfig, hessian
from landscape.probes.surface import evaluate_points

V, D = 16, 8  # vocabulary, width


def CE(z, y):  # noqa: N802 — per-sample cross-entropy
    return F.cross_entropy(z, y, reduction="none")


class TiedEmbedding(nn.Module):
    """Bag-of-tokens classifier whose output layer is the embedding matrix (216 parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(V, D)
        self.hidden = nn.Linear(D, D)
        self.head = nn.Linear(D, V)
        self.head.weight = self.emb.weight

    def forward(self, x):
        return self.head(torch.tanh(self.hidden(self.emb(x).mean(1))))


def tied_reference(theta, x):
    e, w, b, hb = torch.split(theta, [V * D, D * D, D, V])
    e = e.view(V, D)
    h = torch.tanh(F.linear(F.embedding(x, e).mean(1), w.view(D, D), b))
    return F.linear(h, e, hb)


class SharedLinear(nn.Module):
    """One ``nn.Linear`` applied twice (70 parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 6)
        self.out = nn.Linear(6, 4)

    def forward(self, x):
        return self.out(torch.tanh(self.lin(torch.tanh(self.lin(x)))))


def shared_reference(theta, x):
    w, b, wo, bo = torch.split(theta, [36, 6, 24, 4])
    h = torch.tanh(F.linear(torch.tanh(F.linear(x, w.view(6, 6), b)), w.view(6, 6), b))
    return F.linear(h, wo.view(4, 6), bo)


def tied_case():
    torch.manual_seed(0)
    model = TiedEmbedding().double().eval()
    x, y = torch.randint(0, V, (40, 3)), torch.randint(0, V, (40,))
    names = ("emb.weight", "hidden.weight", "hidden.bias", "head.bias")
    return model, x, y, tied_reference, names


def shared_case():
    torch.manual_seed(1)
    model = SharedLinear().double().eval()
    x, y = torch.randn(30, 6, dtype=torch.float64), torch.randint(0, 4, (30,))
    names = ("lin.weight", "lin.bias", "out.weight", "out.bias")
    return model, x, y, shared_reference, names


CASES = {"tied_embedding": tied_case, "shared_linear": shared_case}


def dense(model, x, y, reference):
    """The flat vector (each shared tensor once) and the dense Hessian of the hand-written loss."""
    theta0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])  # deduplicated
    H = torch.autograd.functional.hessian(lambda t: CE(reference(t, x), y).mean(), theta0)
    return theta0, H


@pytest.mark.parametrize("name", CASES)
def test_reference_is_the_model(name):
    model, x, y, reference, _ = CASES[name]()
    theta0, _ = dense(model, x, y, reference)
    torch.testing.assert_close(reference(theta0, x), model(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", CASES)
def test_layout_counts_the_shared_tensor_once(name):
    model, _, _, _, names = CASES[name]()
    layout = select_parameters(model)
    assert layout.names == names
    assert layout.numel == sum(p.numel() for p in set(model.parameters()))
    blocks = layer_blocks(model, layout)
    assert sorted(n for b in blocks.values() for n in b) == sorted(names)
    if name == "tied_embedding":
        assert tied_aliases(model) == {"head.weight": "emb.weight"}
        assert select_parameters(model, ["head.weight"]).names == ("emb.weight",)


@pytest.mark.parametrize("method", [m for m in HVP_METHODS if m != "auto"])
@pytest.mark.parametrize("name", CASES)
def test_hessian_matches_dense(name, method):
    model, x, y, reference, _ = CASES[name]()
    _, H = dense(model, x, y, reference)
    evals = torch.linalg.eigvalsh(H)
    op = HessianOperator(model, CE, x, y, dtype=torch.float64, method=method, batch_size=16)
    torch.testing.assert_close(op.dense(), H, rtol=1e-7, atol=1e-9)
    res = lanczos(op.matvec, op.size, max_steps=op.size, top_k=3, bottom_k=1, dtype=torch.float64)
    got = torch.cat([res.eigenvalues[-3:], res.eigenvalues[:1]])
    want = torch.cat([evals[-3:], evals[:1]])
    assert float((got - want).abs().max()) <= 1e-6


def test_hessian_probe_on_tied_model():
    model, x, y, reference, _ = tied_case()
    _, H = dense(model, x, y, reference)
    evals = torch.linalg.eigvalsh(H).numpy()
    cfg = HessianConfig(dtype="float64", top_k=3, bottom_k=1, lanczos_steps=216, trace=False, per_layer=True)
    out = hessian(model, CE, x, y, cfg)
    assert out["num_params"] == 216
    np.testing.assert_allclose(out["eigenvalues"], evals[::-1][:3], rtol=0, atol=1e-6)
    np.testing.assert_allclose(out["bottom_eigenvalues"], evals[:1], rtol=0, atol=1e-6)
    layers = out["layers"]
    assert [n.decode() for n in layers["names"]] == ["emb", "hidden", "head"]
    assert layers["num_params"].tolist() == [128, 72, 16]
    emb_block = H[:128, :128]  # both uses of the tied matrix, differentiated together
    np.testing.assert_allclose(layers["top_eigenvalue"][0], torch.linalg.eigvalsh(emb_block)[-1].item(),
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["weights", "states"])
def test_directions_hold_the_tied_tensor_once(kind):
    model, *_ = tied_case()
    d = random_direction(model, kind=kind, seed=3)
    assert list(d) == ["emb.weight", "hidden.weight", "hidden.bias", "head.bias"]
    assert flatten(d).numel() == 216
    assert list(target_tensors(model, kind)) == list(d)


def test_surface_point_moves_both_uses_of_the_tied_weight():
    model, x, y, _, _ = tied_case()
    d = random_direction(model, kind="weights", seed=5)
    alpha = 0.3
    base = {k: v.detach() for k, v in [*model.named_parameters(), *model.named_buffers()]}
    losses, accs = evaluate_points(model, base, [d], np.array([[alpha]]), x, y, CE)

    moved = copy.deepcopy(model)  # deepcopy keeps the tie
    assert moved.head.weight is moved.emb.weight
    with torch.no_grad():
        for name, p in moved.named_parameters():
            p.add_(alpha * d[name])
        z = moved(x)
    assert losses[0] == pytest.approx(float(CE(z, y).mean()), abs=1e-12)
    assert accs[0] == pytest.approx(float((z.argmax(1) == y).double().mean()), abs=0)
    with torch.no_grad():
        clean = float(CE(model(x), y).mean())
    assert abs(losses[0] - clean) > 1e-3  # the move does change the loss


# ---- a tiny GPT-2 (tied wte / lm_head, default attention) ------------------------------------


def _gpt2():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_embd=8, n_layer=1, n_head=2, vocab_size=16, n_positions=8,
                                      bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config).double().eval()
    assert model.lm_head.weight is model.transformer.wte.weight
    return model


def next_token_loss(out, ids):
    """Per-sequence mean next-token cross-entropy from ``[N, T, C]`` logits (or an output with
    ``.logits``); with equal-length sequences the mean over sequences is the token mean."""
    z = out.logits if hasattr(out, "logits") else out
    tok = F.cross_entropy(z[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
    return tok.mean(1)


def plain_loader(model):
    """A function that writes a flat vector into ``model`` by attribute assignment (every alias of
    a shared Parameter gets the same slice) — an evaluation path without ``functional_call``."""
    unique = list(dict.fromkeys(model.parameters()))
    offsets, start = {}, 0
    for p in unique:
        offsets[id(p)] = (start, p.shape)
        start += p.numel()
    slots = []
    for name, p in model.named_parameters(remove_duplicate=False):
        owner, attr = name.rsplit(".", 1)
        slots.append((model.get_submodule(owner), attr, *offsets[id(p)]))
    for mod, attr, *_ in slots:
        mod._parameters.pop(attr, None)

    def load(theta):
        for mod, attr, s, shape in slots:
            setattr(mod, attr, theta[s : s + shape.numel()].view(shape))

    theta0 = torch.cat([p.detach().reshape(-1) for p in unique])
    return load, theta0


def test_gpt2_hessian_matches_dense():
    model = _gpt2()
    ids = torch.randint(0, 16, (6, 8), generator=torch.Generator().manual_seed(1))
    op = HessianOperator(model, next_token_loss, ids, ids, dtype=torch.float64, method="double_backward")
    assert op.size == sum(p.numel() for p in set(model.parameters())) <= 3000

    ref = copy.deepcopy(model)
    load, theta0 = plain_loader(ref)
    torch.testing.assert_close(theta0, op.theta, rtol=0, atol=0)  # the same flat coordinates

    def f(theta):
        load(theta)
        return next_token_loss(ref(ids), ids).mean()

    with second_order():  # the reference's double backward needs differentiable attention too
        H = torch.autograd.functional.hessian(f, theta0)
    evals = torch.linalg.eigvalsh(H)
    res = lanczos(op.matvec, op.size, max_steps=200, top_k=3, bottom_k=0, dtype=torch.float64)
    assert float((res.eigenvalues[-3:] - evals[-3:]).abs().max()) <= 1e-6
