"""Standard normal distribution functions in NumPy, so that npvae never needs SciPy.

``norm_ppf`` is the inverse CDF used to place the latent grid of the manifold plot at equal
probability steps, as in the Keras VAE example (``norm.ppf(np.linspace(0.05, 0.95, n))``).
``norm_cdf`` is its forward partner, used to check round trips.
"""

import math

import numpy as np

__all__ = ["norm_cdf", "norm_ppf"]

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
