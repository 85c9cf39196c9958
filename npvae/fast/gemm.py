"""Matrix products inside compiled code: NumPy's own BLAS, called from numba by its address.

The step's layer stacks (:mod:`npvae.fast.layers`) run many small products between their
elementwise passes. Called from Python, each product costs ``np.matmul``'s fixed ~2 us and each
pass a numba call's ~1 us: at batch 20 and one sample a third of the step. Compiled as one
function, the stack calls BLAS directly: :func:`matmul` is a plain Python function
(``np.matmul``) that numba replaces, inside compiled code, by a call to ``cblas_sgemm`` /
``cblas_dgemm`` at the address :func:`npvae.fast.blas.gemm_address` found in NumPy's OpenBLAS
-- the function ``np.matmul`` itself calls, so the products are NumPy's bit for bit (tested).

The address is an argument, not a constant, so that numba's on-disk cache of the compiled code
stays valid from one process to the next (the library loads at another address each time).
"""

import numpy as np

from . import blas
from ._jit import JIT

__all__ = ["matmul", "address", "CblasNoTrans", "CblasTrans"]

#: The CBLAS constants of the arguments (row-major order, an operand as stored or transposed).
CblasRowMajor, CblasNoTrans, CblasTrans = 101, 111, 112


def address(dtype):
    """The address :func:`matmul` takes for arrays of ``dtype`` (an int), or 0 where compiled
    code cannot call NumPy's BLAS (:func:`npvae.fast.blas.gemm_address` is None): the layer
    stacks then run as Python, their products through ``np.matmul``."""
    return blas.gemm_address(dtype) or 0


def matmul(addr, a, ta, b, tb, out):
    """``out = op(a) @ op(b)``, ``op(a)`` being ``a.T`` if ``ta`` else ``a`` (and ``b`` alike).

    ``a``, ``b`` and ``out`` are 2-D arrays of one float dtype, C-contiguous where the call is
    compiled (the layer stacks check it before they run compiled); ``out`` must not overlap
    them. In Python this is ``np.matmul``; in compiled code the BLAS call at ``addr``
    (:func:`address`), the one ``np.matmul`` makes.
    """
    np.matmul(a.T if ta else a, b.T if tb else b, out=out)


if JIT:
    from llvmlite import ir as _ir
    from numba.core import types as _types
    from numba.extending import intrinsic as _intrinsic, overload as _overload

    @_intrinsic
    def _cblas_gemm(typingctx, addr, ta, tb, m, n, k, a, lda, b, ldb, c, ldc, like):
        """``cblas_?gemm(RowMajor, ta, tb, m, n, k, 1, a, lda, b, ldb, 0, c, ldc)`` at ``addr``:
        single precision if ``like`` (a float) is float32, else double; the sizes int64, the
        arrays their addresses (int64)."""
        if not isinstance(like, _types.Float):
            return None

        def codegen(context, builder, signature, args):
            i32, i64 = _ir.IntType(32), _ir.IntType(64)
            ft = _ir.FloatType() if like.bitwidth == 32 else _ir.DoubleType()
            fp = ft.as_pointer()
            fnty = _ir.FunctionType(_ir.VoidType(), [i32, i32, i32, i64, i64, i64, ft, fp, i64, fp, i64, ft, fp, i64])
            fn = builder.inttoptr(args[0], fnty.as_pointer())
            _, ta_, tb_, m_, n_, k_, a_, lda_, b_, ldb_, c_, ldc_, _ = args
            builder.call(fn, [_ir.Constant(i32, CblasRowMajor), builder.trunc(ta_, i32), builder.trunc(tb_, i32),
                              m_, n_, k_, _ir.Constant(ft, 1.0), builder.inttoptr(a_, fp), lda_,
                              builder.inttoptr(b_, fp), ldb_, _ir.Constant(ft, 0.0), builder.inttoptr(c_, fp), ldc_])
            return context.get_dummy_value()

        i64 = _types.int64
        return _types.void(i64, i64, i64, i64, i64, i64, i64, i64, i64, i64, i64, i64, like), codegen

    @_overload(matmul, jit_options={"nogil": True})
    def _matmul_compiled(addr, a, ta, b, tb, out):
        def impl(addr, a, ta, b, tb, out):
            m = a.shape[1] if ta else a.shape[0]
            k = a.shape[0] if ta else a.shape[1]
            n = b.shape[0] if tb else b.shape[1]
            if m == 0 or n == 0:
                return
            if k == 0:                                  # BLAS would leave out as it was
                out[:] = 0
                return
            i64 = np.int64
            _cblas_gemm(i64(addr), i64(CblasTrans if ta else CblasNoTrans), i64(CblasTrans if tb else CblasNoTrans),
                        i64(m), i64(n), i64(k), i64(a.ctypes.data), i64(max(1, a.shape[1])), i64(b.ctypes.data),
                        i64(max(1, b.shape[1])), i64(out.ctypes.data), i64(max(1, out.shape[1])), out.dtype.type(0))
        return impl
