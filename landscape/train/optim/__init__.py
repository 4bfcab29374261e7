"""Optimizers: SGD, Adam/AdamW and the sharpness-aware family behind one registry, one family a module.

The step contract (the trainer relies on it):

* every optimizer is a :class:`torch.optim.Optimizer` and is driven by
  ``loss = optimizer.step(closure)``;
* ``closure()`` zeroes the gradients, runs forward + backward at the *current*
  parameters and returns the detached loss;
* the sharpness-aware optimizers call the closure several times per step
  (``closure_calls`` on each class); the first call is always at the
  unperturbed weights ``w`` and ``step`` returns the loss of that first call;
* BatchNorm running statistics are the closure's business: wrap it with
  :func:`bn_first_pass_only` so that only the first call updates them;
* an optimizer with an ``auxiliary_loss(model, inputs, logits, indices, epoch)`` method
  (:class:`SAF`, :class:`MESA`) wants that term added to the batch loss inside the closure,
  before ``backward``.

Sharpness-aware optimizers (:class:`SharpnessAware`) wrap a base optimizer (:class:`SGD`,
:class:`Adam`, :class:`AdamW`, or any registered optimizer that is not itself a wrapper) built
on the *same* ``param_groups`` dictionaries (as in davda54/sam), so a learning-rate scheduler
attached to the wrapper changes the base optimizer's learning rate, and weight decay is applied
once per step, by the base optimizer. Their hyperparameters (``rho``, ``alpha``, …) live in the
param groups, so they round-trip through ``state_dict()``; a wrapper's own state between steps
(Friendly-SAM's gradient EMA, FSAM's Fisher mask, SAF's output memory, MESA's weight EMA) is
added to the base optimizer's ``state_dict`` under its own keys. Perturbations are undone by
copying the saved weights back, never by subtracting ``ε``.

Adaptive (ASAM-style) perturbations use the elementwise operator
``T_w = |w| + η`` on *every* perturbed parameter (biases and normalization
parameters included).

Modules, in dependency order (each imports only those before it): ``registry`` (the
``OPTIMIZERS`` registry), ``validation``, ``batchnorm``, ``_ops`` (tensor helpers), ``base``
(SGD, Adam, AdamW), ``sharpness_aware`` (the wrapper base class), ``orthogonal`` (⊥Grad),
``sam`` (SAM, ASAM, SAM-ON), ``gnr``, ``gam``, ``friendly_sam``, ``fisher_sam``,
``entropy_sgd``, ``trajectory`` (SAF, MESA) and ``builder`` (:func:`build_optimizer`).
Importing this package imports them all, which fills the registry.
"""

from landscape.train.optim.base import SGD, Adam, AdamW
from landscape.train.optim.batchnorm import bn_first_pass_only, normalization_parameters
from landscape.train.optim.builder import build_optimizer, no_decay_parameters
from landscape.train.optim.entropy_sgd import EntropySGD
from landscape.train.optim.fisher_sam import FisherSAM
from landscape.train.optim.friendly_sam import FriendlySAM
from landscape.train.optim.gam import GAM
from landscape.train.optim.gnr import GNR
from landscape.train.optim.orthogonal import (
    PerpAdam,
    PerpAdamW,
    PerpSGD,
    orthogonal_gradient,
    orthogonalized,
)
from landscape.train.optim.registry import OPTIMIZERS
from landscape.train.optim.sam import ASAM, SAM, SAMON
from landscape.train.optim.sharpness_aware import ADAPTIVE_ETA, SharpnessAware
from landscape.train.optim.trajectory import MESA, SAF, trajectory_kl

__all__ = [
    "ADAPTIVE_ETA",
    "ASAM",
    "GAM",
    "GNR",
    "MESA",
    "SAF",
    "EntropySGD",
    "FisherSAM",
    "FriendlySAM",
    "OPTIMIZERS",
    "SAM",
    "SAMON",
    "SGD",
    "Adam",
    "AdamW",
    "PerpAdam",
    "PerpAdamW",
    "PerpSGD",
    "SharpnessAware",
    "bn_first_pass_only",
    "build_optimizer",
    "no_decay_parameters",
    "normalization_parameters",
    "orthogonal_gradient",
    "orthogonalized",
    "trajectory_kl",
]
