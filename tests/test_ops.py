"""Every op's backward against central finite differences (float64), plus its math."""

import math

import numpy as np
import pytest

from npvae import gradcheck, ops

TOL = 1e-6


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def assert_grads_ok(errors):
    assert max(errors) < TOL, errors


@pytest.mark.parametrize("lead", [(5,), (1,), (4, 3), (1, 1)])
def test_dense_backward_matches_finite_differences(rng, lead):
    x = rng.normal(size=lead + (6,))
    W, b = rng.normal(size=(6, 4)), rng.normal(size=4)
    assert_grads_ok(gradcheck.check_op(ops.dense_forward, ops.dense_backward, [x, W, b], rng=rng))


def test_dense_forward_is_affine_over_leading_axes(rng):
    x, W, b = rng.normal(size=(3, 2, 5)), rng.normal(size=(5, 4)), rng.normal(size=4)
    out, _ = ops.dense_forward(x, W, b)
    assert out.shape == (3, 2, 4)
    np.testing.assert_allclose(out[1, 0], x[1, 0] @ W + b, rtol=1e-12)


@pytest.mark.parametrize("name", ["relu", "tanh"])
def test_activation_backward_matches_finite_differences(rng, name):
    fwd, bwd = ops.ACTIVATIONS[name]
    a = rng.normal(size=(4, 3, 5))
    a[np.abs(a) < 1e-3] = 0.5  # keep clear of the ReLU kink
    assert_grads_ok(gradcheck.check_op(fwd, bwd, [a], rng=rng))


