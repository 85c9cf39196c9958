"""Bounds on whole datasets: test ELBO and IWAE bound, computed in batches."""

import numpy as np

from . import _validate as check
from . import objectives as obj

__all__ = ["evaluate_bound"]


def evaluate_bound(model, x, mc_samples=1, objective="elbo", batch_size=1000, rng=None, kl="analytic"):
    """Average a bound over a dataset, drawing fresh ``eps`` for every example.

    Parameters
    ----------
    model : npvae.VAE
    x : ndarray, shape (N, input_dim)
        Data in [0, 1].
    mc_samples : int
        Monte Carlo samples ``S`` per example.
    objective : {"elbo", "iwae"}
    batch_size : int
        Examples per forward pass; memory grows as ``batch_size * S * input_dim``.
    rng : numpy.random.Generator or int or None
        Source of ``eps`` (an int seeds a new Generator).
    kl : {"analytic", "mc"}
        As in :meth:`npvae.VAE.loss_and_grads`.

    Returns
    -------
    dict
        ``loss`` (mean negative bound), ``recon`` (mean ``-log p(x|z)``), ``kl``
        (mean analytic KL) and ``n`` (examples).
    """
    objective, kl, _ = obj.check_objective(objective, kl)
    mc_samples = check.positive_int(mc_samples, "mc_samples")
    batch_size = check.positive_int(batch_size, "batch_size")
    model._check_params()
    x = model._check_x(x)
    return _evaluate(model, x, mc_samples, objective, batch_size, np.random.default_rng(rng), kl)


def _evaluate(model, x, mc_samples, objective, batch_size, rng, kl="analytic"):
    """:func:`evaluate_bound` on trusted inputs."""
    totals = np.zeros(3)
    n = x.shape[0]
    for start in range(0, n, batch_size):
        xb = x[start:start + batch_size]
        eps = model._draw_eps(rng, xb.shape[0], mc_samples)
        bound, _ = model._forward(xb, eps, objective, kl)
        totals += xb.shape[0] * np.array([bound.loss, bound.recon, bound.kl])
    loss, recon, kl_mean = totals / n
    return {"loss": float(loss), "recon": float(recon), "kl": float(kl_mean), "n": n}
