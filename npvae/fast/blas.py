"""The threads of NumPy's BLAS: their count, read and set at run time, and work for them (OpenBLAS only).

The numba backend's training step splits a batch over worker threads, each of
which runs its own matrix products (:mod:`npvae.fast.threads`). That pays only when
each product runs on one thread: if BLAS also spread every product over all
cores, the workers' products and the BLAS threads would fight over the same
cores (and OpenBLAS's idle threads spin for a while after each product). So
while the workers run, BLAS is set to one thread, and set back afterwards
(:func:`single_threaded`).

NumPy exposes no API for this, so the OpenBLAS library that NumPy loaded is
opened with :mod:`ctypes` and its ``openblas_set_num_threads`` called, under
the symbol names of the builds NumPy ships (``scipy_openblas_*64_`` in NumPy 2
wheels, ``openblas_*64_`` in NumPy 1.x wheels, plain ``openblas_*`` in
distribution builds). Where no such library is found (MKL, Accelerate, BLIS),
:func:`controllable` is False and npvae leaves BLAS alone: the training step
then runs as one group, with BLAS threading its products itself.

When the step runs as one group, OpenBLAS's threads spin between its products,
waiting for work, on cores no other thread can then use. :func:`run_jobs` gives
them work: the step's elementwise passes, cut into parts, through
``gotoblas_pthread`` (OpenBLAS's own way to run a function on its threads,
exported by its pthreads builds; where it is missing, :func:`jobs_available` is
False and the passes run on the calling thread).

Compiled code calls OpenBLAS's own ``cblas_sgemm`` / ``cblas_dgemm`` at the address
:func:`gemm_address` reads from the same library (:mod:`npvae.fast.gemm`): the step's layer
stacks run their products without returning to Python.
"""

import ctypes
import glob
import os
import threading
from contextlib import contextmanager

import numpy as np

__all__ = ["controllable", "get_threads", "current_threads", "set_threads", "single_threaded", "library_paths",
           "jobs_available", "run_jobs", "gemm_address"]

_SYMBOLS = [(f"{p}openblas_get_num_threads{s}", f"{p}openblas_set_num_threads{s}")
            for p in ("scipy_", "") for s in ("64_", "")]
#: ``cblas_sgemm`` / ``cblas_dgemm`` of the 64-bit-integer (ILP64) builds NumPy's wheels ship, by
#: dtype: the only interface :func:`gemm_address` offers (an LP64 build's 32-bit sizes would need
#: another signature, so such a build offers none).
_GEMM_SYMBOLS = {"float32": ("scipy_cblas_sgemm64_", "cblas_sgemm64_"),
                 "float64": ("scipy_cblas_dgemm64_", "cblas_dgemm64_")}

_lock = threading.Lock()
_found = None          # list of (path, get, set, run or None) once searched
_depth = 0             # nesting of single_threaded()
_saved = None          # the thread count single_threaded() restores


def _reset_in_child():
    """After ``fork``: a fresh lock (another thread may have held it) and no open
    :func:`single_threaded` blocks (the threads that opened them are not in the child)."""
    global _lock, _depth, _saved
    _lock, _depth, _saved = threading.Lock(), 0, None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_in_child)


def _numpy_bundled():
    """OpenBLAS files shipped inside NumPy's wheel (Linux/Windows ``numpy.libs``, macOS ``.dylibs``)."""
    pkg = os.path.dirname(np.__file__)
    pats = [os.path.join(pkg + ".libs", "*openblas*"), os.path.join(pkg, ".dylibs", "*openblas*")]
    return sorted(p for pat in pats for p in glob.glob(pat))


