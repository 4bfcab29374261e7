"""``ls.*`` on transformers: a Hugging Face BERT fed dict batches, and an ``nn.TransformerEncoder``.

Models are built from configs with random weights (never downloaded), in float64, with their
default attention (SDPA); every number is checked against a reference computed here directly
(dense Hessian, the model's own loss, per-example gradients by a loop, RankMe by hand).
"""

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.data import DataLoader

import landscape as ls
from landscape.batch import InputBatch
from landscape.errors import LandscapeError

transformers = pytest.importorskip("transformers")

N, T, VOCAB, CLASSES = 22, 6, 30, 3  # batches of 8: 8 + 8 + 6, an uneven last batch
CE = nn.CrossEntropyLoss()


@pytest.fixture(scope="module")
def bert():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=VOCAB, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=16, max_position_embeddings=16, num_labels=CLASSES)
    model = transformers.BertForSequenceClassification(cfg).double()
    ids = torch.randint(0, VOCAB, (N, T))
    mask = torch.ones(N, T, dtype=torch.long)
    mask[::3, 4:] = 0  # padded sequences
    y = torch.randint(0, CLASSES, (N,))
    items = [{"input_ids": ids[i], "attention_mask": mask[i], "labels": y[i]} for i in range(N)]
    return model, {"input_ids": ids, "attention_mask": mask}, y, DataLoader(items, batch_size=8)


class EncoderClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 8)
        layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.classifier = nn.Linear(8, CLASSES)

    def forward(self, ids):
        return self.classifier(self.encoder(self.embed(ids)).mean(1))


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(1)
    model = EncoderClassifier().double()
    ids = torch.randint(0, VOCAB, (N, T))
    y = torch.randint(0, CLASSES, (N,))
    return model, ids, y, DataLoader(list(zip(ids, y, strict=True)), batch_size=8)


def _loss_fn(model, inputs, y):
    """``θ ↦ mean CE`` of the model over all samples at the flat parameters θ, and θ itself."""
    params = dict(model.named_parameters())

    def loss(theta):
        tensors, i = {}, 0
        for name, p in params.items():
            tensors[name] = theta[i:i + p.numel()].view_as(p)
            i += p.numel()
        args, kwargs = ((), inputs) if isinstance(inputs, dict) else ((inputs,), {})
        out = functional_call(model, tensors, args, kwargs)
        return CE(out.logits if hasattr(out, "logits") else out, y)

    return loss, torch.cat([p.detach().reshape(-1) for p in params.values()]), params


def _dense_hessian(model, inputs, y):
    loss, flat, params = _loss_fn(model, inputs, y)
    model.eval()
    with sdpa_kernel(SDPBackend.MATH):
        return torch.autograd.functional.hessian(loss, flat), params


def _own_loss(model, inputs, y):
    model.eval()
    with torch.no_grad():
        out = model(**inputs) if isinstance(inputs, dict) else model(inputs)
        logits = out.logits if hasattr(out, "logits") else out
    return float(CE(logits, y)), float((logits.argmax(1) == y).double().mean())


def _per_example_alpha(model, inputs, y):
    """Coherence α = ‖Σ g_i‖² / (m Σ ‖g_i‖²) from per-example gradients, one sample at a time."""
    model.eval()
    grads = []
    for i in range(len(y)):
        model.zero_grad()
        xi = {k: v[i:i + 1] for k, v in inputs.items()} if isinstance(inputs, dict) else inputs[i:i + 1]
        out = model(**xi) if isinstance(xi, dict) else model(xi)
        CE(out.logits if hasattr(out, "logits") else out, y[i:i + 1]).backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]).clone())
    model.zero_grad(set_to_none=True)
    g = torch.stack(grads)
    return float(g.sum(0).square().sum() / (len(y) * g.square().sum()))


def _features(model, module, inputs):
    seen = []
    handle = module.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    try:
        _own_loss(model, inputs, torch.zeros(N, dtype=torch.long))
    finally:
        handle.remove()
    return seen[0]


