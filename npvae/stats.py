"""Statistics in NumPy, so that npvae never needs SciPy.

* The standard normal distribution: ``norm_ppf`` is the inverse CDF used to place the
  latent grid of the manifold plot at equal probability steps, as in the Keras VAE example
  (``norm.ppf(np.linspace(0.05, 0.95, n))``); ``norm_cdf`` is its forward partner, used to
  check round trips.
* Diagnostics of importance weights, vectorized over examples (the rows of a ``(N, S)``
  array of log weights, as :func:`npvae.log_likelihood` draws them): ``ess``, the effective
  sample size (Kong 1992), and ``pareto_k``, the shape ``k-hat`` of a generalized Pareto
  distribution fitted to the largest weights (Vehtari, Simpson, Gelman, Yao and Gabry,
  "Pareto smoothed importance sampling", JMLR 2024), which says whether the weights' tail
  is too heavy for the estimate to be trusted (``k-hat > 0.7``).
"""

import math

import numpy as np

__all__ = ["norm_cdf", "norm_ppf", "ess", "pareto_k", "pareto_tail_length", "PARETO_K_UNRELIABLE"]

# Wichura's AS241 (PPND16) rational approximations, highest degree first for np.polyval.
# The tables are the algorithm: copied digit for digit from Wichura (1988); the published
# "hash sums" (sums of the mantissas) are checked in tests/test_stats.py.
# Region 1, |p - 1/2| <= 0.425: ppf = q * A(r) / B(r), r = 0.180625 - q^2.
_A = np.array([
    2.5090809287301226727e3, 3.3430575583588128105e4, 6.7265770927008700853e4,
    4.5921953931549871457e4, 1.3731693765509461125e4, 1.9715909503065514427e3,
    1.3314166789178437745e2, 3.3871328727963666080e0,
])
_B = np.array([
    5.2264952788528545610e3, 2.8729085735721942674e4, 3.9307895800092710610e4,
    2.1213794301586595867e4, 5.3941960214247511077e3, 6.8718700749205790830e2,
    4.2313330701600911252e1, 1.0,
])
# Region 2, r = sqrt(-log(min(p, 1-p))) <= 5: ppf = +-C(r - 1.6) / D(r - 1.6).
_C = np.array([
    7.74545014278341407640e-4, 2.27238449892691845833e-2, 2.41780725177450611770e-1,
    1.27045825245236838258e0, 3.64784832476320460504e0, 5.76949722146069140550e0,
    4.63033784615654529590e0, 1.42343711074968357734e0,
])
_D = np.array([
    1.05075007164441684324e-9, 5.47593808499534494600e-4, 1.51986665636164571966e-2,
    1.48103976427480074590e-1, 6.89767334985100004550e-1, 1.67638483018380384940e0,
    2.05319162663775882187e0, 1.0,
])
# Region 3, r > 5 (min(p, 1-p) < exp(-25) ~ 1.4e-11): ppf = +-E(r - 5) / F(r - 5).
_E = np.array([
    2.01033439929228813265e-7, 2.71155556874348757815e-5, 1.24266094738807843860e-3,
    2.65321895265761230930e-2, 2.96560571828504891230e-1, 1.78482653991729133580e0,
    5.46378491116411436990e0, 6.65790464350110377720e0,
])
_F = np.array([
    2.04426310338993978564e-15, 1.42151175831644588870e-7, 1.84631831751005468180e-5,
    7.86869131145613259100e-4, 1.48753612908506148525e-2, 1.36929880922735805310e-1,
    5.99832206555887937690e-1, 1.0,
])
_SPLIT1 = 0.425
_SPLIT2 = 5.0
_CONST1 = 0.180625  # _SPLIT1 ** 2
_CONST2 = 1.6


