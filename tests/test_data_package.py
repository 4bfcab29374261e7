"""landscape.datasets, the public import path, re-exports landscape.data unchanged."""

from __future__ import annotations

import landscape.data as data
import landscape.datasets as datasets


def test_the_public_path_re_exports_every_public_name_of_the_package():
    assert sorted(datasets.__all__) == sorted(data.__all__)
    for name in data.__all__:
        assert getattr(datasets, name) is getattr(data, name), name


def test_every_loader_lives_in_the_data_package_and_is_registered_once():
    expected = ["cifar10", "digits", "fashion_mnist", "gaussian_mixture", "mnist", "modular", "npz",
                "shakespeare_chars", "sparse_parity", "teacher_student"]
    assert datasets.DATASETS.names() == expected
    for name in expected:
        assert datasets.DATASETS[name].__module__.startswith("landscape.data."), name
    assert datasets.DATASETS.aliases("shakespeare_chars") == ["chars", "text", "tiny_shakespeare"]
