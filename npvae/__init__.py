"""npvae: a NumPy-from-scratch variational autoencoder with an explicit Monte Carlo sample axis.

The public API:

* :class:`VAE` -- the model: ``loss_and_grads(x, eps, objective)``, ``encode``, ``decode``, ``save``.
* :func:`fit` -- train with S Monte Carlo samples, checkpoints and resume; :func:`load`.
* :func:`load_mnist` -- find, verify and decode MNIST.
* :mod:`npvae.ops` -- every forward op beside its hand-written backward.
* :mod:`npvae.objectives` -- the ELBO and IWAE bounds on the sample axis.
* :mod:`npvae.gradcheck` -- finite-difference checks usable on any op.
* :func:`log_likelihood`, :mod:`npvae.diagnostics` -- importance-sampled log-likelihood,
  gradient signal-to-noise over repeated noise draws.
"""

from . import diagnostics, gradcheck, objectives, ops
from .datasets import DataError, binarize, load_mnist
from .evaluate import evaluate_bound, log_likelihood
from .io import ModelFileError
from .model import VAE
from .model import load_model as load
from .train import History, TrainingError, fit


def _version():
    """The installed distribution's version (its metadata); from a source tree that is not
    installed (``PYTHONPATH=.``), the version in the tree's ``setup.cfg``; else ``"0+unknown"``."""
    from importlib import metadata
    try:
        return metadata.version("npvae")
    except metadata.PackageNotFoundError:
        pass
    import configparser
    from pathlib import Path
    setup_cfg = configparser.ConfigParser(interpolation=None)
    setup_cfg.read(Path(__file__).resolve().parents[1] / "setup.cfg", encoding="utf-8")
    if setup_cfg.get("metadata", "name", fallback=None) == "npvae":
        return setup_cfg.get("metadata", "version", fallback="0+unknown")
    return "0+unknown"


__version__ = _version()
del _version

__all__ = [
    "VAE", "fit", "History", "load", "load_mnist", "binarize", "evaluate_bound", "log_likelihood",
    "DataError", "ModelFileError", "TrainingError",
    "diagnostics", "gradcheck", "objectives", "ops", "__version__",
]
