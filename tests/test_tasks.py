"""Token tasks (:mod:`landscape.tasks`): a tiny GPT-2 with the causal-LM task through ``ls.*``.

The model is built from a config with random weights (never downloaded), float64, default
attention, tied input/output embeddings. References are computed here directly: the dense
Hessian of the token-weighted mean next-token loss of the tied model, token accuracy by hand.
"""

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

import landscape as ls
from landscape.datasets import Split
from landscape.errors import DataError, LandscapeError
from landscape.tasks import Task, correct_count, sequence_loss, valid_tokens

transformers = pytest.importorskip("transformers")

N, T, VOCAB = 6, 8, 16
CE = nn.CrossEntropyLoss()


@pytest.fixture(scope="module")
def gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_embd=8, n_layer=1, n_head=2, vocab_size=VOCAB, n_positions=T)
    model = transformers.GPT2LMHeadModel(cfg).double().eval()
    assert model.lm_head.weight is model.transformer.wte.weight  # tied
    ids = torch.randint(0, VOCAB, (N, T))
    labels = ids.clone()
    labels[0, 5:] = -100  # padded positions do not count
    labels[3, 3:] = -100
    labels[4, 7:] = -100
    opt = torch.optim.Adam(model.parameters(), lr=0.05)  # fit the data: token accuracy well above chance
    for _ in range(60):
        opt.zero_grad()
        logits = model(ids).logits
        CE(logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1)).backward()
        opt.step()
    return model, ids, labels