def _loaded_openblas():
    """OpenBLAS files mapped into this process (Linux), other than those other packages ship."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in os.path.basename(line.split()[-1]).lower()}
    except OSError:
        return []

    def numpys(p):  # a system library, or one in NumPy's own folders
        if not os.path.isabs(p):
            return False
        if "site-packages" in p or "dist-packages" in p:
            return os.sep + "numpy" in p
        return True

    return sorted(filter(numpys, paths))


def _search():
    found = []
    for path in _numpy_bundled() or _loaded_openblas():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for get_name, set_name in _SYMBOLS:
            get, set_ = getattr(lib, get_name, None), getattr(lib, set_name, None)
            if get is not None and set_ is not None:
                get.restype, get.argtypes = ctypes.c_int, []
                set_.restype, set_.argtypes = None, [ctypes.c_int]
                run = getattr(lib, "gotoblas_pthread", None)   # see run_jobs
                if run is not None:   # int gotoblas_pthread(int n, void *function, void *args, int stride)
                    run.restype, run.argtypes = ctypes.c_int, [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                                                               ctypes.c_int]
                gemm = {}                                      # see gemm_address
                for dtype, names in _GEMM_SYMBOLS.items():
                    fn = next((getattr(lib, n) for n in names if hasattr(lib, n)), None)
                    if fn is not None:
                        gemm[dtype] = ctypes.cast(fn, ctypes.c_void_p).value
                found.append((path, get, set_, run, gemm))
                break
    return found


def _libs():
    global _found
    if _found is None:
        with _lock:
            if _found is None:
                _found = _search()
    return _found


def library_paths():
    """Paths of the OpenBLAS libraries npvae controls (empty if none)."""
    return [lib[0] for lib in _libs()]


def controllable():
    """True if NumPy's BLAS is an OpenBLAS whose thread count npvae can read and set."""
    return bool(_libs())


def current_threads():
    """The BLAS's thread count right now (1 inside :func:`single_threaded`), or None if it is
    not :func:`controllable`."""
    libs = _libs()
    return int(libs[0][1]()) if libs else None


def get_threads():
    """The BLAS's own thread count, or None if it is not :func:`controllable`.

    Inside :func:`single_threaded` this is the count it will restore, not the 1 it set:
    the number of threads the user gave BLAS, which the numba step takes as its default.
    """
    with _lock:
        if _depth > 0:
            return _saved
    return current_threads()


def set_threads(n):
    """Set the BLAS's thread count (no effect if it is not :func:`controllable`)."""
    for lib in _libs():
        lib[2](int(n))


@contextmanager
def single_threaded():
    """Run the block with BLAS on one thread, then restore its thread count.

    Reentrant and safe to enter from several threads: the count is saved by the
    outermost entry and restored when the last one leaves. No effect where BLAS is
    not :func:`controllable`.
    """
    global _depth, _saved
    if not _libs():
        yield
        return
    with _lock:
        if _depth == 0:
            _saved = current_threads()
            if _saved != 1:
                set_threads(1)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _saved != 1:
                set_threads(_saved)


# --------------------------------------------------------------------------
# Other work on OpenBLAS's own threads
# --------------------------------------------------------------------------
def jobs_available():
    """True if NumPy's BLAS is one OpenBLAS with a thread server npvae can give work to
    (:func:`run_jobs`): a pthreads build exporting ``gotoblas_pthread``."""
    libs = _libs()
    return len(libs) == 1 and libs[0][3] is not None


def run_jobs(function, records):
    """Run ``function(&records[i])`` for every row ``i`` of ``records``, all at once: row 0 on
    the calling thread, the others on OpenBLAS's threads; return when all are done.

    ``function``: the address of a C function ``void f(void *)`` that needs no GIL and
    cannot fail (a numba ``cfunc``); ``records``: a C-contiguous 2-D array. The
    BLAS must run on at least ``len(records)`` threads (:func:`current_threads`), so
    that OpenBLAS has a thread for each job: checked here, as a missing thread would
    make OpenBLAS wait forever. Between products OpenBLAS's threads spin, waiting for
    work, so the jobs start at once, on cores that no other thread could have used.
    """
    n = len(records)
    if not jobs_available():
        raise RuntimeError("run_jobs: no OpenBLAS thread server to run jobs on (see jobs_available)")
    if records.ndim != 2 or not records.flags.c_contiguous:
        raise ValueError("run_jobs: records must be a C-contiguous 2-D array, one job a row")
    threads = current_threads()
    if threads is None or threads < n:
        raise RuntimeError(f"run_jobs: {n} jobs need BLAS on at least {n} threads, it runs on {threads}")
    _libs()[0][3](n, function, records.ctypes.data, records.strides[0])


# --------------------------------------------------------------------------
# Matrix products called from compiled code
# --------------------------------------------------------------------------
def gemm_address(dtype):
    """The address of NumPy's own ``cblas_sgemm`` (``dtype`` float32) or ``cblas_dgemm``
    (float64) with 64-bit sizes, for compiled code to call (:func:`npvae.fast.gemm.matmul`); or
    None where NumPy's BLAS is not one OpenBLAS exporting it (MKL, Accelerate, an LP64 build).

    The same function ``np.matmul`` calls for a 2-D product, so a product through this address
    equals NumPy's bit for bit (tested).
    """
    libs = _libs()
    if len(libs) != 1:
        return None
    return libs[0][4].get(np.dtype(dtype).name)
