"""Dense layers on the fast path: the elementwise passes around BLAS's products, and the
narrow layer (the decoder's first, whose input is the latent ``z``) in one pass each way.

Reference: :func:`npvae.ops.dense_forward` / :func:`npvae.ops.dense_backward` and the
activations :data:`npvae.ops.ACTIVATIONS`. Large products stay in BLAS
(``np.matmul(..., out=)`` in :mod:`npvae.fast.step`); these kernels do what comes
before and after them, fused, writing into caller-provided arrays (the last
arguments) so that a step reuses its workspace. Arrays are C-contiguous 2-D
``(N, F)`` (pass ``a.reshape(-1, F)`` views of ``(B, S, F)`` arrays); shapes are
trusted. A float32 call computes elementwise in float32, as the ops do, and
accumulates sums over rows in float64. Each docstring says which reference op it
equals and how exactly (bit for bit, or up to the order of a sum).

Activation codes: :data:`RELU`, :data:`TANH`, :data:`IDENTITY` (by name in
:data:`ACT_CODES`). The tanh activation uses ``np.tanh`` (NumPy's SIMD tanh is
faster than a numba loop calling the C library's).
"""

import numpy as np

from ._jit import JIT, fma_inline, inline_kernel, kernel, reassoc_kernel, wide_vectors
from .bernoulli import exp_neg_f32

__all__ = ["RELU", "TANH", "IDENTITY", "ACT_CODES", "bias_act_forward", "act_backward", "act_backward_rows",
           "bias_grad", "weighted_bias_grad", "scale_rows_into", "NARROW_INPUT",
           "narrow_dense_act_forward", "narrow_dense_act_backward", "narrow_forward_rows", "binary_rows",
           "binary_product", "binary_weight_grad"]

RELU, TANH, IDENTITY = 0, 1, 2
#: Activation name -> code for :func:`bias_act_forward` / :func:`act_backward`.
ACT_CODES = {"relu": RELU, "tanh": TANH, "identity": IDENTITY}


# --------------------------------------------------------------------------
# Dense-layer passes around the BLAS product: bias + activation and back
# --------------------------------------------------------------------------
@kernel
def bias_act_forward(a, b, act, out):
    """``out = act(a + b)``, the elementwise half of a dense layer plus its activation.

    Equals ``ops.relu_forward(a + b)[0]`` (``act=RELU``) or ``a + b`` (``IDENTITY``) bit for
    bit, where ``a = x2d @ W`` comes from BLAS: with it, this is ``ops.dense_forward``
    followed by the activation. ``TANH``: ``ops.tanh_forward(a + b)[0]`` within 3 ulp
    (float32, :func:`tanh_value`; 1 ulp in float64), one pass in a vectorized loop.

    Parameters
    ----------
    a : ndarray, shape (N, F)
        Pre-activations without bias, e.g. ``(B * S, H)``.
    b : ndarray, shape (F,)
    act : int
        :data:`RELU`, :data:`TANH` or :data:`IDENTITY`.
    out : ndarray, shape (N, F)
        Written. May be ``a`` itself (in place).
    """
    wide_vectors()
    in_place = same_array(a, out)
    for i in range(a.shape[0]):
        if in_place:                                # one variable read and written (same_array)
            row = a[i]
            bias_act_row(row, b, act, row)
        else:
            bias_act_row(a[i], b, act, out[i])


@inline_kernel
def bias_act_row(a, b, act, out):
    """One row: ``out = act(a + b)``, the one place that spells out each activation's forward for
    the kernels (:func:`bias_act_forward`, :func:`narrow_forward_rows`). A loop per activation,
    so that each vectorizes (one loop choosing inside ran the narrow layer 2-3x slower). ReLU is
    written so that NaN propagates, as in ``a * (a > 0)``: ``NaN <= 0`` is False."""
    f = a.shape[0]
    if act == RELU:
        zero = a.dtype.type(0.0)
        for j in range(f):
            v = a[j] + b[j]
            out[j] = zero if v <= zero else v
    elif act == TANH:
        for j in range(f):
            out[j] = tanh_value(a[j] + b[j])
    else:
        for j in range(f):
            out[j] = a[j] + b[j]


