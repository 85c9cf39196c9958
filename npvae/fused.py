"""The VAE's training step composed from numba kernels and BLAS, in preallocated workspaces.

:meth:`npvae.VAE._forward` and :meth:`npvae.VAE._backward` (the NumPy ops, top to
bottom) are the specification; this module computes the same loss, bound and
gradients for every combination they support (any number of hidden layers,
relu/tanh, ``objective`` elbo/iwae, ``kl`` analytic/mc, ``estimator``
standard/stl/dreg), equal to ~1e-12 relative in float64 (only the order of float
operations differs), and is what a model with ``backend="numba"`` runs.

What it does differently from the reference, for speed:

* Every dense product is one BLAS call on a contiguous 2-D view, written with
  ``np.matmul(..., out=)`` into a :class:`Workspace` reused from step to step;
  the elementwise passes around the products are fused kernels
  (:mod:`npvae.kernels`): bias + activation, activation backward, the
  reparameterization with its KL, the log weights and their backward.
* The decoder output -- bias, Bernoulli NLL summed over pixels and
  ``sigmoid(l) - x`` -- is one blocked pass over ``(B, S, D)``, in place over
  the logits (:func:`npvae.kernels.bernoulli_nll_and_grad`). The upstream factor
  ``dnll[b, s]`` of each row is applied on the ``(B * S, H)`` side: to the hidden
  activations for ``dW`` and fused into the activation's backward for ``dh``
  (a row scale commutes with a right product), never in a pass over ``(B, S, D)``.
* The gradient with respect to ``x`` (the encoder's input) is not computed.

Workspaces are cached on the model, keyed by ``(B, S, dtype)`` (a few of them,
least recently used dropped first), so steady-state training allocates nothing
of size ``B * S * D`` or ``B * S * H``; the last, smaller batch of an epoch gets
its own. The forward-only path (:func:`forward`, used for evaluation) works
through the batch in chunks of examples so its workspace stays a few MB
whatever the evaluation batch size.
"""

from collections import OrderedDict

import numpy as np

from . import kernels as K
from . import objectives as obj

__all__ = ["Workspace", "loss_and_grads", "forward", "FORWARD_ROWS", "MAX_WORKSPACES"]

#: Rows ``B * S`` per chunk of the forward-only path (evaluation): enough for BLAS
#: to run at full rate, small enough that the logits stay a few MB.
FORWARD_ROWS = 4096
#: Workspaces kept per model (training batch, last partial batch, evaluation chunks).
MAX_WORKSPACES = 4

#: Set to an object with a ``mark(phase)`` method to time the phases of a step
#: (``benchmarks/speed.py`` does); each call ends the phase that started at the last.
PROFILER = None


class Workspace:
    """Preallocated arrays for one ``(B, S, dtype)`` of one model's architecture.

    Forward: ``enc_h[i]`` (B, H_i) hidden activations, ``mu``, ``log_var`` (B, L),
    ``z`` (B, S, L), ``kl`` (B,), ``dec_h[i]`` (B * S, H_i), ``logits`` (B * S, D)
    (overwritten by ``sigmoid(logits) - x``), ``nll``, ``log_w``, ``w_tilde`` (B, S),
    ``bound`` (B,). Backward (``grads=True``): the gradients of each of these, the
    row weights ``row_w`` (B * S,) and ``grads``, one array per parameter.
    """

    def __init__(self, model, B, S, dtype, grads=True):
        D, L, N = model.input_dim, model.latent_dim, B * S
        hidden, dec_sizes = model.hidden, model.hidden[::-1]

        def e(*shape):
            return np.empty(shape, dtype)

        self.key = (B, S, np.dtype(dtype).name, grads)
        self.enc_h = [e(B, h) for h in hidden]
        self.mu, self.log_var = e(B, L), e(B, L)
        self.z, self.kl = e(B, S, L), e(B)
        self.dec_h = [e(N, h) for h in dec_sizes]
        self.logits = e(N, D)
        self.nll, self.log_w, self.w_tilde, self.bound = e(B, S), e(B, S), e(B, S), e(B)
        self.work = K.bernoulli_workspace(D, dtype)
        self.has_grads = grads
        if grads:
            self.row_w = e(N)
            self.hs = e(N, dec_sizes[-1])
            self.dec_d = [e(N, h) for h in dec_sizes]
            self.dz, self.dz_direct = e(B, S, L), e(B, S, L)
            self.dlog_w, self.dkl = e(B, S), e(B)
            self.dmu, self.dlog_var, self.dmu_q, self.dlog_var_q = e(B, L), e(B, L), e(B, L), e(B, L)
            self.enc_d = [e(B, h) for h in hidden]
            self.enc_tmp = e(B, hidden[-1])
            self.grads = {f"{name}.{kind}": e(*shape)
                          for name, fan_in, fan_out in model._layer_shapes()
                          for kind, shape in (("W", (fan_in, fan_out)), ("b", (fan_out,)))}

    @property
    def nbytes(self):
        """Bytes held by the arrays."""
        total = 0
        for v in vars(self).values():
            for a in (v.values() if isinstance(v, dict) else v if isinstance(v, list) else [v]):
                total += a.nbytes if isinstance(a, np.ndarray) else 0
        return total


