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

__all__ = ["OBJECTIVES", "Bound", "elbo_forward", "elbo_backward", "iwae_forward", "iwae_backward"]

OBJECTIVES = ("elbo", "iwae")


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
