"""landscape: train networks with the losses and optimizers the generalization
literature studies, then measure the geometry of what was trained."""

__version__ = "0.1.0"
