"""npvae's fast path: the numba engine, its kernels and its threads.

The only package of npvae that imports numba, and only when a model asks for it
(``VAE(backend="numba")``, or ``"auto"`` where numba is installed); ``import npvae``
never imports it. Without numba every module here still imports (the kernels run as
plain Python, for debugging and coverage) and :data:`AVAILABLE` is False.

One theme a module, each kernel beside the reference op it equals (``docs/fast-path.md``
maps one to the other):

* :mod:`~npvae.fast.dense` -- bias + activation around BLAS's products, the narrow latent layer;
* :mod:`~npvae.fast.bernoulli` -- the Bernoulli NLL and its gradient, and float32 ``exp``/``log1p``;
* :mod:`~npvae.fast.latent` -- reparameterization, KL, log weights, the IWAE's logsumexp;
* :mod:`~npvae.fast.updates` -- SGD, RMSprop and Adam in one pass per parameter;
* :mod:`~npvae.fast.jobs` -- the job-record layout: row passes in parts on BLAS's threads;
* :mod:`~npvae.fast.blas` -- NumPy's OpenBLAS: its thread count, work for its threads, its gemm's address;
* :mod:`~npvae.fast.threads` -- groups of examples on threads, the pool;
* :mod:`~npvae.fast.gemm` -- NumPy's BLAS products called from compiled code;
* :mod:`~npvae.fast.layers` -- the step's layer stacks, each one compiled call;
* :mod:`~npvae.fast.step` -- the training step, its workspace and its profiler;
* :mod:`~npvae.fast.engine` -- :class:`NumbaEngine`, the interface of :mod:`npvae.engine`.
"""

from ._jit import AVAILABLE, IMPORT_ERROR, JIT, require
from .engine import NumbaEngine

__all__ = ["NumbaEngine", "AVAILABLE", "IMPORT_ERROR", "JIT", "require"]