def tanh_value(v):
    """``tanh(v)`` of one float: NumPy's in Python; in compiled code, for float32, a vectorizable
    one within 3 ulp of the exact value (:func:`_tanh_f32`; NumPy's SIMD ``np.tanh`` cannot be
    called from numba, and the C library's does not vectorize), for float64 the C library's."""
    return np.tanh(v)


#: Below this ``|x|`` :func:`_tanh_f32` takes tanh's odd series, above it ``(1 - t) / (1 + t)``
#: with ``t = exp(-2|x|)`` (whose cancellation costs at most ~1 ulp from here on).
_TANH_SERIES_BELOW = 0.4


def _tanh_f32(x):
    """``tanh(x)`` in float32 within 3 ulp (2.3 ulp measured over 3 million points; NumPy's is
    within 1.4), with its signs, zeros, infinities and NaN; only float arithmetic, selects and
    bit operations, so that a loop calling it vectorizes.

    ``|x| < 0.4``: ``x + x z P(z)``, ``z = x^2``, ``P`` tanh's Taylor series to ``x^13`` (the
    next term is about 4.1e-9 of the value at 0.4); else ``sign(x) (1 - t) / (1 + t)``, ``t =
    exp(-2|x|)`` (:func:`npvae.fast.bernoulli.exp_neg_f32`, within 1.5 ulp; 0 beyond
    ``|x| > 43.7``, where tanh rounds to 1). Each branch runs on a bounded stand-in where the
    other is taken, so that the branch not taken computes no subnormal in a vector lane.
    """
    f = np.float32
    cut = f(_TANH_SERIES_BELOW)
    a = abs(x)
    small = a < cut
    xs = x if small else cut
    z = xs * xs
    p = f(21844.0 / 6081075.0)
    p = p * z + f(-1382.0 / 155925.0)
    p = p * z + f(62.0 / 2835.0)
    p = p * z + f(-17.0 / 315.0)
    p = p * z + f(2.0 / 15.0)
    p = p * z + f(-1.0 / 3.0)
    series = xs + xs * (z * p)
    series = xs if z == f(0.0) else series               # x itself where x^2 underflows: keeps -0.0
    t = exp_neg_f32(f(2.0) * (cut if small else a))     # NaN stays NaN
    large = (f(1.0) - t) / (f(1.0) + t)
    large = -large if x < f(0.0) else large
    return series if small else large


if JIT:
    from numba.core import types as _types
    from numba.extending import overload as _overload

    _tanh_f32_compiled = fma_inline(_tanh_f32)

    @_overload(tanh_value, jit_options={"fastmath": {"contract"}, "error_model": "numpy"})
    def _tanh_value_compiled(v):
        if v == _types.float32:
            return lambda v: _tanh_f32_compiled(v)
        if isinstance(v, _types.Float):
            return lambda v: np.tanh(v)
        return None


@inline_kernel
def same_array(a, b):
    """True when ``a`` and ``b`` start at the same address: a kernel's output given as its
    input, to be written in place.

    A kernel that does so must read and write that array through *one* variable: LLVM
    vectorizes a loop that reads one array and writes another only after a runtime check
    that they do not overlap, which two views of the same memory fail, and the loop then
    runs scalar (the tanh layer's backward at 1000 x 200 in float32: 0.09-0.18 ms in place,
    0.03-0.04 ms into another array, on the development machine).
    """
    return a.ctypes.data == b.ctypes.data


