"""Helpers shared by several test modules (plain functions; fixtures live in conftest.py)."""

import struct
import tracemalloc

import numpy as np
import pytest

from npvae.model import VAE

#: The backends a test can run over; "numba" carries the ``numba`` marker (skipped without numba).
BACKENDS = ["numpy", pytest.param("numba", marks=pytest.mark.numba)]


def small_model(input_dim=6, hidden=(5,), latent_dim=2, activation="tanh", seed=3, dtype=np.float64,
                backend="auto", bias_scale=0.3, decoder_scale=1.0):
    """The one small model of the tests: a VAE whose biases are ``bias_scale * N(0, 1)`` (drawn
    from ``seed + 100``; nonzero, so that no gradient is zero by construction), its decoder's
    parameters then multiplied by ``decoder_scale`` (large logits). The same arguments give the
    same weights whatever the backend. Test modules fix their own defaults with ``partial``."""
    model = VAE(input_dim=input_dim, hidden=hidden, latent_dim=latent_dim, activation=activation, seed=seed,
                dtype=dtype, backend=backend)
    rng = np.random.default_rng(seed + 100)
    for name, p in model.params.items():
        if name.endswith(".b") and bias_scale:
            p[:] = bias_scale * rng.standard_normal(p.shape)
        if name.startswith("dec.") and decoder_scale != 1.0:
            p *= decoder_scale
    return model


def fake_blas(monkeypatch, threads, run=None):
    """Make ``blas`` control a stand-in library holding a thread count (starting at
    ``threads``) instead of NumPy's BLAS, so that its logic is tested on any machine.
    ``run``: the stand-in's ``gotoblas_pthread`` (None: it has none). It offers no ``cblas_?gemm``
    (:func:`npvae.fast.blas.gemm_address` None), so the step's layer stacks run as Python.
    Returns the dict that holds the stand-in's count."""
    from npvae.fast import blas
    state = {"threads": threads}

    def set_threads(n):
        state["threads"] = n

    monkeypatch.setattr(blas, "_found", [("stand-in", lambda: state["threads"], set_threads, run, {})])
    return state


def idx_bytes(array, type_code=0x08):
    """Encode ``array`` as IDX: 0x0000, type byte, ndim, big-endian dims, big-endian data."""
    array = np.asarray(array)
    big = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[type_code]
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(big).tobytes()


def peak_while(f):
    """(exception raised by f(), peak bytes traced while it ran)."""
    tracemalloc.start()
    try:
        f()
    except Exception as exc:  # noqa: BLE001 - returned for the test to check
        return exc, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return None, 0


def burda_iwae_case(backend):
    """Burda et al.'s architecture (tanh, float32) with small random biases, a batch of 20 binary
    images, its noise for S = 5 and the engine's IWAE bound on them: what the peers' tanh losses
    are held equal to. Returns ``(model, x, eps, bound)``."""
    model = small_model(input_dim=784, hidden=(200, 200), latent_dim=50, activation="tanh", seed=0,
                        dtype=np.float32, backend=backend, bias_scale=0.1)
    rng = np.random.default_rng(7)
    x = (rng.random((20, 784)) < 0.3).astype(np.float32)
    eps = model.sample_eps(20, 5, rng)
    bound, _ = model.engine.loss_and_grads(x, eps, "iwae")
    return model, x, eps, bound
