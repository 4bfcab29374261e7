"""The data a training config names, as the run saw it.

One function rebuilds a run's dataset from the ``config`` object of its ``config.json`` (a
:meth:`~landscape.train.config.TrainConfig.to_dict`): the trainer calls it before training, the
analysis of a RUN_DIR afterwards, so both see the same arrays. It reads no file of the run: the
caller passes what :class:`~landscape.checkpoints.RunDir` read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from landscape.datasets import Dataset, load_dataset


def load_run_data(config: Mapping[str, Any], meta: Mapping[str, Any] | None = None) -> Dataset:
    """The data ``config`` (a complete training config as a dict) names.

    ``meta`` (a run's ``config.json``) keeps an old run on the data it was trained on: a run whose
    record shows standardized inputs where the dataset's default is now "as given" (``npz``
    before inputs were used as given) is loaded standardized again.
    """
    params = dict(config["dataset_params"])

    def load() -> Dataset:
        return load_dataset(config["dataset"], train_size=config["train_size"], label_noise=config["label_noise"],
                            random_labels=config["random_labels"], imbalance_ratio=config["imbalance_ratio"],
                            seed=config["data_seed"], **params)

    data = load()
    dataset = (meta or {}).get("dataset")
    info = dataset.get("info") if isinstance(dataset, dict) else None
    recorded = info.get("normalization") if isinstance(info, dict) else None
    if isinstance(recorded, dict) and "mean" in recorded and "normalize" not in params \
            and data.normalization.get("method") == "none":
        params["normalize"] = "standardize"
        data = load()
    return data