@kernel
def act_backward(dout, out_act, act, dst):
    """``dst = dout * act'(a)``, from the activation's forward *output*.

    ReLU: ``dout * 1[out > 0]`` (``out > 0`` exactly when ``a > 0``), equal to
    ``ops.relu_backward`` bit for bit; tanh: ``dout * (1 - out^2)``, equal to
    ``ops.tanh_backward``; identity: ``dout``.

    Parameters
    ----------
    dout : ndarray, shape (N, F)
    out_act : ndarray, shape (N, F)
        What :func:`bias_act_forward` wrote.
    act : int
    dst : ndarray, shape (N, F)
        Written. May be ``dout`` itself (in place).
    """
    wide_vectors()
    one = dout.dtype.type(1.0)
    in_place = same_array(dout, dst)
    for i in range(dout.shape[0]):                  # dout * 1 is dout, exactly
        if in_place:                                # one variable read and written (same_array)
            row = dout[i]
            _act_backward_row(row, out_act[i], act, one, row)
        else:
            _act_backward_row(dout[i], out_act[i], act, one, dst[i])


@inline_kernel
def _act_backward_row(dout, out_act, act, wi, dst):
    """One row: ``dst = (dout * wi) * act'(a)`` from the activation's output, the one
    place that spells out each activation's derivative for the kernels above and below.
    ReLU multiplies by the 0/1 mask (not a select), so that the result is
    ``dout * mask`` exactly, as in ``ops.relu_backward``."""
    zero = dout.dtype.type(0.0)
    one = dout.dtype.type(1.0)
    f = dout.shape[0]
    if act == RELU:
        for j in range(f):
            dst[j] = (dout[j] * wi) * (one if out_act[j] > zero else zero)
    elif act == TANH:
        for j in range(f):
            o = out_act[j]
            dst[j] = (dout[j] * wi) * (one - o * o)
    else:
        for j in range(f):
            dst[j] = dout[j] * wi


@kernel
def bias_grad(d, db):
    """Column sums ``db[j] = sum_i d[i, j]``: the ``db`` of ``ops.dense_backward``.

    Accumulated in float64 (for float32, a more accurate sum than NumPy's).

    Parameters
    ----------
    d : ndarray, shape (N, F)
        Gradient of the layer's output, e.g. ``dlogits.reshape(-1, D)``.
    db : ndarray, shape (F,)
        Written.
    """
    wide_vectors()
    n, f = d.shape
    acc = np.zeros(f, dtype=np.float64)
    for i in range(n):
        for j in range(f):
            acc[j] += d[i, j]
    for j in range(f):
        db[j] = acc[j]


@kernel
def weighted_bias_grad(d, w, db):
    """Weighted column sums ``db[j] = sum_i w[i] * d[i, j]``, accumulated in float64.

    The bias gradient of the decoder's output layer when the per-row upstream
    factor is kept out of ``d`` (see :func:`npvae.fast.bernoulli.bernoulli_nll_and_grad`): with
    ``d = sigmoid(l) - x`` and ``w = dnll.reshape(-1)`` it equals the ``db`` of
    ``ops.dense_backward(ops.bernoulli_nll_backward(dnll, ...), ...)``.

    Parameters
    ----------
    d : ndarray, shape (N, F)
    w : ndarray, shape (N,)
    db : ndarray, shape (F,)
        Written.
    """
    wide_vectors()
    n, f = d.shape
    acc = np.zeros(f, dtype=np.float64)
    for i in range(n):
        wi = np.float64(w[i])
        for j in range(f):
            acc[j] += wi * d[i, j]
    for j in range(f):
        db[j] = acc[j]


@kernel
def scale_rows_into(a, w, out):
    """``out[i, :] = a[i, :] * w[i]`` (``out`` may be ``a``: in place).

    Applies a per-(example, sample) upstream factor to a ``(B * S, F)`` array: e.g.
    ``dnll`` to ``sigmoid(l) - x`` (giving ``ops.bernoulli_nll_backward`` exactly,
    except for products below the dtype's ``tiny``, which the reference flushes to 0:
    ``ops.flush_subnormal``), or, cheaper, to ``dh = (sigmoid(l) - x) @ W.T`` on the
    ``(B * S, H)`` side, since a row scale commutes with a right product.

    The decoder output layer's ``dW = (w[:, None] * h).T @ g`` needs ``h`` row-scaled
    while ``h`` itself is kept for the activation's backward.

    Parameters
    ----------
    a : ndarray, shape (N, F)
    w : ndarray, shape (N,)
    out : ndarray, shape (N, F)
        Written.
    """
    wide_vectors()
    n, f = a.shape
    for i in range(n):
        wi = w[i]
        for j in range(f):
            out[i, j] = a[i, j] * wi