def workspace(model, B, S, grads=True):
    """The model's cached :class:`Workspace` for ``(B, S, model.dtype)``, made on first use."""
    cache = model.__dict__.setdefault("_workspaces", OrderedDict())
    key = (B, S, model.dtype.name, grads)
    ws = cache.get(key)
    if ws is None:
        ws = cache[key] = Workspace(model, B, S, model.dtype, grads)
        while len(cache) > MAX_WORKSPACES:
            cache.popitem(last=False)
    else:
        cache.move_to_end(key)
    return ws


def _forward_into(model, ws, x, eps, act):
    """Encoder, reparameterization + KL, decoder and the Bernoulli pass, into ``ws``."""
    p, nh = model.params, len(model.hidden)
    B, S, L = eps.shape
    D = x.shape[1]
    h = x
    for i in range(nh):
        out = ws.enc_h[i]                                            # (B, H_i)
        np.matmul(h, p[f"enc.{i}.W"], out=out)
        K.bias_act_forward(out, p[f"enc.{i}.b"], act, out)
        h = out
    np.matmul(h, p["enc.mu.W"], out=ws.mu)                           # (B, L)
    np.add(ws.mu, p["enc.mu.b"], out=ws.mu)
    np.matmul(h, p["enc.logvar.W"], out=ws.log_var)
    np.add(ws.log_var, p["enc.logvar.b"], out=ws.log_var)
    if PROFILER is not None:
        PROFILER.mark("encoder GEMMs + bias/act")
    K.reparam_kl_forward(ws.mu, ws.log_var, eps, ws.z, ws.kl)       # (B, S, L), (B,)
    if PROFILER is not None:
        PROFILER.mark("reparam + KL")
    h = ws.z.reshape(B * S, L)
    for i in range(nh):
        out = ws.dec_h[i]                                            # (B * S, H_i)
        np.matmul(h, p[f"dec.{i}.W"], out=out)
        K.bias_act_forward(out, p[f"dec.{i}.b"], act, out)
        h = out
    np.matmul(h, p["dec.out.W"], out=ws.logits)                      # (B * S, D), bias added below
    if PROFILER is not None:
        PROFILER.mark("decoder GEMMs + bias/act")
    logits = ws.logits.reshape(B, S, D)
    # nll (B, S); the logits become g = sigmoid(logits) - x, in place
    K.bernoulli_nll_and_grad(logits, x, ws.nll, logits, ws.work, bias=p["dec.out.b"])
    if PROFILER is not None:
        PROFILER.mark("output kernel (bias, NLL, sigmoid - x)")


