"""What the benchmark scripts share: paths, the machine, NumPy's BLAS, the matrix-multiply rate,
the FLOPs of a training step, MNIST and the effective sample size.

``benchmarks/`` is a folder of scripts, not a package: each runs as ``python benchmarks/x.py``,
which puts ``benchmarks/`` first on ``sys.path``, and its first import is ``import _common``.
Importing this module makes the rest importable by name: the repository (so that the scripts use
the npvae of this checkout, installed or not) and ``benchmarks/peers/`` (the PyTorch and JAX
peers, ``import torch_vae``). Nothing here imports numba, torch or jax until a function needs it.
"""

import functools
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

#: This folder, the repository, the committed results and the peers.
BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
RESULTS = BENCHMARKS / "results"
PEERS = BENCHMARKS / "peers"

for _path in (PEERS, REPO):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

__all__ = ["BENCHMARKS", "REPO", "RESULTS", "PEERS", "code_version", "cpu_name", "loadavg", "machine", "numpy_blas",
           "library_versions", "gflops", "product", "gemm_rate", "gemm_rate_parallel", "step_products", "step_flops",
           "epoch_flops", "load_mnist", "ess", "plural"]


# --------------------------------------------------------------------------
# The machine
# --------------------------------------------------------------------------
def code_version():
    """The checkout's commit (short hash), with ``+changes`` when its tracked files differ from it,
    or ``"unknown"`` where git cannot say (no git, not a clone): what a result records as the code
    that made it."""
    import subprocess
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=30, check=True).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "npvae"], cwd=REPO, timeout=30).returncode
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+changes" if dirty else "")


def cpu_name():
    """The processor's model name (``/proc/cpuinfo``), or what :mod:`platform` knows off Linux."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "?"


def loadavg():
    """The load average over 1, 5 and 15 minutes as ``"a/b/c"``, or ``"?"`` where there is none."""
    try:
        return "/".join(f"{v:.2f}" for v in os.getloadavg())
    except (AttributeError, OSError):
        return "?"


def machine(load=False):
    """One line for a report: processor, logical CPUs, Python, NumPy and its BLAS, npvae
    (and, with ``load``, the load average now)."""
    import npvae
    text = (f"{cpu_name()}, {os.cpu_count()} logical CPUs; Python {platform.python_version()}, "
            f"NumPy {np.__version__} ({numpy_blas()}), npvae {npvae.__version__}")
    return text + (f"; load average {loadavg()} (1/5/15 min)" if load else "")


@functools.lru_cache(maxsize=None)
def numpy_blas():
    """NumPy's BLAS: its name and version from NumPy's build configuration, and for an OpenBLAS
    the kernel set it picked for this processor at run time (found once per process)."""
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        text = f"{blas.get('name')} {blas.get('version')}"
    except Exception:  # noqa: BLE001 (NumPy < 1.26 has no mode="dicts")
        text = "BLAS unknown"
    core = _openblas_core()
    return text + (f", kernels {core}" if core else "")


def _openblas_core():
    """The CPU kernel set of the OpenBLAS NumPy uses (DYNAMIC_ARCH builds), or None."""
    import ctypes
    try:
        from npvae.fast import blas
        paths = blas.library_paths()
    except ImportError:
        return None
    for path in paths:
        lib = ctypes.CDLL(path)
        for name in ("scipy_openblas_get_corename64_", "scipy_openblas_get_corename",
                     "openblas_get_corename64_", "openblas_get_corename"):
            fn = getattr(lib, name, None)
            if fn is not None:
                fn.restype = ctypes.c_char_p
                return fn().decode()
    return None


def library_versions(names=("numpy", "numba", "torch", "jax", "jaxlib")):
    """``"numpy 2.4.6, numba 0.68.1, ..."`` for the distributions of ``names`` installed (read
    from their metadata: nothing is imported)."""
    from importlib import metadata
    parts = []
    for dist in names:
        try:
            parts.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            pass
    return ", ".join(parts)


# --------------------------------------------------------------------------
# The matrix-multiply rate
# --------------------------------------------------------------------------
def gflops(f, flops, reps):
    """``flops / 1e9`` over the median time of ``reps`` calls of ``f`` (after one warm-up call)."""
    f()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return flops / float(np.median(times)) / 1e9


def product(rows, inner, cols, dtype="float32", lib="numpy"):
    """A function computing one ``(rows, inner) @ (inner, cols)`` product in ``lib`` ("numpy",
    "torch" (float32) or "jax" (float32, jit-compiled)) on operands made once; it runs on the
    threads the library has (set them before)."""
    if lib == "torch":
        import torch
        a, b, out = torch.rand(rows, inner), torch.rand(inner, cols), torch.empty(rows, cols)
        return lambda: torch.matmul(a, b, out=out)
    if lib == "jax":
        import jax
        a = jax.numpy.ones((rows, inner), jax.numpy.float32)
        b = jax.numpy.ones((inner, cols), jax.numpy.float32)
        matmul = jax.jit(lambda a, b: a @ b)
        return lambda: matmul(a, b).block_until_ready()
    if lib != "numpy":
        raise ValueError(f"lib: expected 'numpy', 'torch' or 'jax', got {lib!r}")
    rng = np.random.default_rng(0)
    a, b = rng.random((rows, inner)).astype(dtype), rng.random((inner, cols)).astype(dtype)
    out = np.empty((rows, cols), dtype)
    return lambda: np.matmul(a, b, out=out)


def gemm_rate(rows, inner, cols, dtype="float32", lib="numpy", reps=8):
    """GFLOP/s of one ``(rows, inner) @ (inner, cols)`` product in ``lib`` and ``dtype`` on the
    library's threads: the median of ``reps`` timed calls."""
    return gflops(product(rows, inner, cols, dtype, lib), 2.0 * rows * inner * cols, reps)