def _rankme(z):
    s = torch.linalg.svdvals(z.double())
    p = s / s.sum() + 1e-7
    return float(torch.exp(-(p * p.log()).sum()))


CASES = ["bert", "encoder"]


@pytest.fixture(params=CASES)
def case(request):
    return request.getfixturevalue(request.param)


def test_hessian_top3_and_classifier_block_equal_the_dense_hessian(case):
    model, inputs, y, loader = case
    res = ls.hessian(model, CE, loader, top_k=3, dtype="float64", batch_size=8, trace=False, per_layer=True,
                     lanczos_steps=200, device="cpu")
    dense, params = _dense_hessian(model, inputs, y)
    ref = np.sort(torch.linalg.eigvalsh(dense).numpy())[::-1][:3]
    np.testing.assert_allclose(res["eigenvalues"], ref, rtol=1e-6, atol=1e-9)
    # per-layer blocks are named after the user's own modules (no wrapper prefix)
    names = [n.decode() for n in res["layers"]["names"]]
    assert "classifier" in names
    sizes = [p.numel() for p in params.values()]
    starts = np.cumsum([0, *sizes])
    idx = [j for k, name in enumerate(params) if name.startswith("classifier.")
           for j in range(starts[k], starts[k + 1])]
    block = dense[np.ix_(idx, idx)]
    top = float(torch.linalg.eigvalsh(block)[-1])
    np.testing.assert_allclose(res["layers"]["top_eigenvalue"][names.index("classifier")], top, rtol=1e-6, atol=1e-9)
    assert res["num_samples"] == N


@pytest.mark.parametrize("vectorize", ["loop", "vmap"])
def test_surface_centre_is_the_models_own_loss(case, vectorize):
    model, inputs, y, loader = case
    res = ls.surface(model, CE, loader, x="-1:1:3", y="-1:1:3", splits="train", vectorize=vectorize, device="cpu")
    loss, acc = _own_loss(model, inputs, y)
    np.testing.assert_allclose(res["train_loss"][1, 1], loss, rtol=1e-10)
    np.testing.assert_allclose(res["train_acc"][1, 1], acc)
    assert np.isfinite(res["train_loss"]).all()


def test_sharpness_clean_loss_and_gradient_norm(case):
    model, inputs, y, loader = case
    res = ls.sharpness(model, CE, loader, m=N, dtype="float64", device="cpu")  # one batch of all samples
    loss, acc = _own_loss(model, inputs, y)
    np.testing.assert_allclose(res["loss_clean"], loss, rtol=1e-10)
    np.testing.assert_allclose(res["error_clean"], 1 - acc, atol=1e-12)
    f, flat, _ = _loss_fn(model, inputs, y)
    with sdpa_kernel(SDPBackend.MATH):
        theta = flat.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(f(theta), theta)
    # the largest gradient norm seen by the first-order ascent starts at δ = 0
    assert res["first_order_grad_norm"] >= float(g.norm()) * (1 - 1e-10)
    assert np.all(res["delta_loss"] > 0)  # worst-case perturbations raise the loss
    assert np.isfinite(res["pac_bayes"]["inv_sigma2"])


@pytest.mark.parametrize("method", ["hooks", "vmap"])
def test_coherence_is_per_sequence(case, method):
    model, inputs, y, loader = case
    res = ls.coherence(model, CE, loader, subset=None, dtype="float64", method=method, device="cpu")
    assert res["num_samples"] == N
    np.testing.assert_allclose(res["alpha"], _per_example_alpha(model, inputs, y), rtol=1e-8)


def test_representation_probes_read_the_named_layer(case):
    model, inputs, y, loader = case
    feats = _features(model, model.classifier, inputs)
    rm = ls.rankme(model, CE, loader, layer="classifier", splits="train", device="cpu")
    np.testing.assert_allclose(rm["train"]["rankme"], _rankme(feats), rtol=1e-10)
    col = ls.collapse(model, CE, loader, layer="classifier", splits="train", device="cpu")
    assert np.isfinite(col["train"]["nc1"])
    dse = ls.dse(model, CE, loader, layer="classifier", splits="train", dsmi_inputs=False, device="cpu")
    assert dse["train"]["n_used"] == N and np.isfinite(dse["train"]["dse"])


