"""Gradient diagnostics: the variance and signal-to-noise ratio of minibatch gradients.

A stochastic gradient ``g(eps)`` is an estimate of ``E_eps[g]``; how good an estimate
it is, coordinate by coordinate, is its signal-to-noise ratio

``SNR = |E[g]| / std[g]``

over repeated draws of the noise ``eps`` with the parameters and the minibatch held
fixed. Rainforth et al. (2018, "Tighter variational bounds are not necessarily
better") show that for the IWAE bound with ``K`` samples the SNR of the encoder's
gradient falls as ``O(1/sqrt(K))`` while the decoder's rises as ``O(sqrt(K))``;
:func:`gradient_snr` measures it for any objective and estimator of
:meth:`npvae.VAE.loss_and_grads`.
"""

import math
from typing import NamedTuple

import numpy as np

from . import _validate as check
from . import objectives as obj

__all__ = ["gradient_snr", "GradientSNR"]


class GradientSNR(NamedTuple):
    """Per-parameter moments of a stochastic gradient over repeated ``eps`` draws.

    Attributes
    ----------
    mean : dict of str to ndarray
        ``E[g]`` estimated by the average of the ``repeats`` gradients (float64,
        shapes of :attr:`npvae.VAE.params`).
    var : dict of str to ndarray
        ``Var[g]``, the unbiased (``ddof=1``) sample variance.
    snr : dict of str to ndarray
        ``|mean| / sqrt(var)``; ``inf`` where the variance is 0 and the mean is not
        (a deterministic gradient), ``nan`` where both are 0 (a coordinate that
        never gets a gradient, e.g. behind a dead ReLU).
    summary : dict
        ``{"encoder": {...}, "decoder": {...}}``, each over that network's
        coordinates: ``median_snr`` (median of the SNR over the coordinates where it is
        defined, ``inf`` included), ``mean_snr`` (mean of the finite SNRs),
        ``norm_snr`` (``||mean|| / sqrt(sum var)``, the SNR of the whole gradient
        vector, which small noisy coordinates cannot dominate), ``mean_var`` (mean
        variance per coordinate), ``n_params`` and ``n_undefined`` (coordinates with
        ``nan`` SNR).
    repeats : int
    settings : dict
        ``mc_samples``, ``objective``, ``kl``, ``estimator``, ``batch`` (examples in ``x``).
    """

    mean: dict
    var: dict
    snr: dict
    summary: dict
    repeats: int
    settings: dict

    def se(self, name):
        """Standard error ``sqrt(var / repeats)`` of ``mean[name]``."""
        return np.sqrt(self.var[name] / self.repeats)


def gradient_snr(model, x, mc_samples=1, objective="elbo", estimator="standard", repeats=100, seed=0,
                 kl="analytic"):
    """Mean, variance and signal-to-noise ratio of the minibatch gradient of every parameter.

    Draws ``eps`` of shape ``(B, mc_samples, L)`` ``repeats`` times, computes
    ``model.loss_and_grads(x, eps, objective, kl, estimator)`` at the model's current
    parameters for each, and accumulates the moments of every coordinate in
    float64 (Welford's algorithm, so no ``repeats`` copies of the gradient are kept:
    the memory is three times the parameters').

    Parameters
    ----------
    model : npvae.VAE
    x : ndarray, shape (B, input_dim)
        The minibatch, held fixed.
    mc_samples : int, default 1
        ``S``, samples per example in each gradient.
    objective : {"elbo", "iwae"}, default "elbo"
    estimator : {"standard", "stl", "dreg"}, default "standard"
    repeats : int, default 100
        Independent gradient draws (at least 2, for a variance).
    seed : int or numpy.random.Generator or None, default 0
        Source of ``eps``.
    kl : {"analytic", "mc"}, default "analytic"

    Returns
    -------
    GradientSNR

    Raises
    ------
    ValueError
        For ``mc_samples < 1``, ``repeats < 2``, an unknown objective, kl or estimator,
        an estimator that does not apply to the objective (``"dreg"`` with the ELBO),
        or data that do not match the model.

    Examples
    --------
    >>> import numpy as np, npvae
    >>> from npvae.diagnostics import gradient_snr
    >>> model = npvae.VAE(input_dim=784, seed=0)
    >>> x = np.random.default_rng(0).random((20, 784))
    >>> r = gradient_snr(model, x, mc_samples=5, objective="iwae", repeats=20)
    >>> sorted(r.summary)
    ['decoder', 'encoder']
    """
    mc_samples = check.positive_int(mc_samples, "mc_samples")
    repeats = check.positive_int(repeats, "repeats", minimum=2)
    objective, kl, estimator = obj.check_objective(objective, kl, estimator)
    model.check_params()
    x = model.check_data(x)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)

    mean = {name: np.zeros(p.shape) for name, p in model.params.items()}
    m2 = {name: np.zeros(p.shape) for name, p in model.params.items()}
    for r in range(1, repeats + 1):
        eps = model.sample_eps(x.shape[0], mc_samples, rng)
        _, grads = model.engine.loss_and_grads(x, eps, objective, kl, estimator)
        for name, g in grads.items():
            delta = g - mean[name]
            mean[name] += delta / r
            m2[name] += delta * (g - mean[name])
    var = {name: m2[name] / (repeats - 1) for name in m2}
    snr = {name: _snr(mean[name], var[name]) for name in mean}
    summary = {"encoder": _summarize(mean, var, snr, "enc."), "decoder": _summarize(mean, var, snr, "dec.")}
    settings = dict(mc_samples=mc_samples, objective=objective, kl=kl, estimator=estimator, batch=x.shape[0])
    return GradientSNR(mean, var, snr, summary, repeats, settings)


def _snr(mean, var):
    std = np.sqrt(var)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.abs(mean) / std      # x/0 = inf, 0/0 = nan, as documented


def _summarize(mean, var, snr, prefix):
    names = [n for n in mean if n.startswith(prefix)]
    s = np.concatenate([snr[n].ravel() for n in names])
    m = np.concatenate([mean[n].ravel() for n in names])
    v = np.concatenate([var[n].ravel() for n in names])
    defined = s[~np.isnan(s)]
    finite = defined[np.isfinite(defined)]
    total_var = float(v.sum())
    norm = float(np.linalg.norm(m))
    with np.errstate(divide="ignore", invalid="ignore"):
        norm_snr = norm / math.sqrt(total_var) if total_var > 0 else (math.inf if norm > 0 else math.nan)
    return {"median_snr": float(np.median(defined)) if defined.size else math.nan,
            "mean_snr": float(finite.mean()) if finite.size else (math.inf if defined.size else math.nan),
            "norm_snr": norm_snr, "mean_var": float(v.mean()),
            "n_params": int(s.size), "n_undefined": int(s.size - defined.size)}
