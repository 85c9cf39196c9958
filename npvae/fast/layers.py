"""The training step's layer stacks, each one compiled function: products, bias, activation and back.

:mod:`npvae.fast.step` composes a training step from these and from the row passes that may run
in parts on BLAS's threads (:mod:`npvae.fast.jobs`: the Bernoulli pass, the narrow latent layer,
the output layer's row scale and bias gradient) and the objective's kernels
(:mod:`npvae.fast.bounds`). Each function here runs a stack of dense layers -- the encoder with
the reparameterization, the decoder's hidden layers with its output product, the decoder's
backward, the latent layer's and the encoder's backward -- as one call: its products go to
BLAS through :func:`npvae.fast.gemm.matmul`, its passes are the kernels of
:mod:`npvae.fast.dense` and :mod:`npvae.fast.latent`, and nothing returns to Python between them
(at batch 20 and one sample, a step of Burda et al.'s model made ~60 calls from Python, each
costing 1-2 us more than its work, as measured during development).

One source, two ways to run (:func:`runner`): compiled by numba where NumPy's BLAS can be
called from compiled code (:func:`npvae.fast.gemm.address`) and every array is C-contiguous of
the model's dtype; otherwise the same function as Python (``.py_func``), its products
``np.matmul`` and its kernels called one by one, as the step ran before. The two give the same
products (the same BLAS calls) and the same kernels' results.

The per-layer arrays are tuples (one array per hidden layer, in order), and a layer's weights
``W[i]`` are ``(fan_in, fan_out)`` as in :mod:`npvae.params`.
"""

import numpy as np

from . import dense, gemm, latent
from ._jit import JIT, kernel

__all__ = ["runner", "encoder_forward", "decoder_forward", "decoder_backward", "latent_encoder_backward"]


def runner(fn, addr):
    """``fn`` compiled if ``addr`` (a BLAS address, :func:`npvae.fast.step.stack_address`: 0 unless
    the call's arrays are all C-contiguous of one float dtype) is not 0 and numba's JIT is on;
    else its Python body."""
    if addr and JIT:
        return fn
    return getattr(fn, "py_func", fn)


@kernel
def encoder_forward(addr, x, binary, x_cols, x_counts, W, b, mu_W, mu_b, lv_W, lv_b, h, mu, log_var, eps, z, kl,
                    act):
    """The encoder and the reparameterization: ``h[i] = act(h[i-1] @ W[i] + b[i])`` from ``x``,
    ``mu``, ``log_var`` (identity layers from the last ``h``), then ``z`` (B, S, L) and the
    analytic ``kl`` (B,) (:func:`npvae.fast.latent.reparam_kl_forward`). With ``binary`` the first
    product sums the weight rows of ``x``'s ones (:func:`npvae.fast.dense.binary_product`, from
    ``x_cols``, ``x_counts``)."""
    for i in range(len(h)):
        out = h[i]
        if i > 0:
            gemm.matmul(addr, h[i - 1], False, W[i], False, out)
        elif binary:
            dense.binary_product(x_cols, x_counts, W[0], out)
        else:
            gemm.matmul(addr, x, False, W[0], False, out)
        dense.bias_act_forward(out, b[i], act, out)
    last = h[len(h) - 1]
    gemm.matmul(addr, last, False, mu_W, False, mu)
    dense.bias_act_forward(mu, mu_b, dense.IDENTITY, mu)
    gemm.matmul(addr, last, False, lv_W, False, log_var)
    dense.bias_act_forward(log_var, lv_b, dense.IDENTITY, log_var)
    latent.reparam_kl_forward(mu, log_var, eps, z, kl)


@kernel
def decoder_forward(addr, z2, first, W, b, h, out_W, logits, act):
    """The decoder's hidden layers ``first, first + 1, ...`` (layer 0 from ``z2`` (N, L); ``first``
    1 when the narrow layer already ran) and the output product ``logits = h[-1] @ out_W``
    (its bias is added by the Bernoulli pass)."""
    for i in range(first, len(h)):
        if i == 0:
            gemm.matmul(addr, z2, False, W[0], False, h[0])
        else:
            gemm.matmul(addr, h[i - 1], False, W[i], False, h[i])
        dense.bias_act_forward(h[i], b[i], act, h[i])
    gemm.matmul(addr, h[len(h) - 1], False, out_W, False, logits)


