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


# ---------------------------------------------------------------------------
# Importance-weight diagnostics: ESS and Pareto k-hat
# ---------------------------------------------------------------------------
def gpd_log_draws(shape, n_rows, n_samples, seed):
    """Logs of generalized Pareto draws (scale 1) by inversion: ``((1 - u)^-k - 1) / k``."""
    u = np.random.default_rng(seed).random((n_rows, n_samples))
    return np.log(np.expm1(-shape * np.log1p(-u)) / shape)


def test_ess_of_equal_weights_is_the_sample_size():
    np.testing.assert_allclose(stats.ess(np.full((3, 50), -7.5)), 50.0, rtol=1e-14)
    assert stats.ess(np.full(1000, 800.0)) == pytest.approx(1000.0, rel=1e-14)   # exp(800) overflows; the ESS does not


def test_ess_of_one_dominant_weight_is_one():
    lw = np.full((2, 100), -1000.0)
    lw[0, 3] = lw[1, 99] = 0.0
    np.testing.assert_array_equal(stats.ess(lw), [1.0, 1.0])
    assert stats.ess([0.0, -np.inf, -np.inf]) == 1.0                                # zero weights count for nothing


def test_ess_is_the_definition_on_any_axis_and_any_scale():
    lw = np.random.default_rng(0).normal(size=(4, 30, 3))
    w = np.exp(lw)
    expected = w.sum(axis=1) ** 2 / (w ** 2).sum(axis=1)
    np.testing.assert_allclose(stats.ess(lw, axis=1), expected, rtol=1e-12)
    np.testing.assert_allclose(stats.ess(lw + 1e3, axis=1), expected, rtol=1e-12)
    assert np.isnan(stats.ess([-np.inf, -np.inf]))


def test_pareto_tail_length_is_the_papers_rule():
    # ceil(min(S / 5, 3 sqrt(S))): S / 5 up to S = 225, 3 sqrt(S) beyond
    assert [stats.pareto_tail_length(s) for s in (1, 20, 21, 100, 225, 226, 5000, 100_000)] == \
        [1, 4, 5, 20, 45, 46, 213, 949]
    with pytest.raises(ValueError, match="n_samples: expected an integer >= 1, got 0"):
        stats.pareto_tail_length(0)


@pytest.mark.parametrize("shape", [0.3, 0.9])
def test_pareto_k_recovers_a_generalized_pareto_shape(shape):
    # 100 rows of 20,000 draws: M = 425 exceedances each, so one k-hat has a sampling SD of about
    # (1 + k) / sqrt(M) (the maximum likelihood rate, which Zhang & Stephens' estimator attains).
    n_rows, S = 100, 20_000
    k_hat = stats.pareto_k(gpd_log_draws(shape, n_rows, S, seed=int(shape * 10)))
    M = stats.pareto_tail_length(S)
    sd = (1 + shape) / np.sqrt(M)
    assert abs(k_hat.mean() - shape) < 4 * sd / np.sqrt(n_rows) + 10 * abs(0.5 - shape) / (M + 10), k_hat.mean()
    assert 0.75 * sd < k_hat.std(ddof=1) < 1.3 * sd, (k_hat.std(ddof=1), sd)


def test_pareto_k_is_scale_free_and_needs_only_the_largest_weights():
    lw = gpd_log_draws(0.6, 5, 3000, seed=1)
    full = stats.pareto_k(lw)
    np.testing.assert_allclose(stats.pareto_k(lw - 321.0), full, rtol=1e-12)
    M = stats.pareto_tail_length(3000)
    top = np.sort(lw, axis=1)[:, ::-1][:, :M + 1]                        # descending: order does not matter
    np.testing.assert_array_equal(stats.pareto_k(top, n_samples=3000), full)
    np.testing.assert_array_equal(stats.pareto_k(lw.T, axis=0), full)
    assert stats.pareto_k(lw[2]) == full[2] and np.ndim(stats.pareto_k(lw[2])) == 0


def test_pareto_k_of_weights_spread_over_thousands_of_nats_is_finite_and_large():
    # log-normal weights with sigma = 300: exp() of the tail underflows relative to the largest;
    # the fit, in logs, still sees the whole tail.
    lw = 300.0 * np.random.default_rng(2).standard_normal((3, 5000))
    k_hat = stats.pareto_k(lw)
    assert np.isfinite(k_hat).all() and (k_hat > 2).all(), k_hat


def test_pareto_k_is_not_estimated_from_too_few_or_tied_weights():
    assert np.isnan(stats.pareto_k(np.zeros(20)))                              # M = 4 < 5
    assert np.isnan(stats.pareto_k(np.zeros((2, 500)))).all()                  # equal weights: no tail
    lw = np.random.default_rng(0).normal(size=500)
    M = stats.pareto_tail_length(500)                                          # 68
    order = np.argsort(lw)[::-1]
    lw[order[M - 30:M + 1]] = lw[order[M - 30]]        # the 30 smallest of the M largest tie the (M + 1)-th
    assert np.isnan(stats.pareto_k(lw))
    lw[order[M - 30:M - 10]] += np.linspace(0.5, 0.1, 20)                       # 10 ties of 68 left: fitted
    assert np.isfinite(stats.pareto_k(lw))


@pytest.mark.parametrize("bad,kwargs,match", [
    ([0.0, np.nan] * 20, {}, r"log_w: expected log weights that are finite or -inf .* 20 NaN or \+inf"),
    ([0.0, np.inf] + [0.0] * 38, {}, r"log_w: .* 1 NaN or \+inf"),
    (3.0, {}, "log_w: expected an array with a sample axis, got a scalar"),
    (np.zeros(40), {"n_samples": 30}, "n_samples: expected an integer at least the 40 log weights given, got 30"),
    (np.zeros(40), {"n_samples": 5000}, r"log_w: expected at least the 214 largest of the 5000 log weights"),
    (np.zeros((2, 40)), {"axis": 2}, "log_w: axis 2 is out of range for an array of shape"),
])
def test_pareto_k_rejects_bad_input_naming_it(bad, kwargs, match):
    with pytest.raises(ValueError, match=match):
        stats.pareto_k(bad, **kwargs)


def test_pareto_k_agrees_with_arviz():
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        az = pytest.importorskip("arviz")
    rng = np.random.default_rng(7)
    for lw in (gpd_log_draws(0.3, 4, 5000, seed=3), gpd_log_draws(0.9, 4, 1000, seed=4),
               2.0 * rng.standard_normal((4, 300)), 0.5 * rng.standard_normal((4, 100_000))):
        _, k_arviz = az.psislw(lw.copy(), reff=1.0)
        np.testing.assert_allclose(stats.pareto_k(lw), k_arviz, rtol=1e-10, atol=1e-12)