def _as_float_array(value, name):
    """Convert ``value`` to a float64 array, with an error naming ``name`` if it is not real."""
    try:
        arr = np.asarray(value)
    except ValueError as exc:  # ragged nested sequences
        raise TypeError(
            f"{name}: expected a real number or an array of real numbers, got a ragged "
            f"{type(value).__name__}"
        ) from exc
    if arr.dtype.kind not in "biuf":
        raise TypeError(
            f"{name}: expected a real number or an array of real numbers, "
            f"got {type(value).__name__} with dtype {arr.dtype}: {value!r}"
        )
    return arr.astype(np.float64, copy=False)


def norm_ppf(p):
    r"""Standard normal quantile function (inverse CDF), :math:`\Phi^{-1}(p)`.

    Uses Wichura's algorithm AS241 (PPND16): three minimax rational approximations,
    one for the centre ``|p - 1/2| <= 0.425`` in :math:`r = 0.180625 - (p - 1/2)^2`, and two
    for the tails in :math:`r = \sqrt{-\log \min(p, 1-p)}` (split at ``r = 5``). Its
    relative error is about 1e-16 over the whole open interval, so the result is as
    accurate as float64 allows; no SciPy is needed.

    Parameters
    ----------
    p : float or array_like of float
        Probabilities, any shape, each in the closed interval [0, 1].

    Returns
    -------
    x : numpy.float64 or numpy.ndarray of float64
        Quantiles with the shape of ``p`` (a NumPy scalar for a scalar ``p``), such that
        :math:`\Phi(x) = p`. ``norm_ppf(0) = -inf`` and ``norm_ppf(1) = inf``.

    Raises
    ------
    TypeError
        If ``p`` is not numeric.
    ValueError
        If any element of ``p`` is outside [0, 1] or is NaN.

    Notes
    -----
    For ``p > 1/2`` the tail variable is computed from ``1 - p``, which is exact in floating
    point, so ``norm_ppf(1 - p) == -norm_ppf(p)`` whenever ``1 - p`` is representable. Quantiles
    very close to 1 are limited by the spacing of float64 near 1 (about 1.1e-16), so the
    largest finite result is about 8.2; the lower tail reaches about -38.5 at the smallest
    subnormal.

    References
    ----------
    M. J. Wichura, "Algorithm AS 241: The Percentage Points of the Normal Distribution",
    Applied Statistics 37(3), 477-484, 1988.

    Examples
    --------
    >>> round(float(norm_ppf(0.975)), 10)
    1.9599639845
    >>> norm_ppf([0.0, 0.5, 1.0]).tolist()
    [-inf, 0.0, inf]
    """
    p = _as_float_array(p, "p")
    bad = ~((p >= 0.0) & (p <= 1.0))  # NaN compares False, so it lands here too
    if np.any(bad):
        first = p[bad].flat[0] if p.ndim else p
        raise ValueError(
            f"p: expected probabilities in [0, 1], got {np.count_nonzero(bad)} value(s) "
            f"outside it, e.g. {float(first)!r}"
        )

    q = p - 0.5
    out = np.empty_like(p)

    centre = np.abs(q) <= _SPLIT1
    qc = q[centre]
    rc = _CONST1 - qc * qc
    out[centre] = qc * np.polyval(_A, rc) / np.polyval(_B, rc)

    tail = ~centre
    if np.any(tail):
        qt = q[tail]
        # min(p, 1 - p): for p > 1/2, 1 - p is exact (Sterbenz), so no precision is lost.
        pt = np.where(qt < 0.0, p[tail], 1.0 - p[tail])
        with np.errstate(divide="ignore"):  # log(0) = -inf -> r = inf -> ppf = +-inf below
            r = np.sqrt(-np.log(pt))
        near = r <= _SPLIT2
        val = np.empty_like(r)
        rn = r[near] - _CONST2
        val[near] = np.polyval(_C, rn) / np.polyval(_D, rn)
        far = ~near
        rf = r[far] - _SPLIT2
        with np.errstate(invalid="ignore"):  # inf / inf at p in {0, 1}; replaced just below
            val[far] = np.polyval(_E, rf) / np.polyval(_F, rf)
        val[np.isinf(r)] = np.inf
        out[tail] = np.where(qt < 0.0, -val, val)

    return out[()] if out.ndim == 0 else out


