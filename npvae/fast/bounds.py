"""Each objective's bound and its backward on a workspace: the kernels of :mod:`npvae.objectives`.

The reference's :class:`npvae.objectives.Objective` is the specification; an entry of
:data:`KERNELS` computes the same on the arrays of a :class:`npvae.fast.step.Workspace`
(``nll``, ``kl``, ``log_w`` (B, S) filled by the forward; ``w_tilde``, ``bound``, ``dlog_w``,
``row_w``, ``dkl`` for the backward). An objective without an entry runs on the numba
engine through its reference engine (correct, not fast).
"""

import numpy as np

from . import latent

__all__ = ["KERNELS", "ELBO", "IWAE"]


class ELBO:
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


class IWAE:
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


#: The kernels of each objective with a fast path, by the objective's name.
KERNELS = {"elbo": ELBO, "iwae": IWAE}
