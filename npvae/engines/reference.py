"""The NumPy reference engine: every op of :mod:`npvae.ops`, composed by hand (the specification)."""

import numpy as np

from .. import objectives as obj
from .. import ops
from .base import Engine

__all__ = ["ReferenceEngine"]


class ReferenceEngine(Engine):
    """The NumPy reference engine (``backend="numpy"``): every op of :mod:`npvae.ops`, composed by hand.

    :meth:`forward` runs the ops top to bottom and keeps their caches; :meth:`backward`
    runs their backwards in reverse order. Read the two side by side: each line of the
    backward undoes one line of the forward. ``docs/gradients.md`` derives every step.
    The objective's own math and rules (does it use the log weights? does the estimator
    apply?) are its :class:`npvae.objectives.Objective`'s.

    Parameters
    ----------
    model : npvae.VAE
        Whose parameters (``model.params``) and architecture (``schema``,
        ``activation``, ``dtype``) the engine reads at every call.
    threads : int or None
        Kept, not used: the reference's products are threaded by BLAS alone.
    """

    name = "numpy"

    # ------------------------------------------------------------------
    # Pieces of the network
    # ------------------------------------------------------------------
    def _hidden_forward(self, prefix, h):
        """The hidden stack ``prefix.0``, ``prefix.1``, ...: dense then activation, with caches."""
        p, act_forward = self.model.params, ops.ACTIVATIONS[self.model.activation][0]
        caches = []
        for layer in self.model.schema.hidden_layers(prefix):
            a, c_dense = ops.dense_forward(h, p[f"{layer}.W"], p[f"{layer}.b"])
            h, c_act = act_forward(a)
            caches.append((c_dense, c_act))
        return h, caches

    def _hidden_backward(self, prefix, dh, caches, grads):
        """Backward of :meth:`_hidden_forward`: fills ``grads`` and returns the input's gradient."""
        act_backward = ops.ACTIVATIONS[self.model.activation][1]
        layers = self.model.schema.hidden_layers(prefix)
        for layer, (c_dense, c_act) in reversed(list(zip(layers, caches))):
            dh, grads[f"{layer}.W"], grads[f"{layer}.b"] = ops.dense_backward(act_backward(dh, c_act), c_dense)
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
        rule = obj.get(objective)
        c = {"objective": rule, "log_weights": rule.uses_log_weights(kl)}
        mu, log_var, c["enc"] = self._encode(x)                     # (B, L) each
        z, c["z"] = ops.reparam_forward(mu, log_var, eps)           # (B, S, L)
        logits, c["dec"] = self._decode(z)                          # (B, S, D)
        nll, c["nll"] = ops.bernoulli_nll_forward(logits, x)        # (B, S)
        kl_exact, c["kl"] = ops.gaussian_kl_forward(mu, log_var)    # (B,)
        if c["log_weights"]:
            log_pz, c["pz"] = ops.log_standard_normal_forward(z)    # (B, S)
            log_qz, c["qz"] = ops.log_normal_diag_forward(z, mu, log_var)
            log_w = -nll + log_pz - log_qz                          # (B, S)
            bound, c["bound"] = rule.forward(log_w)                 # (B,)
            if rule.encoder_objective is not None:                  # PIWAE: the encoder's own bound
                c["enc_bound"] = rule.encoder_objective.forward(log_w)[1]
        else:
            bound, c["bound"] = rule.forward_analytic(-nll, kl_exact)
        result = obj.Bound(float(-bound.mean()), bound, float(nll.mean()), float(kl_exact.mean()))
        return result, c

    def backward(self, c, estimator="standard"):
        """Gradients of the loss ``-mean(bound)`` for every parameter, in reverse order of :meth:`forward`.

        Parameters
        ----------
        c : dict
            The cache of :meth:`forward`.
        estimator : {"standard", "stl", "dreg"}
            Its rules are :data:`npvae.objectives.ESTIMATOR_RULES`'.

        Returns
        -------
        dict of str to ndarray
            Fresh arrays, the keys and shapes of ``model.params``.
        """
        grads, rule, est = {}, c["objective"], obj.ESTIMATOR_RULES[estimator]
        B = c["kl"][0].shape[0]
        dbound = np.full(B, -1.0 / B, dtype=self.model.dtype)      # d loss / d bound
        # the encoder follows rule.encoder_objective where there is one (PIWAE), else the rule
        enc_rule, enc_cache = ((rule, c["bound"]) if rule.encoder_objective is None
                               else (rule.encoder_objective, c["enc_bound"]))
        if c["log_weights"]:
            dlog_px = dlog_w = rule.backward(dbound, c["bound"])    # (B, S)
            if enc_rule is not rule:
                dlog_w = enc_rule.backward(dbound, enc_cache)       # (B, S): the encoder's weighting
            dz = ops.log_standard_normal_backward(dlog_w, c["pz"])  # (B, S, L)
            dz_q, dmu, dlog_var = ops.log_normal_diag_backward(-dlog_w, c["qz"])
            dz = dz + dz_q
            if est.drops_score:
                # STL and DReG drop the score term: log q's direct dependence on mu, log_var
                dmu, dlog_var = np.zeros_like(dmu), np.zeros_like(dlog_var)
        else:
            dlog_px, dkl = rule.backward_analytic(dbound, c["bound"])   # (B, S), (B,)
            dmu, dlog_var = ops.gaussian_kl_backward(dkl, c["kl"])  # (B, L)
            dz = 0.0
        dlogits = ops.bernoulli_nll_backward(-dlog_px, c["nll"])    # (B, S, D)
        dz_dec = self._decode_backward(dlogits, c["dec"], grads)    # (B, S, L)
        if enc_rule is not rule:    # the decoder once more, for the encoder's path to z (its grads dropped)
            dz_dec = self._decode_backward(ops.bernoulli_nll_backward(-dlog_w, c["nll"]), c["dec"], {})
        dz = dz + dz_dec
        if est.reweights_path:                                      # DReG: w~ -> w~^2 on the path to the encoder
            dz = dz * enc_rule.path_weights(enc_cache)[:, :, None]
        dmu_z, dlog_var_z = ops.reparam_backward(dz, c["z"])        # (B, L)
        self._encode_backward(dmu + dmu_z, dlog_var + dlog_var_z, c["enc"], grads)
        return grads

    def bound(self, x, eps, objective, kl="analytic"):
        """The :class:`npvae.objectives.Bound` on a batch, without gradients."""
        return self.forward(x, eps, objective, kl)[0]

    def loss_and_grads(self, x, eps, objective, kl="analytic", estimator="standard"):
        """:meth:`forward` then :meth:`backward`; fresh arrays (see :meth:`Engine.loss_and_grads`)."""
        bound, cache = self.forward(x, eps, objective, kl)
        return bound, self.backward(cache, estimator)

    def log_weights(self, x, eps):
        """Log importance weights ``log p(x|z_s) + log p(z_s) - log q(z_s|x)``, (B, S) float64.

        The forward of the IWAE bound up to its log weights (:meth:`forward` keeps them
        only inside the bound's cache; this returns them, in float64).
        """
        _, c = self.forward(x, eps, "iwae")
        return c["bound"][0].astype(np.float64)

    def log_joint(self, x, z, grad=False, parts=False):
        """``log p(x, z) = log p(x|z) + log p(z)``, (B, S) float64, and with ``grad`` its gradient
        in ``z`` (B, S, L): see :meth:`npvae.engines.Engine.log_joint`.

        The decoder's forward, the Bernoulli and prior terms; backward from
        ``d log p(x|z) / d logits = x - sigmoid(logits)`` through the decoder to ``z``, plus the
        prior's ``-z`` (``docs/gradients.md``, "The gradient of the log joint in z").
        """
        logits, c_dec = self._decode(z)                             # (B, S, D)
        nll, c_nll = ops.bernoulli_nll_forward(logits, x)           # (B, S)
        log_pz, c_pz = ops.log_standard_normal_forward(z)           # (B, S)
        log_lik, log_prior = -nll.astype(np.float64), log_pz.astype(np.float64)
        value = (log_lik, log_prior) if parts else log_lik + log_prior
        if not grad:
            return value
        ones = np.ones(nll.shape, dtype=self.model.dtype)           # d log p(x, z) / d (each term)
        dlogits = ops.bernoulli_nll_backward(-ones, c_nll)          # (B, S, D): x - sigmoid(logits)
        dz_lik = self._decode_backward(dlogits, c_dec, {})          # (B, S, L); parameter grads dropped
        dz_prior = ops.log_standard_normal_backward(ones, c_pz)     # (B, S, L): -z
        return value, ((dz_lik, dz_prior) if parts else dz_lik + dz_prior)

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
