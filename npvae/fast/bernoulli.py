"""The decoder's output on the fast path: the Bernoulli NLL and its gradient in one pass
over the ``(B, S, D)`` logits, and the float32 ``exp``/``log1p`` that make it fast.

Reference: :func:`npvae.ops.bernoulli_nll_forward` and
:func:`npvae.ops.bernoulli_nll_backward` (``softplus(l) - x l`` from the logits, never
``log(sigmoid)``), with :func:`npvae.ops.flush_subnormal`'s rule.

Transcendentals over large arrays: numba calls the C library's scalar
``expf``/``log1pf`` once per element (the PyPI llvmlite has no SVML to vectorize
them), while NumPy's ufuncs use SIMD implementations; on the development machine
(AVX-512) a numba loop calling ``log1p`` was ~15x slower than ``np.log1p``.
:func:`bernoulli_nll_and_grad` therefore takes one of two routes:

* **float32** (training): one numba loop over the logits with its own ``exp(-|l|)``
  and ``log1p`` (:func:`exp_neg_f32`, :func:`_log1p_unit_f32`: range reduction and
  short polynomials of plain float arithmetic, which LLVM vectorizes). Each element
  is read once and written once, with everything in registers; about twice as fast
  as the route below. The results are not the reference's bit for bit but within a
  few float32 ulps of the exact values (bounds in the functions' docstrings,
  checked against float64 in the tests).
* **float64** (gradient checks, the reference precision): blocks of rows small
  enough to stay in cache; a numba pass adds the output bias (optional) and writes
  ``-|l|``, ``np.exp`` and ``np.log1p`` fill a block of scratch, then a numba kernel
  does everything else for that block in one pass. The gradient is the reference's
  bit for bit (the same ufuncs, the same float operations in the same order; the NLL
  differs only in the order of its float64 sum).

Both routes take an ``exp(-|l|)`` below the dtype's smallest normal number as 0, as
the reference does (``ops.flush_subnormal``), and the float32 route computes no
subnormal anywhere (:data:`_EXP_NEG_NORMAL`, :data:`_LOG1P_IS_IDENTITY`): a trained
model's confident logits would otherwise fill the gradient and the pass with
subnormal floats, each a microcode assist on x86.

:func:`bernoulli_nll` is the forward-only pass (evaluation): the NLL without the
gradient, in float32 by the same polynomials.
"""

import warnings

import numpy as np

from ._jit import AVAILABLE, JIT, fma_inline, fma_kernel, kernel, reassoc_kernel, wide_vectors

__all__ = ["bernoulli_nll_and_grad", "bernoulli_nll", "bernoulli_scratch", "bernoulli_scratch_bytes", "bernoulli_f32_rows", "BLOCK_ELEMENTS",
           "exp_neg_f32"]

# --------------------------------------------------------------------------
# Decoder output: Bernoulli NLL and its gradient in one pass over the logits
# --------------------------------------------------------------------------
#: Elements per block of the float64 route of :func:`bernoulli_nll_and_grad` (the float32
#: route needs no blocks): two float64 blocks of 64K elements (512 KiB each) stay in a
#: core's L2 cache between the passes.
BLOCK_ELEMENTS = 1 << 16


def bernoulli_scratch(D, dtype, block_elements=BLOCK_ELEMENTS):
    """Scratch for :func:`bernoulli_nll_and_grad`: shape ``(2, rows, D)``.

    ``rows = max(1, block_elements // D)`` rows of ``D`` pixels per block (float64); the
    float32 route needs one row of scratch only, so it gets ``rows = 1``. Allocate it once
    per model and pass it as ``work`` to avoid an allocation per call.
    """
    return np.empty(_scratch_shape(D, dtype, block_elements), dtype=dtype)


def bernoulli_workspace(D, dtype, block_elements=BLOCK_ELEMENTS):
    """Deprecated: :func:`bernoulli_scratch` (a "workspace" is a training step's arrays)."""
    warnings.warn("npvae.fast.bernoulli.bernoulli_workspace is deprecated: use bernoulli_scratch",
                  DeprecationWarning, stacklevel=2)
    return bernoulli_scratch(D, dtype, block_elements)