@kernel
def decoder_backward(addr, g_logits, hs, out_W, d_out_W, z2, W, h, d, dW, db, w, weighted, stop, act, dz2,
                     params):
    """The decoder's backward from ``g_logits`` (N, D): ``sigmoid(l) - x``, its rows weighted by
    ``w`` (N,) where ``weighted`` (applied on the ``(N, H)`` side, with the last layer's
    activation).

    With ``params``: ``d_out_W = hs.T @ g_logits`` (``hs``: the last hidden layer's activations,
    row-scaled by the caller) and every layer's ``dW[i]``, ``db[i]`` (float64 sums). Always the
    gradient flowing down: ``d[-1] = g_logits @ out_W.T``, then per layer its activation's
    backward, its gradients, and ``d[i - 1]`` (``dz2`` (N, L) below layer 0). Layers below
    ``stop`` are left to the caller (``stop`` 1: the narrow latent layer, whose input gradient
    is ``d[0]`` before its activation). Returns whether ``w`` is still to be applied (only when
    ``stop`` is 1 and the stack is one layer deep).
    """
    n = len(h)
    if params:
        gemm.matmul(addr, hs, True, g_logits, False, d_out_W)
    gemm.matmul(addr, g_logits, False, out_W, True, d[n - 1])
    for i in range(n - 1, stop - 1, -1):
        dout = d[i]
        if weighted:
            dense.act_backward_rows(dout, h[i], act, w, dout)
            weighted = False
        else:
            dense.act_backward(dout, h[i], act, dout)
        if i == 0:
            if params:
                gemm.matmul(addr, z2, True, dout, False, dW[0])
                dense.bias_grad(dout, db[0])
            gemm.matmul(addr, dout, False, W[0], True, dz2)
        else:
            if params:
                gemm.matmul(addr, h[i - 1], True, dout, False, dW[i])
                dense.bias_grad(dout, db[i])
            gemm.matmul(addr, dout, False, W[i], True, d[i - 1])
    return weighted


@kernel
def latent_encoder_backward(addr, dz, dz_direct, direct, path_w, reweight, eps, mu, log_var, dkl, dmu, dlog_var,
                            dmu_q, dlog_var_q, score, x, binary, x_cols, x_counts, W, h, d, dW, db, mu_W, lv_W,
                            d_mu_W, d_mu_b, d_lv_W, d_lv_b, tmp, act):
    """From the decoder's ``dz`` (B, S, L) to the encoder's gradients.

    ``dz += dz_direct`` where ``direct`` (the log weights' own gradient in ``z``), ``dz *=
    path_w[:, :, None]`` where ``reweight`` (DReG), the reparameterization's and the KL's backward
    into ``dmu``, ``dlog_var`` (:func:`npvae.fast.latent.reparam_kl_backward`), plus ``dmu_q``,
    ``dlog_var_q`` where ``score`` (the score term, which STL and DReG drop). Then the encoder's
    backward: the ``mu`` and ``log_var`` layers, each hidden layer's activation backward and
    gradients, the first layer's ``dW`` from ``x``'s ones when ``binary`` (no gradient for ``x``).
    """
    B, S, L = dz.shape
    dz2 = dz.reshape(B * S, L)
    if direct:
        _add_into(dz2, dz_direct.reshape(B * S, L))
    if reweight:
        dense.scale_rows_into(dz2, path_w.reshape(B * S), dz2)
    latent.reparam_kl_backward(dz, eps, mu, log_var, dkl, dmu, dlog_var)
    if score:
        _add_into(dmu, dmu_q)
        _add_into(dlog_var, dlog_var_q)
    n = len(h)
    last, dh = h[n - 1], d[n - 1]
    gemm.matmul(addr, last, True, dmu, False, d_mu_W)
    dense.bias_grad(dmu, d_mu_b)
    gemm.matmul(addr, dmu, False, mu_W, True, dh)
    gemm.matmul(addr, last, True, dlog_var, False, d_lv_W)
    dense.bias_grad(dlog_var, d_lv_b)
    gemm.matmul(addr, dlog_var, False, lv_W, True, tmp)
    _add_into(dh, tmp)
    for i in range(n - 1, -1, -1):
        da = d[i]
        dense.act_backward(da, h[i], act, da)
        if i > 0:
            gemm.matmul(addr, h[i - 1], True, da, False, dW[i])
            dense.bias_grad(da, db[i])
            gemm.matmul(addr, da, False, W[i], True, d[i - 1])
        else:
            if binary:                                        # dW = x.T @ da from the ones
                dense.binary_weight_grad(x_cols, x_counts, da, dW[0])
            else:
                gemm.matmul(addr, x, True, da, False, dW[0])
            dense.bias_grad(da, db[0])                         # no dx for the data


@kernel
def _add_into(a, b):
    """``a += b`` over 2-D arrays of one shape (``np.add(a, b, out=a)``, bit for bit)."""
    for i in range(a.shape[0]):
        row = a[i]
        for j in range(a.shape[1]):
            row[j] += b[i, j]
