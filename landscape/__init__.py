"""landscape: train networks with the losses and optimizers the generalization
literature studies, then measure the geometry of what was trained."""

from landscape._version import __version__

# the façade: each name is imported on first use, so `import landscape` stays light
_LAZY = {
    "load_results": "landscape.results",
    **{name: "landscape.facade" for name in
       ("hessian", "surface", "sharpness", "coherence", "collapse", "rankme", "dse", "measures",
        "Result")},
    "analyze": "landscape.analyze",
    "ModelSpec": "landscape.checkpoints",
    "Monitor": "landscape.train.monitors",
}
__all__ = ["__version__", "train", *_LAZY]


def __getattr__(name: str):
    if name == "train":  # ls.train(cfg, out, monitors=[...]): the callable training package
        import importlib

        return importlib.import_module("landscape.train")
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'landscape' has no attribute {name!r}")