def _token_mean_loss(model, flat, ids, labels):
    """(1/T_total) Σ valid next-token CE of the tied model at the flat parameter vector."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    parts = torch.split(flat, [s.numel() for s in shapes])
    params = {n: v.view(s) for n, v, s in zip(names, parts, shapes, strict=True)}
    logits = functional_call(model, params, (ids,), tie_weights=True).logits
    z, y = logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1)
    return nn.functional.cross_entropy(z, y, ignore_index=-100, reduction="sum") / (y != -100).sum()


def test_hessian_top3_matches_dense_tied(gpt2):
    model, ids, labels = gpt2
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert flat.numel() <= 3000
    with sdpa_kernel(SDPBackend.MATH):
        dense = torch.autograd.functional.hessian(lambda w: _token_mean_loss(model, w, ids, labels), flat)
    ref = np.sort(np.linalg.eigvalsh(dense.numpy()))[::-1][:3]
    res = ls.hessian(model, CE, (ids, labels), task="causal_lm", top_k=3, bottom_k=0, trace=False,
                     dtype="float64", lanczos_steps=300, device="cpu")
    got = np.sort(np.asarray(res["eigenvalues"]))[::-1][:3]
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)
    assert res.attrs["data"]["task"]["name"] == "causal_lm"
    assert res.attrs["data"]["task"]["valid_tokens"]["train"] == int((labels[:, 1:] != -100).sum())


@pytest.mark.parametrize("vectorize", ["loop", "vmap"])
def test_surface_token_accuracy(gpt2, vectorize):
    model, ids, labels = gpt2
    res = ls.surface(model, CE, (ids, labels), task="causal_lm", dim=2, x="-1:1:3", y="-1:1:3",
                     vectorize=vectorize, device="cpu")
    acc, loss = np.asarray(res["train_acc"]), np.asarray(res["train_loss"])
    assert acc.shape == (3, 3) and np.all((acc >= 0) & (acc <= 1))
    with torch.no_grad():
        logits = model(ids).logits
    y = labels[:, 1:]
    valid = y != -100
    ref_acc = float(((logits[:, :-1].argmax(-1) == y) & valid).sum()) / float(valid.sum())
    ref_loss = float(nn.functional.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), y.reshape(-1),
                                                 ignore_index=-100))
    assert acc[1, 1] == pytest.approx(ref_acc, abs=1e-12)
    assert loss[1, 1] == pytest.approx(ref_loss, rel=1e-10)
    assert res["origin_loss"] == pytest.approx(ref_loss, rel=1e-10)


def _token_accuracy(model, ids, labels):
    with torch.no_grad():
        logits = model(ids).logits
    y = labels[:, 1:]
    valid = y != -100
    return float(((logits[:, :-1].argmax(-1) == y) & valid).sum()) / float(valid.sum())


def test_sharpness_pac_bayes_finite(gpt2):
    model, ids, labels = gpt2
    acc0 = _token_accuracy(model, ids, labels)
    assert acc0 > 0.3
    res = ls.sharpness(model, CE, (ids, labels), task="causal_lm", m=N, subset=N, rhos=(0.01,), iters=3,
                       pac_bayes=True, pac_target=acc0 / 2, pac_draws=2, pac_steps=4, first_order_rho=None,
                       dtype="float64", device="cpu")
    pac = res["pac_bayes"]
    assert pac["accuracy_clean"] == pytest.approx(acc0, abs=1e-12)  # one batch = the whole split
    assert float(np.asarray(res["error_clean"])[0]) == pytest.approx(1 - acc0, abs=1e-12)
    assert np.isfinite(pac["sigma"]) and pac["sigma"] > 0
    assert np.isfinite(pac["sigma_mag"])
    assert np.all(np.isfinite(np.asarray(res["delta_error"])))
    assert np.all(np.isfinite(np.asarray(res["error_clean"])))


@pytest.mark.parametrize("method", ["hooks", "vmap"])
def test_coherence_per_sequence(gpt2, method):
    model, ids, labels = gpt2
    res = ls.coherence(model, CE, (ids, labels), task="causal_lm", method=method, subset=None,
                       dtype="float64", device="cpu")
    total = int((labels[:, 1:] != -100).sum())
    grads = []  # one example = one sequence: ℓ_n = (N / T_total) Σ_t ℓ_{n,t}, by a loop
    for n in range(N):
        logits = model(ids[n : n + 1]).logits
        loss_n = N / total * nn.functional.cross_entropy(logits[0, :-1], labels[n, 1:], ignore_index=-100,
                                                         reduction="sum")
        grads.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss_n, list(model.parameters()))]))
    g = torch.stack(grads)
    assert int(res["num_samples"]) == N
    assert float(res["mean_grad_norm_sq"]) == pytest.approx(float(g.mean(0).square().sum()), rel=1e-8)
    assert float(res["mean_sq_grad_norm"]) == pytest.approx(float(g.square().sum(1).mean()), rel=1e-8)


def test_sequence_loss_mean_is_token_weighted():
    torch.manual_seed(1)
    logits = torch.randn(4, 5, 7, dtype=torch.float64)
    y = torch.randint(0, 7, (4, 5))
    y[1, 2:] = -100
    for name in ("causal_lm", "token_classification"):
        task = Task(name)
        total = valid_tokens(y, task)
        per_seq = sequence_loss(nn.CrossEntropyLoss(reduction="none"), task, len(y) / total)(logits, y)
        z, t = (logits[:, :-1], y[:, 1:]) if name == "causal_lm" else (logits, y)
        ref = nn.functional.cross_entropy(z.reshape(-1, 7), t.reshape(-1), ignore_index=-100)
        assert per_seq.shape == (4,)
        assert float(per_seq.mean()) == pytest.approx(float(ref), rel=1e-12)
        correct, count = correct_count(logits, y, task)
        mask = t != -100
        assert count == int(mask.sum())
        assert int(correct) == int(((z.argmax(-1) == t) & mask).sum())


def test_classification_correct_count_is_argmax():
    logits = torch.tensor([[0.1, 0.9], [2.0, -1.0], [0.0, 1.0]])
    y = torch.tensor([1, 1, 1])
    correct, count = correct_count(logits, y)
    assert (int(correct), count) == (2, 3)
    batched, _ = correct_count(torch.stack([logits, -logits]), y)  # leading weight-point axis
    assert batched.tolist() == [2, 1]


def test_shape_mismatch_is_one_line(gpt2):
    model, ids, labels = gpt2
    with pytest.raises(LandscapeError) as err:  # per-token logits, one label per sequence
        ls.hessian(model, CE, (ids, labels[:, 0].clamp_min(0)), top_k=1, device="cpu")
    msg = str(err.value)
    assert "\n" not in msg and f"({N}, {T}, {VOCAB})" in msg and f"({N},)" in msg
    with pytest.raises(LandscapeError) as err:  # a token task given (N,) targets
        ls.hessian(model, CE, (ids, labels[:, 0].clamp_min(0)), task="causal_lm", top_k=1, device="cpu")
    assert "\n" not in str(err.value) and f"({N},)" in str(err.value)
    with pytest.raises(LandscapeError):
        ls.hessian(model, CE, (ids, labels), task="lm", top_k=1, device="cpu")


def test_split_token_targets_only_for_token_tasks():
    x, y = torch.zeros(3, 4, dtype=torch.long), torch.zeros(3, 4, dtype=torch.long)
    with pytest.raises(DataError):
        Split(x, y)
    assert Split(x, y, "causal_lm").to("cpu").task == "causal_lm"
    with pytest.raises(DataError):
        Split(x, y[:, 0], "token_classification")


def test_token_targets_without_task_name_the_option(gpt2):
    model, ids, labels = gpt2
    with pytest.raises(LandscapeError, match="task='causal_lm'"):
        ls.hessian(model, CE, (ids, labels), top_k=1, device="cpu")


# ---- regression -------------------------------------------------------------------------------


def _regression_problem():
    torch.manual_seed(0)
    x = torch.randn(40, 3, dtype=torch.float64)
    y = torch.sin(x @ torch.randn(3, 2, dtype=torch.float64))
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    return model, x, y


def test_regression_hessian_surface_and_sharpness_match_mse_directly():
    model, x, y = _regression_problem()
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def mse(theta):
        parts = torch.split(theta, [s.numel() for s in shapes])
        state = {n: p.view(s) for n, p, s in zip(names, parts, shapes, strict=True)}
        return nn.functional.mse_loss(torch.func.functional_call(model, state, (x,)), y)

    dense = np.linalg.eigvalsh(torch.autograd.functional.hessian(mse, flat).numpy())
    res = ls.hessian(model, nn.MSELoss(), (x, y), task="regression", top_k=3, dtype="float64", device="cpu")
    np.testing.assert_allclose(res["eigenvalues"], dense[::-1][:3], rtol=1e-8)
    assert res.attrs["data"]["task"] == {"name": "regression"}
    surf = ls.surface(model, nn.MSELoss(), (x, y), task="regression", x="-1:1:3", dim=1, splits="train", device="cpu")
    assert abs(float(surf["train_loss"][1]) - float(mse(flat))) < 1e-12 and np.isnan(surf["train_acc"]).all()
    sharp = ls.sharpness(model, nn.MSELoss(), (x, y), task="regression", m=20, rhos=0.05, iters=3, dtype="float64",
                          device="cpu")
    assert abs(float(sharp["loss_clean"][0]) - float(mse(flat))) < 1e-12  # two batches of 20: their mean
    assert np.isnan(sharp["delta_error"]).all()  # no accuracy, no error metric


def test_regression_mistakes_are_one_line():
    model, x, y = _regression_problem()
    with pytest.raises(LandscapeError, match="task='regression'") as err:
        ls.hessian(model, nn.MSELoss(), (x, y[:, 0]), top_k=1)  # float targets, classification by default
    assert "\n" not in str(err.value)
    with pytest.raises(LandscapeError, match="outputs of the targets' shape"):
        ls.hessian(model, nn.MSELoss(), (x, y[:, :1].repeat(1, 3)), task="regression", top_k=1)
    with pytest.raises(LandscapeError, match="class labels"):
        ls.collapse(model, nn.MSELoss(), (x, y), task="regression", splits="train")
