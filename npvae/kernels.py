"""Numba kernels for the model's hot loop, with the contracts of :mod:`npvae.ops`.

Each kernel is a plain Python function over arrays, compiled with
``numba.njit(cache=True)`` when numba can be imported. The same bodies run
uncompiled under ``NUMBA_DISABLE_JIT=1`` (debugging, line coverage) or when
numba is missing, so ``import npvae.kernels`` never fails; callers that need
speed check :data:`AVAILABLE` or call :func:`require` first. This is the only
npvae module that imports numba.

What the kernels do, and what they leave to the caller:

* Large matrix products stay in BLAS (``h2d @ W``, ``np.matmul(..., out=)``);
  kernels do the elementwise and reduction passes around them, fused, and
  write into caller-provided output arrays (the last arguments) so that a
  training step can reuse preallocated workspaces. They return nothing.
* Arrays must be C-contiguous with the shapes documented (row-wise kernels
  take 2-D ``(N, F)`` arrays: pass ``a.reshape(-1, F)`` views of ``(B, S, F)``
  arrays). Inside, shapes are trusted: validate at the public boundary.
* One dtype per call: float32 or float64 inputs and outputs alike. A float32
  call computes elementwise in float32, as the NumPy ops do, and accumulates
  sums over pixels, samples and rows in float64.
* The upstream gradient of an op is *not* always applied inside the kernel;
  each docstring says which factor is left to the caller and why.

Transcendentals over large arrays: numba calls the C library's scalar
``expf``/``log1pf``/``tanhf`` once per element (the PyPI llvmlite has no SVML to
vectorize them), while NumPy's ufuncs use SIMD implementations; on the
development machine (AVX-512) a numba loop calling ``log1p`` was ~15x slower
than ``np.log1p``. :func:`bernoulli_nll_and_grad`, the one pass over the
``(B, S, D)`` logits, therefore takes one of two routes:

* **float32** (training): one numba loop over the logits with its own
  ``exp(-|l|)`` and ``log1p`` (:func:`_exp_neg_f32`, :func:`_log1p_unit_f32`:
  range reduction and short polynomials of plain float arithmetic, which LLVM
  vectorizes). Each element is read once and written once, with everything in
  registers; about twice as fast as the route below. The results are not the
  reference's bit for bit but within a few float32 ulps of the exact values
  (bounds in the functions' docstrings, checked against float64 in the tests).
* **float64** (gradient checks, the reference precision): blocks of rows small
  enough to stay in cache; a numba pass adds the output bias (optional) and
  writes ``-|l|``, ``np.exp`` and ``np.log1p`` fill a block of scratch, then a
  numba kernel does everything else for that block in one pass. The gradient is
  the reference's bit for bit (the same ufuncs, the same float operations in the
  same order; the NLL differs only in the order of its float64 sum).

Both routes take an ``exp(-|l|)`` below the dtype's smallest normal number as 0, as
the reference does (``ops.flush_subnormal``), and the float32 route computes no
subnormal anywhere (:data:`_EXP_NEG_NORMAL`, :data:`_LOG1P_IS_IDENTITY`): a trained
model's confident logits would otherwise fill the gradient and the pass with
subnormal floats, each a microcode assist on x86.

The tanh activation uses ``np.tanh``.

The float32 row passes can also run as *jobs* on BLAS's own threads: a C-callable
function (:func:`row_job_address`) reads an int64 record of an operation, a range
of rows and the arrays' addresses (:func:`job_records`, :data:`JOB_FIELDS`) and
calls the kernel above for those rows (see "Row passes as jobs" below). The hot
kernels ask LLVM for 512-bit vectors where the CPU has them (:func:`_wide_vectors`).

Activation codes for :func:`bias_act_forward` and :func:`act_backward` are
:data:`RELU`, :data:`TANH`, :data:`IDENTITY` (by name in :data:`ACT_CODES`).
"""

import math
import warnings

import numpy as np

try:
    import numba
except ImportError as exc:  # numba is needed only for speed
    numba = None
    _IMPORT_ERROR = exc

    def _literal_unroll(container):
        return container
else:
    _IMPORT_ERROR = None
    from numba import literal_unroll as _literal_unroll
    from llvmlite import ir as _ir
    from numba.core import types as _types
    from numba.extending import intrinsic as _intrinsic

__all__ = [
    "AVAILABLE", "require", "RELU", "TANH", "IDENTITY", "ACT_CODES",
    "bias_act_forward", "act_backward", "act_backward_rows", "bias_grad", "weighted_bias_grad",
    "NARROW_INPUT", "narrow_dense_act_forward", "narrow_dense_act_backward",
    "scale_rows", "scale_rows_into",
    "bernoulli_nll_and_grad", "bernoulli_workspace", "BLOCK_ELEMENTS",
    "reparam_kl_forward", "reparam_kl_backward",
    "log_weights", "log_weights_backward", "logsumexp_weights",
    "rmsprop_step",
    "JOB_FIELDS", "JOB_BERNOULLI", "JOB_NARROW_FORWARD", "JOB_SCALE_ROWS", "JOB_WEIGHTED_BIAS",
    "JOB_NARROW_BACKWARD", "JOB_RMSPROP", "job_records", "row_job_address",
]

#: True when numba could be imported (the kernels are then compiled on first call).
AVAILABLE = numba is not None

RELU, TANH, IDENTITY = 0, 1, 2
#: Activation name -> code for :func:`bias_act_forward` / :func:`act_backward`.
ACT_CODES = {"relu": RELU, "tanh": TANH, "identity": IDENTITY}


def require():
    """Raise a clear :class:`ImportError` unless numba is available.

    Call this where the numba backend is selected (e.g. ``VAE(backend="numba")``),
    so the user learns at once, not from a model that is silently slow.
    """
    if not AVAILABLE:
        raise ImportError(
            "the numba backend needs the numba package, which could not be imported "
            f"({_IMPORT_ERROR}); install it with `pip install numba`, or use backend='numpy'"
        ) from _IMPORT_ERROR


def _kernel(fn):
    """Compile with ``njit(cache=True)`` when numba is there; else keep the function.

    ``error_model="numpy"``: a float division by zero gives inf/NaN as in NumPy
    instead of raising ZeroDivisionError; without it numba guards every division
    with a branch and the loops do not vectorize (RMSprop's step was 8x slower).
    It does not change any result that the Python error model would return.
    """
    return _compile(fn)


