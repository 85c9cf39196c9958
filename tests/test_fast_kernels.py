"""The numba kernels against the NumPy ops they stand for (npvae.ops is the specification).

Where a kernel does the reference's float operations in the reference's order it is
checked bit for bit; elsewhere float64 to ~1e-12 and float32 to its precision, relative
to the scale of the array (sums with cancellation have no useful elementwise relative
error). Each kernel compiles once per dtype; the shapes vary freely.
"""

import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytestmark = pytest.mark.numba      # the numba engine's kernels (skipped without numba)

from npvae.fast import _jit, bernoulli, dense, jobs, latent, updates  # noqa: E402
from npvae import objectives as obj  # noqa: E402
from npvae import ops  # noqa: E402
from npvae.optim import RMSprop  # noqa: E402

DTYPES = [np.float64, np.float32]
RTOL = {np.float64: 1e-12, np.float32: 2e-6}
SHAPES = [(1, 1, 7, 5, 3), (3, 4, 7, 5, 3), (1, 5, 3, 1, 2), (4, 1, 13, 9, 1)]  # B, S, D, H, L


@pytest.fixture
def rng():
    return np.random.default_rng(20240601)


def assert_close(got, want, dtype):
    """``|got - want| <= rtol * max|want|`` elementwise, plus float32 output for float32."""
    assert got.dtype == dtype and got.shape == want.shape
    scale = max(float(np.max(np.abs(want))), 1e-300) if want.size else 1.0
    np.testing.assert_allclose(got, want, rtol=RTOL[dtype], atol=RTOL[dtype] * scale)


def normal(rng, shape, dtype, scale=1.0):
    return (rng.normal(size=shape) * scale).astype(dtype)


def reference_activation(act, a, dout):
    """``(act(a), d/da of the activation applied to dout)`` from the ops (identity: ``a``, ``dout``)."""
    if act == "identity":
        return a, dout
    fwd, bwd = ops.ACTIVATIONS[act]
    out_act, cache = fwd(a)
    return out_act, bwd(dout, cache)


def test_module_reports_numba_available():
    assert _jit.AVAILABLE is True
    _jit.require()  # no error


# --------------------------------------------------------------------------
# Dense-layer passes
# --------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ["relu", "tanh", "identity"])
@pytest.mark.parametrize("N,F", [(1, 1), (7, 5), (12, 9)])
def test_bias_act_forward_equals_dense_bias_then_activation(rng, dtype, act, N, F):
    """ReLU and identity bit for bit; tanh within its stated ulps (float32: of the exact tanh of
    the float32 sum; float64: of NumPy's)."""
    a, b = normal(rng, (N, F), dtype, 2.0), normal(rng, (F,), dtype)
    want = a + b if act == "identity" else ops.ACTIVATIONS[act][0](a + b)[0]
    exact = np.tanh((a + b).astype(np.float64)) if dtype == np.float32 else want
    out = np.full_like(a, np.nan)
    dense.bias_act_forward(a, b, dense.ACT_CODES[act], out)
    assert out.dtype == dtype

    def check(got):
        if act != "tanh":
            np.testing.assert_array_equal(got, want)
            return
        assert tanh_ulps(got, exact).max() <= (3.0 if dtype == np.float32 else 2.0)

    check(out)
    dense.bias_act_forward(a, b, dense.ACT_CODES[act], a)  # in place
    check(a)


def tanh_ulps(got, exact):
    """``|got - exact|`` in units of the last place of ``exact`` rounded to ``got``'s dtype."""
    ulp = np.spacing(np.abs(exact).astype(got.dtype)).astype(np.float64)
    return np.abs(got.astype(np.float64) - exact) / np.maximum(ulp, np.finfo(got.dtype).smallest_subnormal)


def test_float32_tanh_within_ulps_of_exact_with_its_signs_and_limits():
    """The compiled float32 tanh (:func:`npvae.fast.dense._tanh_f32`, through the vectorized
    bias pass) over a dense grid, both sides of its series/exp cut, tiny and huge inputs:
    within 3 ulp of tanh in float64, odd bit for bit, and tanh's zeros, limits and NaN."""
    cut = np.float32(dense._TANH_SERIES_BELOW)
    x = np.concatenate([np.linspace(-12, 12, 400001), np.geomspace(1e-38, 1.0, 4001),
                        np.nextafter(cut, np.float32(0)) + np.arange(-50, 50) * np.spacing(cut),
                        [9.0, 9.01, 43.7, 88.0, 1e30]]).astype(np.float32)
    x = np.concatenate([x, -x])
    out = np.empty((1, x.size), np.float32)
    dense.bias_act_forward(x[None], np.zeros(x.size, np.float32), dense.TANH, out)
    got = out[0]
    assert tanh_ulps(got, np.tanh(x.astype(np.float64))).max() <= 3.0
    half = x.size // 2
    np.testing.assert_array_equal(got[half:], -got[:half])
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45], np.float32)
    out = np.empty((1, special.size), np.float32)
    minus_zero = np.full(special.size, -0.0, np.float32)             # x + (-0.0) is x, -0.0 kept
    dense.bias_act_forward(special[None], minus_zero, dense.TANH, out)
    np.testing.assert_array_equal(out[0], np.tanh(special))
    assert np.signbit(out[0, 1]) and not np.signbit(out[0, 0])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ["relu", "tanh", "identity"])