def test_sigmoid_is_finite_and_exact_at_extremes():
    a = np.array([-1e4, -40.0, 0.0, 40.0, 1e4])
    s = ops.sigmoid(a)
    assert np.all(np.isfinite(s))
    e40 = math.exp(-40.0)
    # exp(-1e4) underflows to 0 in float64, so 0 is the correctly rounded value
    np.testing.assert_allclose(s, [0.0, e40 / (1 + e40), 0.5, 1 / (1 + e40), 1.0], rtol=1e-15, atol=0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_flush_subnormal_zeroes_subnormals_only(dtype):
    fi = np.finfo(dtype)
    a = np.array([fi.smallest_subnormal, -fi.tiny / 2, fi.tiny, -fi.tiny, 0.0, 1.0, np.inf, -np.inf, np.nan],
                 dtype=dtype)
    out = ops.flush_subnormal(a)
    assert out is a
    np.testing.assert_array_equal(a[:2], [0.0, 0.0])
    np.testing.assert_array_equal(a[2:8], np.array([fi.tiny, -fi.tiny, 0.0, 1.0, np.inf, -np.inf], dtype))
    assert np.isnan(a[8])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_sigmoid_and_bernoulli_gradient_hold_no_subnormals(dtype):
    """Below log(tiny) the exact sigmoid is subnormal: it is 0 instead, and so is every
    gradient entry that would be subnormal; the rest are the exact values, and nothing
    moves by more than tiny."""
    fi = np.finfo(dtype)
    cut = -math.log(fi.tiny)                        # 87.34 (float32), 708.4 (float64)
    logits = np.linspace(-1.2 * cut, 0.0, 2001).astype(dtype)
    s = ops.sigmoid(logits)
    exact = 1.0 / (1.0 + np.exp(-logits.astype(np.longdouble)))
    assert not np.any((s != 0) & (np.abs(s) < fi.tiny))
    assert np.all(s[logits < -cut - 0.01] == 0) and np.all(s[logits > -cut + 0.01] >= fi.tiny)
    assert np.all(np.abs(s - exact) <= 2 * fi.eps * exact + fi.tiny)
    # the gradient: x = 0 everywhere, and a small upstream dnll (1 / (B S)) pushes more entries down
    B, S, D = 1, 3, logits.size
    l3 = np.broadcast_to(logits, (B, S, D)).astype(dtype)
    x = np.zeros((B, D), dtype)
    _, cache = ops.bernoulli_nll_forward(l3, x)
    dnll = np.full((B, S), 1e-3, dtype)
    d = ops.bernoulli_nll_backward(dnll, cache)
    assert d.dtype == dtype
    assert not np.any((d != 0) & (np.abs(d) < fi.tiny))
    assert np.any(d == 0) and np.all(d[:, :, logits > -cut + 10] > 0)
    err = np.abs(d - 1e-3 * exact)                  # within a few ulps, or below tiny
    assert np.all(err < 2 * fi.tiny + 4 * fi.eps * 1e-3 * exact), float(np.max(err / (1e-3 * exact)))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_bernoulli_nll_changes_by_less_than_tiny_where_exp_is_flushed(dtype):
    fi = np.finfo(dtype)
    cut = -math.log(fi.tiny)
    logits = np.array([[[-cut - 1.0, -cut - 3.0, cut + 1.0]]], dtype)   # exp(-|l|) subnormal
    x = np.array([[0.0, 0.0, 1.0]], dtype)
    nll, _ = ops.bernoulli_nll_forward(logits, x)
    assert nll[0, 0] == 0.0          # exact: log1p(exp(-|l|)) summed, ~3e-39 in float32


@pytest.mark.parametrize("B,S,L", [(1, 1, 2), (5, 3, 2), (2, 4, 3)])
def test_reparam_backward_sums_over_samples(rng, B, S, L):
    mu, log_var, eps = rng.normal(size=(B, L)), rng.normal(size=(B, L)), rng.normal(size=(B, S, L))
    assert_grads_ok(gradcheck.check_op(ops.reparam_forward, ops.reparam_backward, [mu, log_var, eps],
                                       wrt=[0, 1], rng=rng))


def test_reparam_forward_formula(rng):
    mu, log_var, eps = rng.normal(size=(2, 3)), rng.normal(size=(2, 3)), rng.normal(size=(2, 4, 3))
    z, _ = ops.reparam_forward(mu, log_var, eps)
    np.testing.assert_allclose(z[1, 2], mu[1] + np.exp(log_var[1] / 2) * eps[1, 2], rtol=1e-14)


@pytest.mark.parametrize("B,S,D", [(1, 1, 4), (3, 2, 7)])
def test_bernoulli_nll_backward_matches_finite_differences(rng, B, S, D):
    logits, x = rng.normal(size=(B, S, D)) * 3, rng.random((B, D))
    assert_grads_ok(gradcheck.check_op(ops.bernoulli_nll_forward, ops.bernoulli_nll_backward,
                                       [logits, x], wrt=[0], rng=rng))


def test_bernoulli_nll_equals_cross_entropy(rng):
    logits, x = rng.normal(size=(2, 3, 5)), rng.random((2, 5))
    nll, _ = ops.bernoulli_nll_forward(logits, x)
    p = 1 / (1 + np.exp(-logits))
    expected = -(x[:, None] * np.log(p) + (1 - x[:, None]) * np.log1p(-p)).sum(-1)
    assert nll.shape == (2, 3)
    np.testing.assert_allclose(nll, expected, rtol=1e-12)


def test_bernoulli_nll_finite_and_exact_at_huge_logits():
    logits = np.array([[[1e4, -1e4, 1e4, -1e4, 40.0]]])
    x = np.array([[1.0, 0.0, 0.0, 1.0, 1.0]])
    nll, cache = ops.bernoulli_nll_forward(logits, x)
    # softplus(l) - x*l exactly: 0 + 0 + 1e4 + 1e4 + log1p(exp(-40))
    assert nll[0, 0] == 2e4 + math.log1p(math.exp(-40.0))
    # the well-predicted pixel keeps its tiny loss instead of rounding to zero or NaN
    single, _ = ops.bernoulli_nll_forward(logits[..., 4:], x[:, 4:])
    assert single[0, 0] == pytest.approx(math.exp(-40.0), rel=1e-12)
    dlogits = ops.bernoulli_nll_backward(np.ones((1, 1)), cache)
    np.testing.assert_array_equal(dlogits[0, 0, :4], [0.0, 0.0, 1.0, -1.0])


def test_bernoulli_nll_float32_sums_in_float64():
    rng = np.random.default_rng(0)
    logits, x = rng.normal(size=(2, 1, 784)), rng.random((2, 784))
    nll64, _ = ops.bernoulli_nll_forward(logits, x)
    nll32, _ = ops.bernoulli_nll_forward(logits.astype(np.float32), x.astype(np.float32))
    assert nll32.dtype == np.float32
    np.testing.assert_allclose(nll32, nll64, rtol=2e-7)


def test_gaussian_kl_backward_matches_finite_differences(rng):
    mu, log_var = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    assert_grads_ok(gradcheck.check_op(ops.gaussian_kl_forward, ops.gaussian_kl_backward, [mu, log_var], rng=rng))


def test_gaussian_kl_agrees_with_monte_carlo_estimate():
    rng = np.random.default_rng(7)
    mu, log_var = rng.normal(size=(3, 2)), rng.normal(size=(3, 2)) * 0.5
    kl, _ = ops.gaussian_kl_forward(mu, log_var)
    n = 200_000
    eps = rng.standard_normal((3, n, 2))
    z, _ = ops.reparam_forward(mu, log_var, eps)
    log_q, _ = ops.log_normal_diag_forward(z, mu, log_var)
    log_p, _ = ops.log_standard_normal_forward(z)
    samples = log_q - log_p
    est, se = samples.mean(axis=1), samples.std(axis=1) / math.sqrt(n)
    assert np.all(np.abs(est - kl) < 4 * se), (est, kl, se)


def test_gaussian_kl_is_zero_at_the_prior():
    kl, _ = ops.gaussian_kl_forward(np.zeros((2, 3)), np.zeros((2, 3)))
    np.testing.assert_array_equal(kl, 0.0)


def test_log_standard_normal_backward_matches_finite_differences(rng):
    z = rng.normal(size=(3, 4, 2))
    assert_grads_ok(gradcheck.check_op(ops.log_standard_normal_forward, ops.log_standard_normal_backward,
                                       [z], rng=rng))


def test_log_normal_diag_backward_matches_finite_differences(rng):
    z, mu, log_var = rng.normal(size=(3, 4, 2)), rng.normal(size=(3, 2)), rng.normal(size=(3, 2))
    assert_grads_ok(gradcheck.check_op(ops.log_normal_diag_forward, ops.log_normal_diag_backward,
                                       [z, mu, log_var], rng=rng))


def test_log_densities_match_closed_form(rng):
    z, mu, log_var = rng.normal(size=(2, 3, 2)), rng.normal(size=(2, 2)), rng.normal(size=(2, 2))
    log_q, _ = ops.log_normal_diag_forward(z, mu, log_var)
    sd = np.exp(log_var / 2)
    expected = (-0.5 * ((z - mu[:, None]) / sd[:, None]) ** 2 - np.log(sd[:, None]) - 0.5 * math.log(2 * math.pi)).sum(-1)
    np.testing.assert_allclose(log_q, expected, rtol=1e-12)
    log_p, _ = ops.log_standard_normal_forward(z)
    np.testing.assert_allclose(log_p, (-0.5 * z ** 2 - 0.5 * math.log(2 * math.pi)).sum(-1), rtol=1e-12)


def test_logsumexp_backward_matches_finite_differences(rng):
    # Spread kept moderate: a weight of exp(-30) would be checked against
    # rounding noise (relative error grows as the weight shrinks), not the formula.
    a = rng.normal(size=(4, 5)) * 2
    assert_grads_ok(gradcheck.check_op(ops.logsumexp_forward, ops.logsumexp_backward, [a], rng=rng))


def test_logsumexp_is_stable_for_large_and_infinite_values():
    a = np.array([[1000.0, 1000.0], [-1000.0, -1000.0], [-np.inf, -np.inf], [0.0, -np.inf]])
    out, _ = ops.logsumexp_forward(a)
    np.testing.assert_allclose(out[:2], [1000 + math.log(2), -1000 + math.log(2)], rtol=1e-15)
    assert out[2] == -np.inf
    assert out[3] == 0.0