# ---- the dict data forms -----------------------------------------------------------------------


def test_dict_forms_and_target_key_give_the_same_numbers(bert):
    model, inputs, y, loader = bert
    ref = ls.surface(model, CE, loader, x="-1:1:3", splits="train", dim=1, device="cpu")["train_loss"]
    renamed = DataLoader([{"label": it["labels"], **{k: v for k, v in it.items() if k != "labels"}}
                          for it in loader.dataset], batch_size=5)
    forms = {"dict of tensors": {**inputs, "labels": y}, "(dict, y) pair": (inputs, y),
             "Dataset of dict items": loader.dataset}
    for what, data in forms.items():
        out = ls.surface(model, CE, data, x="-1:1:3", splits="train", dim=1, device="cpu")["train_loss"]
        np.testing.assert_allclose(out, ref, rtol=1e-12, err_msg=what)
    out = ls.surface(model, CE, renamed, target_key="label", x="-1:1:3", splits="train", dim=1, device="cpu")
    np.testing.assert_allclose(out["train_loss"], ref, rtol=1e-12)
    assert out.attrs["data"]["inputs"] == {"target_key": "label", "keys": {
        "attention_mask": {"dtype": "int64", "shape": [T]}, "input_ids": {"dtype": "int64", "shape": [T]}}}


def test_a_dict_batch_without_the_target_key_is_one_line(bert):
    model, _, _, loader = bert
    with pytest.raises(LandscapeError) as err:
        ls.hessian(model, CE, loader, target_key="label", device="cpu")
    msg = str(err.value)
    assert "\n" not in msg and "input_ids, attention_mask, labels" in msg and "'label'" in msg
    assert "target_key" in msg


def test_batches_padded_to_their_own_lengths_stream(bert):
    """Streamed batches may each be padded to their own length (a DataLoader with dynamic
    padding): the loss is the same as with one padded length; a probe that gathers a subset
    across such batches says in one line what to do."""
    model, inputs, y, _ = bert
    short = {k: v.clone() for k, v in inputs.items()}
    short["attention_mask"][8:, 4:] = 0  # the second batch's tail is padding: cut it off there
    same = [{**{k: v[:8] for k, v in short.items()}, "labels": y[:8]},
            {**{k: v[8:] for k, v in short.items()}, "labels": y[8:]}]
    cut = [same[0], {**{k: v[8:, :4] for k, v in short.items()}, "labels": y[8:]}]
    a = ls.surface(model, CE, same, x="-1:1:3", dim=1, splits="train", device="cpu")
    b = ls.surface(model, CE, cut, x="-1:1:3", dim=1, splits="train", device="cpu")
    np.testing.assert_allclose(b["train_loss"], a["train_loss"], rtol=1e-10)
    with pytest.raises(LandscapeError, match="pad every batch to one length") as err:
        ls.coherence(model, CE, cut, subset=12, device="cpu")
    assert "\n" not in str(err.value)


def test_input_batch_indexes_like_a_tensor():
    ids, mask = torch.arange(12).view(4, 3), torch.ones(4, 3, dtype=torch.long)
    xb = InputBatch({"input_ids": ids, "attention_mask": mask, "w": torch.zeros(4, dtype=torch.float32)})
    assert len(xb) == 4 and xb.shape == (4,) and xb.is_floating_point() and xb.dtype == torch.float32
    sub = xb[torch.tensor([3, 1])]
    assert torch.equal(sub["input_ids"], ids[[3, 1]]) and len(xb[1:3]) == 2
    cast = xb.to("cpu", torch.float64)
    assert cast["w"].dtype == torch.float64 and cast["input_ids"].dtype == torch.int64
    joined = InputBatch.cat([xb[:1], xb[1:]])
    assert all(torch.equal(joined[k], xb[k]) for k in xb.keys())
    with pytest.raises(LandscapeError, match="different numbers of samples"):
        InputBatch({"a": ids, "b": mask[:2]})
