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

**The noise floor.** With ``R`` draws, the estimated mean carries noise of about
``std / sqrt(R)``, so a coordinate whose true SNR is 0 still shows ``|mean| / std`` of
about ``1 / sqrt(R)`` (:attr:`GradientSNR.floor`): an SNR below ~``3 / sqrt(R)`` is not
measured. Since ``E[mean^2] = mu^2 + var / R``, the bias-corrected squared SNR
``(mean^2 - var / R) / var`` removes that floor on average (it is reported as
``sqrt(max(., 0))``); the summaries also give a jackknife confidence interval of the whole
gradient vector's SNR and the share of coordinates below the floor, so that a study can
choose ``R`` large enough for what it reports.
"""

import math
from typing import NamedTuple

import numpy as np

from . import _validate as check
from . import objectives as obj
from .params import NETWORKS

__all__ = ["gradient_snr", "GradientSNR", "FLOOR_SHARE", "at_noise_floor"]

#: A network's SNR summary is at the noise floor where more than this share of its coordinates has
#: an SNR under ``3 / sqrt(R)``. A quarter: the median and the norm SNR are then read only where the
#: lower quartile of the coordinates is measured, so that neither is set by, or within the noise of,
#: coordinates the R draws cannot resolve, whose bias correction holds only on average (a share
#: near a half, e.g. 44% at R = 20, leaves the median itself next to the floor). The one rule of
#: every report that reads SNRs (:func:`at_noise_floor`).
FLOOR_SHARE = 0.25


def at_noise_floor(floor, share_below_floor, *snrs):
    """Whether a network's SNR summary is at the noise floor: any of ``snrs`` (the summaries a
    report reads, e.g. the median and the norm SNR) under ``3 * floor`` (``floor = 1 / sqrt(R)``),
    or more than :data:`FLOOR_SHARE` of its coordinates under it (``share_below_floor``; NaN where
    a summary did not store it: the SNRs alone decide). Its SNRs are then upper bounds, not
    measurements, and belong in no trend or fit."""
    limit = 3.0 * floor
    return bool(any(v < limit for v in snrs) or share_below_floor > FLOOR_SHARE)


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
    snr_corrected : dict of str to ndarray
        ``sqrt(max(mean^2 - var / repeats, 0) / var)``: the SNR with the noise floor's
        bias removed on average (0 where the measured SNR is at the floor or below;
        ``inf``/``nan`` as ``snr``).
    summary : dict
        ``{"encoder": {...}, "decoder": {...}}``, each over that network's
        coordinates: ``median_snr`` (median of the SNR over the coordinates where it is
        defined, ``inf`` included), ``mean_snr`` (mean of the finite SNRs),
        ``norm_snr`` (``||mean|| / sqrt(sum var)``, the SNR of the whole gradient
        vector, which small noisy coordinates cannot dominate), ``mean_var`` (mean
        variance per coordinate), ``n_params`` and ``n_undefined`` (coordinates with
        ``nan`` SNR); ``median_snr_corrected`` and ``norm_snr_corrected`` (the same
        with the floor's bias removed: ``(||mean||^2 - sum var / R) / sum var``, square
        root of its positive part), ``norm_snr_ci`` (a 95% interval of
        ``norm_snr_corrected``: plus or minus 1.96 delete-one-group jackknife standard
        errors over :data:`GROUPS` groups of consecutive draws),
        ``floor`` (``1 / sqrt(R)``) and ``share_below_floor`` (the share of the defined
        coordinates whose SNR is below ``3 / sqrt(R)``: not measured).
    repeats : int
    settings : dict
        ``mc_samples``, ``objective``, ``kl``, ``estimator``, ``batch`` (examples in ``x``).
    """

    mean: dict
    var: dict
    snr: dict
    snr_corrected: dict
    summary: dict
    repeats: int
    settings: dict

    def se(self, name):
        """Standard error ``sqrt(var / repeats)`` of ``mean[name]``."""
        return np.sqrt(self.var[name] / self.repeats)

    @property
    def floor(self):
        """``1 / sqrt(repeats)``: the SNR that noise alone shows (see the module docstring)."""
        return 1.0 / math.sqrt(self.repeats)

    def __repr__(self):
        """The settings and each network's summary on three lines, not the per-coordinate arrays
        (``mean``, ``var``, ``snr`` hold one value per parameter; print them on purpose)."""
        def line(part):
            s = self.summary[part]
            low, high = s["norm_snr_ci"]
            return (f"{part}: {s['n_params']:,} coordinates, median SNR {s['median_snr']:.3g} "
                    f"(corrected {s['median_snr_corrected']:.3g}), norm SNR {s['norm_snr']:.3g} "
                    f"(corrected {s['norm_snr_corrected']:.3g}, 95% CI [{low:.3g}, {high:.3g}]), "
                    f"{s['share_below_floor']:.0%} below 3 x floor")

        settings = ", ".join(f"{k}={v!r}" for k, v in self.settings.items())
        return (f"{type(self).__name__}(repeats={self.repeats}, floor={self.floor:.3g}, {settings};\n"
                f"  {line('encoder')};\n  {line('decoder')})")