@kernel
def act_backward_rows(dout, out_act, act, w, dst):
    """``dst = (dout * w[:, None]) * act'(a)``: :func:`act_backward` with a row scale first.

    With ``dout = g @ W.T`` (``g = sigmoid(l) - x``, unscaled) and ``w = dnll.reshape(-1)``
    this is the decoder's last hidden layer's ``da`` of the reference, the per-row
    upstream factor of the Bernoulli NLL applied on the ``(B * S, H)`` side in the same
    pass as the activation's backward (see :func:`npvae.fast.bernoulli.bernoulli_nll_and_grad`).

    Parameters
    ----------
    dout : ndarray, shape (N, F)
    out_act : ndarray, shape (N, F)
        The activation's forward output.
    act : int
    w : ndarray, shape (N,)
    dst : ndarray, shape (N, F)
        Written. May be ``dout`` itself (in place).
    """
    wide_vectors()
    in_place = same_array(dout, dst)
    for i in range(dout.shape[0]):
        if in_place:                                # one variable read and written (same_array)
            row = dout[i]
            _act_backward_row(row, out_act[i], act, w[i], row)
        else:
            _act_backward_row(dout[i], out_act[i], act, w[i], dst[i])


# --------------------------------------------------------------------------
# The decoder's first layer: a narrow input (the latent z, L columns)
# --------------------------------------------------------------------------
#: Inputs at most this wide go through :func:`narrow_dense_act_forward` /
#: :func:`narrow_dense_act_backward` instead of BLAS (the decoder's first layer,
#: whose input is the latent ``z``): a BLAS product with an inner size of 2 runs far
#: below its rate, and the passes around it cost more than the product.
NARROW_INPUT = 8


def narrow_dense_act_forward(z, W, b, act, out):
    """``out = act(z @ W + b)`` in one pass, for a narrow ``z`` (few columns, e.g. the latent).

    Equal to ``np.matmul(z, W)`` then :func:`bias_act_forward` up to the order of the
    ``K``-term sums (here ``z[:, 0] W[0] + z[:, 1] W[1] + ...``, then ``+ b``, as
    ``ops.dense_forward`` adds the bias after the product).

    Parameters
    ----------
    z : ndarray, shape (N, K)
    W : ndarray, shape (K, F)
    b : ndarray, shape (F,)
    act : int
    out : ndarray, shape (N, F)
        Written.
    """
    narrow_forward_rows(z, W, b, act, out)


@kernel
def narrow_forward_rows(z, W, b, act, out):
    """The rows of :func:`narrow_dense_act_forward` (a part's, in :mod:`npvae.fast.jobs`)."""
    wide_vectors()
    n, k = z.shape
    f = W.shape[1]
    for i in range(n):
        row = out[i]
        z0 = z[i, 0]
        for j in range(f):
            row[j] = z0 * W[0, j]
        for m in range(1, k):
            zm = z[i, m]
            for j in range(f):
                row[j] += zm * W[m, j]
        bias_act_row(row, b, act, row)


