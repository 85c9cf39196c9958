"""npvae: a NumPy-from-scratch variational autoencoder with an explicit Monte Carlo sample axis."""

__version__ = "0.1.0"
