"""Small models with dense float64 Hessians, shared by the linalg and Hessian-probe tests."""

from __future__ import annotations

import torch

from landscape.models import build_model
from landscape.params import call, model_state, select_parameters
from landscape.train.losses import build_loss

CE = build_loss("ce").per_sample


def mlp_case(seed: int = 0):
    """An MLP with 941 parameters (tanh: a smooth, indefinite Hessian) on 60 random points."""
    torch.manual_seed(seed)
    model = build_model("mlp", (8,), 5, width=24, depth=2, activation="tanh")
    x, y = torch.randn(60, 8), torch.randint(0, 5, (60,))
    return model, x, y


def cnn_bn_case(seed: int = 0):
    """A CNN with BatchNorm (501 parameters), running statistics moved away from their init, in eval mode."""
    torch.manual_seed(seed)
    model = build_model("cnn", (1, 8, 8), 4, channels=3, width=10, batchnorm=True)
    x, y = torch.randn(40, 1, 8, 8), torch.randint(0, 4, (40,))
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(x * 2 + 0.5)
    model.eval()
    return model, x, y


CASES = {"mlp": mlp_case, "cnn_bn": cnn_bn_case}


def trained_mlp_case(seed: int = 0, steps: int = 200, lr: float = 0.5):
    """:func:`mlp_case` after ``steps`` full-batch gradient-descent steps (loss 1.6 → 0.06).

    Near a minimum the top of the spectrum is positive and dominant (λ₁..₄ ≈ 1.72, 1.41, 1.22,
    1.04 against λ_min ≈ −0.02 for the defaults), so the largest-magnitude eigenvalues that power
    iteration (PyHessian) finds are the largest ones.  Not in :data:`CASES` (not an operator case).
    """
    model, x, y = mlp_case(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        CE(model(x), y).mean().backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model.eval(), x, y


def dense_hessian(model, x, y, loss=CE, params=None, train_mode=False) -> torch.Tensor:
    """``torch.autograd.functional.hessian`` of the mean loss (float64) w.r.t. the flat parameters."""
    layout = select_parameters(model, params)
    state = model_state(model, torch.float64)
    x = x.double()
    theta0 = layout.flatten(state)

    def f(theta):
        s = {k: (v.clone() if train_mode else v) for k, v in state.items()}
        s.update(layout.unflatten(theta))
        model.train(train_mode)
        try:
            return loss(call(model, s, x), y).mean()
        finally:
            model.eval()

    return torch.autograd.functional.hessian(f, theta0)
