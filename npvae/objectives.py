"""Variational bounds on the sample axis, and their backward passes.

Both bounds are per example, shape ``(B,)``, from per-sample terms of shape
``(B, S)``; the training loss is the batch mean of the negative bound.

* ELBO (Kingma & Welling 2014, eq. 7):
  ``ELBO = mean_s log p(x|z_s) - KL(q(z|x) || p(z))``: the *mean over samples
  of the log-likelihood*, never the log-likelihood of the mean output.
* IWAE (Burda et al. 2016, eq. 8):
  ``IWAE = logsumexp_s(log w_s) - log S`` with
  ``log w_s = log p(x|z_s) + log p(z_s) - log q(z_s|x)``.
"""

import math
from typing import NamedTuple

import numpy as np

from . import ops

__all__ = ["OBJECTIVES", "KL", "ESTIMATORS", "Bound", "check_objective", "elbo_forward", "elbo_backward",
           "iwae_forward", "iwae_backward", "dreg_rescale"]

OBJECTIVES = ("elbo", "iwae")
KL = ("analytic", "mc")

#: Estimators of the encoder's gradient. The decoder's gradient is the same for all.
#:
#: * ``"standard"``: the reparameterization gradient of the bound (Kingma & Welling 2014).
#: * ``"stl"``, *sticking the landing* (Roeder et al. 2017): the gradient with the score
#:   term of ``log q(z|x)`` removed, i.e. ``log q``'s direct dependence on ``mu`` and
#:   ``log_var`` is stopped while its dependence through ``z`` is kept. Unbiased for the
#:   ELBO (the score term has mean zero), with lower variance as ``q`` nears the posterior.
#: * ``"dreg"``, *doubly reparameterized* IWAE gradient (Tucker et al. 2018, eq. 7): as STL,
#:   but each sample's path gradient is weighted by ``w~_s^2`` instead of ``w~_s``.
#:   Unbiased for the IWAE bound.
ESTIMATORS = ("standard", "stl", "dreg")


class Bound(NamedTuple):
    """A bound evaluated on a batch, for the loss and for logging.

    Attributes
    ----------
    loss : float
        Batch mean of the negative bound (what training minimizes).
    per_example : ndarray, shape (B,)
        The bound for each example (higher is better).
    recon : float
        Batch mean of the reconstruction term ``-mean_s log p(x|z_s)``.
    kl : float
        Batch mean of the analytic ``KL(q(z|x) || N(0, I))``.
    """

    loss: float
    per_example: np.ndarray
    recon: float
    kl: float


def check_objective(objective="elbo", kl="analytic", estimator="standard"):
    """Validate an (objective, kl, estimator) combination; returns them lower-cased.

    Raises ValueError for unknown names and for estimators that do not apply:
    ``"stl"`` needs the log weights (``objective="iwae"`` or ``kl="mc"``: with an
    analytic KL there is no score term to drop), ``"dreg"`` needs ``objective="iwae"``.
    """
    from . import _validate as check
    objective = check.choice(objective, "objective", OBJECTIVES)
    kl = check.choice(kl, "kl", KL)
    estimator = check.choice(estimator, "estimator", ESTIMATORS)
    if estimator == "dreg" and objective != "iwae":
        raise ValueError(f"estimator: 'dreg' (doubly reparameterized) applies to objective='iwae', "
                         f"got objective={objective!r}")
    if estimator == "stl" and objective == "elbo" and kl == "analytic":
        raise ValueError("estimator: 'stl' drops the score term of log q, which an analytic KL does not "
                         "have; use kl='mc' (or objective='iwae'), got kl='analytic'")
    return objective, kl, estimator


def elbo_forward(log_px, kl):
    """ELBO per example: ``mean_s log_px[:, s] - kl``.

    Parameters
    ----------
    log_px : ndarray, shape (B, S)
        ``log p(x|z_s)`` for each example and sample.
    kl : ndarray, shape (B,)

    Returns
    -------
    elbo : ndarray, shape (B,)
    cache : the number of samples ``S``
    """
    S = log_px.shape[1]
    return log_px.mean(axis=1) - kl, S


def elbo_backward(delbo, cache):
    """``dlog_px = delbo / S`` on every sample, ``dkl = -delbo``.

    Returns
    -------
    dlog_px : ndarray, shape (B, S)
    dkl : ndarray, shape (B,)
    """
    S = cache
    dlog_px = np.repeat((delbo / S)[:, None], S, axis=1)
    return dlog_px, -delbo


def iwae_forward(log_w):
    """IWAE bound per example: ``logsumexp_s(log_w) - log S``.

    Parameters
    ----------
    log_w : ndarray, shape (B, S)
        Log importance weights ``log p(x, z_s) - log q(z_s|x)``.

    Returns
    -------
    bound : ndarray, shape (B,)
    cache : from :func:`npvae.ops.logsumexp_forward`
    """
    lse, cache = ops.logsumexp_forward(log_w)
    return lse - math.log(log_w.shape[1]), cache


def iwae_backward(dbound, cache):
    """``dlog_w = dbound * w_tilde``, with the normalized importance weights
    ``w_tilde_s = w_s / sum_s' w_s'`` (Burda et al. 2016, eq. 14).

    Returns
    -------
    dlog_w : ndarray, shape (B, S)
    """
    return ops.logsumexp_backward(dbound, cache)


def dreg_rescale(dz, cache):
    """Turn the IWAE's path gradient into the DReG encoder gradient.

    The IWAE backward weights sample ``s``'s gradient with respect to ``z_s`` by
    ``w~_s``; DReG (Tucker et al. 2018) weights it by ``w~_s^2``. Since ``dz[b, s]``
    is linear in that weight, multiplying by ``w~_s`` once more does it.

    Parameters
    ----------
    dz : ndarray, shape (B, S, L)
        Gradient with respect to ``z`` from the IWAE backward (score term dropped).
    cache : from :func:`iwae_forward`

    Returns
    -------
    ndarray, shape (B, S, L)
    """
    w_tilde = ops.logsumexp_backward(np.ones(dz.shape[0], dtype=dz.dtype), cache)   # (B, S)
    return dz * w_tilde[:, :, None]
