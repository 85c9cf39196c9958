"""Tests for npvae.stats: the NumPy standard normal quantile (AS241) and CDF."""

import math

import numpy as np
import pytest

from npvae import stats
from npvae.stats import norm_cdf, norm_ppf

# (p, Phi^{-1}(p)) to 17+ significant digits: the usual percentage points of the normal
# table (Abramowitz & Stegun 26.2), extended into the far tail; all confirmed with
# mpmath's sqrt(2) * erfinv(2p - 1) at 400 digits.
TABULATED = [
    (1e-300, -37.047096299361199237),
    (1e-100, -21.273453560965324295),
    (1e-50, -14.933337534788488981),
    (1e-20, -9.2623400897984075737),
    (1e-15, -7.941345326170996781),
    (1e-10, -6.3613409024040562047),
    (0.001, -3.0902323061678135415),
    (0.01, -2.3263478740408411009),
    (0.02, -2.0537489106318230529),
    (0.05, -1.6448536269514727149),
    (0.075, -1.4395314709384559153),
    (0.25, -0.6744897501960817432),
    (0.4, -0.2533471031357997988),
    (0.5, 0.0),
    (0.6, 0.2533471031357997988),
    (0.75, 0.6744897501960817432),
    (0.841344746068543, 1.0000000000000002125),
    (0.9, 1.281551565544600467),
    (0.95, 1.6448536269514727149),
    (0.975, 1.9599639845400542355),
    (0.99, 2.3263478740408411009),
    (0.995, 2.575829303548900761),
    (0.999, 3.0902323061678135415),
    (0.9995, 3.2905267314918947932),
]


EPS = np.finfo(np.float64).eps


def _tolerance(p, x):
    """A few ulps of x, plus the error from rounding the decimal p to float64 (half an ulp of p
    times the slope of the quantile, 1 / phi(x)), which dominates near p = 1."""
    phi = math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
    return 4 * EPS * abs(x) + 0.5 * np.spacing(p) / phi


@pytest.mark.parametrize("p, expected", TABULATED)
def test_norm_ppf_matches_table(p, expected):
    got = norm_ppf(p)
    assert abs(got - expected) <= 1e-9
    # AS241 is good to about 1e-16 relative, so the table holds to float64 precision.
    assert abs(got - expected) <= _tolerance(p, expected)


def test_norm_ppf_vectorized_matches_table_and_keeps_shape():
    p = np.array([p for p, _ in TABULATED]).reshape(4, 6)
    expected = np.array([x for _, x in TABULATED]).reshape(4, 6)
    got = norm_ppf(p)
    assert got.shape == (4, 6) and got.dtype == np.float64
    assert np.all(np.abs(got - expected) <= np.vectorize(_tolerance)(p, expected))


def test_norm_ppf_scalar_in_scalar_out():
    assert isinstance(norm_ppf(0.3), np.float64)
    assert np.ndim(norm_ppf(0.3)) == 0
    assert norm_ppf([0.3]).shape == (1,)
    assert norm_ppf(np.empty((0, 3))).shape == (0, 3)


def test_norm_ppf_endpoints_are_infinite():
    assert norm_ppf(0.0) == -np.inf
    assert norm_ppf(1.0) == np.inf
    np.testing.assert_array_equal(norm_ppf([0.0, 0.5, 1.0]), [-np.inf, 0.0, np.inf])


def test_norm_ppf_is_finite_at_extreme_representable_probabilities():
    tiny = np.array([5e-324, 2.2250738585072014e-308, np.nextafter(1.0, 0.0)])
    x = norm_ppf(tiny)
    assert np.all(np.isfinite(x))
    assert x[0] < x[1] < -37.5 and 8.0 < x[2] < 8.5


def test_norm_ppf_is_antisymmetric():
    # On a dyadic grid both p and 1 - p are exact, and AS241 works with p - 1/2 and
    # min(p, 1 - p), so ppf(1 - p) = -ppf(p) holds to the last bit.
    p = np.arange(1, 2**20) / 2.0**20
    np.testing.assert_array_equal(norm_ppf(1.0 - p), -norm_ppf(p))
    # and for any q in [1/2, 1), 1 - q is exact (Sterbenz), so the same holds
    q = 1.0 - np.logspace(-15, np.log10(0.5), 2000)
    np.testing.assert_array_equal(norm_ppf(q), -norm_ppf(1.0 - q))