def _bound(ws, objective, kl, eps):
    """Per-example bound (B,) as the reference computes it; fills ``log_w``/``w_tilde`` when used."""
    if objective == "iwae" or kl == "mc":
        K.log_weights(ws.nll, ws.z, ws.log_var, eps, ws.log_w)       # (B, S)
    if objective == "iwae":
        K.logsumexp_weights(ws.log_w, ws.bound, ws.w_tilde)
        return ws.bound.copy()
    if kl == "mc":
        return ws.log_w.mean(axis=1)
    return (-ws.nll).mean(axis=1) - ws.kl


def _contiguous(x, eps):
    return np.ascontiguousarray(x), np.ascontiguousarray(eps)


def forward(model, x, eps, objective, kl="analytic"):
    """The :class:`npvae.objectives.Bound` of ``VAE._forward``, without gradients.

    Works through the batch in chunks of at most :data:`FORWARD_ROWS` rows ``B * S``
    (each example's bound depends on its own samples only, so this is exact).

    Parameters
    ----------
    model : npvae.VAE
    x : ndarray, shape (B, D)
    eps : ndarray, shape (B, S, L)
    objective, kl : str
        Already validated.

    Returns
    -------
    Bound
    """
    x, eps = _contiguous(x, eps)
    B, S, _ = eps.shape
    act = K.ACT_CODES[model.activation]
    chunk = max(1, min(B, FORWARD_ROWS // S))
    dtype = model.dtype
    bound, nll, kl_exact = np.empty(B, dtype), np.empty((B, S), dtype), np.empty(B, dtype)
    for b0 in range(0, B, chunk):
        b1 = min(B, b0 + chunk)
        ws = workspace(model, b1 - b0, S, grads=False)
        e = eps[b0:b1]
        _forward_into(model, ws, x[b0:b1], e, act)
        bound[b0:b1] = _bound(ws, objective, kl, e)
        nll[b0:b1] = ws.nll
        kl_exact[b0:b1] = ws.kl
    return obj.Bound(float(-bound.mean()), bound, float(nll.mean()), float(kl_exact.mean()))


def loss_and_grads(model, x, eps, objective, kl="analytic", estimator="standard", return_bound=False):
    """``VAE._loss_and_grads`` from kernels and BLAS: the same loss (or Bound) and gradients.

    Parameters
    ----------
    model : npvae.VAE
    x : ndarray, shape (B, D)
    eps : ndarray, shape (B, S, L)
        Of the model's dtype (trusted: validate at the public boundary).
    objective, kl, estimator : str
        Already validated (:func:`npvae.objectives.check_objective`).
    return_bound : bool

    Returns
    -------
    loss : float or Bound
        ``Bound.per_example`` is a fresh array.
    grads : dict of str to ndarray
        **Views into the model's workspace for this (B, S, dtype): the next call with
        the same shapes overwrites them.** Consume them (e.g. an optimizer step) or
        copy them before the next call; :meth:`npvae.VAE.loss_and_grads` returns
        copies, while :func:`npvae.fit` uses them as they are. For the same reason
        one model must not run two steps at once (threads): use one model per thread.
    """
    x, eps = _contiguous(x, eps)
    p, nh = model.params, len(model.hidden)
    B, S, L = eps.shape
    N = B * S
    act = K.ACT_CODES[model.activation]
    ws = workspace(model, B, S, grads=True)
    g = ws.grads

    # ---- forward ---------------------------------------------------------------
    _forward_into(model, ws, x, eps, act)
    log_weights = objective == "iwae" or kl == "mc"
    bound = _bound(ws, objective, kl, eps)                            # (B,)
    result = obj.Bound(float(-bound.mean()), bound, float(ws.nll.mean()), float(ws.kl.mean()))

    # ---- backward: the bound's gradients on the sample axis --------------------
    dbound = model.dtype.type(-1.0 / B)                              # d loss / d bound
    if log_weights:
        if objective == "iwae":
            np.multiply(ws.w_tilde, dbound, out=ws.dlog_w)           # dbound * w~
        else:
            ws.dlog_w.fill(dbound / S)
        np.negative(ws.dlog_w, out=ws.row_w.reshape(B, S))           # dnll = -dlog_px
        # direct gradients of log p(z) - log q(z|x) (z held fixed)
        K.log_weights_backward(ws.dlog_w, ws.z, eps, ws.log_var, ws.dz_direct, ws.dmu_q, ws.dlog_var_q)
        ws.dkl.fill(0.0)
    else:
        ws.row_w.fill(-(dbound / S))
        ws.dkl.fill(-dbound)

    if PROFILER is not None:
        PROFILER.mark("bound, log weights and their backward")
    # ---- decoder backward ---------------------------------------------------------
    w = ws.row_w
    grad_logits = ws.logits                                           # sigmoid(l) - x, (B * S, D)
    h_last = ws.dec_h[-1]
    K.scale_rows_into(h_last, w, ws.hs)
    np.matmul(ws.hs.T, grad_logits, out=g["dec.out.W"])               # (dnll * h).T @ g
    K.weighted_bias_grad(grad_logits, w, g["dec.out.b"])
    np.matmul(grad_logits, p["dec.out.W"].T, out=ws.dec_d[-1])
    K.act_backward_rows(ws.dec_d[-1], h_last, act, w, ws.dec_d[-1])    # dnll * (g @ W.T) * act'
    z2 = ws.z.reshape(N, L)
    for i in reversed(range(nh)):
        da = ws.dec_d[i]                                              # (B * S, H_i)
        h_in = ws.dec_h[i - 1] if i > 0 else z2
        np.matmul(h_in.T, da, out=g[f"dec.{i}.W"])
        K.bias_grad(da, g[f"dec.{i}.b"])
        if i > 0:
            np.matmul(da, p[f"dec.{i}.W"].T, out=ws.dec_d[i - 1])
            K.act_backward(ws.dec_d[i - 1], ws.dec_h[i - 1], act, ws.dec_d[i - 1])
        else:
            np.matmul(da, p["dec.0.W"].T, out=ws.dz.reshape(N, L))  # (B * S, L)

    if PROFILER is not None:
        PROFILER.mark("decoder backward GEMMs + act/bias grads")
    # ---- latent: estimators, reparameterization and KL ---------------------------
    dz = ws.dz
    if log_weights:
        np.add(dz, ws.dz_direct, out=dz)
    if estimator == "dreg":
        np.multiply(dz, ws.w_tilde[:, :, None], out=dz)              # w~ -> w~^2 on the path
    K.reparam_kl_backward(dz, eps, ws.mu, ws.log_var, ws.dkl, ws.dmu, ws.dlog_var)
    if log_weights and estimator == "standard":                      # STL/DReG drop the score term
        np.add(ws.dmu, ws.dmu_q, out=ws.dmu)
        np.add(ws.dlog_var, ws.dlog_var_q, out=ws.dlog_var)

    if PROFILER is not None:
        PROFILER.mark("reparam + KL backward")
    # ---- encoder backward ---------------------------------------------------------
    h_last = ws.enc_h[-1]
    np.matmul(h_last.T, ws.dmu, out=g["enc.mu.W"])
    K.bias_grad(ws.dmu, g["enc.mu.b"])
    np.matmul(h_last.T, ws.dlog_var, out=g["enc.logvar.W"])
    K.bias_grad(ws.dlog_var, g["enc.logvar.b"])
    dh = ws.enc_d[-1]
    np.matmul(ws.dmu, p["enc.mu.W"].T, out=dh)
    np.matmul(ws.dlog_var, p["enc.logvar.W"].T, out=ws.enc_tmp)
    np.add(dh, ws.enc_tmp, out=dh)
    for i in reversed(range(nh)):
        da = ws.enc_d[i]                                              # (B, H_i)
        K.act_backward(da, ws.enc_h[i], act, da)
        h_in = ws.enc_h[i - 1] if i > 0 else x
        np.matmul(h_in.T, da, out=g[f"enc.{i}.W"])
        K.bias_grad(da, g[f"enc.{i}.b"])
        if i > 0:
            np.matmul(da, p[f"enc.{i}.W"].T, out=ws.enc_d[i - 1])
    if PROFILER is not None:
        PROFILER.mark("encoder backward GEMMs + act/bias grads")
    return (result if return_bound else result.loss), g