_erfc = np.frompyfunc(math.erfc, 1, 1)


def norm_cdf(x):
    r"""Standard normal cumulative distribution function, :math:`\Phi(x)`.

    Computed as :math:`\Phi(x) = \tfrac12 \operatorname{erfc}(-x / \sqrt 2)` with the C
    library's ``erfc`` (via :func:`math.erfc`, element by element), which keeps full relative
    accuracy in the lower tail where ``1 + erf`` would cancel.

    Parameters
    ----------
    x : float or array_like of float
        Points, any shape. ``-inf``/``inf`` map to 0/1; NaN propagates.

    Returns
    -------
    p : numpy.float64 or numpy.ndarray of float64
        Probabilities with the shape of ``x`` (a NumPy scalar for a scalar ``x``).

    Raises
    ------
    TypeError
        If ``x`` is not numeric.

    Examples
    --------
    >>> float(norm_cdf(0.0))
    0.5
    """
    x = _as_float_array(x, "x")
    out = 0.5 * np.asarray(_erfc(-x / math.sqrt(2.0)), dtype=np.float64)
    return out[()] if out.ndim == 0 else out


# --------------------------------------------------------------------------
# Diagnostics of importance weights
# --------------------------------------------------------------------------
#: ``k-hat`` above which an importance-sampling estimate is unreliable (Vehtari et al. 2024,
#: section 3.2: then the estimate's error shrinks too slowly with ``S`` to be trusted; below 0.5
#: the weights have a finite variance). The paper refines it to ``min(1 - 1/log10(S), 0.7)`` for
#: small ``S`` (equation 13); at ``S >= 2154`` the two agree.
PARETO_K_UNRELIABLE = 0.7

# Zhang & Stephens (2009), section 3: a grid of m = 30 + floor(sqrt(n)) values of theta and the
# constant 3 of their prior on theta. Vehtari et al. (2024), appendix C: the weakly informative
# prior on k worth 10 observations at k = 0.5, and tails of at least 5 weights.
_ZS_GRID, _ZS_PRIOR = 30, 3.0
_K_PRIOR_N, _K_PRIOR_MEAN = 10, 0.5
_MIN_TAIL = 5
# Elements of each of the fit's few (rows, m, M) temporaries: rows are fitted in blocks this
# bounds (4 MB each), whatever the number of rows and M.
_BLOCK_ELEMENTS = 2 ** 19


def _log_weights_array(log_w, axis, name="log_w"):
    """``log_w`` as a float64 array with the sample axis last; refuses NaN and ``+inf``."""
    lw = _as_float_array(log_w, name)
    if lw.ndim == 0:
        raise ValueError(f"{name}: expected an array with a sample axis, got a scalar")
    try:
        lw = np.moveaxis(lw, axis, -1)
    except np.exceptions.AxisError:
        raise ValueError(f"{name}: axis {axis!r} is out of range for an array of shape {lw.shape}") from None
    bad = np.isnan(lw) | (lw == np.inf)
    if bad.any():
        raise ValueError(f"{name}: expected log weights that are finite or -inf (a zero weight), got "
                         f"{int(bad.sum())} NaN or +inf value(s)")
    return lw


