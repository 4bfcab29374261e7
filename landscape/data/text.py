"""Character-level language modelling on a text: ``shakespeare_chars`` and its corpus reader."""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path

import numpy as np

from landscape.data._checks import check_float, check_int
from landscape.data.containers import RawData
from landscape.data.loaders import DATASETS
from landscape.errors import ConfigError, DataError

CORPUS = "tinyshakespeare.txt"
"""The character-level corpus shipped in ``landscape/corpora/`` (see its README)."""


def _read_text(path: Path | str | None) -> tuple[str, str]:
    """The UTF-8 text of ``path`` (the shipped corpus when ``None``) and where it came from."""
    if path is None:
        data = resources.files("landscape").joinpath("corpora", CORPUS).read_bytes()
        where = f"landscape/corpora/{CORPUS}"
    else:
        file = Path(path).expanduser()
        try:
            data = file.read_bytes()
        except OSError as exc:
            raise DataError(f"cannot read text file {file}: {exc.strerror}; pass path=<a UTF-8 text file>") from exc
        where = str(file)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{where} is not UTF-8 text (byte {exc.start}); pass a UTF-8 text file") from exc
    return text, f"{where} (sha256 {hashlib.sha256(data).hexdigest()[:16]})"


@DATASETS.register("shakespeare_chars", "tiny_shakespeare", "chars", "text")
def _shakespeare_chars(
    *,
    seed: int,
    root: Path | None,
    context: int = 64,
    stride: int | None = None,
    test_fraction: float = 0.1,
    path: str | None = None,
) -> RawData:
    """Character-level language modelling on a text: next-character targets for every position.

    The text is the shipped corpus (the first 262,063 characters of Karpathy's *tiny
    shakespeare*, public domain; ``landscape/corpora/README.md``) or the UTF-8 file ``path``.
    Characters are ids in sorted order of the text's alphabet (``info["alphabet"]``, vocabulary
    ``info["vocab"]``). The first ``1 − test_fraction`` of the text is the train split, the rest
    the test split (contiguous, so no window straddles both). A sample is the window
    ``x = ids[s : s + context]`` with targets ``y = ids[s + 1 : s + context + 1]`` (pre-shifted:
    position ``t`` predicts character ``t + 1``; task ``token_classification``), for
    ``s = 0, stride, 2·stride, …`` (``stride`` defaults to ``context``: disjoint windows).
    ``seed`` is not used: the windows are a deterministic function of the text.
    """
    context = check_int("context", context, minimum=1)
    stride = context if stride is None else check_int("stride", stride, minimum=1)
    test_fraction = check_float("test_fraction", test_fraction, low=0.0, high=1.0,
                                 open_low=True, open_high=True)
    text, source = _read_text(path)
    alphabet = sorted(set(text))
    if len(alphabet) < 2:
        raise DataError(f"{source}: the text has {len(alphabet)} distinct character(s); need at least 2")
    lookup = {c: i for i, c in enumerate(alphabet)}
    ids = np.array([lookup[c] for c in text], dtype=np.int64)
    cut = int(round((1.0 - test_fraction) * len(ids)))

    def windows(part: np.ndarray, split: str) -> tuple[np.ndarray, np.ndarray]:
        starts = np.arange(0, len(part) - context, stride)
        if not len(starts):
            raise ConfigError(f"the {split} text has {len(part)} characters, too few for context={context}; "
                              "lower context or test_fraction")
        offsets = starts[:, None] + np.arange(context)[None, :]
        return part[offsets], part[offsets + 1]

    x_train, y_train = windows(ids[:cut], "train")
    x_test, y_test = windows(ids[cut:], "test")
    info = {
        "source": source,
        "characters": len(ids),
        "alphabet": "".join(alphabet),
        "vocab": len(alphabet),
        "context": context,
        "stride": stride,
        "split_at_character": cut,
        "targets": "next character: y[:, t] = x[:, t + 1] of the text (pre-shifted)",
    }
    return RawData(x_train, y_train, x_test, y_test, len(alphabet), info, normalize="none",
                   task="token_classification")
