"""Training: the trainer loop (:mod:`landscape.train.trainer`), its config, losses, optimizers,
schedules and monitors.

The package itself is callable, so the façade's ``ls.train(cfg, out, monitors=[...])`` is
:func:`landscape.train.trainer.train` while ``landscape.train.trainer`` and the other submodules
stay importable as usual (importing a submodule sets ``landscape.train`` to this package).
"""

import sys
import types


class _CallablePackage(types.ModuleType):
    def __call__(self, *args, **kwargs):
        """``ls.train(config, out, ...)``: :func:`landscape.train.trainer.train`."""
        from landscape.train.trainer import train

        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