def _scratch_shape(D, dtype, block_elements=BLOCK_ELEMENTS):
    rows = 1 if np.dtype(dtype) == np.float32 and AVAILABLE else max(1, block_elements // D)
    return (2, rows, D)


def bernoulli_scratch_bytes(D, dtype, block_elements=BLOCK_ELEMENTS):
    """The bytes :func:`bernoulli_scratch` allocates."""
    return int(np.prod(_scratch_shape(D, dtype, block_elements))) * np.dtype(dtype).itemsize


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
    known only after this pass. Apply it afterwards: either :func:`npvae.fast.dense.scale_rows_into` on
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
        Scratch of the logits' dtype, from :func:`bernoulli_scratch`
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
            bernoulli_f32_rows(flat, x, S, b, add_bias, flat_nll, scratch)
        else:
            _bernoulli_f32(flat, x, S, b, add_bias, flat_nll, dlogits.reshape(B * S, D), scratch)
        return
    if work is None:
        work = bernoulli_scratch(D, logits.dtype)
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


@kernel
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


@kernel
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


@reassoc_kernel
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
#: :func:`exp_neg_f32` and NumPy's ``exp`` (checked in the tests): the float32 Bernoulli
#: pass takes ``exp(-|l|)`` as 0 above it (``ops.flush_subnormal``).
_EXP_NEG_NORMAL = 87.33654022216797
#: 2**-25: for float32 ``e`` below it, ``log1p(e)`` rounds to ``e`` (``e**2 / 2`` is less
#: than a quarter of ``e``'s ulp).
_LOG1P_IS_IDENTITY = 2.0 ** -25


if JIT:
    from llvmlite import ir as _ir
    from numba.core import types as _types
    from numba.extending import intrinsic as _intrinsic

    @_intrinsic
    def _exp2_neg(typingctx, k, like):
        """``2.0 ** -k`` in the float type of ``like``, built from its bits (vectorizes).

        ``k`` an integer with ``-bias < -k <= bias`` (float32: 0 <= k <= 126), as
        :func:`exp_neg_f32` uses it; ``like`` only chooses the float type.
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
    def _exp2_neg(k, like):
        """``2.0 ** -k`` in the type of ``like`` (uncompiled fallback of the intrinsic)."""
        with np.errstate(all="ignore"):
            return type(like)(np.ldexp(1.0, -int(k)))


@fma_inline
def exp_neg_f32(a):
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


@fma_inline
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


@fma_inline
def _bernoulli_pixel_f32(l, xd):
    """One pixel in float32: ``(max(l, 0) - x l + log1p(exp(-|l|)), sigmoid(l) - x)``,
    with ``exp(-|l|)`` taken as 0 where it is subnormal (:func:`exp_neg_f32`), as
    ``ops.sigmoid`` does."""
    zero = np.float32(0.0)
    one = np.float32(1.0)
    e = exp_neg_f32(abs(l))                                          # exp(-|l|), or 0
    term = ((l if l > zero else zero) - xd * l) + _log1p_unit_f32(e)
    # sigmoid(l) = 1 / (1 + e) for l >= 0, e / (1 + e) below, as ops.sigmoid
    return term, (one if l >= zero else e) / (one + e) - xd


@fma_kernel
def bernoulli_f32_rows(logits, x, S, bias, add_bias, nll, term):
    """The float32 route of :func:`bernoulli_nll_and_grad` over flat rows ``b * S + s``,
    ``dlogits`` written over ``logits`` (N, D).

    ``x`` (B, D), ``nll`` (N,), ``term`` (D,) scratch. One read and one write per
    element, everything else in registers. The NLL's sum over pixels goes through
    ``term`` and :func:`_sum_f64` (a float64 sum that vectorizes). A separate kernel
    from :func:`_bernoulli_f32` because LLVM vectorizes a loop that reads and writes
    two arrays only after a runtime check that they do not overlap, which the same
    array fails: the loop would run scalar.
    """
    wide_vectors()
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


@fma_kernel
def _bernoulli_f32(logits, x, S, bias, add_bias, nll, dlogits, term):
    """:func:`bernoulli_f32_rows` into a separate ``dlogits`` (N, D); ``logits`` gets
    the bias added in place when ``add_bias``."""
    wide_vectors()
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
# Forward only (evaluation): the NLL without its gradient
# --------------------------------------------------------------------------
def bernoulli_nll(logits, x, nll, work=None, bias=None):
    """Bernoulli NLL per sample, without the gradient: the forward half of
    :func:`bernoulli_nll_and_grad`, for evaluation (bounds, log weights).

    ``nll[b, s]`` as in :func:`bernoulli_nll_and_grad`, equal to it bit for bit in float32
    (the same per-pixel terms and the same float64 sum) and in float64 (where it is that
    function). Float32 skips the sigmoid's division and the write back over the logits: one
    read per element, ``logits`` left as they are (the bias is added on the fly). Float64
    overwrites ``logits`` with the gradient (after adding ``bias`` in place): do not use them
    afterwards.

    Parameters
    ----------
    logits : ndarray, shape (B, S, D)
    x : ndarray, shape (B, D)
    nll : ndarray, shape (B, S)
        Written.
    work, bias : as in :func:`bernoulli_nll_and_grad`.
    """
    B, S, D = logits.shape
    if logits.dtype == np.float32 and AVAILABLE:
        scratch = np.empty(D, np.float32) if work is None else work[0, 0]
        b = bias if bias is not None else scratch[:0]
        _bernoulli_nll_f32(logits.reshape(B * S, D), x, S, b, bias is not None, nll.reshape(B * S), scratch)
        return
    bernoulli_nll_and_grad(logits, x, nll, logits, work, bias)


@fma_kernel
def _bernoulli_nll_f32(logits, x, S, bias, add_bias, nll, term):
    """The float32 NLL of flat rows ``b * S + s`` of ``logits`` (N, D), read only; ``term``
    (D,) scratch. The same per-pixel terms as :func:`_bernoulli_pixel_f32`."""
    wide_vectors()
    n, D = logits.shape
    zero = np.float32(0.0)
    for r in range(n):
        b = r // S
        for d in range(D):
            l = logits[r, d] + bias[d] if add_bias else logits[r, d]
            xd = x[b, d]
            term[d] = ((l if l > zero else zero) - xd * l) + _log1p_unit_f32(exp_neg_f32(abs(l)))
        nll[r] = _sum_f64(term)
