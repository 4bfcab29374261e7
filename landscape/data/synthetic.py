"""Loaders that need no files: sklearn's embedded ``digits`` and the synthetic
``gaussian_mixture`` and ``teacher_student`` tasks."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from landscape.data._checks import check_float, check_int, check_shape
from landscape.data.containers import RawData
from landscape.data.loaders import DATASETS
from landscape.errors import ConfigError


def _resolve_dim(dim: int | None, image_shape: Sequence[int] | None) -> tuple[int, tuple[int, ...]]:
    """``(dim, input_shape)`` for the synthetic loaders: ``dim`` defaults to 32 or prod(image_shape)."""
    if image_shape is None:
        d = 32 if dim is None else check_int("dim", dim, minimum=1)
        return d, (d,)
    shape = check_shape("image_shape", image_shape)
    d = math.prod(shape)
    if dim is not None and check_int("dim", dim, minimum=1) != d:
        raise ConfigError(
            f"dim={dim} does not match image_shape={list(shape)} (product {d}); give one of them"
        )
    return d, shape


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """sklearn's digits as read once per process (parsing its CSV costs ~0.1–1 s); callers copy."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = np.asarray(bunch.images, dtype=np.float32)[:, None, :, :]
    x.flags.writeable = False
    y = np.asarray(bunch.target, dtype=np.int64)
    y.flags.writeable = False
    return x, y


@DATASETS.register("digits")
def _digits(*, seed: int, root: Path | None, test_fraction: float = 0.25) -> RawData:
    """sklearn's 8x8 handwritten digits (1797 samples, 10 classes), input (1, 8, 8); embedded, no files.

    A class-stratified split drawn from ``seed`` puts ``round(test_fraction * n_c)``
    samples of each class ``c`` into the test set.
    """
    test_fraction = check_float(
        "test_fraction", test_fraction, low=0.0, high=1.0, open_low=True, open_high=True
    )
    x, y = _digits_arrays()
    rng = np.random.default_rng([seed, 0])
    test_idx = []
    for c in range(10):
        members = np.flatnonzero(y == c)
        k = min(max(int(round(test_fraction * len(members))), 1), len(members) - 1)
        test_idx.append(rng.choice(members, size=k, replace=False))
    test_mask = np.zeros(len(y), dtype=bool)
    test_mask[np.concatenate(test_idx)] = True
    return RawData(
        x[~test_mask],
        y[~test_mask],
        x[test_mask],
        y[test_mask],
        10,
        {"source": "sklearn.datasets.load_digits", "pixel_range": [0, 16]},
    )


@DATASETS.register("gaussian_mixture", "gmm")
def _gaussian_mixture(
    *,
    seed: int,
    root: Path | None,
    num_classes: int = 10,
    dim: int | None = None,
    n_train: int = 2000,
    n_test: int = 1000,
    separation: float = 3.0,
    noise: float = 1.0,
    image_shape: Sequence[int] | None = None,
) -> RawData:
    """Synthetic Gaussian mixture: one isotropic Gaussian per class, balanced classes.

    .. math::

        \\mu_c \\sim \\mathcal{N}(0, \\tfrac{s^2}{d} I_d), \\qquad
        x = \\mu_y + \\sigma\\,\\varepsilon, \\quad \\varepsilon \\sim \\mathcal{N}(0, I_d),

    with ``s = separation`` and ``σ = noise``, so ``‖μ_c‖ ≈ s`` and two means are
    ``≈ s√2`` apart whatever the dimension ``d``: the Bayes error depends on
    ``s/σ`` only (defaults: pairwise margin ≈ 4.2σ, a few percent Bayes error
    over 10 classes), while learning gets harder as ``d`` grows because the means
    must be estimated from ``n_train`` samples. ``dim`` defaults to 32, or to
    ``prod(image_shape)`` when ``image_shape`` (e.g. ``[3, 32, 32]``) is given, in
    which case inputs are reshaped to it (i.i.d. pixels, no spatial structure).
    Labels are ``arange(n) % C`` shuffled, so classes are exactly balanced when
    ``C`` divides ``n``.
    """
    num_classes = check_int("num_classes", num_classes, minimum=2)
    n_train = check_int("n_train", n_train, minimum=1)
    n_test = check_int("n_test", n_test, minimum=1)
    separation = check_float("separation", separation, low=0.0)
    noise = check_float("noise", noise, low=0.0)
    d, shape = _resolve_dim(dim, image_shape)
    rng = np.random.default_rng([seed, 0])
    means = rng.standard_normal((num_classes, d)) * (separation / math.sqrt(d))

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.permutation(np.arange(n) % num_classes).astype(np.int64)
        x = means[y] + noise * rng.standard_normal((n, d))
        return x.astype(np.float32).reshape((n, *shape)), y

    x_train, y_train = draw(n_train)
    x_test, y_test = draw(n_test)
    info = {
        "dim": d,
        "input_shape": list(shape),
        "mean_norms": np.linalg.norm(means, axis=1).round(6).tolist(),
    }
    return RawData(x_train, y_train, x_test, y_test, num_classes, info)


