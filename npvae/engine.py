"""Engines: how a :class:`npvae.VAE`'s bounds and gradients are computed.

An engine computes, for the model it belongs to, everything the layers above
(:func:`npvae.fit`, :func:`npvae.evaluate_bound`, :func:`npvae.log_likelihood`,
:func:`npvae.diagnostics.gradient_snr`, :mod:`npvae.gradcheck`) need, through one small
set of public methods:

=============================================  ====================================================
``bound(x, eps, objective, kl)``               the bound on a batch, no gradients (:class:`Bound`)
``loss_and_grads(x, eps, objective, kl, est)``  the bound and the loss's gradient for every parameter
``log_weights(x, eps)``                        ``log p(x|z) + log p(z) - log q(z|x)``, (B, S) float64
``encode(x)``, ``decode_logits(z)``            the encoder's ``mu, log_var``; the decoder's logits
``steps(batch, mc_samples)``                   a context for a loop of such calls (thread settings)
``step_bytes(batch, mc_samples)``              the working memory of one training step, estimated
``optimizer_update(optimizer)``                a fused optimizer update for the model's arrays, or None
=============================================  ====================================================

Inputs are trusted (:class:`npvae.VAE` validates at its boundary, and the loops above
validate once): ``x`` (B, D) and ``eps`` (B, S, L) of the model's dtype, names already
checked with :func:`npvae.objectives.check_objective`. Two engines implement it:

* :class:`ReferenceEngine` (``backend="numpy"``): the NumPy ops of :mod:`npvae.ops` and
  :mod:`npvae.objectives`, composed top to bottom in :meth:`ReferenceEngine.forward` and
  back in reverse in :meth:`ReferenceEngine.backward`. This is the specification.
* :class:`npvae.fast.engine.NumbaEngine` (``backend="numba"``): fused numba kernels around
  BLAS products, on threads, in preallocated workspaces that it owns; held equal to the
  reference by the tests (bit for bit or to rounding, as each kernel's docstring says).

An engine reads the model's parameters at every call (they may be replaced or updated in
place between calls) and holds no other state of the model's.
"""

from contextlib import nullcontext

import numpy as np

from . import _validate as check
from . import objectives as obj
from . import ops

__all__ = ["ReferenceEngine", "BACKENDS", "resolve_backend", "make_engine"]

#: The ``backend`` names :class:`npvae.VAE` accepts.
BACKENDS = ("auto", "numba", "numpy")
_warned_no_numba = False


def resolve_backend(backend):
    """``"numba"`` or ``"numpy"`` for a :data:`BACKENDS` name.

    ``"auto"`` is ``"numba"`` when numba imports, else ``"numpy"`` with one warning per
    process; ``"numba"`` without numba raises :class:`ImportError` saying how to install it.
    Importing :mod:`npvae.fast` imports numba (about a second, once per process), so this
    happens when a model is made, never at ``import npvae``.
    """
    global _warned_no_numba
    backend = check.choice(backend, "backend", BACKENDS)
    if backend == "numpy":
        return backend
    try:
        from . import fast
    except ImportError as exc:  # numba is there but broken: a fast path we cannot use
        available, reason = False, f"numba could not be imported ({exc})"
    else:
        available, reason = fast.AVAILABLE, f"numba could not be imported ({fast.IMPORT_ERROR})"
        if backend == "numba":
            fast.require()
    if backend == "numba" and not available:
        raise ImportError(f"backend: the numba engine is not available: {reason}")
    if available:
        return "numba"
    if not _warned_no_numba:
        _warned_no_numba = True
        import warnings
        warnings.warn(f"{reason}; npvae uses its NumPy reference engine (slower). "
                      "pip install numba (or npvae's [fast] extra)", RuntimeWarning, stacklevel=4)
    return "numpy"


def make_engine(model, backend):
    """The engine of a resolved ``backend`` (``"numba"`` or ``"numpy"``) for ``model``."""
    if backend == "numba":
        from .fast import NumbaEngine
        return NumbaEngine(model)
    return ReferenceEngine(model)


