"""Each objective's bound and its backward on a workspace: the kernels of :mod:`npvae.objectives`.

The reference's :class:`npvae.objectives.Objective` is the specification; an entry of
:data:`KERNELS` computes the same on the arrays of a :class:`npvae.fast.step.Workspace`
(``nll``, ``kl``, ``log_w`` (B, S) filled by the forward; ``w_tilde``, ``bound``, ``dlog_w``,
``row_w``, ``dkl`` for the backward). An objective without an entry runs on the numba
engine through its reference engine (correct, not fast). PIWAE's entry holds a second one,
:attr:`PIWAE.encoder`, the kernels of the bound its encoder follows
(:attr:`npvae.objectives.Objective.encoder_objective`): the training step then runs the
decoder's backward once with each weighting (:func:`npvae.fast.step.train_step`), as the
reference does.

An entry is a class made with the objective (``KERNELS[name](objective)``, :func:`kernels_for`),
so that a parameterized objective's kernels read its parameters (MIWAE's ``outer``,
CIWAE's ``beta``).
"""

import numpy as np

from . import latent

__all__ = ["KERNELS", "Kernels", "ELBO", "IWAE", "MIWAE", "CIWAE", "PIWAE", "kernels_for"]


class Kernels:
    """The kernels of one objective (:attr:`objective`, an :class:`npvae.objectives.Objective`)."""

    def __init__(self, objective=None):
        self.objective = objective


class ELBO(Kernels):
    """:class:`npvae.objectives.ELBO` on a workspace."""

    @staticmethod
    def forward(ws):
        """The mean over samples of the log weights (``kl="mc"``), (B,)."""
        return ws.log_w.mean(axis=1)

    @staticmethod
    def backward(ws, dbound):
        """``dlog_w = dbound / S`` on every sample."""
        ws.dlog_w.fill(dbound / ws.dlog_w.shape[1])

    @staticmethod
    def forward_analytic(ws):
        """``mean_s log p(x|z_s) - KL``, (B,)."""
        return (-ws.nll).mean(axis=1) - ws.kl

    @staticmethod
    def backward_analytic(ws, dbound):
        """The NLL's row weights ``-dlog_px = -dbound / S`` and ``dkl = -dbound``."""
        ws.row_w.fill(-(dbound / ws.nll.shape[1]))
        ws.dkl.fill(-dbound)


class IWAE(Kernels):
    """:class:`npvae.objectives.IWAE` on a workspace: the log-sum-exp of the log weights."""

    @staticmethod
    def forward(ws):
        """``logsumexp_s(log w) - log S`` into ``ws.bound`` (a copy returned), ``w~`` into ``ws.w_tilde``."""
        latent.logsumexp_weights(ws.log_w, ws.bound, ws.w_tilde)
        return ws.bound.copy()

    @staticmethod
    def backward(ws, dbound):
        """``dlog_w = dbound * w~``."""
        np.multiply(ws.w_tilde, dbound, out=ws.dlog_w)

    @staticmethod
    def path_weights(ws):
        """The normalized importance weights ``w~`` (B, S) of the last forward."""
        return ws.w_tilde


class MIWAE(Kernels):
    """:class:`npvae.objectives.MIWAE` on a workspace: a log-sum-exp per group of ``K`` samples."""

    def forward(self, ws):
        """The mean over groups of each group's IWAE bound into ``ws.bound`` (a copy returned),
        the within-group ``w~`` into ``ws.w_tilde``."""
        self.objective.check_samples(ws.log_w.shape[1])
        latent.group_logsumexp_weights(ws.log_w, self.objective.outer, ws.bound, ws.w_tilde)
        return ws.bound.copy()

    def backward(self, ws, dbound):
        """``dlog_w = dbound / M * w~`` (``w~`` normalized within each group)."""
        np.multiply(ws.w_tilde, dbound / self.objective.outer, out=ws.dlog_w)

    @staticmethod
    def path_weights(ws):
        """The within-group normalized weights ``w~`` (B, S) of the last forward."""
        return ws.w_tilde


class CIWAE(Kernels):
    """:class:`npvae.objectives.CIWAE` on a workspace: ``beta`` times the mean of the log weights
    plus ``1 - beta`` times their log-sum-exp bound."""

    def forward(self, ws):
        """``beta * mean_s log w + (1 - beta) * IWAE``, (B,); ``w~`` into ``ws.w_tilde``."""
        beta = self.objective.beta
        latent.logsumexp_weights(ws.log_w, ws.bound, ws.w_tilde)
        return beta * ws.log_w.mean(axis=1) + (1.0 - beta) * ws.bound

    def backward(self, ws, dbound):
        """``dlog_w = dbound * (beta / S + (1 - beta) * w~)``."""
        beta, S = self.objective.beta, ws.log_w.shape[1]
        np.multiply(ws.w_tilde, (1.0 - beta) * dbound, out=ws.dlog_w)
        np.add(ws.dlog_w, (beta / S) * dbound, out=ws.dlog_w)


class PIWAE(IWAE):
    """:class:`npvae.objectives.PIWAE` on a workspace: the bound and the decoder's weighting are
    IWAE's over all ``M * K`` samples; :attr:`encoder` (MIWAE's kernels) gives the encoder's."""

    def __init__(self, objective=None):
        super().__init__(objective)
        self.encoder = MIWAE(objective.encoder_objective)

    def forward(self, ws):
        """IWAE's bound over all the samples (a copy), after checking ``S = M * K``."""
        self.objective.check_samples(ws.log_w.shape[1])
        return IWAE.forward(ws)


#: The kernels of each objective with a fast path, by the objective's name.
KERNELS = {"elbo": ELBO, "iwae": IWAE, "miwae": MIWAE, "ciwae": CIWAE, "piwae": PIWAE}


def kernels_for(objective):
    """The kernels of ``objective`` (an :class:`npvae.objectives.Objective`), or None when it has
    none (the numba engine then runs its reference engine)."""
    kernels = KERNELS.get(objective.name)
    return None if kernels is None else kernels(objective)