def test_norm_ppf_round_trips_through_erf_based_cdf():
    p = np.concatenate([np.linspace(1e-9, 1 - 1e-9, 4001), np.logspace(-12, -1, 500)])
    cdf = np.array([0.5 * math.erfc(-x / math.sqrt(2.0)) for x in norm_ppf(p)])
    np.testing.assert_allclose(cdf, p, rtol=0, atol=1e-12)
    # relative accuracy in the lower tail, where the absolute check says little; there an
    # error dx in x moves log Phi(x) by about |x| dx, so a few ulps of x at x = -37 give ~1e-12
    tail = np.logspace(-300, -3, 300)
    cdf_tail = np.array([0.5 * math.erfc(-x / math.sqrt(2.0)) for x in norm_ppf(tail)])
    np.testing.assert_allclose(cdf_tail, tail, rtol=5e-12)


def test_norm_ppf_is_strictly_increasing():
    p = np.linspace(0.0, 1.0, 100_001)
    x = norm_ppf(p)
    assert np.all(np.diff(x) > 0)
    # At the joins of AS241's three approximations (|p - 1/2| = 0.425 and r = 5) adjacent
    # floats may step back by at most one ulp of the result: the pieces meet to float precision.
    for edge in (0.075, 0.925, math.exp(-25.0), 1.0 - math.exp(-25.0)):
        around = edge + np.arange(-2000, 2001) * np.spacing(edge)
        x = norm_ppf(around)
        assert np.all(np.diff(x) >= -np.spacing(np.abs(x[1:])))
        assert x[-1] > x[0]


@pytest.mark.parametrize("bad", [-0.1, 1.0000001, np.nan, -np.inf, np.inf, [0.2, 1.5]])
def test_norm_ppf_rejects_probabilities_outside_unit_interval(bad):
    with pytest.raises(ValueError, match=r"p: expected probabilities in \[0, 1\]"):
        norm_ppf(bad)


@pytest.mark.parametrize("bad", ["0.5", None, [[0.1], [0.2, 0.3]]])
def test_norm_ppf_rejects_non_numeric_input(bad):
    with pytest.raises(TypeError, match="p: expected a real number"):
        norm_ppf(bad)


def test_norm_cdf_known_values_and_shape():
    assert norm_cdf(0.0) == 0.5
    assert isinstance(norm_cdf(0.0), np.float64)
    np.testing.assert_allclose(norm_cdf([1.959963984540054, -1.6448536269514727]),
                               [0.975, 0.05], rtol=1e-15)
    np.testing.assert_array_equal(norm_cdf([-np.inf, np.inf]), [0.0, 1.0])
    assert np.isnan(norm_cdf(np.nan))
    assert norm_cdf(np.zeros((2, 3))).shape == (2, 3)
    # full relative accuracy in the lower tail (no 1 + erf cancellation)
    assert norm_cdf(-37.047096299361199237) == pytest.approx(1e-300, rel=1e-13)


def test_as241_coefficients_match_published_hash_sums():
    # Wichura publishes the sum of the mantissas of each pair of tables to check transcription.
    def mantissa_sum(*tables):
        coef = np.concatenate([t[t != 1.0] for t in tables])  # the leading 1 is not a coefficient
        return float(np.sum(coef / 10.0 ** np.floor(np.log10(coef))))

    assert mantissa_sum(stats._A, stats._B) == pytest.approx(55.8831928806149014439, abs=1e-12)
    assert mantissa_sum(stats._C, stats._D) == pytest.approx(49.33206503301610289036, abs=1e-12)
    assert mantissa_sum(stats._E, stats._F) == pytest.approx(47.52583317549289671629, abs=1e-12)


def test_norm_ppf_agrees_with_scipy_on_dense_grid():
    special = pytest.importorskip("scipy.special")
    p = np.concatenate([
        np.linspace(0.0, 1.0, 200_001),
        np.logspace(-300, -1, 5000),
        1.0 - np.logspace(-16, -1, 2000),
    ])
    ours, ref = norm_ppf(p), special.ndtri(p)
    np.testing.assert_array_equal(np.isinf(ours), np.isinf(ref))
    finite = np.isfinite(ref)
    np.testing.assert_allclose(ours[finite], ref[finite], rtol=1e-14, atol=1e-15)
