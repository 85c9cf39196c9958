"""Variational bounds on the sample axis, and their backward passes.

Both bounds are per example, shape ``(B,)``, from per-sample terms of shape
``(B, S)``; the training loss is the batch mean of the negative bound.

* ELBO (Kingma & Welling 2014, eq. 7):
  ``ELBO = mean_s log p(x|z_s) - KL(q(z|x) || p(z))``: the *mean over samples
  of the log-likelihood*, never the log-likelihood of the mean output.
* IWAE (Burda et al. 2016, eq. 8):
  ``IWAE = logsumexp_s(log w_s) - log S`` with
  ``log w_s = log p(x|z_s) + log p(z_s) - log q(z_s|x)``.
* MIWAE, CIWAE and PIWAE (Rainforth et al. 2018, "Tighter variational bounds are not
  necessarily better", ICML): how to spend a budget of ``S = M * K`` samples.
  ``MIWAE(M, K)`` is the mean over ``M`` groups of each group's ``K``-sample IWAE bound;
  ``CIWAE(beta) = beta * ELBO + (1 - beta) * IWAE`` on the same ``S`` samples;
  ``PIWAE(M, K)`` trains the decoder on ``IWAE(M * K)`` and the encoder on ``MIWAE(M, K)``
  (:attr:`Objective.encoder_objective`).

The sample layout of the grouped bounds: ``eps`` and ``z`` are ``(B, S, L)`` and the log
weights ``(B, S)`` with ``S = M * K``; sample ``s`` belongs to group ``s // K``, i.e. the
``K`` consecutive samples ``m * K, ..., m * K + K - 1`` make group ``m`` (a C-order reshape of
``(B, S)`` to ``(B, M, K)``). An objective with groups checks ``S`` itself
(:meth:`Objective.check_samples`, called by its :meth:`~Objective.forward`) and raises a
ValueError naming ``mc_samples`` (``eps.shape[1]``) when ``S`` is not a multiple of ``M``
(or not ``M * K`` when ``K`` is given).

A parameterized objective is an instance (``objectives.MIWAE(outer=8)`` or
``objectives.make("miwae", outer=8)``), accepted wherever a name is (``objective=``): the
name alone (``"miwae"``) is the registered instance with default parameters (``outer=1``,
which is IWAE; ``beta=0.5`` for CIWAE).
"""

import math
import numbers
from typing import NamedTuple

import numpy as np

from . import _validate as check
from . import ops

__all__ = ["OBJECTIVES", "KL", "ESTIMATORS", "ESTIMATOR_RULES", "REGISTRY", "Objective", "Estimator", "Bound",
           "ELBO", "IWAE", "MIWAE", "CIWAE", "PIWAE", "get", "make", "register", "check_objective",
           "elbo_forward", "elbo_backward", "iwae_forward", "iwae_backward", "miwae_forward", "miwae_backward",
           "ciwae_forward", "ciwae_backward", "dreg_rescale"]

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
    #: The names of the constructor's parameters (:meth:`params`, :func:`make`).
    parameters = ()
    #: None, or the objective whose gradient the *encoder* follows while the decoder follows
    #: this one's (PIWAE): the engines then run the backward from the log weights once per
    #: objective, the decoder's parameter gradients from this one's ``dlog_w``, the path to
    #: ``z`` and the score term from the encoder objective's, whose :meth:`path_weights` DReG uses.
    encoder_objective = None

    def params(self):
        """The constructor's parameters and their values, ``{name: value}``."""
        return {k: getattr(self, k) for k in self.parameters}

    def __repr__(self):
        if not self.parameters:
            return f"objectives.get({self.name!r})"
        args = "".join(f", {k}={v!r}" for k, v in self.params().items() if v is not None)
        return f"objectives.make({self.name!r}{args})"

    def __eq__(self, other):
        return type(self) is type(other) and self.params() == other.params()

    def __hash__(self):
        return hash((type(self), tuple(self.params().items())))

    @property
    def label(self):
        """A short name with the parameters, e.g. ``"miwae(outer=8)"`` (tables, checks)."""
        args = ", ".join(f"{k}={v}" for k, v in self.params().items() if v is not None)
        return f"{self.name}({args})" if args else self.name

    def check_samples(self, S):
        """Raise ValueError, naming ``mc_samples``, if the bound cannot use ``S`` samples per example.

        Every ``S >= 1`` by default; objectives with groups (:class:`MIWAE`) need a multiple of
        their ``M``. Returns None.
        """

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