#: Groups of consecutive draws kept for the jackknife interval of the norm SNR.
GROUPS = 20


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
        For ``model`` not a VAE, ``mc_samples < 1``, ``repeats < 2``, an unknown objective,
        kl or estimator, an estimator that does not apply to the objective (``"dreg"`` with
        the ELBO), a ``seed`` that cannot seed a Generator, or data that do not match the
        model; naming ``model``, when a loss or gradient is not finite (parameters that
        overflow the model's dtype).

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
    check.vae(model)
    model.check_params()
    x = model.check_data(x)
    check.step_memory(model, x.shape[0], mc_samples, "mc_samples", "lower mc_samples or the examples in x")
    rng = check.generator(seed)

    names = list(model.params)
    mean = {name: np.zeros(p.shape) for name, p in model.params.items()}
    m2 = {name: np.zeros(p.shape) for name, p in model.params.items()}
    # the groups of consecutive draws (for the jackknife interval): each group's mean, size and sum of M2
    edges = [repeats * i // min(GROUPS, repeats) for i in range(min(GROUPS, repeats) + 1)]
    groups = []                                   # (size, {name: mean}, {prefix: sum of M2})
    g_mean = {name: np.zeros(p.shape) for name, p in model.params.items()}
    g_m2 = {name: np.zeros(p.shape) for name, p in model.params.items()}
    engine = model.engine
    for r in range(1, repeats + 1):
        eps = model.sample_eps(x.shape[0], mc_samples, rng)
        _, grads = engine.loss_and_grads(x, eps, objective, kl, estimator)
        if not all(np.isfinite(grads[name]).all() for name in names):
            raise ValueError(f"model: the gradient is not finite at draw {r}: the model's parameters "
                             f"overflow in {model.dtype.name}; no moments are returned")
        k = r - edges[len(groups)]               # draws in the current group, this one included
        with np.errstate(over="ignore", invalid="ignore"):   # an overflow is refused below
            for name in names:
                g = grads[name]
                delta = g - mean[name]
                mean[name] += delta / r
                m2[name] += delta * (g - mean[name])
                delta = g - g_mean[name]
                g_mean[name] += delta / k
                g_m2[name] += delta * (g - g_mean[name])
        if r == edges[len(groups) + 1]:
            groups.append((k, {n: g_mean[n].copy() for n in names},
                           {p: sum(float(g_m2[n].sum()) for n in names if n.startswith(p)) for _, p in NETWORKS}))
            for name in names:
                g_mean[name][...] = 0.0
                g_m2[name][...] = 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        var = {name: m2[name] / (repeats - 1) for name in m2}
    if not all(np.isfinite(mean[n]).all() and np.isfinite(var[n]).all() for n in names):
        # each gradient was finite, but of an order whose square overflows float64
        raise ValueError(f"model: the gradients' variance overflows float64 (gradients of order "
                         f"{max(float(np.abs(mean[n]).max()) for n in names):.3g}): the model's parameters are "
                         "too large for moments to be measured; no moments are returned")
    snr = {name: _snr(mean[name], var[name]) for name in mean}
    corrected = {name: _snr_corrected(mean[name], var[name], repeats) for name in mean}
    summary = {part: dict(_summarize(mean, var, snr, prefix), **_floor_summary(
                   mean, var, snr, corrected, prefix, repeats, groups))
               for part, prefix in NETWORKS}
    settings = dict(mc_samples=mc_samples, objective=objective, kl=kl, estimator=estimator, batch=x.shape[0])
    return GradientSNR(mean, var, snr, corrected, summary, repeats, settings)


def _snr(mean, var):
    std = np.sqrt(var)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.abs(mean) / std      # x/0 = inf, 0/0 = nan, as documented


def _snr_corrected(mean, var, repeats):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sqrt(np.maximum(mean * mean - var / repeats, 0.0) / var)


def _norm_snr_corrected(norm2, total_var, n):
    """``sqrt(max(||mean||^2 - sum var / n, 0) / sum var)``."""
    if total_var <= 0:
        return math.inf if norm2 > 0 else math.nan
    return math.sqrt(max(norm2 - total_var / n, 0.0) / total_var)


def _floor_summary(mean, var, snr, corrected, prefix, repeats, groups):
    """The floor-aware part of a network's summary (see :class:`GradientSNR`)."""
    names = [n for n in mean if n.startswith(prefix)]
    s = np.concatenate([snr[n].ravel() for n in names])
    c = np.concatenate([corrected[n].ravel() for n in names])
    defined = ~np.isnan(s)
    norm2 = float(sum(np.sum(mean[n] ** 2) for n in names))
    total_var = float(sum(np.sum(var[n]) for n in names))
    floor = 1.0 / math.sqrt(repeats)
    return {"median_snr_corrected": float(np.median(c[defined])) if defined.any() else math.nan,
            "norm_snr_corrected": _norm_snr_corrected(norm2, total_var, repeats),
            "norm_snr_ci": _interval_norm_snr(groups, prefix, names),
            "floor": floor,
            "share_below_floor": float(np.mean(s[defined] < 3 * floor)) if defined.any() else math.nan}


def _interval_norm_snr(groups, prefix, names, level_z=1.959964):
    """95% interval of the corrected norm SNR: the estimate plus or minus 1.96 delete-one-group
    jackknife standard errors (a normal interval, clipped at 0).

    Deleting group ``g`` leaves ``N - n_g`` draws whose mean, total variance and norm follow
    from the groups' sizes ``n_g``, means ``M_g`` and summed ``M2`` alone (Chan et al.'s
    pairwise update), through the Gram matrix ``M_g . M_h``: a replicate costs ``O(G^2)``
    whatever the number of parameters. Groups of consecutive draws are exchangeable (every
    draw is independent), and the gradient's coordinates may be correlated in any way.
    """
    G = len(groups)
    if G < 3:
        return (math.nan, math.nan)
    sizes = np.array([g[0] for g in groups], dtype=float)
    flat = np.stack([np.concatenate([g[1][n].ravel() for n in names]) for g in groups])    # (G, P)
    gram = flat @ flat.T
    within = np.array([g[2][prefix] for g in groups])

    def estimate(keep):                       # keep: 0/1 per group
        w = keep * sizes
        N = w.sum()
        norm2 = w @ gram @ w / N ** 2                                                   # ||m||^2
        between = float(w @ (np.diag(gram) - 2 * (gram @ w) / N + norm2))
        return _norm_snr_corrected(norm2, (keep @ within + between) / (N - 1), N)

    full = estimate(np.ones(G))
    leave_out = np.array([estimate(np.arange(G) != g) for g in range(G)])
    if not (np.isfinite(full) and np.isfinite(leave_out).all()):
        return (math.nan, math.nan)
    se = math.sqrt((G - 1) / G * float(np.sum((leave_out - leave_out.mean()) ** 2)))
    return (max(full - level_z * se, 0.0), full + level_z * se)


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