def _compile(fn, **options):
    """``numba.njit(cache=True, error_model="numpy", nogil=True, **options)(fn)``, or ``fn``.

    ``nogil``: a kernel releases the GIL, so that the training step's worker threads
    (:mod:`npvae.fused`) run their kernels at the same time.
    """
    if not AVAILABLE:
        return fn
    try:
        return numba.njit(cache=True, error_model="numpy", nogil=True, **options)(fn)
    except RuntimeError:
        # numba found no writable cache directory (read-only install and no usable
        # NUMBA_CACHE_DIR): compile on every run rather than fail at import
        return numba.njit(error_model="numpy", nogil=True, **options)(fn)


def _inline_kernel(fn):
    """:func:`_compile`, inlined into its callers by numba (per-row helpers)."""
    return _compile(fn, inline="always")



# --------------------------------------------------------------------------
# Dense-layer passes around the BLAS product: bias + activation and back
# --------------------------------------------------------------------------
def bias_act_forward(a, b, act, out):
    """``out = act(a + b)``, the elementwise half of a dense layer plus its activation.

    Equals ``ops.relu_forward(a + b)[0]`` (``act=RELU``), ``ops.tanh_forward(a + b)[0]``
    (``TANH``) or ``a + b`` (``IDENTITY``), bit for bit, where ``a = x2d @ W`` comes
    from BLAS: with it, this is ``ops.dense_forward`` followed by the activation.
    ReLU and identity are one numba pass; tanh is ``np.add`` then ``np.tanh`` in place
    (see the module docstring).

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
    if act == TANH:
        np.add(a, b, out=out)
        np.tanh(out, out=out)
    else:
        _bias_relu_or_identity(a, b, act == RELU, out)


@_kernel
def _bias_relu_or_identity(a, b, relu, out):
    """``out = max(a + b, 0)`` if ``relu`` else ``a + b``, over (N, F)."""
    _wide_vectors()
    n, f = a.shape
    zero = a.dtype.type(0.0)
    if relu:
        for i in range(n):
            for j in range(f):
                v = a[i, j] + b[j]
                # written so that NaN propagates (NaN <= 0 is False), as in a * (a > 0)
                out[i, j] = zero if v <= zero else v
    else:
        for i in range(n):
            for j in range(f):
                out[i, j] = a[i, j] + b[j]


@_kernel
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
    _wide_vectors()
    one = dout.dtype.type(1.0)
    for i in range(dout.shape[0]):
        _act_backward_row(dout[i], out_act[i], act, one, dst[i])   # dout * 1 is dout, exactly


@_inline_kernel
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


@_kernel
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
    _wide_vectors()
    n, f = d.shape
    acc = np.zeros(f, dtype=np.float64)
    for i in range(n):
        for j in range(f):
            acc[j] += d[i, j]
    for j in range(f):
        db[j] = acc[j]


@_kernel
def weighted_bias_grad(d, w, db):
    """Weighted column sums ``db[j] = sum_i w[i] * d[i, j]``, accumulated in float64.

    The bias gradient of the decoder's output layer when the per-row upstream
    factor is kept out of ``d`` (see :func:`bernoulli_nll_and_grad`): with
    ``d = sigmoid(l) - x`` and ``w = dnll.reshape(-1)`` it equals the ``db`` of
    ``ops.dense_backward(ops.bernoulli_nll_backward(dnll, ...), ...)``.

    Parameters
    ----------
    d : ndarray, shape (N, F)
    w : ndarray, shape (N,)
    db : ndarray, shape (F,)
        Written.
    """
    _wide_vectors()
    n, f = d.shape
    acc = np.zeros(f, dtype=np.float64)
    for i in range(n):
        wi = np.float64(w[i])
        for j in range(f):
            acc[j] += wi * d[i, j]
    for j in range(f):
        db[j] = acc[j]


def scale_rows(a, w):
    """``a[i, :] *= w[i]`` in place.

    Applies a per-(example, sample) upstream factor to a ``(B * S, F)`` array: e.g.
    ``dnll`` to ``sigmoid(l) - x`` (giving ``ops.bernoulli_nll_backward`` exactly,
    except for products below the dtype's ``tiny``, which the reference flushes to 0:
    ``ops.flush_subnormal``), or, cheaper, to ``dh = (sigmoid(l) - x) @ W.T`` on the
    ``(B * S, H)`` side, since a row scale commutes with a right product.

    Parameters
    ----------
    a : ndarray, shape (N, F)
        Updated in place.
    w : ndarray, shape (N,)
        E.g. ``dnll.reshape(-1)``.
    """
    scale_rows_into(a, w, a)


@_kernel
def scale_rows_into(a, w, out):
    """``out[i, :] = a[i, :] * w[i]``: :func:`scale_rows` into another array.

    The decoder output layer's ``dW = (w[:, None] * h).T @ g`` needs ``h`` row-scaled
    while ``h`` itself is kept for the activation's backward.

    Parameters
    ----------
    a : ndarray, shape (N, F)
    w : ndarray, shape (N,)
    out : ndarray, shape (N, F)
        Written.
    """
    _wide_vectors()
    n, f = a.shape
    for i in range(n):
        wi = w[i]
        for j in range(f):
            out[i, j] = a[i, j] * wi


@_kernel
def act_backward_rows(dout, out_act, act, w, dst):
    """``dst = (dout * w[:, None]) * act'(a)``: :func:`act_backward` with a row scale first.

    With ``dout = g @ W.T`` (``g = sigmoid(l) - x``, unscaled) and ``w = dnll.reshape(-1)``
    this is the decoder's last hidden layer's ``da`` of the reference, the per-row
    upstream factor of the Bernoulli NLL applied on the ``(B * S, H)`` side in the same
    pass as the activation's backward (see :func:`bernoulli_nll_and_grad`).

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
    _wide_vectors()
    for i in range(dout.shape[0]):
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
    _narrow_forward(z, W, b, act == RELU, out)
    if act == TANH:
        np.tanh(out, out=out)


@_kernel
def _narrow_forward(z, W, b, relu, out):
    _wide_vectors()
    n, k = z.shape
    f = W.shape[1]
    zero = out.dtype.type(0.0)
    for i in range(n):
        row = out[i]
        z0 = z[i, 0]
        for j in range(f):
            row[j] = z0 * W[0, j]
        for m in range(1, k):
            zm = z[i, m]
            for j in range(f):
                row[j] += zm * W[m, j]
        if relu:
            for j in range(f):
                v = row[j] + b[j]
                row[j] = zero if v <= zero else v      # NaN propagates, as in bias_act_forward
        else:
            for j in range(f):
                row[j] = row[j] + b[j]


