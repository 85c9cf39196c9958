"""Engines: how a :class:`npvae.VAE`'s bounds and gradients are computed.

* :mod:`~npvae.engines.base` -- :class:`Engine`, the interface every engine implements;
* :mod:`~npvae.engines.reference` -- :class:`ReferenceEngine` (``backend="numpy"``), the
  NumPy ops composed by hand: the specification;
* :mod:`~npvae.engines.registry` -- the ``backend`` names and the factory (the numba engine,
  :class:`npvae.fast.NumbaEngine`, is imported only when asked for).
"""

from .base import Engine
from .reference import ReferenceEngine

__all__ = ["Engine", "ReferenceEngine"]