@DATASETS.register("teacher_student")
def _teacher_student(
    *,
    seed: int,
    root: Path | None,
    num_classes: int = 10,
    dim: int | None = None,
    n_train: int = 2000,
    n_test: int = 1000,
    hidden: int = 64,
    depth: int = 2,
    image_shape: Sequence[int] | None = None,
) -> RawData:
    """Synthetic teacher–student task: a fixed random ReLU MLP labels Gaussian inputs.

    Inputs ``x ~ N(0, I_d)``; the teacher has ``depth`` hidden ReLU layers of width
    ``hidden`` (He-initialized, ``W ~ N(0, 2/fan_in)``, no bias) and a linear
    read-out ``N(0, 1/fan_in)``; the label is ``argmax_c (z_c - m_c)/s_c + b_c``,
    where ``m, s`` are the logits' mean and std on a reference sample of 20 000
    inputs and the offsets ``b`` are fitted on that sample so that every class
    is about equally frequent (a raw random teacher puts most inputs in one or
    two classes). The labels are a deterministic function of ``x`` (no noise).
    ``dim`` / ``image_shape`` behave as in ``gaussian_mixture``; ``depth=0`` is a
    linear teacher.
    """
    num_classes = check_int("num_classes", num_classes, minimum=2)
    n_train = check_int("n_train", n_train, minimum=1)
    n_test = check_int("n_test", n_test, minimum=1)
    hidden = check_int("hidden", hidden, minimum=1)
    depth = check_int("depth", depth, minimum=0)
    d, shape = _resolve_dim(dim, image_shape)
    rng = np.random.default_rng([seed, 0])
    weights = []
    fan_in = d
    for _ in range(depth):
        weights.append(rng.standard_normal((fan_in, hidden)) * math.sqrt(2.0 / fan_in))
        fan_in = hidden
    readout = rng.standard_normal((fan_in, num_classes)) / math.sqrt(fan_in)

    def logits(x: np.ndarray) -> np.ndarray:
        h = x
        for w in weights:
            h = np.maximum(h @ w, 0.0)
        return h @ readout

    reference = logits(rng.standard_normal((20_000, d)))
    m, s = reference.mean(axis=0), reference.std(axis=0) + 1e-12
    z_ref = (reference - m) / s
    offsets = np.zeros(num_classes)
    for _ in range(200):
        freq = np.bincount((z_ref + offsets).argmax(axis=1), minlength=num_classes) / len(z_ref)
        offsets -= 0.5 * (freq - 1.0 / num_classes)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        x = rng.standard_normal((n, d))
        y = ((logits(x) - m) / s + offsets).argmax(axis=1).astype(np.int64)
        return x.astype(np.float32).reshape((n, *shape)), y

    x_train, y_train = draw(n_train)
    x_test, y_test = draw(n_test)
    return RawData(
        x_train, y_train, x_test, y_test, num_classes, {"dim": d, "input_shape": list(shape)}
    )
