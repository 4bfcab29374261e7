"""The algorithmic datasets: ``modular`` (a ∘ b mod p) and ``sparse_parity``.

References are computed directly with Python integers (``pow(b, -1, p)`` for the inverse,
independent of the loader's Fermat inverse) and by reading the relevant bits off ``x``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from landscape.datasets import load_dataset
from landscape.errors import ConfigError

OPS = {
    "add": lambda a, b, p: (a + b) % p,
    "sub": lambda a, b, p: (a - b) % p,
    "mul": lambda a, b, p: (a * b) % p,
    "div": lambda a, b, p: (a * pow(b, -1, p)) % p,
    "quad": lambda a, b, p: (a * a + a * b + b * b) % p,
}


def _operands(split, fmt: str, p: int) -> list[tuple[int, int]]:
    x = split.x
    if fmt == "tokens":
        return [(int(r[0]), int(r[2])) for r in x]
    if fmt == "pairs":
        return [(int(r[0]), int(r[1])) for r in x]
    onehot = x.numpy()
    assert set(np.unique(onehot)) <= {0.0, 1.0} and (onehot.sum(1) == 2).all()
    return [(int(r[:p].argmax()), int(r[p:].argmax())) for r in onehot]


# --------------------------------------------------------------------------- modular


@pytest.mark.parametrize("op", sorted(OPS))
@pytest.mark.parametrize("fmt", ["tokens", "pairs", "onehot"])
def test_modular_labels_are_the_arithmetic_and_the_split_a_partition(op, fmt):
    p = 11
    d = load_dataset("modular", p=p, op=op, format=fmt, train_fraction=0.4, seed=3)
    everything = {(a, b) for a in range(p) for b in range(p) if op != "div" or b != 0}
    seen: list[tuple[int, int]] = []
    for split in (d.train, d.test):
        pairs = _operands(split, fmt, p)
        assert split.y.tolist() == [OPS[op](a, b, p) for a, b in pairs]
        seen += pairs
    assert len(seen) == len(everything) and set(seen) == everything  # each pair exactly once
    assert len(d.train) == round(0.4 * len(everything))
    assert d.num_classes == p and d.train.y.dtype == torch.int64


def test_modular_division_inverts_multiplication():
    p = 97
    d = load_dataset("modular", p=p, op="/", format="pairs")
    for split in (d.train, d.test):
        a, b, y = split.x[:, 0], split.x[:, 1], split.y
        assert (b != 0).all()
        assert torch.equal((y * b) % p, a)
    assert len(d.train) + len(d.test) == p * (p - 1)


def test_modular_tokens_layout_and_defaults():
    d = load_dataset("modular")
    p = 97
    src = d.info["source"]
    assert src["p"] == p and src["op"] == "add" and src["vocab"] == p + 2
    assert d.input_shape == (4,) and d.train.x.dtype == torch.int64
    x = torch.cat([d.train.x, d.test.x])
    assert (x[:, 1] == p).all() and (x[:, 3] == p + 1).all()
    assert int(x[:, [0, 2]].max()) == p - 1 and int(x[:, [0, 2]].min()) == 0
    assert 0.3 <= len(d.train) / (p * p) <= 0.5
    assert d.normalization["method"] == "none"  # token ids are used as given


def test_modular_split_is_seeded_and_shared_across_formats():
    a = load_dataset("modular", p=13, seed=1)
    b = load_dataset("modular", p=13, seed=1, format="pairs")
    c = load_dataset("modular", p=13, seed=2)
    assert torch.equal(a.train.x[:, [0, 2]], b.train.x) and torch.equal(a.train.y, b.train.y)
    assert not torch.equal(a.train.x, c.train.x)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"op": "div", "p": 12}, "prime p"),
        ({"op": "pow"}, "modular op must be one of add, sub, mul, div, quad"),
        ({"format": "text"}, "modular format must be one of tokens, pairs, onehot"),
        ({"train_fraction": 1.0}, "train_fraction must be in (0, 1)"),
        ({"p": 1}, "p must be >= 2"),
    ],
)
def test_modular_bad_parameters(params, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_dataset("modular", **params)


# --------------------------------------------------------------------------- sparse parity


@pytest.mark.parametrize("encoding", ["pm1", "binary", "tokens"])
def test_sparse_parity_labels_by_direct_computation(encoding):
    d = load_dataset("sparse_parity", n_bits=12, k=3, n_train=300, n_test=200, encoding=encoding, seed=5)
    relevant = d.info["source"]["relevant"]
    assert len(relevant) == 3 and len(set(relevant)) == 3 and all(0 <= i < 12 for i in relevant)
    for split in (d.train, d.test):
        x = split.x.numpy()
        if encoding == "pm1":
            assert set(np.unique(x)) == {-1.0, 1.0}
            bits = (x < 0).astype(int)
            assert (np.prod(x[:, relevant], axis=1) == (-1.0) ** split.y.numpy()).all()
        else:
            assert set(np.unique(x)) == {0, 1}
            bits = x.astype(int)
        want = [sum(int(row[i]) for i in relevant) % 2 for row in bits]
        assert split.y.tolist() == want
    assert d.train.x.dtype == (torch.int64 if encoding == "tokens" else torch.float32)
    assert d.normalization["method"] == "none"


@pytest.mark.parametrize("n_bits", [6, 40])
def test_sparse_parity_inputs_are_distinct_and_test_is_unseen(n_bits):
    n_train, n_test = (40, 24) if n_bits == 6 else (500, 300)
    d = load_dataset("sparse_parity", n_bits=n_bits, k=2, n_train=n_train, n_test=n_test)
    rows = [tuple(r) for r in torch.cat([d.train.x, d.test.x]).tolist()]
    assert len(set(rows)) == n_train + n_test
    if n_bits == 6:  # 64 = 2^6: every bit string once
        assert len(rows) == 2**6
    # both labels occur in the train split
    assert set(d.train.y.tolist()) == {0, 1}


def test_sparse_parity_relevant_bits_follow_the_seed():
    draws = {tuple(load_dataset("sparse_parity", n_bits=30, k=4, seed=s).info["source"]["relevant"])
             for s in range(5)}
    assert len(draws) > 1
    a = load_dataset("sparse_parity", n_bits=30, k=4, seed=7)
    b = load_dataset("sparse_parity", n_bits=30, k=4, seed=7)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"n_bits": 3, "k": 4}, "k ≤ n_bits"),
        ({"n_bits": 4, "n_train": 10, "n_test": 10}, "do not fit in 2\\^4"),
        ({"encoding": "bits"}, "encoding must be one of pm1, binary, tokens"),
    ],
)
def test_sparse_parity_bad_parameters(params, message):
    with pytest.raises(ConfigError, match=message):
        load_dataset("sparse_parity", **params)
