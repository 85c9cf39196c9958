"""npvae: a NumPy-from-scratch variational autoencoder with an explicit Monte Carlo sample axis.

The public API:

* :class:`VAE` -- the model: ``loss_and_grads(x, eps, objective)``, ``encode``, ``decode``.
* :mod:`npvae.ops` -- every forward op beside its hand-written backward.
* :mod:`npvae.objectives` -- the ELBO and IWAE bounds on the sample axis.
* :mod:`npvae.gradcheck` -- finite-difference checks usable on any op.
"""

from . import gradcheck, objectives, ops
from .model import VAE

__version__ = "0.1.0"

__all__ = ["VAE", "gradcheck", "objectives", "ops", "__version__"]
