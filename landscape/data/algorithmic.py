"""Algorithmic tasks: ``modular`` arithmetic (grokking) and ``sparse_parity``."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from landscape.data._checks import check_float, check_int
from landscape.data.containers import RawData
from landscape.data.loaders import DATASETS
from landscape.errors import ConfigError

MODULAR_OPS: dict[str, str] = {
    "add": "a + b",
    "sub": "a - b",
    "mul": "a * b",
    "div": "a * b^-1 (b != 0)",
    "quad": "a^2 + a*b + b^2",
}
"""The operations of the ``modular`` dataset (Power et al. 2022), all taken mod ``p``."""

_OP_ALIASES = {"+": "add", "-": "sub", "*": "mul", "x": "mul", "/": "div", "÷": "div",
               "x2+xy+y2": "quad", "x^2+xy+y^2": "quad", "a^2+ab+b^2": "quad"}
MODULAR_FORMATS = ("tokens", "pairs", "onehot")


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, math.isqrt(n) + 1))


def modular_table(p: int, op: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every operand pair of ``a ∘ b mod p`` in row-major order and its result: ``(a, b, c)``,
    int64; ``div`` leaves out ``b = 0`` and uses ``b⁻¹ = b^(p-2) mod p`` (``p`` prime)."""
    a, b = (g.ravel().astype(np.int64) for g in np.meshgrid(np.arange(p), np.arange(p), indexing="ij"))
    if op == "div":
        keep = b != 0
        a, b = a[keep], b[keep]
        inverse = np.array([pow(int(v), p - 2, p) for v in range(p)], dtype=np.int64)
        c = a * inverse[b] % p
    elif op == "add":
        c = (a + b) % p
    elif op == "sub":
        c = (a - b) % p
    elif op == "mul":
        c = a * b % p
    else:  # quad
        c = (a * a + a * b + b * b) % p
    return a, b, c


@DATASETS.register("modular", "modular_arithmetic")
def _modular(
    *,
    seed: int,
    root: Path | None,
    p: int = 97,
    op: str = "add",
    train_fraction: float = 0.3,
    format: str = "tokens",  # noqa: A002 — the user-facing parameter name
) -> RawData:
    """Modular arithmetic ``a ∘ b mod p`` (grokking, Power et al. 2022): every pair, split at random.

    ``op`` is ``add`` (+), ``sub`` (-), ``mul`` (*), ``div`` (/: ``a · b⁻¹``, ``b ≠ 0``, ``p``
    prime) or ``quad`` (``a² + ab + b²``). The table of all ``p²`` pairs (``p(p-1)`` for ``div``)
    is permuted with ``seed`` and its first ``round(train_fraction · N)`` rows are the train
    split, the rest the test split; the label is ``a ∘ b mod p`` (``p`` classes).
    ``format``: ``tokens`` gives ``x = [a, OP, b, =]`` int64 ids with ``OP = p`` and ``= = p + 1``
    (vocabulary ``p + 2``, for a transformer classifying from the last token); ``pairs`` gives
    ``x = [a, b]`` int64 ids (vocabulary ``p``, for an MLP with embeddings: ``mlp`` with
    ``vocab=p``); ``onehot`` gives float32 ``[onehot(a), onehot(b)]`` of length ``2p``.
    The vocabulary size is ``info["vocab"]``.
    """
    p = check_int("p", p, minimum=2)
    if not isinstance(op, str) or _OP_ALIASES.get(op.strip(), op.strip().lower()) not in MODULAR_OPS:
        raise ConfigError(f"modular op must be one of {', '.join(MODULAR_OPS)} (or + - * /), got {op!r}")
    op = _OP_ALIASES.get(op.strip(), op.strip().lower())
    if format not in MODULAR_FORMATS:
        raise ConfigError(f"modular format must be one of {', '.join(MODULAR_FORMATS)}, got {format!r}")
    train_fraction = check_float(
        "train_fraction", train_fraction, low=0.0, high=1.0, open_low=True, open_high=True
    )
    if op == "div" and not _is_prime(p):
        raise ConfigError(f"modular division needs a prime p (every b ≠ 0 invertible), got p={p}")
    a, b, c = modular_table(p, op)
    n = len(c)
    n_train = min(max(int(round(train_fraction * n)), 1), n - 1)
    order = np.random.default_rng([seed, 0]).permutation(n)
    if format == "tokens":
        x = np.stack([a, np.full(n, p), b, np.full(n, p + 1)], axis=1).astype(np.int64)
        vocab = p + 2
    elif format == "pairs":
        x = np.stack([a, b], axis=1).astype(np.int64)
        vocab = p
    else:
        x = np.zeros((n, 2 * p), dtype=np.float32)
        x[np.arange(n), a] = 1.0
        x[np.arange(n), p + b] = 1.0
        vocab = p
    train, test = order[:n_train], order[n_train:]
    info = {
        "p": p,
        "op": op,
        "formula": f"{MODULAR_OPS[op]} mod {p}",
        "format": format,
        "vocab": vocab,
        "pairs": n,
        "train_fraction_applied": n_train / n,
        **({"tokens": {"op": p, "equals": p + 1}} if format == "tokens" else {}),
    }
    return RawData(x[train], c[train], x[test], c[test], p, info, normalize="none")