@kernel
def narrow_dense_act_backward(dout, out_act, act, w, weighted, z, W, dW, db, dz):
    """The backward of :func:`narrow_dense_act_forward` from its output's gradient, in one pass.

    With ``da = (dout * w[:, None]) * act'(a)`` (``w`` only if ``weighted``; the
    activation's derivative from its output, as :func:`act_backward_rows`):
    ``dW = z.T @ da``, ``db = da.sum(0)`` (both accumulated in float64) and
    ``dz = da @ W.T`` -- ``ops.dense_backward`` after the activation's backward,
    without writing ``da``. Equal to the BLAS route up to the order of the sums.

    Parameters
    ----------
    dout : ndarray, shape (N, F)
        Gradient of the layer's activated output.
    out_act : ndarray, shape (N, F)
        The activated output.
    act : int
    w : ndarray, shape (N,)
        Row weights (the upstream ``dnll`` when this is the last hidden layer).
    weighted : bool
    z : ndarray, shape (N, K)
    W : ndarray, shape (K, F)
    dW : ndarray, shape (K, F)
        Written.
    db : ndarray, shape (F,)
        Written.
    dz : ndarray, shape (N, K)
        Written.
    """
    wide_vectors()
    n, f = dout.shape
    k = z.shape[1]
    one = dout.dtype.type(1.0)
    acc_w = np.zeros((k, f), dtype=np.float64)
    acc_b = np.zeros(f, dtype=np.float64)
    da = np.empty(f, dtype=dout.dtype)
    for i in range(n):
        _act_backward_row(dout[i], out_act[i], act, w[i] if weighted else one, da)
        for j in range(f):
            acc_b[j] += da[j]
        for m in range(k):
            zm = np.float64(z[i, m])
            for j in range(f):
                acc_w[m, j] += zm * da[j]
            dz[i, m] = _dot_f64(da, W[m])
    for m in range(k):
        for j in range(f):
            dW[m, j] = acc_w[m, j]
    for j in range(f):
        db[j] = acc_b[j]


@reassoc_kernel
def _dot_f64(a, b):
    """``sum(a * b)`` in float64, in an order LLVM may choose (SIMD partial sums)."""
    acc = np.float64(0.0)
    for j in range(a.shape[0]):
        acc += np.float64(a[j]) * np.float64(b[j])
    return acc


# --------------------------------------------------------------------------
# The encoder's first layer on binary data: a sum of the weight rows of the ones
# --------------------------------------------------------------------------
@kernel
def binary_rows(x, cols, counts):
    """Where each row of ``x`` (N, D) is 1: ``cols[i, :counts[i]]`` (int32, increasing), and
    True; or False, with ``cols`` and ``counts`` unspecified, as soon as an entry is neither
    0 nor 1 (then the layer takes the dense product)."""
    n, d = x.shape
    zero, one = x.dtype.type(0.0), x.dtype.type(1.0)
    for i in range(n):
        # branch-free: every column is written at the next free place and kept only where x is 1
        # (c <= j, so within the row); on data with ~20% ones a branch per pixel mispredicted
        # often enough to take ~1.5x as long
        c = 0
        bad = False
        for j in range(d):
            v = x[i, j]
            cols[i, c] = j
            c += v == one
            bad |= (v != zero) & (v != one)
        if bad:
            return False
        counts[i] = c
    return True


@kernel
def binary_product(cols, counts, W, out):
    """``out = x @ W`` for a binary ``x`` given by :func:`binary_rows`: each row the sum of the
    rows of ``W`` where ``x`` is 1, in increasing order (equal to BLAS's product up to the order
    of the additions; exact zeros where a row of ``x`` is all 0)."""
    wide_vectors()
    f = W.shape[1]
    zero = out.dtype.type(0.0)
    for i in range(out.shape[0]):
        row = out[i]
        for k in range(f):
            row[k] = zero
        for c in range(counts[i]):
            w = W[cols[i, c]]
            for k in range(f):
                row[k] += w[k]


@kernel
def binary_weight_grad(cols, counts, d, dW):
    """``dW = x.T @ d`` for a binary ``x`` given by :func:`binary_rows`: row ``j`` of ``dW`` the
    sum of the rows of ``d`` whose ``x`` has a 1 in column ``j`` (rows in increasing order;
    exact zeros where the column is all 0)."""
    wide_vectors()
    f = dW.shape[1]
    zero = dW.dtype.type(0.0)
    for j in range(dW.shape[0]):
        for k in range(f):
            dW[j, k] = zero
    for i in range(d.shape[0]):
        di = d[i]
        for c in range(counts[i]):
            row = dW[cols[i, c]]
            for k in range(f):
                row[k] += di[k]
