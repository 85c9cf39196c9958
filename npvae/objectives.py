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

from . import _validate as check
from . import ops

__all__ = ["OBJECTIVES", "KL", "ESTIMATORS", "ESTIMATOR_RULES", "REGISTRY", "Objective", "Estimator", "Bound",
           "get", "register", "check_objective", "elbo_forward", "elbo_backward", "iwae_forward", "iwae_backward",
           "dreg_rescale"]

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


class Estimator(NamedTuple):
    """The rules of one gradient estimator (see :data:`ESTIMATORS`).

    Attributes
    ----------
    name : str
    drops_score : bool
        The score term (``log q``'s direct dependence on ``mu`` and ``log_var``) is dropped:
        only meaningful where the bound has log weights.
    reweights_path : bool
        The path gradient of each sample is weighted once more by the objective's normalized
        importance weight (DReG): the objective must have such weights
        (:attr:`Objective.path_weighted`).
    """

    name: str
    drops_score: bool
    reweights_path: bool


#: Each estimator's rules, by name.
ESTIMATOR_RULES = {"standard": Estimator("standard", False, False),
                   "stl": Estimator("stl", True, False),
                   "dreg": Estimator("dreg", True, True)}


class Objective:
    """One bound on the sample axis: its rules and its forward and backward.

    A bound is computed from the per-sample log weights
    ``log w_s = log p(x|z_s) + log p(z_s) - log q(z_s|x)``, shape ``(B, S)``, by
    :meth:`forward`; :meth:`backward` returns ``d bound / d log w``. An objective that also
    has a closed form with the analytic KL (the ELBO) says so in :meth:`uses_log_weights`
    and implements :meth:`forward_analytic` and :meth:`backward_analytic`.

    The engines ask an objective for its rules and never test its name: a new objective is a
    subclass registered in :data:`REGISTRY` (and, for the numba engine's speed, its kernels in
    :mod:`npvae.fast.bounds`; without them the numba engine runs the reference for it).
    """

    #: The name users pass (``objective=``).
    name = ""
    #: Whether the bound has normalized importance weights ``w~_s`` that DReG reweights the
    #: path gradient with (:meth:`path_weights`).
    path_weighted = False

    def __repr__(self):
        return f"objectives.get({self.name!r})"

    def uses_log_weights(self, kl):
        """Whether the bound with the KL option ``kl`` is computed from the log weights."""
        return True

    def estimators(self, kl):
        """The names of the estimators that apply with the KL option ``kl``."""
        return tuple(e.name for e in ESTIMATOR_RULES.values()
                     if (not e.drops_score or self.uses_log_weights(kl))
                     and (not e.reweights_path or self.path_weighted))

    def forward(self, log_w):
        """The bound per example, ``(B,)``, from ``log_w`` ``(B, S)``, and a cache."""
        raise NotImplementedError

    def backward(self, dbound, cache):
        """``dlog_w`` ``(B, S)`` for an upstream ``dbound`` ``(B,)``."""
        raise NotImplementedError

    def path_weights(self, cache):
        """The normalized importance weights ``w~`` ``(B, S)`` that DReG multiplies the path by."""
        raise NotImplementedError(f"objective {self.name!r} has no importance weights for DReG")

    def forward_analytic(self, log_px, kl):
        """The bound from ``log p(x|z_s)`` ``(B, S)`` and the analytic KL ``(B,)``, with a cache."""
        raise NotImplementedError(f"objective {self.name!r} has no analytic-KL form")

    def backward_analytic(self, dbound, cache):
        """``dlog_px`` ``(B, S)`` and ``dkl`` ``(B,)`` of :meth:`forward_analytic`."""
        raise NotImplementedError(f"objective {self.name!r} has no analytic-KL form")


class ELBO(Objective):
    """``mean_s log p(x|z_s) - KL(q(z|x) || p(z))``; with ``kl="mc"`` the mean of the log weights."""

    name = "elbo"

    def uses_log_weights(self, kl):
        return kl == "mc"

    def forward(self, log_w):
        return elbo_forward(log_w, np.zeros(log_w.shape[0], dtype=log_w.dtype))

    def backward(self, dbound, cache):
        return elbo_backward(dbound, cache)[0]

    def forward_analytic(self, log_px, kl):
        return elbo_forward(log_px, kl)

    def backward_analytic(self, dbound, cache):
        return elbo_backward(dbound, cache)


class IWAE(Objective):
    """``logsumexp_s(log w_s) - log S`` (Burda et al. 2016, eq. 8); ``kl`` does not apply."""

    name = "iwae"
    path_weighted = True

    def forward(self, log_w):
        return iwae_forward(log_w)

    def backward(self, dbound, cache):
        return iwae_backward(dbound, cache)

    def path_weights(self, cache):
        a = cache[0]                                              # log_w, (B, S)
        return ops.logsumexp_backward(np.ones(a.shape[0], dtype=a.dtype), cache)


#: Every objective, by name (:func:`get`).
REGISTRY = {o.name: o for o in (ELBO(), IWAE())}
#: The objectives' names.
OBJECTIVES = tuple(REGISTRY)


def get(name):
    """The :class:`Objective` registered as ``name`` (a checked name: see :func:`check_objective`)."""
    return REGISTRY[name]


def register(objective):
    """Add ``objective`` (an :class:`Objective` instance with a new :attr:`~Objective.name`) to
    :data:`REGISTRY`: every engine, ``fit``, the evaluation and the diagnostics then accept its
    name. Returns it. :data:`OBJECTIVES` stays the built-in names."""
    if not (isinstance(objective, Objective) and isinstance(objective.name, str) and objective.name
            and objective.name == objective.name.lower()):
        raise ValueError(f"objective: expected an npvae.objectives.Objective instance with a lower-case name, "
                         f"got {objective!r}")
    name = objective.name
    if name in REGISTRY:
        raise ValueError(f"objective: the name {name!r} is taken by {REGISTRY[name]!r}")
    REGISTRY[name] = objective
    return objective


def check_objective(objective="elbo", kl="analytic", estimator="standard"):
    """Validate an (objective, kl, estimator) combination; returns them lower-cased.

    Raises ValueError for unknown names and for estimators that do not apply (the
    objective's :meth:`Objective.estimators`): ``"stl"`` needs the log weights
    (``objective="iwae"`` or ``kl="mc"``: with an analytic KL there is no score term to
    drop), ``"dreg"`` needs an objective with importance weights (``"iwae"``).
    """
    objective = check.choice(objective, "objective", tuple(REGISTRY))
    kl = check.choice(kl, "kl", KL)
    estimator = check.choice(estimator, "estimator", ESTIMATORS)
    rule, est = get(objective), ESTIMATOR_RULES[estimator]
    if estimator in rule.estimators(kl):
        return objective, kl, estimator
    if est.reweights_path and not rule.path_weighted:
        weighted = ", ".join(repr(o.name) for o in REGISTRY.values() if o.path_weighted)
        raise ValueError(f"estimator: {estimator!r} (doubly reparameterized) applies to objective={weighted}, "
                         f"got objective={objective!r}")
    raise ValueError(f"estimator: {estimator!r} drops the score term of log q, which an analytic KL does not "
                     f"have; use kl='mc' (or objective='iwae'), got kl={kl!r}")


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
    return dz * get("iwae").path_weights(cache)[:, :, None]