SPARSE_PARITY_ENCODINGS = ("pm1", "binary", "tokens")


def _distinct_bits(rng: np.random.Generator, n_rows: int, n_bits: int) -> np.ndarray:
    """``n_rows`` distinct uniformly random rows of ``{0, 1}^n_bits`` (uint8), in random order."""
    if n_bits <= 20:
        codes = rng.choice(2**n_bits, size=n_rows, replace=False)
        return ((codes[:, None] >> np.arange(n_bits)) & 1).astype(np.uint8)
    bits = rng.integers(0, 2, size=(n_rows, n_bits), dtype=np.uint8)
    while True:
        _, first = np.unique(np.packbits(bits, axis=1), axis=0, return_index=True)
        duplicate = np.setdiff1d(np.arange(n_rows), first)
        if not len(duplicate):
            return bits
        bits[duplicate] = rng.integers(0, 2, size=(len(duplicate), n_bits), dtype=np.uint8)


@DATASETS.register("sparse_parity")
def _sparse_parity(
    *,
    seed: int,
    root: Path | None,
    n_bits: int = 20,
    k: int = 3,
    n_train: int = 2000,
    n_test: int = 1000,
    encoding: str = "pm1",
) -> RawData:
    """Sparse parity (Barak et al. 2022): ``y = (Σ_{i∈S} b_i) mod 2`` over ``k`` hidden bits ``S``.

    ``S`` (``info["relevant"]``) is ``k`` of the ``n_bits`` positions drawn from ``seed``; the
    ``n_train + n_test`` inputs are distinct uniform bit strings ``b ∈ {0,1}^n`` (no test input is
    in the train split). ``encoding``: ``pm1`` gives float32 ``x = 1 − 2b ∈ {±1}`` (so
    ``∏_{i∈S} x_i = (−1)^y``), ``binary`` float32 ``b``, ``tokens`` int64 ids ``b`` (vocabulary 2).
    """
    n_bits = check_int("n_bits", n_bits, minimum=1)
    k = check_int("k", k, minimum=1)
    n_train = check_int("n_train", n_train, minimum=1)
    n_test = check_int("n_test", n_test, minimum=1)
    if k > n_bits:
        raise ConfigError(f"sparse_parity needs k ≤ n_bits, got k={k}, n_bits={n_bits}")
    if encoding not in SPARSE_PARITY_ENCODINGS:
        raise ConfigError(
            f"sparse_parity encoding must be one of {', '.join(SPARSE_PARITY_ENCODINGS)}, got {encoding!r}"
        )
    if n_bits < 62 and n_train + n_test > 2**n_bits:
        raise ConfigError(
            f"sparse_parity: {n_train} + {n_test} distinct inputs do not fit in 2^{n_bits} bit "
            "strings; lower n_train / n_test or raise n_bits"
        )
    rng = np.random.default_rng([seed, 0])
    relevant = np.sort(rng.choice(n_bits, size=k, replace=False))
    bits = _distinct_bits(rng, n_train + n_test, n_bits)
    y = (bits[:, relevant].sum(axis=1) % 2).astype(np.int64)
    if encoding == "pm1":
        x: np.ndarray = (1.0 - 2.0 * bits).astype(np.float32)
    elif encoding == "binary":
        x = bits.astype(np.float32)
    else:
        x = bits.astype(np.int64)
    info = {"n_bits": n_bits, "k": k, "relevant": relevant.tolist(), "encoding": encoding,
            **({"vocab": 2} if encoding == "tokens" else {})}
    return RawData(x[:n_train], y[:n_train], x[n_train:], y[n_train:], 2, info, normalize="none")
