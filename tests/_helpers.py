"""Helpers shared by several test modules (plain functions; fixtures live in conftest.py)."""

import inspect

import numpy as np

from npvae.model import VAE

#: The backends a test can choose between (only "numpy" where numba is not installed).
BACKENDS = ["numpy", "numba"] if "backend" in inspect.signature(VAE).parameters else [None]


def small_model(seed=3, backend=None, activation="tanh"):
    """A 6-5-2 VAE whose biases are nonzero (so that no gradient is zero by construction)."""
    kwargs = {} if backend is None else {"backend": backend}
    model = VAE(input_dim=6, hidden=(5,), latent_dim=2, activation=activation, seed=seed, **kwargs)
    rng = np.random.default_rng(seed + 100)
    for name, p in model.params.items():
        if name.endswith(".b"):
            p[:] = 0.3 * rng.standard_normal(p.shape)
    return model


def fake_blas(monkeypatch, threads, run=None):
    """Make ``blas`` control a stand-in library holding a thread count (starting at
    ``threads``) instead of NumPy's BLAS, so that its logic is tested on any machine.
    ``run``: the stand-in's ``gotoblas_pthread`` (None: it has none).
    Returns the dict that holds the stand-in's count."""
    from npvae.fast import blas
    state = {"threads": threads}

    def set_threads(n):
        state["threads"] = n

    monkeypatch.setattr(blas, "_found", [("stand-in", lambda: state["threads"], set_threads, run)])
    return state