def _outer_inner(outer, inner):
    outer = check.positive_int(outer, "outer")
    return outer, (None if inner is None else check.positive_int(inner, "inner"))


class MIWAE(Objective):
    """``mean_m [logsumexp_k(log w_mk) - log K]``: the mean of ``M`` independent ``K``-sample
    IWAE bounds (Rainforth et al. 2018), ``S = M * K`` samples in ``M`` groups of ``K``
    consecutive ones (see the module docstring). ``kl`` does not apply.

    ``MIWAE(outer=1)`` is ``IWAE(S)`` and ``K = 1`` is the ELBO with a Monte Carlo KL over
    ``S = M`` samples (equal bit for bit). DReG applies: its path weights are the normalized
    weights within each group (Tucker et al. 2018).

    Parameters
    ----------
    outer : int, default 1
        ``M``, the number of groups.
    inner : int or None, default None
        ``K``, the samples per group; None: ``S // M`` (any multiple of ``M``).
    """

    name = "miwae"
    path_weighted = True
    parameters = ("outer", "inner")

    def __init__(self, outer=1, inner=None):
        self.outer, self.inner = _outer_inner(outer, inner)

    def check_samples(self, S):
        M, K = self.outer, self.inner
        if (S != M * K) if K is not None else (S % M):
            need = f"{M} * {K} = {M * K}" if K is not None else f"a multiple of outer={M}"
            raise ValueError(f"mc_samples: {self.label} needs {need} samples per example (eps.shape[1]), got {S}")

    def forward(self, log_w):
        self.check_samples(log_w.shape[1])
        return miwae_forward(log_w, self.outer)

    def backward(self, dbound, cache):
        return miwae_backward(dbound, cache)

    def path_weights(self, cache):
        a = cache[0][0]                                           # log_w as (B, M, K)
        return ops.logsumexp_backward(np.ones(a.shape[:2], dtype=a.dtype), cache[0]).reshape(a.shape[0], -1)


class CIWAE(Objective):
    """``beta * ELBO + (1 - beta) * IWAE`` on the same ``S`` samples (Rainforth et al. 2018),
    the ELBO part the mean of the log weights (the sampled KL); ``kl`` does not apply.

    ``beta = 1`` is the ELBO with ``kl="mc"``, ``beta = 0`` the IWAE bound. STL applies; DReG does
    not (as such): it turns the IWAE part's ``w~_s`` into ``w~_s^2`` but leaves the ELBO
    part's ``beta / S``, which DReG's rule (the path times the path weights) gives only through
    a per-sample ratio that no paper defines as DReG (``docs/gradients.md``).

    Parameters
    ----------
    beta : float in [0, 1], default 0.5
    """

    name = "ciwae"
    parameters = ("beta",)

    def __init__(self, beta=0.5):
        if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not 0.0 <= float(beta) <= 1.0:
            raise ValueError(f"beta: expected a number in [0, 1], got {beta!r}")
        self.beta = float(beta)

    def forward(self, log_w):
        return ciwae_forward(log_w, self.beta)

    def backward(self, dbound, cache):
        return ciwae_backward(dbound, cache)


class PIWAE(IWAE):
    """The decoder trained on ``IWAE(M * K)``, the encoder on ``MIWAE(M, K)`` of the same samples
    (Rainforth et al. 2018). The bound (the loss reported) is ``IWAE(M * K)``; the encoder's
    gradient is not the gradient of any one bound (:attr:`encoder_objective`). STL and DReG
    apply to the encoder's MIWAE.

    Parameters
    ----------
    outer, inner : as :class:`MIWAE`'s
    """

    name = "piwae"
    parameters = ("outer", "inner")

    def __init__(self, outer=1, inner=None):
        self.outer, self.inner = _outer_inner(outer, inner)
        self.encoder_objective = MIWAE(self.outer, self.inner)

    def check_samples(self, S):
        self.encoder_objective.check_samples(S)

    def forward(self, log_w):
        self.check_samples(log_w.shape[1])
        return iwae_forward(log_w)

    def path_weights(self, cache):
        raise NotImplementedError("PIWAE's encoder follows its encoder_objective: use its path_weights")


#: Every objective, by name (:func:`get`), with its default parameters.
REGISTRY = {o.name: o for o in (ELBO(), IWAE(), MIWAE(), CIWAE(), PIWAE())}
#: The objectives' names.
OBJECTIVES = tuple(REGISTRY)


def get(name):
    """The :class:`Objective` registered as ``name`` (a checked name: see :func:`check_objective`);
    an :class:`Objective` instance is returned as it is."""
    return name if isinstance(name, Objective) else REGISTRY[name]


