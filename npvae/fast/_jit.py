"""How the fast path's kernels are compiled: numba's ``njit`` when numba imports, else nothing.

Every kernel of :mod:`npvae.fast` is a plain Python function over arrays, wrapped by one
of the decorators below. With numba they compile (``cache=True``: compiled once per
machine, then loaded from numba's on-disk cache); without numba, or under
``NUMBA_DISABLE_JIT=1``, the same bodies run as Python, so that ``import npvae.fast``
never fails and a test can step through a kernel's lines. Callers that need speed
check :data:`AVAILABLE` or call :func:`require`.

The options every kernel shares:

* ``error_model="numpy"``: a float division by zero gives inf/NaN as in NumPy instead of
  raising ``ZeroDivisionError``; without it numba guards every division with a branch and
  the loops do not vectorize (RMSprop's step was 8x slower). It changes no result that
  the Python error model would return.
* ``nogil=True``: a kernel releases the GIL, so that the step's groups
  (:mod:`npvae.fast.threads`) run their kernels at the same time.
* No fast-math by default. Two narrow flags are offered where a test bounds their effect:
  ``reassoc`` (:func:`reassoc_kernel`, for float64 sums whose order is not part of the
  contract) and ``contract`` (:func:`fma_kernel`, fused multiply-adds in the float32
  polynomials).

This package is the only part of npvae that imports numba.
"""

try:
    import numba
except ImportError as exc:  # numba is needed only for speed
    numba = None
    IMPORT_ERROR = exc

    def literal_unroll(container):
        """Without numba: the container itself (a Python loop over a tuple)."""
        return container
else:
    IMPORT_ERROR = None
    from numba import literal_unroll  # noqa: F401  (re-exported for the kernels)

__all__ = ["AVAILABLE", "JIT", "IMPORT_ERROR", "require", "kernel", "inline_kernel", "reassoc_kernel",
           "fma_kernel", "fma_inline", "literal_unroll", "wide_vectors"]

#: True when numba could be imported (the kernels are then compiled on first call).
AVAILABLE = numba is not None
#: True when the kernels are compiled (numba imported and its JIT not disabled).
JIT = AVAILABLE and not numba.config.DISABLE_JIT


def require():
    """Raise a clear :class:`ImportError` unless numba is available.

    Called where the numba engine is chosen (``VAE(backend="numba")``), so that the user
    learns at once, not from a model that is silently slow.
    """
    if not AVAILABLE:
        raise ImportError(
            "backend: the numba engine needs the numba package, which could not be imported "
            f"({IMPORT_ERROR}); install it with `pip install numba` (or npvae's [fast] extra), "
            "or use backend='numpy'") from IMPORT_ERROR


def _compile(fn, **options):
    """``numba.njit(cache=True, error_model="numpy", nogil=True, **options)(fn)``, or ``fn``."""
    if not AVAILABLE:
        return fn
    try:
        return numba.njit(cache=True, error_model="numpy", nogil=True, **options)(fn)
    except RuntimeError:
        # numba found no writable cache directory (read-only install and no usable
        # NUMBA_CACHE_DIR): compile on every run rather than fail at import
        return numba.njit(error_model="numpy", nogil=True, **options)(fn)


def kernel(fn):
    """Compile ``fn`` with the shared options (module docstring)."""
    return _compile(fn)


def inline_kernel(fn):
    """:func:`kernel`, inlined into its callers by numba (per-row helpers)."""
    return _compile(fn, inline="always")


def reassoc_kernel(fn):
    """:func:`kernel` with LLVM's ``reassoc`` flag: a float sum may be reordered (and so
    vectorized). Only for sums whose order is not part of the contract (bounded by tests);
    no other fast-math flag (no NaN/inf assumptions, no reciprocal approximations)."""
    return _compile(fn, fastmath={"reassoc"})


def fma_kernel(fn):
    """:func:`kernel` with LLVM's ``contract`` flag only: ``a * b + c`` may become one fused
    multiply-add (one rounding instead of two: no less accurate, and the polynomials'
    chains of dependent operations are half as long)."""
    return _compile(fn, fastmath={"contract"})


def fma_inline(fn):
    """:func:`fma_kernel`, inlined into its callers by numba (elementwise helpers)."""
    return _compile(fn, fastmath={"contract"}, inline="always")


if JIT:
    from numba.core import types as _types
    from numba.extending import intrinsic as _intrinsic

    @_intrinsic
    def wide_vectors(typingctx):
        """Let LLVM vectorize the calling kernel's loops with 512-bit vectors where the CPU
        has them (the function attribute ``"prefer-vector-width"="512"``).

        On AVX-512 CPUs LLVM prefers 256-bit vectors by default; for these kernels'
        float32 loops 512 bits were faster on the development machine (the float32
        Bernoulli pass at 2500 x 784: 5.5 to 4.2 ms; the latent layer's backward
        1.6 to 0.9 ms). Elsewhere nothing changes. Only the order of the sums that
        may be reordered (:func:`reassoc_kernel`) depends on it.
        """
        def codegen(context, builder, signature, args):
            # a string attribute, which llvmlite's attribute set does not list: set.add
            set.add(builder.function.attributes, '"prefer-vector-width"="512"')
            return context.get_dummy_value()

        return _types.none(), codegen
else:
    def wide_vectors():
        """No-op without numba's JIT (see the compiled intrinsic)."""