def test_act_backward_from_forward_output_equals_ops_backward(rng, dtype, act):
    a, dout = normal(rng, (6, 5), dtype), normal(rng, (6, 5), dtype)
    a[0, :2] = 0.0  # the ReLU kink: subgradient 0
    out_act, want = reference_activation(act, a, dout)
    dst = np.full_like(dout, np.nan)
    dense.act_backward(dout, out_act, dense.ACT_CODES[act], dst)
    np.testing.assert_array_equal(dst, want)
    dense.act_backward(dout, out_act, dense.ACT_CODES[act], dout)  # dst aliases dout
    np.testing.assert_array_equal(dout, want)


def test_relu_forward_propagates_nan():
    out = np.empty((1, 3))
    dense.bias_act_forward(np.array([[np.nan, -1.0, 2.0]]), np.zeros(3), dense.RELU, out)
    np.testing.assert_array_equal(out, [[np.nan, 0.0, 2.0]])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,F", [(1, 1), (7, 5), (300, 3)])
def test_bias_grad_equals_dense_backward_db(rng, dtype, N, F):
    d = normal(rng, (N, F), dtype)
    _, _, want = ops.dense_backward(d.astype(np.float64), (np.zeros((N, 2)), np.zeros((2, F))))
    db = np.empty(F, dtype)
    dense.bias_grad(d, db)
    assert_close(db, want.astype(dtype), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,S,D,H,L", SHAPES)
def test_decoder_output_backward_composes_to_ops(rng, dtype, B, S, D, H, L):
    """Leaving dnll out of the output pass and applying it to dh is the reference's result."""
    logits, x = normal(rng, (B, S, D), dtype, 3.0), rng.random((B, D)).astype(dtype)
    h, W = normal(rng, (B, S, H), dtype), normal(rng, (H, D), dtype)
    dnll = normal(rng, (B, S), dtype)
    _, c_nll = ops.bernoulli_nll_forward(logits, x)
    want_dh, want_dW, want_db = ops.dense_backward(ops.bernoulli_nll_backward(dnll, c_nll), (h, W))

    nll, g = np.empty((B, S), dtype), np.empty_like(logits)
    bernoulli.bernoulli_nll_and_grad(logits, x, nll, g)
    g2, w = g.reshape(-1, D), dnll.reshape(-1)
    db = np.empty(D, dtype)
    dense.weighted_bias_grad(g2, w, db)
    dh = g2 @ W.T                                 # (B * S, H), unscaled
    dW = (h.reshape(-1, H) * w[:, None]).T @ g2   # the row scale moved onto h
    dense.scale_rows_into(dh, w, dh)
    assert_close(dh.reshape(B, S, H), want_dh, dtype)
    assert_close(dW, want_dW, dtype)
    assert_close(db, want_db, dtype)
    # scaling the (B * S, D) rows directly gives the reference's dlogits (float64: bit
    # for bit; float32 computes sigmoid(l) - x its own way, within a few ulps)
    dense.scale_rows_into(g2, w, g2)
    want = ops.bernoulli_nll_backward(dnll, c_nll)
    if dtype == np.float64:
        np.testing.assert_array_equal(g, want)
    else:
        assert_close(g, want, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,F", [(1, 1), (7, 5), (12, 9)])
def test_scale_rows_into_equals_broadcast_product(rng, dtype, N, F):
    a, w = normal(rng, (N, F), dtype), normal(rng, (N,), dtype)
    out = np.full_like(a, np.nan)
    dense.scale_rows_into(a, w, out)
    np.testing.assert_array_equal(out, a * w[:, None])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ["relu", "tanh", "identity"])
@pytest.mark.parametrize("N,F", [(1, 1), (6, 5), (11, 3)])
def test_act_backward_rows_equals_row_scale_then_ops_backward(rng, dtype, act, N, F):
    a, dout, w = normal(rng, (N, F), dtype), normal(rng, (N, F), dtype), normal(rng, (N,), dtype)
    a[0, :1] = 0.0  # the ReLU kink: subgradient 0
    scaled = dout * w[:, None]
    out_act, want = reference_activation(act, a, scaled)
    dst = np.full_like(dout, np.nan)
    dense.act_backward_rows(dout, out_act, dense.ACT_CODES[act], w, dst)
    np.testing.assert_array_equal(dst, want)
    dense.act_backward_rows(dout, out_act, dense.ACT_CODES[act], w, dout)  # in place
    np.testing.assert_array_equal(dout, want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ["relu", "tanh", "identity"])
@pytest.mark.parametrize("N,K,F", [(1, 1, 1), (7, 2, 5), (12, 3, 9)])
def test_narrow_dense_act_forward_equals_dense_then_activation(rng, dtype, act, N, K, F):
    z, W, b = normal(rng, (N, K), dtype, 2.0), normal(rng, (K, F), dtype), normal(rng, (F,), dtype)
    a, _ = ops.dense_forward(z, W, b)
    want = a if act == "identity" else ops.ACTIVATIONS[act][0](a)[0]
    out = np.full((N, F), np.nan, dtype)
    dense.narrow_dense_act_forward(z, W, b, dense.ACT_CODES[act], out)
    assert_close(out, want, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ["relu", "tanh", "identity"])
@pytest.mark.parametrize("weighted", [True, False])
@pytest.mark.parametrize("N,K,F", [(1, 1, 1), (7, 2, 5), (12, 3, 9)])
def test_narrow_dense_act_backward_equals_activation_then_dense_backward(rng, dtype, act, weighted, N, K, F):
    z, W, b = normal(rng, (N, K), dtype, 2.0), normal(rng, (K, F), dtype), normal(rng, (F,), dtype)
    dout, w = normal(rng, (N, F), dtype), normal(rng, (N,), dtype)
    a, cache = ops.dense_forward(z, W, b)
    scaled = dout * w[:, None] if weighted else dout
    out_act, da = reference_activation(act, a, scaled)
    want_dz, want_dW, want_db = ops.dense_backward(da, cache)
    dW, db, dz = np.full((K, F), np.nan, dtype), np.full(F, np.nan, dtype), np.full((N, K), np.nan, dtype)
    dense.narrow_dense_act_backward(dout, out_act, dense.ACT_CODES[act], w, weighted, z, W, dW, db, dz)
    assert_close(dW, want_dW, dtype)
    assert_close(db, want_db, dtype)
    assert_close(dz, want_dz, dtype)


# --------------------------------------------------------------------------
# Decoder output
# --------------------------------------------------------------------------
def bernoulli_reference(logits, x):
    nll, cache = ops.bernoulli_nll_forward(logits, x)
    return nll, ops.bernoulli_nll_backward(np.ones(nll.shape, logits.dtype), cache)


def assert_bernoulli(nll, dlogits, logits, x):
    """float64: the reference's gradient bit for bit and its NLL up to the order of the
    sum. float32 (the polynomial route): within a few float32 ulps of the exact values,
    computed in float64 from the same float32 logits, or within float32's ``tiny``
    where those are below it (flushed to 0, as the reference does)."""
    assert nll.dtype == dlogits.dtype == logits.dtype
    if logits.dtype == np.float64:
        want_nll, want_d = bernoulli_reference(logits, x)
        np.testing.assert_array_equal(dlogits, want_d)
        np.testing.assert_allclose(nll, want_nll, rtol=1e-13)
        return
    l, xx = logits.astype(np.float64), np.broadcast_to(x[:, None, :], logits.shape).astype(np.float64)
    e = np.exp(-np.abs(l))
    sig = np.where(l >= 0, 1.0, e) / (1.0 + e)
    eps32, tiny32 = float(np.finfo(np.float32).eps), float(np.finfo(np.float32).tiny)
    err = np.abs(dlogits - (sig - xx))
    bound = np.maximum(2 * eps32 * np.maximum(sig, xx), tiny32)
    assert np.all(err <= bound), float(np.max(err / bound))
    # every pixel's term is >= 0, so a few ulps per term are a few ulps of the sum
    want_nll = (np.maximum(l, 0) - xx * l + np.log1p(e)).sum(axis=-1)
    np.testing.assert_allclose(nll, want_nll, rtol=4 * eps32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,S,D,H,L", SHAPES)
@pytest.mark.parametrize("block_rows", [None, 1, 5])
def test_bernoulli_nll_and_grad_equals_ops(rng, dtype, B, S, D, H, L, block_rows):
    logits = normal(rng, (B, S, D), dtype, 4.0)
    x = rng.random((B, D)).astype(dtype)
    x[:, ::2] = x[:, ::2] > 0.5  # binarized and grayscale pixels
    work = None if block_rows is None else bernoulli.bernoulli_scratch(D, dtype, block_rows * D)
    nll, dlogits = np.full((B, S), np.nan, dtype), np.full_like(logits, np.nan)
    bernoulli.bernoulli_nll_and_grad(logits, x, nll, dlogits, work)
    assert_bernoulli(nll, dlogits, logits, x)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,S,D,H,L", SHAPES)
def test_bernoulli_nll_and_grad_adds_the_output_bias_in_its_pass(rng, dtype, B, S, D, H, L):
    a, bias = normal(rng, (B, S, D), dtype, 4.0), normal(rng, (D,), dtype)
    x = rng.random((B, D)).astype(dtype)
    logits = a + bias  # ops.dense_forward's "+ b"
    nll, dlogits = np.empty((B, S), dtype), np.empty_like(a)
    bernoulli.bernoulli_nll_and_grad(a, x, nll, dlogits, bernoulli.bernoulli_scratch(D, dtype, 2 * D), bias=bias)
    np.testing.assert_array_equal(a, logits)  # the biased logits, in place
    assert_bernoulli(nll, dlogits, logits, x)
    a = logits - bias  # in place over the logits too (the fused training step does this)
    a[...] = normal(rng, (B, S, D), dtype, 4.0)
    logits = a + bias
    bernoulli.bernoulli_nll_and_grad(a, x, nll, a, bias=bias)
    assert_bernoulli(nll, a, logits, x)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bernoulli_nll_and_grad_in_place_over_the_logits(rng, dtype):
    logits, x = normal(rng, (3, 4, 7), dtype, 3.0), rng.random((3, 7)).astype(dtype)
    original = logits.copy()
    nll = np.empty((3, 4), dtype)
    bernoulli.bernoulli_nll_and_grad(logits, x, nll, logits, bernoulli.bernoulli_scratch(7, dtype, 3 * 7))
    assert_bernoulli(nll, logits, original, x)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bernoulli_nll_and_grad_finite_and_exact_at_extreme_logits(dtype):
    logits = np.array([[[1e4, -1e4, 1e4, -1e4, 40.0, -40.0, 0.0]]], dtype=dtype)
    x = np.array([[1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0]], dtype=dtype)
    nll, dlogits = np.empty((1, 1), dtype), np.empty_like(logits)
    bernoulli.bernoulli_nll_and_grad(logits, x, nll, dlogits)
    want_nll, want_d = bernoulli_reference(logits, x)
    assert_bernoulli(nll, dlogits, logits, x)
    np.testing.assert_array_equal(dlogits[0, 0, :4], [0.0, 0.0, 1.0, -1.0])
    assert np.isfinite(nll[0, 0])
    e40 = math.exp(-40.0)
    exact = 2e4 + 2 * math.log1p(e40) + math.log(2.0)
    assert nll[0, 0] == want_nll[0, 0] == np.asarray(exact, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("in_place", [False, True])
def test_bernoulli_nll_and_grad_flushes_subnormals_as_ops_does(rng, dtype, in_place):
    """Logits across log(tiny): the kernel's gradient holds no subnormal floats and
    equals the reference's (which flushes them too), NLL included."""
    fi = np.finfo(dtype)
    cut = -math.log(fi.tiny)
    D = 301
    logits = np.linspace(-1.3 * cut, 1.3 * cut, 2 * 3 * D).reshape(2, 3, D)
    logits = (logits + rng.normal(scale=0.5, size=logits.shape)).astype(dtype)
    x = (rng.random((2, D)) < 0.5).astype(dtype)
    want_nll, want_d = bernoulli_reference(logits, x)
    nll, original = np.empty((2, 3), dtype), logits.copy()
    d = logits if in_place else np.empty_like(logits)
    bernoulli.bernoulli_nll_and_grad(logits, x, nll, d)
    assert not np.any((d != 0) & (np.abs(d) < fi.tiny))
    assert np.any((d == 0) & (x[:, None, :] == 0))          # some entries were flushed
    assert_bernoulli(nll, d, original, x)


def test_float32_flush_threshold_is_where_exp_leaves_the_normal_range():
    """Every float32 ``a`` from 87.2 to 87.5: ``exp(-a)`` (npvae's and NumPy's) is normal
    exactly when ``a <= _EXP_NEG_NORMAL``, and npvae's is monotone there."""
    bits = np.arange(np.float32(87.2).view(np.int32), np.float32(87.5).view(np.int32), dtype=np.int32)
    a = bits.view(np.float32)
    tiny = np.finfo(np.float32).tiny
    ours = np.array([bernoulli.exp_neg_f32(v) for v in a], dtype=np.float32)
    assert np.all(np.diff(ours) <= 0)
    cap = np.float32(bernoulli._EXP_NEG_NORMAL)
    assert float(cap) == bernoulli._EXP_NEG_NORMAL                     # exactly a float32
    np.testing.assert_array_equal(ours >= tiny, a <= cap)
    np.testing.assert_array_equal(np.exp(-a) >= tiny, a <= cap)


def test_bernoulli_float32_sums_pixels_in_float64(rng):
    logits, x = rng.normal(size=(2, 3, 784)), rng.random((2, 784))
    nll64, nll32 = np.empty((2, 3)), np.empty((2, 3), np.float32)
    bernoulli.bernoulli_nll_and_grad(logits, x, nll64, np.empty_like(logits))
    l32, x32 = logits.astype(np.float32), x.astype(np.float32)
    bernoulli.bernoulli_nll_and_grad(l32, x32, nll32, np.empty_like(l32))
    np.testing.assert_allclose(nll32, nll64, rtol=2e-7)


def test_float32_exp_neg_within_ulps_of_exact_and_zero_below_the_normal_range():
    a = np.concatenate([np.linspace(0, 110, 100001), [0.3465, 0.3466, 87.33, 103.9, 104.0, 1e4, np.inf]])
    a = a.astype(np.float32)
    got = np.array([bernoulli.exp_neg_f32(v) for v in a], dtype=np.float32)
    want = np.exp(-a.astype(np.float64))
    normal_range = want >= np.finfo(np.float32).tiny
    ulps = np.abs(got - want)[normal_range] / np.spacing(want[normal_range].astype(np.float32))
    assert ulps.max() <= 1.5, ulps.max()
    # where the exact value is subnormal, the result is 0 (flushed), never a subnormal
    np.testing.assert_array_equal(got[~normal_range], 0.0)
    assert np.all(got >= 0)
    assert np.isnan(bernoulli.exp_neg_f32(np.float32(np.nan)))


def test_float32_log1p_unit_within_ulps_of_exact():
    e = np.concatenate([np.linspace(0, 1, 100001), np.geomspace(1e-38, 1e-3, 2000)]).astype(np.float32)
    got = np.array([bernoulli._log1p_unit_f32(v) for v in e], dtype=np.float32)
    want = np.log1p(e.astype(np.float64))
    ok = want > 0
    ulps = np.abs(got - want)[ok] / np.spacing(want[ok].astype(np.float32))
    assert ulps.max() <= 2.0, ulps.max()
    assert bernoulli._log1p_unit_f32(np.float32(0.0)) == 0.0


def test_float32_log1p_unit_is_the_identity_below_its_bound_and_correctly_rounded_there():
    """Below 2**-25 the result is ``e`` itself (no polynomial on a tiny number), which is
    ``log1p(e)`` correctly rounded to float32; at and above the bound the polynomial runs."""
    bound = np.float32(bernoulli._LOG1P_IS_IDENTITY)
    e = np.concatenate([np.geomspace(np.finfo(np.float32).tiny, float(bound), 5000)[:-1],
                        np.nextafter(bound, np.float32(0)) * np.ones(1)]).astype(np.float32)
    e = e[e < bound]
    got = np.array([bernoulli._log1p_unit_f32(v) for v in e], dtype=np.float32)
    np.testing.assert_array_equal(got, e)
    np.testing.assert_array_equal(np.log1p(e.astype(np.float64)).astype(np.float32), e)
    above = np.nextafter(bound, np.float32(1)) * np.float32(1.5)
    exact = np.log1p(np.float64(above))
    assert abs(float(bernoulli._log1p_unit_f32(above)) - exact) <= np.spacing(np.float32(exact))


# --------------------------------------------------------------------------
# Latent part
# --------------------------------------------------------------------------
def latent_inputs(rng, dtype, B, S, L):
    mu, log_var = normal(rng, (B, L), dtype), normal(rng, (B, L), dtype, 0.7)
    return mu, log_var, normal(rng, (B, S, L), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,S,D,H,L", SHAPES)
def test_reparam_kl_forward_equals_ops(rng, dtype, B, S, D, H, L):
    mu, log_var, eps = latent_inputs(rng, dtype, B, S, L)
    z, kl = np.empty_like(eps), np.empty(B, dtype)
    latent.reparam_kl_forward(mu, log_var, eps, z, kl)
    # references in float64 from the same inputs: float32 kernels must be within float32 noise
    m64, lv64, e64 = (a.astype(np.float64) for a in (mu, log_var, eps))
    assert_close(z, ops.reparam_forward(m64, lv64, e64)[0].astype(dtype), dtype)
    assert_close(kl, ops.gaussian_kl_forward(m64, lv64)[0].astype(dtype), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,S,D,H,L", SHAPES)
def test_reparam_kl_backward_is_the_sum_of_the_ops_backwards(rng, dtype, B, S, D, H, L):
    mu, log_var, eps = latent_inputs(rng, dtype, B, S, L)
    dz, dkl = normal(rng, (B, S, L), dtype), normal(rng, (B,), dtype)
    dmu, dlog_var = np.empty_like(mu), np.empty_like(mu)
    latent.reparam_kl_backward(dz, eps, mu, log_var, dkl, dmu, dlog_var)
    m64, lv64, e64, dz64 = (a.astype(np.float64) for a in (mu, log_var, eps, dz))
    _, c_z = ops.reparam_forward(m64, lv64, e64)
    _, c_kl = ops.gaussian_kl_forward(m64, lv64)
    dmu_z, dlv_z = ops.reparam_backward(dz64, c_z)
    dmu_kl, dlv_kl = ops.gaussian_kl_backward(dkl.astype(np.float64), c_kl)
    assert_close(dmu, (dmu_z + dmu_kl).astype(dtype), dtype)
    assert_close(dlog_var, (dlv_z + dlv_kl).astype(dtype), dtype)


def log_weights_reference(nll, z, mu, log_var):
    log_pz, c_pz = ops.log_standard_normal_forward(z)
    log_qz, c_qz = ops.log_normal_diag_forward(z, mu, log_var)
    return -nll + log_pz - log_qz, (c_pz, c_qz)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,S,D,H,L", SHAPES)
def test_log_weights_equals_ops_log_densities(rng, dtype, B, S, D, H, L):
    mu, log_var, eps = latent_inputs(rng, dtype, B, S, L)
    nll = (rng.random((B, S)) * 200).astype(dtype)
    z = np.empty_like(eps)
    latent.reparam_kl_forward(mu, log_var, eps, z, np.empty(B, dtype))
    log_w = np.empty((B, S), dtype)
    latent.log_weights(nll, z, log_var, eps, log_w)
    want, _ = log_weights_reference(*(a.astype(np.float64) for a in (nll, z, mu, log_var)))
    assert_close(log_w, want.astype(dtype), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,S,D,H,L", SHAPES)
def test_log_weights_backward_equals_ops_backwards(rng, dtype, B, S, D, H, L):
    mu, log_var, eps = latent_inputs(rng, dtype, B, S, L)
    z = np.empty_like(eps)
    latent.reparam_kl_forward(mu, log_var, eps, z, np.empty(B, dtype))
    dlog_w = normal(rng, (B, S), dtype)
    dz, dmu, dlog_var = np.empty_like(z), np.empty_like(mu), np.empty_like(mu)
    latent.log_weights_backward(dlog_w, z, eps, log_var, dz, dmu, dlog_var)
    z64, m64, lv64, d64 = (a.astype(np.float64) for a in (z, mu, log_var, dlog_w))
    _, (c_pz, c_qz) = log_weights_reference(np.zeros((B, S)), z64, m64, lv64)
    dz_q, dmu_q, dlv_q = ops.log_normal_diag_backward(-d64, c_qz)
    assert_close(dz, (ops.log_standard_normal_backward(d64, c_pz) + dz_q).astype(dtype), dtype)
    assert_close(dmu, dmu_q.astype(dtype), dtype)
    assert_close(dlog_var, dlv_q.astype(dtype), dtype)


def iwae_reference(log_w):
    bound, cache = obj.iwae_forward(log_w)
    return bound, obj.iwae_backward(np.ones(log_w.shape[0]), cache)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,S", [(1, 1), (3, 4), (5, 1), (2, 50)])
def test_logsumexp_weights_equals_iwae_bound_and_weights(rng, dtype, B, S):
    log_w = normal(rng, (B, S), dtype, 30.0) - 500.0
    bound, w_tilde = np.empty(B, dtype), np.empty((B, S), dtype)
    latent.logsumexp_weights(log_w, bound, w_tilde)
    want_bound, want_w = iwae_reference(log_w.astype(np.float64))
    assert_close(bound, want_bound.astype(dtype), dtype)
    assert_close(w_tilde, want_w.astype(dtype), dtype)
    np.testing.assert_allclose(w_tilde.sum(axis=1, dtype=np.float64), 1.0, rtol=10 * RTOL[dtype])
    latent.logsumexp_weights(log_w, bound, log_w)  # weights over the log weights, in place
    np.testing.assert_array_equal(log_w, w_tilde)


def test_logsumexp_weights_is_stable_and_handles_minus_inf_rows():
    log_w = np.array([[-1e4 - 1.0, -1e4], [1e4, 1e4], [-np.inf, -np.inf], [-np.inf, 0.0]])
    bound, w_tilde = np.empty(4), np.empty((4, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        latent.logsumexp_weights(log_w, bound, w_tilde)
        want_bound, want_w = iwae_reference(log_w)
    e = math.exp(-1.0)
    np.testing.assert_allclose(bound[:2], [-1e4 + math.log1p(e) - math.log(2.0), 1e4], rtol=1e-15)
    # exact weights at |log_w| = 1e4 (the reference's exp(log_w - lse) is off by ~1e-12 here)
    np.testing.assert_allclose(w_tilde[:2], [[e / (1 + e), 1 / (1 + e)], [0.5, 0.5]], rtol=1e-15)
    np.testing.assert_allclose(bound, want_bound, rtol=1e-15)  # -inf for the -inf row
    np.testing.assert_array_equal(w_tilde[2:], want_w[2:])  # NaN weights there, as ops


# --------------------------------------------------------------------------
# RMSprop
# --------------------------------------------------------------------------
@pytest.mark.parametrize("dtype,gdtype", [(np.float64, np.float64), (np.float32, np.float32),
                                          (np.float32, np.float64)])
def test_rmsprop_step_equals_optim_rmsprop_bit_for_bit(rng, dtype, gdtype):
    hyper = dict(lr=3e-3, rho=0.5, epsilon=1e-7)
    params = {"W": normal(rng, (7, 5), dtype), "b": normal(rng, (5,), dtype)}
    mine = {k: p.copy() for k, p in params.items()}
    v = {k: np.zeros_like(p) for k, p in params.items()}
    opt = RMSprop(**hyper)
    small_g = 8.0 * math.sqrt(np.finfo(dtype).tiny)  # v = 32 tiny after the first step
    for step in range(20):
        grads = {k: normal(rng, p.shape, gdtype, 10.0 ** -rng.integers(0, 6)) for k, p in params.items()}
        # two columns get a gradient only once: their v halves into subnormals, is flushed
        grads["W"][:, :2] = small_g if step == 0 else 0.0
        opt.step(params, grads)
        for k in params:
            updates.rmsprop_step(mine[k], grads[k], v[k], hyper["lr"], hyper["rho"], hyper["epsilon"])
            np.testing.assert_array_equal(mine[k], params[k])
            np.testing.assert_array_equal(v[k], opt._state["v"][k])
            assert mine[k].dtype == v[k].dtype == dtype
        if step == 0:
            assert np.all(v["W"][:, :2] > 0.0)
    assert np.all(v["W"][:, :2] == 0.0)  # flushed, not carried subnormal


def test_rmsprop_step_flushes_subnormal_state_in_the_same_pass():
    tiny = np.finfo(np.float64).tiny
    p, v = np.ones(3), np.array([tiny * 1.5, tiny * 4.0, 1.0])
    updates.rmsprop_step(p, np.zeros(3), v, 1e-3, 0.5, 1e-7)
    np.testing.assert_array_equal(v, [0.0, tiny * 2.0, 0.5])
    np.testing.assert_array_equal(p, 1.0)


# --------------------------------------------------------------------------
# Without numba
# --------------------------------------------------------------------------
def test_kernels_import_and_run_as_python_without_numba():
    code = textwrap.dedent("""
        import sys
        sys.modules["numba"] = None  # make `import numba` fail
        import numpy as np
        from npvae.fast import _jit, bernoulli, dense, latent
        from npvae import ops
        assert _jit.AVAILABLE is False
        try:
            _jit.require()
        except ImportError as exc:
            assert "pip install numba" in str(exc), exc
        else:
            raise AssertionError("require() did not raise")
        rng = np.random.default_rng(0)
        logits, x = rng.normal(size=(2, 3, 5)) * 3, rng.random((2, 5))
        nll, dlogits = np.empty((2, 3)), np.empty_like(logits)
        bernoulli.bernoulli_nll_and_grad(logits, x, nll, dlogits, bernoulli.bernoulli_scratch(5, np.float64, 10))
        want, cache = ops.bernoulli_nll_forward(logits, x)
        np.testing.assert_allclose(nll, want, rtol=1e-13)
        np.testing.assert_array_equal(dlogits, ops.bernoulli_nll_backward(np.ones((2, 3)), cache))
        a, b, out = rng.normal(size=(4, 3)).astype(np.float32), np.ones(3, np.float32), np.empty((4, 3), np.float32)
        dense.bias_act_forward(a, b, dense.RELU, out)
        np.testing.assert_array_equal(out, ops.relu_forward(a + b)[0])
        log_w, bound, w = rng.normal(size=(2, 3)), np.empty(2), np.empty((2, 3))
        latent.logsumexp_weights(log_w, bound, w)
        np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=1e-15)
        print("ok")
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_")}
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                            cwd=repo, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
    assert "numba" not in result.stderr


# --------------------------------------------------------------------------
# Row passes as jobs (run on BLAS's threads by the float32 training step)
# --------------------------------------------------------------------------
def run_jobs_here(records):
    """Run each job record through the compiled job function, one after another on this thread."""
    import ctypes
    address = jobs.row_job_address()
    assert address is not None
    job = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(address)
    for rec in records:
        job(rec.ctypes.data)


def job_table(op, n, f, k, flag, arrays, shared, parts, unit=1):
    records = np.zeros((parts, jobs.JOB_FIELDS), np.int64)
    jobs.job_records(records, op, n, f, k, flag, unit, tuple(arrays), shared)
    return records


def test_job_records_cover_the_rows_in_whole_units_with_each_parts_own_rows():
    a, w = np.zeros((12, 3), np.float32), np.zeros(12, np.float32)
    partial = np.zeros((3, 3))                       # one row per part
    rec = job_table(jobs.JOB_WEIGHTED_BIAS, 12, 3, 0, 0, [a, w, partial], 2, parts=3, unit=4)
    assert rec[:, 1].tolist() == [0, 4, 8] and rec[:, 2].tolist() == [4, 8, 12]
    assert (rec[:, 0] == jobs.JOB_WEIGHTED_BIAS).all() and (rec[:, 3:7] == [12, 3, 0, 0]).all()
    assert (rec[:, 7] == a.ctypes.data).all() and (rec[:, 8] == w.ctypes.data).all()
    assert rec[:, 9].tolist() == [partial[j].ctypes.data for j in range(3)]
    rec = job_table(jobs.JOB_SCALE_ROWS, 10, 3, 0, 0, [a, w, a], 3, parts=3, unit=3)   # 3 blocks of 3 rows, 1 left
    assert rec[:, 1].tolist() == [0, 3, 6] and rec[:, 2].tolist() == [3, 6, 9]


@pytest.mark.parametrize("add_bias", [True, False])
@pytest.mark.parametrize("B,S,parts", [(5, 3, 2), (7, 1, 3), (2, 4, 2)])
def test_bernoulli_job_parts_equal_the_one_pass_kernel_bit_for_bit(rng, add_bias, B, S, parts):
    D = 13
    logits = (4 * rng.standard_normal((B * S, D))).astype(np.float32)
    x = (rng.random((B, D)) < 0.4).astype(np.float32)
    bias = rng.standard_normal(D).astype(np.float32)
    want_l, want_nll = logits.copy(), np.empty(B * S, np.float32)
    bernoulli.bernoulli_f32_rows(want_l, x, S, bias, add_bias, want_nll, np.empty(D, np.float32))
    got_l, got_nll, term = logits.copy(), np.empty(B * S, np.float32), np.zeros((parts, D), np.float32)
    run_jobs_here(job_table(jobs.JOB_BERNOULLI, B * S, D, S, int(add_bias), [got_l, x, got_nll, bias, term], 4,
                       parts, unit=S))
    np.testing.assert_array_equal(got_l, want_l)
    np.testing.assert_array_equal(got_nll, want_nll)


@pytest.mark.parametrize("act", ["relu", "tanh", "identity"])
def test_narrow_forward_and_scale_rows_jobs_equal_the_kernels_bit_for_bit(rng, act):
    N, L, F = 11, 2, 7
    z, W = rng.standard_normal((N, L)).astype(np.float32), rng.standard_normal((L, F)).astype(np.float32)
    b = rng.standard_normal(F).astype(np.float32)
    want, got = np.empty((N, F), np.float32), np.empty((N, F), np.float32)
    dense.narrow_dense_act_forward(z, W, b, dense.ACT_CODES[act], want)
    run_jobs_here(job_table(jobs.JOB_NARROW_FORWARD, N, F, L, dense.ACT_CODES[act], [z, W, b, got], 4, parts=3))
    np.testing.assert_array_equal(got, want)
    w = rng.standard_normal(N).astype(np.float32)
    dense.scale_rows_into(want, w, want)
    run_jobs_here(job_table(jobs.JOB_SCALE_ROWS, N, F, 0, 0, [got, w, got], 3, parts=2))
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("act", ["relu", "tanh"])
@pytest.mark.parametrize("weighted", [True, False])
def test_backward_jobs_partial_sums_add_up_to_the_kernels(rng, act, weighted):
    N, L, F, parts = 13, 2, 6, 3
    d = rng.standard_normal((N, F)).astype(np.float32)
    w = rng.standard_normal(N).astype(np.float32)
    db = np.empty(F, np.float32)
    dense.weighted_bias_grad(d, w, db)
    partial = np.zeros((parts, F))
    run_jobs_here(job_table(jobs.JOB_WEIGHTED_BIAS, N, F, 0, 0, [d, w, partial], 2, parts))
    assert_close(partial.sum(0).astype(np.float32), db, np.float32)
    assert np.count_nonzero(partial.any(axis=1)) == parts          # each part summed its own rows

    out_act = np.tanh(d) if act == "tanh" else np.maximum(d, 0)
    z, W = rng.standard_normal((N, L)).astype(np.float32), rng.standard_normal((L, F)).astype(np.float32)
    want = [np.empty((L, F), np.float32), np.empty(F, np.float32), np.empty((N, L), np.float32)]
    dense.narrow_dense_act_backward(d, out_act, dense.ACT_CODES[act], w, weighted, z, W, *want)
    dz, pdW, pdb = np.empty((N, L), np.float32), np.zeros((parts, L, F)), np.zeros((parts, F))
    flag = dense.ACT_CODES[act] + 16 * weighted
    run_jobs_here(job_table(jobs.JOB_NARROW_BACKWARD, N, F, L, flag, [d, out_act, w, z, W, dz, pdW, pdb], 6, parts))
    np.testing.assert_array_equal(dz, want[2])                     # per row: the same float operations
    assert_close(pdW.sum(0).astype(np.float32), want[0], np.float32)
    assert_close(pdb.sum(0).astype(np.float32), want[1], np.float32)


def test_rmsprop_job_equals_the_kernel_bit_for_bit(rng):
    n = 1001
    p, g = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    v = np.abs(rng.standard_normal(n)).astype(np.float32)
    p2, v2 = p.copy(), v.copy()
    updates.rmsprop_step(p, g, v, 3e-3, 0.8, 1e-7)
    rec = job_table(jobs.JOB_RMSPROP, n, 0, 0, 0, [p2, g, v2], 3, parts=3)
    rec[:, 13:] = np.array([3e-3, 0.8, 1e-7]).view(np.int64)
    run_jobs_here(rec)
    np.testing.assert_array_equal(p2, p)
    np.testing.assert_array_equal(v2, v)


def test_adam_job_equals_the_kernel_bit_for_bit(rng):
    n = 1001
    p, g = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    m, v = rng.standard_normal(n).astype(np.float32), np.abs(rng.standard_normal(n)).astype(np.float32)
    p2, m2, v2 = p.copy(), m.copy(), v.copy()
    updates.adam_step(p, g, m, v, 2e-3, 0.9, 0.999, 1e-7)
    rec = job_table(jobs.JOB_ADAM, n, 0, 0, 0, [p2, g, m2, v2], 4, parts=3)
    rec[:, 12:] = np.array([2e-3, 0.9, 0.999, 1e-7]).view(np.int64)
    run_jobs_here(rec)
    for a, b in ((p2, p), (m2, m), (v2, v)):
        np.testing.assert_array_equal(a, b)


def test_wide_vectors_marks_the_calling_kernel_for_512_bit_vectors():
    """The intrinsic adds LLVM's function attribute to the function that calls it (a fresh,
    uncached function here, since numba does not show the IR of cached ones)."""
    import numba

    @numba.njit
    def doubled(a, out):
        _jit.wide_vectors()
        for i in range(a.size):
            out[i] = 2 * a[i]

    a = np.arange(5, dtype=np.float32)
    out = np.empty_like(a)
    doubled(a, out)
    np.testing.assert_array_equal(out, 2 * a)
    llvm_ir = doubled.inspect_llvm(doubled.signatures[0])
    assert '"prefer-vector-width"="512"' in llvm_ir


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("add_bias", [True, False])
def test_forward_only_nll_equals_the_nll_of_the_pass_with_gradient(rng, dtype, add_bias):
    B, S, D = 3, 4, 37
    logits = (6 * rng.standard_normal((B, S, D))).astype(dtype)
    logits[0, 0, :3] = [-120.0, 95.0, 0.0]                  # beyond the subnormal cap, and a zero
    x = rng.random((B, D)).astype(dtype)
    bias = rng.standard_normal(D).astype(dtype) if add_bias else None
    want, got = np.empty((B, S), dtype), np.empty((B, S), dtype)
    bernoulli.bernoulli_nll_and_grad(logits.copy(), x, want, np.empty_like(logits), bias=bias)
    kept = logits.copy()
    bernoulli.bernoulli_nll(kept, x, got, bias=bias)
    np.testing.assert_array_equal(got, want)                # the same terms, the same float64 sums
    if dtype == np.float32:
        np.testing.assert_array_equal(kept, logits)         # float32 reads the logits only


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_binary_first_layer_equals_the_dense_products(rng, dtype):
    """On binary data the encoder's first layer sums the weight rows of the ones: x @ W and
    x.T @ d as BLAS computes them, up to the order of the additions (an all-zero row included)."""
    x = (rng.random((7, 30)) < 0.2).astype(dtype)
    x[3], x[6] = 0, 1                                   # a row of no ones, a row of ones only
    W, d = rng.standard_normal((30, 9)).astype(dtype), rng.standard_normal((7, 9)).astype(dtype)
    cols, counts = np.empty((7, 30), np.int32), np.empty(7, np.int32)
    assert dense.binary_rows(x, cols, counts)
    assert counts.tolist() == x.sum(1).astype(int).tolist() and counts[3] == 0 and counts[6] == 30
    assert all(cols[i, :counts[i]].tolist() == np.flatnonzero(x[i]).tolist() for i in range(7))
    out, dW = np.full((7, 9), np.nan, dtype), np.full((30, 9), np.nan, dtype)
    dense.binary_product(cols, counts, W, out)
    dense.binary_weight_grad(cols, counts, d, dW)
    tol = 1e-6 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(out, x @ W, rtol=tol, atol=tol)
    np.testing.assert_allclose(dW, x.T @ d, rtol=tol, atol=tol)
    assert np.all(out[3] == 0) and np.all(dW[x.sum(0) == 0] == 0)
    x[5, 4] = 0.5                                       # one gray value: not binary, the dense product
    assert not dense.binary_rows(x, cols, counts)