def make(name, **params):
    """The objective ``name`` with parameters, e.g. ``make("miwae", outer=8)``, ``make("ciwae", beta=0.5)``.

    Parameters whose value is None are left at their defaults (so that options not given can
    be passed through); the others must be the objective's (:attr:`Objective.parameters`).
    Without parameters, the registered instance.

    Raises
    ------
    ValueError
        For an unknown name, a parameter the objective does not have, or a bad value.
    """
    name = check.choice(name, "objective", tuple(REGISTRY))
    rule = REGISTRY[name]
    params = {k: v for k, v in params.items() if v is not None}
    unknown = sorted(set(params) - set(rule.parameters))
    if unknown:
        has = ", ".join(rule.parameters) or "no parameters"
        raise ValueError(f"{unknown[0]}: objective {name!r} takes {has}, got {', '.join(unknown)}")
    return type(rule)(**params) if params else rule


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
    """Validate an (objective, kl, estimator) combination; returns them lower-cased
    (an :class:`Objective` instance as it is).

    Raises ValueError for unknown names and for estimators that do not apply (the
    objective's :meth:`Objective.estimators`): ``"stl"`` needs the log weights
    (``objective="iwae"`` or ``kl="mc"``: with an analytic KL there is no score term to
    drop), ``"dreg"`` needs an objective whose bound is made of IWAE bounds (``"iwae"``,
    ``"miwae"``, ``"piwae"``; not ``"ciwae"``, see :class:`CIWAE`).
    """
    if not isinstance(objective, Objective):
        objective = check.choice(objective, "objective", tuple(REGISTRY))
    kl = check.choice(kl, "kl", KL)
    estimator = check.choice(estimator, "estimator", ESTIMATORS)
    rule, est = get(objective), ESTIMATOR_RULES[estimator]
    if estimator in rule.estimators(kl):
        return objective, kl, estimator
    if est.reweights_path and not rule.path_weighted:
        weighted = ", ".join(repr(o.name) for o in REGISTRY.values() if o.path_weighted)
        raise ValueError(f"estimator: {estimator!r} (doubly reparameterized) applies to objective={weighted}, "
                         f"got objective={rule.name!r}")
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


def miwae_forward(log_w, outer):
    """MIWAE bound per example: ``mean_m [logsumexp_k(log_w[:, m, k]) - log K]``.

    Parameters
    ----------
    log_w : ndarray, shape (B, S)
        Log importance weights, ``S = M * K``; sample ``s`` in group ``s // K``.
    outer : int
        ``M``, which divides ``S``.

    Returns
    -------
    bound : ndarray, shape (B,)
    cache : the logsumexp's cache over ``(B, M, K)``, and ``M``
    """
    (B, S), outer = log_w.shape, int(outer)
    lse, cache = ops.logsumexp_forward(log_w.reshape(B, outer, S // outer))     # (B, M)
    return (lse - math.log(S // outer)).mean(axis=1), (cache, outer)


def miwae_backward(dbound, cache):
    """``dlog_w[:, m, k] = dbound / M * w~_mk``, with ``w~_mk`` the normalized weights within group ``m``.

    Returns
    -------
    dlog_w : ndarray, shape (B, S)
    """
    lse_cache, outer = cache
    dlse = np.repeat((dbound / outer)[:, None], outer, axis=1)                  # (B, M)
    dlog_w = ops.logsumexp_backward(dlse, lse_cache)                            # (B, M, K)
    return dlog_w.reshape(dlog_w.shape[0], -1)


def ciwae_forward(log_w, beta):
    """CIWAE bound per example: ``beta * mean_s log_w + (1 - beta) * (logsumexp_s(log_w) - log S)``.

    Parameters
    ----------
    log_w : ndarray, shape (B, S)
    beta : float in [0, 1]

    Returns
    -------
    bound : ndarray, shape (B,)
    cache : the IWAE part's cache, ``S`` and ``beta``
    """
    iwae, cache = iwae_forward(log_w)
    beta = float(beta)
    return beta * log_w.mean(axis=1) + (1.0 - beta) * iwae, (cache, log_w.shape[1], beta)


def ciwae_backward(dbound, cache):
    """``dlog_w = dbound * (beta / S + (1 - beta) * w~_s)``.

    Returns
    -------
    dlog_w : ndarray, shape (B, S)
    """
    iwae_cache, S, beta = cache
    return (beta / S) * dbound[:, None] + (1.0 - beta) * iwae_backward(dbound, iwae_cache)


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