@_kernel
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
    _wide_vectors()
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


# --------------------------------------------------------------------------
# Decoder output: Bernoulli NLL and its gradient in one pass over the logits
# --------------------------------------------------------------------------
#: Elements per block of :func:`bernoulli_nll_and_grad`: two float32 blocks of
#: 64K elements (256 KiB each) stay in a core's L2 cache between the passes.
BLOCK_ELEMENTS = 1 << 16


def bernoulli_workspace(D, dtype, block_elements=BLOCK_ELEMENTS):
    """Scratch for :func:`bernoulli_nll_and_grad`: shape ``(2, rows, D)``.

    ``rows = max(1, block_elements // D)`` rows of ``D`` pixels per block (float64); the
    float32 route needs one row of scratch only, so it gets ``rows = 1``. Allocate it once
    per model and pass it as ``work`` to avoid an allocation per call.
    """
    rows = 1 if np.dtype(dtype) == np.float32 and AVAILABLE else max(1, block_elements // D)
    return np.empty((2, rows, D), dtype=dtype)


def bernoulli_nll_and_grad(logits, x, nll, dlogits, work=None, bias=None):
    """Bernoulli NLL per sample and ``d nll / d logits``, one pass over ``(B, S, D)``.

    ``nll[b, s] = sum_d max(l, 0) - x[b, d] * l + log1p(exp(-|l|))`` with
    ``l = logits[b, s, d]`` (summed in float64), and
    ``dlogits[b, s, d] = sigmoid(l) - x[b, d]``, the stable sigmoid sharing
    ``exp(-|l|)`` with the NLL. Exact and finite for any finite logit, except that
    an ``exp(-|l|)`` below the dtype's smallest normal number is taken as 0, as in
    ``ops.sigmoid``: ``dlogits`` holds no subnormal floats, which would slow down the
    products that take it several times over (``ops.flush_subnormal``).

    In float64, ``nll`` equals ``ops.bernoulli_nll_forward(logits, x)[0]`` (up to the
    order of the float64 sum) and ``dlogits`` equals, bit for bit,
    ``ops.bernoulli_nll_backward(ones((B, S)), cache)``. In float32 (the
    vectorized route of the module docstring) each pixel's NLL term and gradient
    are within a few float32 ulps of the exact values. The upstream ``dnll[b, s]``
    is **not** applied, because for the IWAE it depends on every sample's NLL,
    known only after this pass. Apply it afterwards: either :func:`scale_rows` on
    ``dlogits.reshape(-1, D)`` (one more pass over ``(B, S, D)``; then the plain
    ``dense_backward`` follows), or on the ``(B * S, H)`` side, since a row scale
    commutes with the products: ``dh = scale_rows(g @ W.T, w)``,
    ``dW = (w[:, None] * h).T @ g`` (a ``(B * S, H)`` scratch; ``h`` itself is still
    needed by the activation's backward) and ``db`` from :func:`weighted_bias_grad`,
    where ``g = dlogits.reshape(-1, D)`` and ``w = dnll.reshape(-1)``.

    float64 works through blocks of rows: ``np.exp`` and ``np.log1p`` (SIMD) fill a
    block of ``work``, then a numba kernel does the rest of the block in one pass.
    float32 is one numba pass (``work[0, 0]`` serves as a row of scratch).

    Parameters
    ----------
    logits : ndarray, shape (B, S, D)
    x : ndarray, shape (B, D)
        Targets in [0, 1], broadcast over samples.
    nll : ndarray, shape (B, S)
        Written.
    dlogits : ndarray, shape (B, S, D)
        Written. May be ``logits`` itself (in place).
    work : ndarray, shape (2, rows, D), optional
        Scratch of the logits' dtype, from :func:`bernoulli_workspace`
        (allocated here if not given).
    bias : ndarray, shape (D,), optional
        The output layer's bias, not yet in ``logits``: it is added in place
        (``logits += bias``, the ``+ b`` of ``ops.dense_forward``, the same float
        addition) block by block while the block is in cache, saving a pass over
        ``(B, S, D)``. ``logits`` then holds the biased logits (unless ``dlogits``
        overwrote them).
    """
    B, S, D = logits.shape
    add_bias = bias is not None
    if logits.dtype == np.float32 and AVAILABLE:
        scratch = np.empty(D, np.float32) if work is None else work[0, 0]
        flat, flat_nll = logits.reshape(B * S, D), nll.reshape(B * S)
        b = bias if add_bias else scratch[:0]
        if np.shares_memory(logits, dlogits):      # in place (the training step)
            _bernoulli_f32_inplace(flat, x, S, b, add_bias, flat_nll, scratch)
        else:
            _bernoulli_f32(flat, x, S, b, add_bias, flat_nll, dlogits.reshape(B * S, D), scratch)
        return
    if work is None:
        work = bernoulli_workspace(D, logits.dtype)
    rows = work.shape[1]
    tiny = logits.dtype.type(np.finfo(logits.dtype).tiny)
    flat = logits.reshape(B * S, D)
    if not add_bias:
        bias = work[0, 0, :0]             # unused, of the right type for the kernel
    for r0 in range(0, B * S, rows):
        n = min(rows, B * S - r0)
        e, log1p_e = work[0, :n], work[1, :n]
        _neg_abs_rows(flat, r0, bias, add_bias, e)   # e = -|l| (after l += bias)
        np.exp(e, out=e)                  # exp(-|l|): never overflows
        np.log1p(e, out=log1p_e)
        _bernoulli_rows(logits, x, e, log1p_e, r0, nll, dlogits, tiny)


@_kernel
def _neg_abs_rows(flat, r0, bias, add_bias, e):
    """``e[i] = -|flat[r0 + i]|`` for the block's rows, after ``flat[r0 + i] += bias`` if asked.

    One pass in place of NumPy's ``abs`` then ``negative`` (and the bias's ``add``);
    ``-|l|`` is exact, so ``np.exp`` of it is the reference's ``np.exp(-np.abs(l))``.
    """
    n, D = e.shape
    for i in range(n):
        r = r0 + i
        if add_bias:
            for d in range(D):
                v = flat[r, d] + bias[d]
                flat[r, d] = v
                e[i, d] = -abs(v)
        else:
            for d in range(D):
                e[i, d] = -abs(flat[r, d])


@_kernel
def _bernoulli_rows(logits, x, e, log1p_e, r0, nll, dlogits, tiny):
    """Rows ``r0 .. r0 + n`` (flat ``b * S + s``) of :func:`bernoulli_nll_and_grad`.

    ``e`` and ``log1p_e`` of shape (n, D) hold ``exp(-|l|)`` and ``log1p`` of it;
    ``log1p_e`` is overwritten with the per-pixel NLL terms. An ``e`` below ``tiny``
    (the dtype's smallest normal number) counts as 0, with its ``log1p``, as in
    ``ops.sigmoid`` and ``ops.bernoulli_nll_forward``.
    """
    B, S, D = logits.shape
    n = e.shape[0]
    zero = logits.dtype.type(0.0)
    one = logits.dtype.type(1.0)
    for i in range(n):
        b = (r0 + i) // S
        s = (r0 + i) - b * S
        term = log1p_e[i]
        # no reduction in this loop, so that it vectorizes (a float64 running sum
        # would be a strict-order dependency chain); the row is summed just below
        for d in range(D):
            l = logits[b, s, d]
            xd = x[b, d]
            ed = e[i, d]
            flush = ed < tiny                                 # subnormal: 0 (ops.flush_subnormal)
            ed = zero if flush else ed
            # the term in the dtype, as ops does; only the sum over D is in float64
            term[d] = ((l if l > zero else zero) - xd * l) + (zero if flush else term[d])
            # sigmoid(l) = 1 / (1 + e) for l >= 0, e / (1 + e) below, as ops.sigmoid
            dlogits[b, s, d] = (one if l >= zero else ed) / (one + ed) - xd
        nll[b, s] = _sum_f64(term)


def _reassoc_kernel(fn):
    """:func:`_kernel` with LLVM's ``reassoc`` flag: a float sum may be reordered (and so
    vectorized). Only for sums whose order is not part of the contract (bounded by tests);
    no other fast-math flag (no NaN/inf assumptions, no reciprocal approximations)."""
    return _compile(fn, fastmath={"reassoc"})


@_reassoc_kernel
def _dot_f64(a, b):
    """``sum(a * b)`` in float64, in an order LLVM may choose (SIMD partial sums)."""
    acc = np.float64(0.0)
    for j in range(a.shape[0]):
        acc += np.float64(a[j]) * np.float64(b[j])
    return acc


@_reassoc_kernel
def _sum_f64(t):
    """``sum(t)`` in float64, in an order LLVM may choose (SIMD partial sums).

    Every term is converted to float64 before it is added, so a float32 row of D=784 NLL
    terms sums with float64 rounding whatever the order: the result is within ~1e-16
    relative of NumPy's ``sum(dtype=np.float64)``. Twice as fast as a strict-order sum.
    """
    acc = np.float64(0.0)
    for d in range(t.shape[0]):
        acc += np.float64(t[d])
    return acc


# --------------------------------------------------------------------------
# The float32 route: exp(-a) and log1p(e) from float arithmetic that vectorizes
# --------------------------------------------------------------------------
_LOG2E = 1.4426950408889634
#: ln 2 = _LN2_HI + _LN2_LO, with _LN2_HI's float32 significand 15 bits long, so
#: that ``k * _LN2_HI`` is exact in float32 for the integers ``k <= 150`` used here.
_LN2_HI = 0.693145751953125
_LN2_LO = 1.4286068203094173e-06
#: The largest float32 ``a`` whose ``exp(-a)`` is a normal float32 (>= 2**-126), for both
#: :func:`_exp_neg_f32` and NumPy's ``exp`` (checked in the tests): the float32 Bernoulli
#: pass takes ``exp(-|l|)`` as 0 above it (``ops.flush_subnormal``).
_EXP_NEG_NORMAL = 87.33654022216797
#: 2**-25: for float32 ``e`` below it, ``log1p(e)`` rounds to ``e`` (``e**2 / 2`` is less
#: than a quarter of ``e``'s ulp).
_LOG1P_IS_IDENTITY = 2.0 ** -25


def _fma_kernel(fn):
    """:func:`_compile` with LLVM's ``contract`` flag only: ``a * b + c`` may become one
    fused multiply-add (one rounding instead of two: no less accurate, and the
    polynomials' chains of dependent operations are half as long)."""
    return _compile(fn, fastmath={"contract"})


def _fma_inline(fn):
    """:func:`_fma_kernel`, inlined into its callers by numba (elementwise helpers)."""
    return _compile(fn, fastmath={"contract"}, inline="always")


if AVAILABLE and not numba.config.DISABLE_JIT:
    @_intrinsic
    def _wide_vectors(typingctx):
        """Let LLVM vectorize the calling kernel's loops with 512-bit vectors where the CPU
        has them (the function attribute ``"prefer-vector-width"="512"``).

        On AVX-512 CPUs LLVM prefers 256-bit vectors by default; for these kernels'
        float32 loops 512 bits were faster on the development machine (the float32
        Bernoulli pass at 2500 x 784: 5.5 to 4.2 ms; the latent layer's backward
        1.6 to 0.9 ms). Elsewhere nothing changes. Only the order of the sums that
        may be reordered (:func:`_sum_f64`, :func:`_dot_f64`) depends on it.
        """
        def codegen(context, builder, signature, args):
            # a string attribute, which llvmlite's attribute set does not list: set.add
            set.add(builder.function.attributes, '"prefer-vector-width"="512"')
            return context.get_dummy_value()

        return _types.none(), codegen

    @_intrinsic
    def _exp2_neg(typingctx, k, like):
        """``2.0 ** -k`` in the float type of ``like``, built from its bits (vectorizes).

        ``k`` an integer with ``-bias < -k <= bias`` (float32: 0 <= k <= 126), as
        :func:`_exp_neg_f32` uses it; ``like`` only chooses the float type.
        """
        if not isinstance(k, _types.Integer) or not isinstance(like, _types.Float):
            return None

        def codegen(context, builder, signature, args):
            if like.bitwidth == 32:
                itype, bias, shift, ftype = _ir.IntType(32), 127, 23, _ir.FloatType()
            else:
                itype, bias, shift, ftype = _ir.IntType(64), 1023, 52, _ir.DoubleType()
            kk = args[0]
            if kk.type.width > itype.width:
                kk = builder.trunc(kk, itype)
            elif kk.type.width < itype.width:
                kk = builder.sext(kk, itype)
            bits = builder.shl(builder.sub(_ir.Constant(itype, bias), kk), _ir.Constant(itype, shift))
            return builder.bitcast(bits, ftype)

        return like(k, like), codegen
else:
    def _wide_vectors():
        """No-op without numba's JIT (see the compiled intrinsic)."""

    def _exp2_neg(k, like):
        """``2.0 ** -k`` in the type of ``like`` (uncompiled fallback of the intrinsic)."""
        with np.errstate(all="ignore"):
            return type(like)(np.ldexp(1.0, -int(k)))


@_fma_inline
def _exp_neg_f32(a):
    """``exp(-a)`` in float32 for ``a >= 0`` (or NaN): within 1.5 ulp, and 0 where the
    result would be subnormal (``a >`` :data:`_EXP_NEG_NORMAL`, as ``ops.sigmoid`` flushes).

    ``a = k ln2 + r`` with ``|r| <= ln2 / 2`` (Cody-Waite: ``k * _LN2_HI`` exact),
    ``exp(-r) = 1 - r + r^2 P(r)`` with ``P`` of degree 4 (a Chebyshev fit: relative
    error 1e-8 before rounding), times ``2^-k`` made from bits in two halves. The
    argument is capped at :data:`_EXP_NEG_NORMAL` before all that, so that no lane of a
    vector computes a subnormal (each would cost a microcode assist); the lanes above
    the cap then give 0. NaN gives NaN. Only float arithmetic and integer/bit
    operations: a loop calling it vectorizes.
    """
    f = np.float32
    cap = f(_EXP_NEG_NORMAL)
    above = a > cap
    v = cap if above else a                                  # NaN stays NaN
    k = np.int32(v * f(_LOG2E) + f(0.5))                     # round(v / ln2), v >= 0
    kf = f(k)
    r = (v - kf * f(_LN2_HI)) - kf * f(_LN2_LO)
    p = f(0.0013933648)
    p = p * r + f(-0.0083631793)
    p = p * r + f(0.041666463)
    p = p * r + f(-0.16666577)
    p = p * r + f(0.5)
    p = (p * r) * r + (f(1.0) - r)
    k1 = k >> 1
    e = (p * _exp2_neg(k1, v)) * _exp2_neg(k - k1, v)
    return f(0.0) if above else e


@_fma_inline
def _log1p_unit_f32(e):
    """``log1p(e)`` in float32 for ``e`` in [0, 1]: within 2 ulp.

    ``log1p(e) = 2 atanh(s)``, ``s = e / (2 + e)`` in [0, 1/3], as
    ``s (2 + z Q(z)) = e - s (e - z Q(z))``, ``z = s^2``, ``Q`` of degree 3 (a Chebyshev fit of the atanh
    series: relative error 1.5e-8 before rounding). No range reduction is needed on
    [0, 1]. Below :data:`_LOG1P_IS_IDENTITY` the result is ``e`` itself (the correctly
    rounded value there); the polynomial then runs on that bound instead of ``e``, so
    that no lane of a vector squares a tiny ``e`` into a subnormal: each subnormal
    costs a microcode assist, and the pass ran 2.8x slower on a trained model's logits,
    5% of which are below -44 (``z`` subnormal).
    """
    f = np.float32
    small = e < f(_LOG1P_IS_IDENTITY)
    ep = f(_LOG1P_IS_IDENTITY) if small else e
    s = ep / (f(2.0) + ep)
    z = s * s
    q = f(0.26867556)
    q = q * z + f(0.28233964)
    q = q * z + f(0.4000767)
    q = q * z + f(0.6666664)
    # 2 s = e - s e exactly (s (2 + e) = e): with e itself the leading term, the
    # rounding of s enters only through the smaller correction s (e - z Q)
    r = ep - s * (ep - z * q)
    return e if small else r


@_fma_inline
def _bernoulli_pixel_f32(l, xd):
    """One pixel in float32: ``(max(l, 0) - x l + log1p(exp(-|l|)), sigmoid(l) - x)``,
    with ``exp(-|l|)`` taken as 0 where it is subnormal (:func:`_exp_neg_f32`), as
    ``ops.sigmoid`` does."""
    zero = np.float32(0.0)
    one = np.float32(1.0)
    e = _exp_neg_f32(abs(l))                                          # exp(-|l|), or 0
    term = ((l if l > zero else zero) - xd * l) + _log1p_unit_f32(e)
    # sigmoid(l) = 1 / (1 + e) for l >= 0, e / (1 + e) below, as ops.sigmoid
    return term, (one if l >= zero else e) / (one + e) - xd


@_fma_kernel
def _bernoulli_f32_inplace(logits, x, S, bias, add_bias, nll, term):
    """The float32 route of :func:`bernoulli_nll_and_grad` over flat rows ``b * S + s``,
    ``dlogits`` written over ``logits`` (N, D).

    ``x`` (B, D), ``nll`` (N,), ``term`` (D,) scratch. One read and one write per
    element, everything else in registers. The NLL's sum over pixels goes through
    ``term`` and :func:`_sum_f64` (a float64 sum that vectorizes). A separate kernel
    from :func:`_bernoulli_f32` because LLVM vectorizes a loop that reads and writes
    two arrays only after a runtime check that they do not overlap, which the same
    array fails: the loop would run scalar.
    """
    _wide_vectors()
    n, D = logits.shape
    for r in range(n):
        b = r // S
        if add_bias:
            for d in range(D):
                term[d], logits[r, d] = _bernoulli_pixel_f32(logits[r, d] + bias[d], x[b, d])
        else:
            for d in range(D):
                term[d], logits[r, d] = _bernoulli_pixel_f32(logits[r, d], x[b, d])
        nll[r] = _sum_f64(term)


@_fma_kernel
def _bernoulli_f32(logits, x, S, bias, add_bias, nll, dlogits, term):
    """:func:`_bernoulli_f32_inplace` into a separate ``dlogits`` (N, D); ``logits`` gets
    the bias added in place when ``add_bias``."""
    _wide_vectors()
    n, D = logits.shape
    for r in range(n):
        b = r // S
        if add_bias:
            for d in range(D):
                l = logits[r, d] + bias[d]
                logits[r, d] = l
                term[d], dlogits[r, d] = _bernoulli_pixel_f32(l, x[b, d])
        else:
            for d in range(D):
                term[d], dlogits[r, d] = _bernoulli_pixel_f32(logits[r, d], x[b, d])
        nll[r] = _sum_f64(term)


# --------------------------------------------------------------------------
# Latent part: reparameterization, KL, importance weights (small arrays)
# --------------------------------------------------------------------------
@_kernel
def reparam_kl_forward(mu, log_var, eps, z, kl):
    """Reparameterized samples and the analytic KL to the prior.

    ``z[b, s] = mu[b] + exp(log_var[b] / 2) * eps[b, s]`` (``ops.reparam_forward``) and
    ``kl[b] = -1/2 sum_l (1 + log_var - mu^2 - exp(log_var))`` (``ops.gaussian_kl_forward``,
    summed in float64).

    Parameters
    ----------
    mu, log_var : ndarray, shape (B, L)
    eps : ndarray, shape (B, S, L)
    z : ndarray, shape (B, S, L)
        Written.
    kl : ndarray, shape (B,)
        Written.
    """
    B, S, L = eps.shape
    half = mu.dtype.type(0.5)
    one = mu.dtype.type(1.0)
    sigma = np.empty(L, dtype=mu.dtype)
    for b in range(B):
        acc = np.float64(0.0)
        for j in range(L):
            lv = log_var[b, j]
            m = mu[b, j]
            acc += ((one + lv) - m * m) - np.exp(lv)
            sigma[j] = np.exp(half * lv)
        kl[b] = -0.5 * acc
        for s in range(S):
            for j in range(L):
                z[b, s, j] = mu[b, j] + sigma[j] * eps[b, s, j]


@_kernel
def reparam_kl_backward(dz, eps, mu, log_var, dkl, dmu, dlog_var):
    """Gradients reaching ``mu`` and ``log_var`` through ``z`` and through the analytic KL.

    ``dmu = sum_s dz[:, s] + dkl * mu`` and
    ``dlog_var = sigma / 2 * sum_s dz[:, s] * eps[:, s] + dkl * (exp(log_var) - 1) / 2``,
    ``sigma = exp(log_var / 2)``: the sums of ``ops.reparam_backward(dz, ...)`` and
    ``ops.gaussian_kl_backward(dkl, ...)``. The sums over samples are in float64.
    Pass ``dkl = 0`` when no analytic KL is in the loss (IWAE, Monte Carlo KL).

    Parameters
    ----------
    dz : ndarray, shape (B, S, L)
    eps : ndarray, shape (B, S, L)
    mu, log_var : ndarray, shape (B, L)
    dkl : ndarray, shape (B,)
    dmu, dlog_var : ndarray, shape (B, L)
        Written.
    """
    B, S, L = dz.shape
    acc_dz = np.empty(L, dtype=np.float64)
    acc_dz_eps = np.empty(L, dtype=np.float64)
    for b in range(B):
        for j in range(L):
            acc_dz[j] = 0.0
            acc_dz_eps[j] = 0.0
        for s in range(S):
            for j in range(L):
                g = np.float64(dz[b, s, j])
                acc_dz[j] += g
                acc_dz_eps[j] += g * eps[b, s, j]
        k = np.float64(dkl[b])
        for j in range(L):
            lv = np.float64(log_var[b, j])
            dmu[b, j] = acc_dz[j] + k * mu[b, j]
            dlog_var[b, j] = 0.5 * np.exp(0.5 * lv) * acc_dz_eps[j] + k * 0.5 * (np.exp(lv) - 1.0)


@_kernel
def log_weights(nll, z, log_var, eps, log_w):
    """Log importance weights ``log w = log p(x|z) + log p(z) - log q(z|x)``.

    ``log_w[b, s] = -nll[b, s] + log N(z; 0, I) - log N(z; mu, diag(exp(log_var)))``,
    i.e. ``-nll + ops.log_standard_normal_forward(z)[0]
    - ops.log_normal_diag_forward(z, mu, log_var)[0]``. For reparameterized samples
    ``(z - mu)^2 / var = eps^2`` exactly, so ``eps`` is used (``mu`` is not needed)
    and the two ``log 2 pi`` terms cancel:
    ``log_w = -nll - 1/2 sum_l z^2 + 1/2 sum_l eps^2 + 1/2 sum_l log_var``, summed in
    float64. This is more accurate than the reference, which forms ``z - mu``.

    Parameters
    ----------
    nll : ndarray, shape (B, S)
        From :func:`bernoulli_nll_and_grad`.
    z, eps : ndarray, shape (B, S, L)
    log_var : ndarray, shape (B, L)
    log_w : ndarray, shape (B, S)
        Written.
    """
    B, S, L = z.shape
    for b in range(B):
        sum_lv = np.float64(0.0)
        for j in range(L):
            sum_lv += log_var[b, j]
        for s in range(S):
            quad = np.float64(0.0)
            for j in range(L):
                zj = np.float64(z[b, s, j])
                ej = np.float64(eps[b, s, j])
                quad += ej * ej - zj * zj
            log_w[b, s] = 0.5 * (quad + sum_lv) - nll[b, s]


@_kernel
def log_weights_backward(dlog_w, z, eps, log_var, dz, dmu, dlog_var):
    """Backward of :func:`log_weights` (its ``log p(z) - log q(z|x)`` part).

    With ``r = (z - mu) / var = eps / sigma`` and ``d = dlog_w[b, s]``:
    ``dz = d * (r - z)``, ``dmu = -sum_s d * r``,
    ``dlog_var = -1/2 sum_s d * (eps^2 - 1)``: ``ops.log_standard_normal_backward(d)``
    plus ``ops.log_normal_diag_backward(-d)``. These are the *direct* gradients
    (``z`` held fixed); ``dz`` still has to go through the reparameterization
    (:func:`reparam_kl_backward`) after the decoder's ``dz`` is added to it. The
    gradient with respect to ``nll`` is ``-dlog_w``. Sums over samples in float64.

    Parameters
    ----------
    dlog_w : ndarray, shape (B, S)
    z, eps : ndarray, shape (B, S, L)
    log_var : ndarray, shape (B, L)
    dz : ndarray, shape (B, S, L)
        Written (not added to).
    dmu, dlog_var : ndarray, shape (B, L)
        Written.
    """
    B, S, L = z.shape
    inv_sigma = np.empty(L, dtype=np.float64)
    acc_r = np.empty(L, dtype=np.float64)
    acc_q = np.empty(L, dtype=np.float64)
    for b in range(B):
        for j in range(L):
            inv_sigma[j] = np.exp(-0.5 * np.float64(log_var[b, j]))
            acc_r[j] = 0.0
            acc_q[j] = 0.0
        for s in range(S):
            d = np.float64(dlog_w[b, s])
            for j in range(L):
                ej = np.float64(eps[b, s, j])
                dr = d * ej * inv_sigma[j]
                dz[b, s, j] = dr - d * z[b, s, j]
                acc_r[j] += dr
                acc_q[j] += d * (ej * ej - 1.0)
        for j in range(L):
            dmu[b, j] = -acc_r[j]
            dlog_var[b, j] = -0.5 * acc_q[j]


@_kernel
def logsumexp_weights(log_w, bound, w_tilde):
    """IWAE bound and normalized importance weights, per example.

    ``bound[b] = logsumexp_s(log_w[b, s]) - log S`` (``objectives.iwae_forward``) and
    ``w_tilde[b, s] = exp(log_w[b, s] - logsumexp_s(log_w[b]))``, the softmax over
    samples (``ops.logsumexp_backward`` with ``dout = 1``; ``objectives.iwae_backward``
    is ``dbound[:, None] * w_tilde``). Stable: the row maximum is subtracted, computed
    in float64, and the weights are formed as ``exp(log_w - max) / sum`` (accurate to
    a few ulps however large ``|log_w|``; the reference's ``exp(log_w - logsumexp)``
    loses ``ulp(|log_w|)``, e.g. 1e-13 relative at ``log_w = -500``). Rows that are
    all ``-inf`` give ``bound = -inf`` and NaN weights, as the reference does.

    Parameters
    ----------
    log_w : ndarray, shape (B, S)
    bound : ndarray, shape (B,)
        Written.
    w_tilde : ndarray, shape (B, S)
        Written. May be ``log_w`` itself (in place).
    """
    B, S = log_w.shape
    log_S = math.log(S)
    for b in range(B):
        m = np.float64(log_w[b, 0])
        for s in range(1, S):
            v = np.float64(log_w[b, s])
            if v > m or v != v:  # NaN wins, as in np.max
                m = v
        if not math.isfinite(m):
            m = 0.0
        total = np.float64(0.0)
        for s in range(S):
            total += np.exp(np.float64(log_w[b, s]) - m)
        bound[b] = (np.log(total) + m) - log_S
        # exp(a - m) / total rather than the reference's exp(a - logsumexp): the
        # same weights without the rounding of logsumexp (an ulp of |m|) in the exponent
        for s in range(S):
            w_tilde[b, s] = np.exp(np.float64(log_w[b, s]) - m) / total


# --------------------------------------------------------------------------
# Row passes as jobs for BLAS's own threads (the float32 training step)
# --------------------------------------------------------------------------
# While a step runs its products on OpenBLAS's threads, those threads spin between
# the products, waiting for work, and no other thread gets their cores. So the
# step hands its elementwise passes over rows to them: a C-callable function
# (numba ``cfunc``) that reads a *job record* -- an int64 array of an operation
# code, a range of rows, sizes and the addresses of the arrays -- and runs the
# kernel below for those rows (:func:`npvae._blas.run_jobs` starts one job per
# thread). Float32 only: the float64 Bernoulli pass uses NumPy ufuncs, which a
# cfunc cannot call, and float64 is the precision for checks, not for speed.

#: int64 fields of a job record: ``[op, r0, r1, n, f, k, flag, address x 9]`` (:func:`job_records`).
JOB_FIELDS = 16
#: Operation codes of a job record; the arrays of each, in record order (``n`` rows,
#: ``f`` columns, ``k`` the samples per example or the latent width; float32 unless noted):
#:
#: * ``JOB_BERNOULLI``: logits (n, f) in place, x (n // k, f), nll (n,), bias (f,), term (f,);
#:   ``flag`` 1 to add the bias; rows ``r0:r1`` whole examples (multiples of ``k``).
#: * ``JOB_NARROW_FORWARD``: z (n, k), W (k, f), b (f,), out (n, f); ``flag`` 1 for relu.
#: * ``JOB_SCALE_ROWS``: a (n, f), w (n,), out (n, f).
#: * ``JOB_WEIGHTED_BIAS``: d (n, f), w (n,), db (f,) float64 (this part's sum).
#: * ``JOB_NARROW_BACKWARD``: dout (n, f), out_act (n, f), w (n,), z (n, k), W (k, f),
#:   dz (n, k), dW (k, f) float64, db (f,) float64 (this part's sums);
#:   ``flag`` = act + 16 * weighted.
#: * ``JOB_RMSPROP``: p (n,), g (n,), v (n,) (:func:`rmsprop_step` on elements ``r0:r1``);
#:   ``lr``, ``rho``, ``eps`` as float64 in fields 13-15.
JOB_BERNOULLI, JOB_NARROW_FORWARD, JOB_SCALE_ROWS, JOB_WEIGHTED_BIAS, JOB_NARROW_BACKWARD, JOB_RMSPROP = range(1, 7)


@_kernel
def job_records(records, op, n, f, k, flag, unit, arrays, shared):
    """Fill ``records`` (int64, ``(parts, JOB_FIELDS)``) with one job per part of rows ``0:n``.

    Part ``j`` covers whole ``unit``-row blocks, ``n // unit * j // parts`` up to the
    next part's start (sizes within one block), and lists the addresses of the
    ``arrays`` in the order of the operation (see :data:`JOB_BERNOULLI`): the first
    ``shared`` as they are, of each later one its row ``j`` (a part's own scratch or
    partial sums). All C-contiguous; they must stay alive until the jobs have run
    (:func:`row_job_address`).
    """
    parts = records.shape[0]
    units = n // unit
    for j in range(parts):
        rec = records[j]
        rec[0], rec[1], rec[2] = op, units * j // parts * unit, units * (j + 1) // parts * unit
        rec[3], rec[4], rec[5], rec[6] = n, f, k, flag
        i = 0
        for a in _literal_unroll(arrays):
            rec[7 + i] = a.ctypes.data + (0 if i < shared else j * a.strides[0])
            i += 1


def _row_job(rec_address):
    """Run the job record at ``rec_address`` (see :data:`JOB_FIELDS`)."""
    rec = _carray(_i64_ptr(rec_address), (JOB_FIELDS,))
    op, r0, r1, n, f, k, flag = rec[0], rec[1], rec[2], rec[3], rec[4], rec[5], rec[6]
    if op == JOB_BERNOULLI:
        logits, x, nll = _f32_at(rec[7], (n, f)), _f32_at(rec[8], (n // k, f)), _f32_at(rec[9], (n,))
        _bernoulli_f32_inplace(logits[r0:r1], x[r0 // k:r1 // k], k, _f32_at(rec[10], (f,)), flag == 1,
                               nll[r0:r1], _f32_at(rec[11], (f,)))
    elif op == JOB_NARROW_FORWARD:
        z, out = _f32_at(rec[7], (n, k)), _f32_at(rec[10], (n, f))
        _narrow_forward(z[r0:r1], _f32_at(rec[8], (k, f)), _f32_at(rec[9], (f,)), flag == 1, out[r0:r1])
    elif op == JOB_SCALE_ROWS:
        a, w, out = _f32_at(rec[7], (n, f)), _f32_at(rec[8], (n,)), _f32_at(rec[9], (n, f))
        scale_rows_into(a[r0:r1], w[r0:r1], out[r0:r1])
    elif op == JOB_WEIGHTED_BIAS:
        d, w = _f32_at(rec[7], (n, f)), _f32_at(rec[8], (n,))
        weighted_bias_grad(d[r0:r1], w[r0:r1], _f64_at(rec[9], (f,)))
    elif op == JOB_NARROW_BACKWARD:
        dout, out_act, w = _f32_at(rec[7], (n, f)), _f32_at(rec[8], (n, f)), _f32_at(rec[9], (n,))
        z, dz = _f32_at(rec[10], (n, k)), _f32_at(rec[12], (n, k))
        narrow_dense_act_backward(dout[r0:r1], out_act[r0:r1], flag % 16, w[r0:r1], flag >= 16, z[r0:r1],
                                  _f32_at(rec[11], (k, f)), _f64_at(rec[13], (k, f)), _f64_at(rec[14], (f,)),
                                  dz[r0:r1])
    elif op == JOB_RMSPROP:
        p, g, v = _f32_at(rec[7], (n,)), _f32_at(rec[8], (n,)), _f32_at(rec[9], (n,))
        scalars = _carray(_f64_ptr(rec_address), (JOB_FIELDS,))
        rmsprop_step(p[r0:r1], g[r0:r1], v[r0:r1], scalars[13], scalars[14], scalars[15])


_row_job_cfunc = None      # the compiled cfunc; False if compiling it failed


def row_job_address():
    """The address of the compiled ``void job(int64 *record)`` (see :data:`JOB_FIELDS`), or
    None where numba is missing or its JIT disabled, or compiling it failed (then with a
    warning, once: the passes run on the calling thread instead). Compiled (or loaded
    from numba's cache) on first call."""
    global _row_job_cfunc
    if not AVAILABLE or numba.config.DISABLE_JIT or _row_job_cfunc is False:
        return None
    if _row_job_cfunc is None:
        try:
            _row_job_cfunc = numba.cfunc(_types.void(_types.voidptr), cache=True, error_model="numpy")(_row_job)
        except Exception as exc:  # noqa: BLE001 -- a speed-up only: fall back, say why
            _row_job_cfunc = False
            warnings.warn(f"npvae: the row passes' job function did not compile ({type(exc).__name__}: {exc}); "
                          "the training step's passes run on the calling thread", RuntimeWarning, stacklevel=2)
            return None
    return _row_job_cfunc.address


if AVAILABLE and not numba.config.DISABLE_JIT:
    from numba import carray as _carray

    def _address_intrinsic(target):
        """An intrinsic turning an address (int64, or a void pointer) into a pointer to ``target``."""
        @_intrinsic
        def as_ptr(typingctx, address):
            def codegen(context, builder, signature, args):
                llty = context.get_value_type(target)
                if isinstance(address, _types.Integer):
                    return builder.inttoptr(args[0], llty.as_pointer())
                return builder.bitcast(args[0], llty.as_pointer())
            return _types.CPointer(target)(address), codegen
        return as_ptr

    _i64_ptr = _address_intrinsic(_types.int64)
    _f32_ptr = _address_intrinsic(_types.float32)
    _f64_ptr = _address_intrinsic(_types.float64)

    @_inline_kernel
    def _f32_at(address, shape):
        """The C-contiguous float32 array of ``shape`` at ``address``."""
        return _carray(_f32_ptr(address), shape)

    @_inline_kernel
    def _f64_at(address, shape):
        """The C-contiguous float64 array of ``shape`` at ``address``."""
        return _carray(_f64_ptr(address), shape)


# --------------------------------------------------------------------------
# Optimizer step
# --------------------------------------------------------------------------
@_kernel
def rmsprop_step(p, g, v, lr, rho, eps):
    """One RMSprop step (Keras 2), in place, flushing subnormal state in the same pass.

    ``v <- rho * v + (1 - rho) * g^2``; ``p <- p - lr * g / (sqrt(v) + eps)``; then
    entries of ``v`` below ``np.finfo(v.dtype).tiny`` are set to 0. Operation for
    operation (and rounding for rounding, scalars cast to ``p``'s dtype first) the
    ``_update`` plus ``_flush_subnormals`` of :class:`npvae.optim.RMSprop`, so results
    are bit for bit the same; the step count is kept by the caller.

    Parameters
    ----------
    p : ndarray, any shape, C-contiguous
        Parameter, updated in place.
    g : ndarray, same shape
        Gradient (``p``'s dtype, or float64, rounded as the reference does).
    v : ndarray, same shape and dtype as ``p``
        Running mean of squared gradients, updated in place.
    lr, rho, eps : float
    """
    _wide_vectors()
    pf = p.reshape(p.size)
    gf = g.reshape(g.size)
    vf = v.reshape(v.size)
    t = p.dtype.type
    lr_ = t(lr)
    rho_ = t(rho)
    one_minus_rho = t(1.0 - rho)
    eps_ = t(eps)
    tiny = np.finfo(v.dtype).tiny
    zero = t(0.0)
    for i in range(pf.size):
        gi = gf[i]
        vi = vf[i] * rho_ + t(gi * gi) * one_minus_rho
        step = t(gi / (np.sqrt(vi) + eps_)) * lr_
        pf[i] = pf[i] - step
        vf[i] = zero if vi < tiny else vi