def ess(log_w, axis=-1):
    r"""Effective sample size of importance weights, ``(sum_s w_s)^2 / sum_s w_s^2``.

    Kong (1992); Vehtari et al. (2024), equation (6) without Pareto smoothing. It lies between
    1 (one weight carries everything) and ``S`` (equal weights), and is computed from the
    log weights with the log-sum-exp shift, :math:`\exp(2\,\mathrm{lse}(\log w) -
    \mathrm{lse}(2 \log w))`, so that weights of any scale neither overflow nor underflow.

    Parameters
    ----------
    log_w : array_like, shape (..., S, ...)
        Log importance weights, finite or ``-inf`` (a zero weight), ``S`` along ``axis``;
        any additive constant (the normalization) cancels.
    axis : int, default -1
        The sample axis.

    Returns
    -------
    numpy.float64 or ndarray of float64
        The shape of ``log_w`` without ``axis``; NaN where every weight is zero.

    Raises
    ------
    ValueError
        If ``log_w`` is a scalar, has NaN or ``+inf``, or ``axis`` is out of range.

    Examples
    --------
    >>> float(ess([0.0, 0.0, 0.0, 0.0]))
    4.0
    >>> round(float(ess([0.0, -50.0, -50.0])), 6)
    1.0
    """
    lw = _log_weights_array(log_w, axis)
    top = lw.max(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore"):          # all -inf: -inf - -inf = NaN, as documented
        a = np.exp(lw - top)
    s1, s2 = a.sum(axis=-1), (a * a).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = s1 * s1 / s2
    return out[()] if out.ndim == 0 else out


def pareto_tail_length(n_samples):
    """``M = ceil(min(S / 5, 3 sqrt(S)))``: how many of ``S`` weights :func:`pareto_k` fits.

    Vehtari et al. (2024), section 3.1 and appendix H, for independent draws (relative
    efficiency 1). The fit then uses the ``M`` largest weights, measured from the
    ``(M + 1)``-th largest.

    Parameters
    ----------
    n_samples : int
        ``S``, at least 1.

    Returns
    -------
    int
    """
    if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
        raise ValueError(f"n_samples: expected an integer >= 1, got {n_samples!r}")
    return int(math.ceil(min(n_samples / 5.0, 3.0 * math.sqrt(n_samples))))


def pareto_k(log_w, n_samples=None, axis=-1):
    r"""Pareto smoothed importance sampling's shape diagnostic ``k-hat``, per row of weights.

    Vehtari, Simpson, Gelman, Yao and Gabry (2024), "Pareto smoothed importance sampling",
    JMLR 25(72), section 3 and appendix C. The ``M`` largest of ``S`` weights
    (:func:`pareto_tail_length`), less the ``(M + 1)``-th largest ``u``, are fitted by a
    generalized Pareto distribution,
    ``p(x) = (1/sigma) (1 + k x / sigma)^(-1/k - 1)``, whose shape ``k`` says how many moments
    the weights' distribution has: about ``1/k``. ``k-hat < 0.5``: a finite variance;
    ``k-hat > 0.7`` (:data:`PARETO_K_UNRELIABLE`): the importance-sampling estimate is
    unreliable, whatever its standard error says.

    The fit is Zhang & Stephens' (2009) empirical Bayes estimator (their section 3): with the
    exceedances sorted, ``x_(1) <= ... <= x_(M)``, and ``x* = x_(floor(M/4 + 1/2))``, on the grid

    .. math:: \theta_j = 1/x_{(M)} + (1 - \sqrt{m / (j - 1/2)}) / (3 x^*),
              \quad j = 1 \dots m = 30 + \lfloor \sqrt M \rfloor,

    the profile log-likelihood is :math:`l(\theta) = M (\log(-\theta / k(\theta)) - k(\theta) - 1)`
    with :math:`k(\theta) = \tfrac1M \sum_i \log(1 - \theta x_i)`; the posterior mean
    :math:`\hat\theta = \sum_j \theta_j e^{l(\theta_j)} / \sum_j e^{l(\theta_j)}` gives
    :math:`\hat k = k(\hat\theta)`. Vehtari et al.'s weakly informative prior (appendix C) then
    shrinks it toward 0.5 with the weight of 10 observations: ``(M k-hat + 5) / (M + 10)``.

    Everything is computed from the log weights, scaled by the largest exceedance (``k`` does
    not depend on the scale), with ``theta x_i`` kept in log space where it is large, so that
    weights spread over thousands of nats neither overflow nor lose their tail to underflow.

    Parameters
    ----------
    log_w : array_like, shape (..., S', ...)
        Log importance weights, finite or ``-inf`` (a zero weight), along ``axis``: all ``S``
        of them, or, with ``n_samples``, at least the ``M + 1`` largest of ``n_samples``
        (what a streaming evaluation keeps; the smaller ones do not enter the fit).
    n_samples : int, optional
        ``S``, the number of weights drawn (default: the length of ``axis``).
    axis : int, default -1
        The sample axis.

    Returns
    -------
    numpy.float64 or ndarray of float64
        ``k-hat`` with the shape of ``log_w`` without ``axis``. NaN where it is not
        estimated: ``M < 5`` (fewer than 21 samples), or a degenerate tail (a quarter or more
        of the ``M`` largest weights equal to the ``(M + 1)``-th, e.g. equal weights).

    Raises
    ------
    ValueError
        If ``log_w`` is a scalar, has NaN or ``+inf``, ``axis`` is out of range, or
        ``n_samples`` is not an integer at least the length of ``axis`` or leaves fewer than
        ``M + 1`` weights given.

    Notes
    -----
    arviz's ``psislw`` computes the same estimate from exponentiated weights; it differs at
    ties with the threshold (it drops them from the tail), where the weights span more than
    708 nats (it drops those below), and where ``M < 5`` (it returns ``inf``).

    References
    ----------
    A. Vehtari, D. Simpson, A. Gelman, Y. Yao, J. Gabry, "Pareto smoothed importance
    sampling", Journal of Machine Learning Research 25(72), 1-58, 2024 (arXiv:1507.02646).
    J. Zhang, M. A. Stephens, "A new and efficient estimation method for the generalized
    Pareto distribution", Technometrics 51(3), 316-325, 2009.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> u = rng.random((2, 20000))
    >>> w = ((1 - u) ** -0.3 - 1) / 0.3          # generalized Pareto draws of shape 0.3
    >>> np.round(pareto_k(np.log(w)), 1).tolist()
    [0.3, 0.3]
    """
    lw = _log_weights_array(log_w, axis)
    have = lw.shape[-1]
    if n_samples is None:
        n_samples = have
    elif isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < have:
        raise ValueError(f"n_samples: expected an integer at least the {have} log weights given, "
                         f"got {n_samples!r}")
    tail = pareto_tail_length(n_samples)
    out = np.full(lw.shape[:-1], np.nan)
    if tail >= _MIN_TAIL:
        if have < tail + 1:
            raise ValueError(f"log_w: expected at least the {tail + 1} largest of the {n_samples} log weights "
                             f"(M + 1, M = {tail}), got {have}")
        rows, flat = lw.reshape(-1, have), out.reshape(-1)
        step = max(1, _BLOCK_ELEMENTS // (tail * (_ZS_GRID + int(math.sqrt(tail)))))
        for start in range(0, rows.shape[0], step):
            block = rows[start:start + step]
            top = np.sort(np.partition(block, have - tail - 1, axis=-1)[:, have - tail - 1:], axis=-1)
            flat[start:start + step] = _pareto_k_sorted(top)
    return out[()] if out.ndim == 0 else out


def _log_expm1(a):
    """``log(exp(a) - 1)`` for ``a > 0`` and ``log(1 - exp(a))`` for ``a <= 0`` (``log|1 - e^a|``),
    accurate for every ``a`` (``-inf`` at 0)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return np.where(a > 0, a + np.log(-np.expm1(-a)), np.log(-np.expm1(a)))


def _mean_log1p_neg(log_abs_t, negative, ell):
    """``mean_i log(1 - t y_i)`` for ``t = -|t|`` where ``negative`` else ``t = |t|``, with
    ``y_i = exp(ell_i)``; ``log_abs_t`` (r, m), ``negative`` (r, m), ``ell`` (r, M) -> (r, m).

    For ``t < 0``, ``log(1 + |t| y) = logaddexp(0, log|t| + log y)`` holds for ``|t| y`` of any
    size; for ``0 <= t < 1`` the product stays below 1 and ``log1p`` is exact."""
    s = log_abs_t[:, :, None] + ell[:, None, :]                          # log(|t| y), (r, m, M)
    with np.errstate(over="ignore", invalid="ignore"):
        big = np.logaddexp(0.0, s)
        small = np.log1p(-np.exp(s))
    return np.where(negative[:, :, None], big, small).mean(axis=-1)


def _pareto_k_sorted(top):
    """``k-hat`` of each row of ``top`` (r, M + 1): the ``M + 1`` largest log weights, ascending.

    With ``u = exp(top[:, 0])`` the threshold, the exceedances are ``x_i = w_i - u`` and
    ``y_i = x_i / x_(M)`` in (0, 1]; the grid's ``t_j = theta_j x_(M) = 1 - exp(L_j)`` with
    ``L_j = log(-(1 - sqrt(m/(j - 1/2))) / 3) - log y*`` (see :func:`pareto_k`). The profile
    log-likelihood and the posterior mean of ``t`` are then formed in logs.
    """
    n = top.shape[1] - 1
    threshold, tail = top[:, :1], top[:, 1:]                             # (r, 1), (r, M)
    with np.errstate(invalid="ignore", divide="ignore"):
        # log x_i = log(w_i - u) = a_i + log(1 - exp(a_0 - a_i)); a tie with u is x_i = 0
        log_x = np.where(tail > threshold, tail + np.log(-np.expm1(threshold - tail)), -np.inf)
        ell = log_x - log_x[:, -1:]                                      # log y_i <= 0, (r, M); NaN if all tie
    ell_star = ell[:, int(n / 4 + 0.5) - 1]                              # log y*, the first quartile
    ok = np.isfinite(log_x[:, -1]) & np.isfinite(ell_star)               # else a degenerate tail
    out = np.full(top.shape[0], np.nan)
    if not ok.any():
        return out
    ell, ell_star = ell[ok], ell_star[ok]
    m = _ZS_GRID + int(math.sqrt(n))
    c = 1.0 - np.sqrt(m / (np.arange(1, m + 1) - 0.5))                   # < 0
    L = np.log(-c / _ZS_PRIOR)[None, :] - ell_star[:, None]              # (r, m)
    log_abs_t, negative = _log_expm1(L), L > 0
    xi = _mean_log1p_neg(log_abs_t, negative, ell)                       # k(theta_j), (r, m)
    with np.errstate(divide="ignore", invalid="ignore"):
        # log(-theta/k) = log|t| - log|k| (the -log x_(M) is the same for every j); at t = 0 its
        # limit is -log mean(y), the exponential distribution's
        log_ratio = np.where(log_abs_t == -np.inf, -np.log(np.exp(ell).mean(axis=1))[:, None],
                             log_abs_t - np.log(np.abs(xi)))
    profile = n * (log_ratio - xi - 1.0)                                 # (r, m)
    log_post = profile - _logsumexp(profile)[:, None]
    big = _logsumexp(log_post + L)                                       # log sum_j w_j exp(L_j)
    t_hat_log, t_negative = _log_expm1(big), big > 0                     # t-hat = 1 - exp(big)
    k_hat = _mean_log1p_neg(t_hat_log[:, None], t_negative[:, None], ell)[:, 0]
    out[ok] = (n * k_hat + _K_PRIOR_N * _K_PRIOR_MEAN) / (n + _K_PRIOR_N)
    return out


def _logsumexp(a):
    """``log sum exp`` over the last axis of a finite-maximum array."""
    top = a.max(axis=-1)
    with np.errstate(invalid="ignore"):
        return top + np.log(np.exp(a - top[..., None]).sum(axis=-1))
