"""The engine protocol: how a :class:`npvae.VAE`'s bounds and gradients are computed.

An engine computes, for the model it belongs to, everything the layers above
(:func:`npvae.fit`, :func:`npvae.evaluate_bound`, :func:`npvae.log_likelihood`,
:func:`npvae.diagnostics.gradient_snr`, :mod:`npvae.gradcheck`) need. :class:`Engine` is the
whole interface: an abstract base class that each engine implements in full (no engine
inherits another's computing; the numba engine composes a reference engine where it reuses it).

==============================================  =========================================================
``bound(x, eps, objective, kl)``                the bound on a batch, no gradients (``Bound``)
``loss_and_grads(x, eps, objective, kl, est)``  the bound and the loss's gradient for every parameter
``log_weights(x, eps)``                         ``log p(x|z) + log p(z) - log q(z|x)``, (B, S) float64
``log_joint(x, z, grad, parts)``                ``log p(x, z)`` (B, S) float64, and its gradient in ``z``
``encode(x)``, ``decode_logits(z)``             the encoder's ``mu, log_var``; the decoder's logits
``steps(batch, mc_samples)``                    a context for a loop of such calls (thread settings)
``step_bytes(batch, mc_samples)``               the working memory of one training step, estimated
``optimizer_update(optimizer)``                 a fused optimizer update for the model's arrays, or None
``threads``                                     threads of a call (None: the engine's default)
==============================================  =========================================================

Inputs are trusted (:class:`npvae.VAE` validates at its boundary, and the loops above
validate once): ``x`` (B, D) and ``eps`` (B, S, L) of the model's dtype, names already
checked with :func:`npvae.objectives.check_objective`. An engine reads the model's
parameters at every call (they may be replaced or updated in place between calls) and holds
no other state of the model's.
"""

import abc
from contextlib import nullcontext

from .. import _validate as check

__all__ = ["Engine"]


class Engine(abc.ABC):
    """The interface every engine implements (see the module docstring).

    Parameters
    ----------
    model : npvae.VAE
        Whose parameters (``model.params``) and architecture (``model.schema``,
        ``activation``, ``dtype``) the engine reads at every call.
    threads : int or None
        Threads of a call; None lets the engine choose. An engine that does not run
        threads of its own (the reference) keeps the value and ignores it.
    """

    #: The ``backend`` name of this engine.
    name = ""

    def __init__(self, model, threads=None):
        self.model = model
        self.threads = threads

    def __repr__(self):
        return f"{type(self).__name__}({self.model!r})"

    @property
    def threads(self):
        """Threads of a call (int), or None for the engine's default."""
        return self._threads

    @threads.setter
    def threads(self, value):
        self._threads = None if value is None else check.positive_int(value, "threads")

    @property
    def dtype(self):
        """The model's dtype: what the engine computes in."""
        return self.model.dtype

    @abc.abstractmethod
    def encode(self, x):
        """``mu, log_var`` of ``q(z|x)``, each (B, L), for ``x`` (B, D)."""

    @abc.abstractmethod
    def decode_logits(self, z):
        """The decoder's logits (..., D) for latent points ``z`` (..., L)."""

    @abc.abstractmethod
    def bound(self, x, eps, objective, kl="analytic"):
        """The :class:`npvae.objectives.Bound` on a batch, without gradients."""

    @abc.abstractmethod
    def loss_and_grads(self, x, eps, objective, kl="analytic", estimator="standard"):
        """The bound on a batch and the gradient of its loss for every parameter.

        Returns
        -------
        bound : Bound
            ``bound.loss`` is the loss ``-mean(bound.per_example)``.
        grads : dict of str to ndarray
            The keys and shapes of ``model.params``. An engine may return arrays of its
            own workspace, valid until its next call (the numba engine does): consume or
            copy them before then. :meth:`npvae.VAE.loss_and_grads` returns copies.
        """

    @abc.abstractmethod
    def log_weights(self, x, eps):
        """Log importance weights ``log p(x|z_s) + log p(z_s) - log q(z_s|x)``, (B, S) float64."""

    @abc.abstractmethod
    def log_joint(self, x, z, grad=False, parts=False):
        """The log joint density ``log p(x, z) = log p(x|z) + log p(z)`` at given latent points.

        What annealed importance sampling (:mod:`npvae.ais`) needs: the target's density
        and its gradient in ``z`` for HMC, with the chains on the sample axis.

        Parameters
        ----------
        x : ndarray, shape (B, D)
            Data of the model's dtype, broadcast over the sample axis.
        z : ndarray, shape (B, S, L)
            Latent points of the model's dtype (``S`` chains or samples per example).
        grad : bool, default False
            Also return the gradient in ``z`` (a backward through the decoder to ``z``;
            the parameters' gradients are not computed for the caller).
        parts : bool, default False
            Return the two terms apart: ``(log p(x|z), log p(z))`` in place of their
            sum, and with ``grad`` their two gradients ``(d log p(x|z)/dz, -z)``.

        Returns
        -------
        log_joint : ndarray, shape (B, S), float64
            Or the tuple ``(log_lik, log_prior)`` of such arrays with ``parts``.
        dz : ndarray, shape (B, S, L), the model's dtype
            Only with ``grad``: ``d log p(x, z) / dz`` (a tuple of two with ``parts``).
        """

    @abc.abstractmethod
    def step_bytes(self, batch, mc_samples):
        """An upper estimate of the working memory of one ``loss_and_grads`` call, in bytes."""

    def steps(self, batch, mc_samples):
        """A context manager for a loop of calls on ``batch`` examples with ``mc_samples``
        samples each (training, evaluation); by default none is needed."""
        return nullcontext()

    def optimizer_update(self, optimizer):
        """A fused update for :meth:`npvae.optim.Optimizer.step` (``update=``), or None to leave
        the update to the optimizer's NumPy ufuncs (the default)."""
        return None
