"""The backend registry: a ``backend`` name to an engine (numba imported only when asked for)."""

import warnings

from .. import _validate as check
from .reference import ReferenceEngine

__all__ = ["BACKENDS", "resolve_backend", "make_engine"]

#: The ``backend`` names :class:`npvae.VAE` accepts.
BACKENDS = ("auto", "numba", "numpy")
_warned_no_numba = False


def _numba_status():
    """``(available, reason, module)`` of the numba engine: importing :mod:`npvae.fast` imports numba."""
    try:
        from .. import fast
    except ImportError as exc:  # numba is there but broken: a fast path we cannot use
        return False, f"numba could not be imported ({exc})", None
    return fast.AVAILABLE, f"numba could not be imported ({fast.IMPORT_ERROR})", fast


def resolve_backend(backend):
    """``"numba"`` or ``"numpy"`` for a :data:`BACKENDS` name.

    ``"auto"`` is ``"numba"`` when numba imports, else ``"numpy"`` with one warning per
    process; ``"numba"`` without numba raises :class:`ImportError` saying how to install it.
    Importing :mod:`npvae.fast` imports numba (about a second, once per process), so this
    happens when a model is made, never at ``import npvae``.
    """
    global _warned_no_numba
    backend = check.choice(backend, "backend", BACKENDS)
    if backend == "numpy":
        return backend
    available, reason, fast = _numba_status()
    if backend == "numba" and fast is not None:
        fast.require()
    if backend == "numba" and not available:
        raise ImportError(f"backend: the numba engine is not available: {reason}")
    if available:
        return "numba"
    if not _warned_no_numba:
        _warned_no_numba = True
        warnings.warn(f"{reason}; npvae uses its NumPy reference engine (slower). "
                      "pip install numba (or npvae's [fast] extra)", RuntimeWarning, stacklevel=4)
    return "numpy"


def make_engine(model, backend, threads=None):
    """The engine of a resolved ``backend`` (``"numba"`` or ``"numpy"``) for ``model``."""
    if backend == "numba":
        from ..fast import NumbaEngine
        return NumbaEngine(model, threads)
    return ReferenceEngine(model, threads)
