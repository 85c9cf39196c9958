"""Deprecated: the engines moved to :mod:`npvae.engines` (the interface, :class:`npvae.engines.Engine`;
the reference, :class:`npvae.engines.ReferenceEngine`; the backend registry,
:mod:`npvae.engines.registry`). This module re-exports them and warns; it goes in a later release."""

import warnings

from .engines.reference import ReferenceEngine
from .engines.registry import BACKENDS, make_engine, resolve_backend

__all__ = ["ReferenceEngine", "BACKENDS", "resolve_backend", "make_engine"]

warnings.warn("npvae.engine is deprecated: use npvae.engines (ReferenceEngine, Engine) and "
              "npvae.engines.registry (BACKENDS, resolve_backend, make_engine)", DeprecationWarning, stacklevel=2)