def gemm_rate_parallel(rows, inner, cols, dtype, threads, reps=8):
    """GFLOP/s of ``threads`` single-threaded NumPy products run at once on ``threads`` threads
    (what the numba engine's groups run): the median over ``reps`` rounds.

    NumPy's BLAS is held at one thread meanwhile where npvae can set it (an OpenBLAS)."""
    from concurrent.futures import ThreadPoolExecutor
    from contextlib import nullcontext
    products = [product(rows, inner, cols, dtype) for _ in range(threads)]
    try:
        from npvae.fast import blas
        single = blas.single_threaded()          # no effect where npvae cannot set BLAS's threads
    except ImportError:
        single = nullcontext()
    with single, ThreadPoolExecutor(threads) as pool:
        def round_():
            list(pool.map(lambda f: f(), products))

        return gflops(round_, threads * 2.0 * rows * inner * cols, reps)


# --------------------------------------------------------------------------
# FLOPs of training
# --------------------------------------------------------------------------
def step_products(layers, batch, mc_samples):
    """The dense layers' matrix products in one training step, ``[(rows, inner, cols), ...]``
    (each ``(rows, inner) @ (inner, cols)``), layer by layer.

    ``layers``: ``model.layer_shapes()``, ``(name, fan_in, fan_out)``; the encoder's layers
    (``enc.*``) run on ``batch`` rows, the decoder's on ``batch * mc_samples``. Per layer of
    ``rows`` rows: the forward product ``(rows, fan_in, fan_out)``, backward's dW
    ``(fan_in, rows, fan_out)`` (``X^T dY``) and dX ``(rows, fan_out, fan_in)`` (``dY W^T``),
    with no dX for the first layer (the data needs no gradient).
    """
    products = []
    for i, (name, fan_in, fan_out) in enumerate(layers):
        rows = batch if name.startswith("enc.") else batch * mc_samples
        products += [(rows, fan_in, fan_out), (fan_in, rows, fan_out)] + ([(rows, fan_out, fan_in)] if i else [])
    return products


def step_flops(layers, batch, mc_samples):
    """FLOPs (a multiply-add counts 2) of the dense layers' products in one training step
    (:func:`step_products`: forward, dW and dX, no dX for the first layer). Bias, activation
    and loss kernels are not counted."""
    return sum(2.0 * rows * inner * cols for rows, inner, cols in step_products(layers, batch, mc_samples))


def epoch_flops(layers, n, mc_samples, batch=100):
    """:func:`step_flops` summed over an epoch of ``n`` examples in batches of ``batch`` (the
    last one smaller)."""
    full, rest = divmod(n, batch)
    return full * step_flops(layers, batch, mc_samples) + (step_flops(layers, rest, mc_samples) if rest else 0.0)


# --------------------------------------------------------------------------
# Data and estimates
# --------------------------------------------------------------------------
def load_mnist(path=None, download=True):
    """``(x_train, x_test)``, MNIST's images as float32 ``(n, 784)`` in [0, 1], found by
    :func:`npvae.load_mnist` (``path``, then ``$NPVAE_DATA``, then the user cache)."""
    import npvae
    (x_train, _), (x_test, _) = npvae.load_mnist(path, download=download, progress=False)
    return x_train, x_test


def plural(n, word):
    """``"1 epoch"``, ``"3 epochs"``: a count and its noun, for report lines."""
    return f"{n} {word}" + ("" if n == 1 else "s")


def paired(a, b):
    """Mean over the images of ``a - b`` (per-image values of two estimates on the same images)
    and its SE over them (ddof=1; NaN for one image)."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else float("nan")


def ess(log_w, axis=-1):
    """Effective sample size ``(sum_s w_s)^2 / sum_s w_s^2`` of importance weights given by their
    logarithms ``log_w`` (e.g. ``(B, S)``), along ``axis``: between 1 and the number of weights.

    Computed from ``w / max(w)``, which leaves the ratio unchanged and cannot overflow.
    """
    log_w = np.asarray(log_w, dtype=np.float64)
    w = np.exp(log_w - log_w.max(axis=axis, keepdims=True))
    return w.sum(axis=axis) ** 2 / (w * w).sum(axis=axis)