class ReferenceEngine:
    """The NumPy reference engine: every op of :mod:`npvae.ops`, composed by hand.

    :meth:`forward` runs the ops top to bottom and keeps their caches; :meth:`backward`
    runs their backwards in reverse order. Read the two side by side: each line of the
    backward undoes one line of the forward. ``docs/gradients.md`` derives every step.

    Parameters
    ----------
    model : npvae.VAE
        Whose parameters (``model.params``) and architecture (``hidden``,
        ``activation``, ``dtype``) the engine reads at every call.
    """

    #: The ``backend`` name of this engine.
    name = "numpy"

    def __init__(self, model):
        self.model = model

    def __repr__(self):
        return f"{type(self).__name__}({self.model!r})"

    # ------------------------------------------------------------------
    # Pieces of the network
    # ------------------------------------------------------------------
    def _hidden_forward(self, prefix, h):
        """The hidden stack ``prefix.0``, ``prefix.1``, ...: dense then activation, with caches."""
        p, act_forward = self.model.params, ops.ACTIVATIONS[self.model.activation][0]
        caches = []
        for i in range(len(self.model.hidden)):
            a, c_dense = ops.dense_forward(h, p[f"{prefix}.{i}.W"], p[f"{prefix}.{i}.b"])
            h, c_act = act_forward(a)
            caches.append((c_dense, c_act))
        return h, caches

    def _hidden_backward(self, prefix, dh, caches, grads):
        """Backward of :meth:`_hidden_forward`: fills ``grads`` and returns the input's gradient."""
        act_backward = ops.ACTIVATIONS[self.model.activation][1]
        for i in reversed(range(len(caches))):
            c_dense, c_act = caches[i]
            dh, grads[f"{prefix}.{i}.W"], grads[f"{prefix}.{i}.b"] = ops.dense_backward(act_backward(dh, c_act),
                                                                                        c_dense)
        return dh

    def _encode(self, x):
        p = self.model.params
        h, caches = self._hidden_forward("enc", x)                              # (B, H)
        mu, c_mu = ops.dense_forward(h, p["enc.mu.W"], p["enc.mu.b"])           # (B, L)
        log_var, c_lv = ops.dense_forward(h, p["enc.logvar.W"], p["enc.logvar.b"])
        return mu, log_var, (caches, c_mu, c_lv)

    def _encode_backward(self, dmu, dlog_var, cache, grads):
        caches, c_mu, c_lv = cache
        dh, grads["enc.mu.W"], grads["enc.mu.b"] = ops.dense_backward(dmu, c_mu)
        dh_lv, grads["enc.logvar.W"], grads["enc.logvar.b"] = ops.dense_backward(dlog_var, c_lv)
        self._hidden_backward("enc", dh + dh_lv, caches, grads)  # the data's gradient is not needed

    def _decode(self, z):
        h, caches = self._hidden_forward("dec", z)                              # (..., H)
        p = self.model.params
        logits, c_out = ops.dense_forward(h, p["dec.out.W"], p["dec.out.b"])    # (..., D)
        return logits, (caches, c_out)

    def _decode_backward(self, dlogits, cache, grads):
        caches, c_out = cache
        dh, grads["dec.out.W"], grads["dec.out.b"] = ops.dense_backward(dlogits, c_out)
        return self._hidden_backward("dec", dh, caches, grads)

    def encode(self, x):
        """``mu, log_var`` of ``q(z|x)``, each (B, L), for ``x`` (B, D)."""
        mu, log_var, _ = self._encode(x)
        return mu, log_var

    def decode_logits(self, z):
        """The decoder's logits (..., D) for latent points ``z`` (..., L)."""
        return self._decode(z)[0]

    # ------------------------------------------------------------------
    # The bound, forward and backward
    # ------------------------------------------------------------------
    def forward(self, x, eps, objective, kl="analytic"):
        """The bound on a batch, and every op's cache for :meth:`backward`.

        Returns
        -------
        Bound, dict
        """
        c = {"objective": objective, "log_weights": objective == "iwae" or kl == "mc"}
        mu, log_var, c["enc"] = self._encode(x)                     # (B, L) each
        z, c["z"] = ops.reparam_forward(mu, log_var, eps)           # (B, S, L)
        logits, c["dec"] = self._decode(z)                          # (B, S, D)
        nll, c["nll"] = ops.bernoulli_nll_forward(logits, x)        # (B, S)
        kl_exact, c["kl"] = ops.gaussian_kl_forward(mu, log_var)    # (B,)
        if c["log_weights"]:
            log_pz, c["pz"] = ops.log_standard_normal_forward(z)    # (B, S)
            log_qz, c["qz"] = ops.log_normal_diag_forward(z, mu, log_var)
            log_w = -nll + log_pz - log_qz                          # (B, S)
        if objective == "iwae":
            bound, c["bound"] = obj.iwae_forward(log_w)             # (B,)
        elif c["log_weights"]:
            bound, c["bound"] = obj.elbo_forward(log_w, np.zeros_like(kl_exact))
        else:
            bound, c["bound"] = obj.elbo_forward(-nll, kl_exact)
        result = obj.Bound(float(-bound.mean()), bound, float(nll.mean()), float(kl_exact.mean()))
        return result, c

    def backward(self, c, estimator="standard"):
        """Gradients of the loss ``-mean(bound)`` for every parameter, in reverse order of :meth:`forward`.

        Parameters
        ----------
        c : dict
            The cache of :meth:`forward`.
        estimator : {"standard", "stl", "dreg"}

        Returns
        -------
        dict of str to ndarray
            Fresh arrays, the keys and shapes of ``model.params``.
        """
        grads = {}
        B = c["kl"][0].shape[0]
        dbound = np.full(B, -1.0 / B, dtype=self.model.dtype)      # d loss / d bound
        if c["objective"] == "iwae":
            dlog_w = obj.iwae_backward(dbound, c["bound"])          # (B, S)
        elif c["log_weights"]:
            dlog_w, _ = obj.elbo_backward(dbound, c["bound"])
        if c["log_weights"]:
            dlog_px = dlog_w
            dz = ops.log_standard_normal_backward(dlog_w, c["pz"])  # (B, S, L)
            dz_q, dmu, dlog_var = ops.log_normal_diag_backward(-dlog_w, c["qz"])
            dz = dz + dz_q
            if estimator != "standard":
                # STL and DReG drop the score term: log q's direct dependence on mu, log_var
                dmu, dlog_var = np.zeros_like(dmu), np.zeros_like(dlog_var)
        else:
            dlog_px, dkl = obj.elbo_backward(dbound, c["bound"])    # (B, S), (B,)
            dmu, dlog_var = ops.gaussian_kl_backward(dkl, c["kl"])  # (B, L)
            dz = 0.0
        dlogits = ops.bernoulli_nll_backward(-dlog_px, c["nll"])    # (B, S, D)
        dz = dz + self._decode_backward(dlogits, c["dec"], grads)   # (B, S, L)
        if estimator == "dreg":
            dz = obj.dreg_rescale(dz, c["bound"])                   # weights w~ -> w~^2 on the path to the encoder
        dmu_z, dlog_var_z = ops.reparam_backward(dz, c["z"])        # (B, L)
        self._encode_backward(dmu + dmu_z, dlog_var + dlog_var_z, c["enc"], grads)
        return grads

    def bound(self, x, eps, objective, kl="analytic"):
        """The :class:`npvae.objectives.Bound` on a batch, without gradients."""
        return self.forward(x, eps, objective, kl)[0]

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
        bound, cache = self.forward(x, eps, objective, kl)
        return bound, self.backward(cache, estimator)

    def log_weights(self, x, eps):
        """Log importance weights ``log p(x|z_s) + log p(z_s) - log q(z_s|x)``, (B, S) float64."""
        mu, log_var = self.encode(x)                                # (B, L)
        z, _ = ops.reparam_forward(mu, log_var, eps)                # (B, S, L)
        nll, _ = ops.bernoulli_nll_forward(self.decode_logits(z), x)
        log_pz, _ = ops.log_standard_normal_forward(z)              # (B, S)
        log_qz, _ = ops.log_normal_diag_forward(z, mu, log_var)
        return (-nll + log_pz - log_qz).astype(np.float64)

    # ------------------------------------------------------------------
    # Loops
    # ------------------------------------------------------------------
    def step_bytes(self, batch, mc_samples):
        """An upper estimate of the working memory of one ``loss_and_grads`` call, in bytes.

        The reference ops allocate fresh arrays: the logits and about four more arrays of
        shape ``(B, S, D)`` (the NLL's terms, the gradient), and about six of ``(B, S, H)``
        per hidden layer (activations, caches, gradients), in the model's dtype.
        """
        m = self.model
        rows = batch * mc_samples
        return m.dtype.itemsize * rows * (5 * m.input_dim + 6 * sum(m.hidden) + 8 * m.latent_dim)

    def steps(self, batch, mc_samples):
        """A context manager for a loop of calls on ``batch`` examples with ``mc_samples``
        samples each (training, evaluation). The reference engine needs none."""
        return nullcontext()

    def optimizer_update(self, optimizer):
        """A fused update for :meth:`npvae.optim.Optimizer.step` (``update=``), or None: the
        reference engine leaves the update to the optimizer's NumPy ufuncs."""
        return None
