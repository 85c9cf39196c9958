"""The latent layer on the fast path: reparameterization with the analytic KL, the log
importance weights and the IWAE's logsumexp, each with its backward (small arrays:
``(B, S, L)`` and ``(B, S)``).

References: :func:`npvae.ops.reparam_forward`, :func:`npvae.ops.gaussian_kl_forward`,
:func:`npvae.ops.log_standard_normal_forward`, :func:`npvae.ops.log_normal_diag_forward`,
:func:`npvae.objectives.iwae_forward` and their backwards. Sums over samples and over
the latent axis are in float64; each docstring says how exactly the kernel equals the ops.
"""

import math

import numpy as np

from ._jit import kernel

__all__ = ["reparam_kl_forward", "reparam_kl_backward", "log_weights", "log_weights_backward",
           "logsumexp_weights", "group_logsumexp_weights"]

# --------------------------------------------------------------------------
# Latent part: reparameterization, KL, importance weights (small arrays)
# --------------------------------------------------------------------------
@kernel
def reparam_kl_forward(mu, log_var, eps, z, kl):
    """Reparameterized samples and the analytic KL to the prior.

    ``z[b, s] = mu[b] + exp(log_var[b] / 2) * eps[b, s]`` (``ops.reparam_forward``) and
    ``kl[b] = -1/2 sum_l (1 + log_var - mu^2 - exp(log_var))`` (``ops.gaussian_kl_forward``,
    summed in float64).

    Parameters
    ----------
    mu, log_var : ndarray, shape (B, L)
    eps : ndarray, shape (B, S, L)
    z : ndarray, shape (B, S, L)
        Written.
    kl : ndarray, shape (B,)
        Written.
    """
    B, S, L = eps.shape
    half = mu.dtype.type(0.5)
    one = mu.dtype.type(1.0)
    sigma = np.empty(L, dtype=mu.dtype)
    for b in range(B):
        acc = np.float64(0.0)
        for j in range(L):
            lv = log_var[b, j]
            m = mu[b, j]
            acc += ((one + lv) - m * m) - np.exp(lv)
            sigma[j] = np.exp(half * lv)
        kl[b] = -0.5 * acc
        for s in range(S):
            for j in range(L):
                z[b, s, j] = mu[b, j] + sigma[j] * eps[b, s, j]


@kernel
def reparam_kl_backward(dz, eps, mu, log_var, dkl, dmu, dlog_var):
    """Gradients reaching ``mu`` and ``log_var`` through ``z`` and through the analytic KL.

    ``dmu = sum_s dz[:, s] + dkl * mu`` and
    ``dlog_var = sigma / 2 * sum_s dz[:, s] * eps[:, s] + dkl * (exp(log_var) - 1) / 2``,
    ``sigma = exp(log_var / 2)``: the sums of ``ops.reparam_backward(dz, ...)`` and
    ``ops.gaussian_kl_backward(dkl, ...)``. The sums over samples are in float64.
    Pass ``dkl = 0`` when no analytic KL is in the loss (IWAE, Monte Carlo KL).

    Parameters
    ----------
    dz : ndarray, shape (B, S, L)
    eps : ndarray, shape (B, S, L)
    mu, log_var : ndarray, shape (B, L)
    dkl : ndarray, shape (B,)
    dmu, dlog_var : ndarray, shape (B, L)
        Written.
    """
    B, S, L = dz.shape
    acc_dz = np.empty(L, dtype=np.float64)
    acc_dz_eps = np.empty(L, dtype=np.float64)
    for b in range(B):
        for j in range(L):
            acc_dz[j] = 0.0
            acc_dz_eps[j] = 0.0
        for s in range(S):
            for j in range(L):
                g = np.float64(dz[b, s, j])
                acc_dz[j] += g
                acc_dz_eps[j] += g * eps[b, s, j]
        k = np.float64(dkl[b])
        for j in range(L):
            lv = np.float64(log_var[b, j])
            dmu[b, j] = acc_dz[j] + k * mu[b, j]
            dlog_var[b, j] = 0.5 * np.exp(0.5 * lv) * acc_dz_eps[j] + k * 0.5 * (np.exp(lv) - 1.0)


@kernel
def log_weights(nll, z, log_var, eps, log_w):
    """Log importance weights ``log w = log p(x|z) + log p(z) - log q(z|x)``.

    ``log_w[b, s] = -nll[b, s] + log N(z; 0, I) - log N(z; mu, diag(exp(log_var)))``,
    i.e. ``-nll + ops.log_standard_normal_forward(z)[0]
    - ops.log_normal_diag_forward(z, mu, log_var)[0]``. For reparameterized samples
    ``(z - mu)^2 / var = eps^2`` exactly, so ``eps`` is used (``mu`` is not needed)
    and the two ``log 2 pi`` terms cancel:
    ``log_w = -nll - 1/2 sum_l z^2 + 1/2 sum_l eps^2 + 1/2 sum_l log_var``, summed in
    float64. This is more accurate than the reference, which forms ``z - mu``.

    Parameters
    ----------
    nll : ndarray, shape (B, S)
        From :func:`npvae.fast.bernoulli.bernoulli_nll_and_grad`.
    z, eps : ndarray, shape (B, S, L)
    log_var : ndarray, shape (B, L)
    log_w : ndarray, shape (B, S)
        Written.
    """
    B, S, L = z.shape
    for b in range(B):
        sum_lv = np.float64(0.0)
        for j in range(L):
            sum_lv += log_var[b, j]
        for s in range(S):
            quad = np.float64(0.0)
            for j in range(L):
                zj = np.float64(z[b, s, j])
                ej = np.float64(eps[b, s, j])
                quad += ej * ej - zj * zj
            log_w[b, s] = 0.5 * (quad + sum_lv) - nll[b, s]


@kernel
def log_weights_backward(dlog_w, z, eps, log_var, dz, dmu, dlog_var):
    """Backward of :func:`log_weights` (its ``log p(z) - log q(z|x)`` part).

    With ``r = (z - mu) / var = eps / sigma`` and ``d = dlog_w[b, s]``:
    ``dz = d * (r - z)``, ``dmu = -sum_s d * r``,
    ``dlog_var = -1/2 sum_s d * (eps^2 - 1)``: ``ops.log_standard_normal_backward(d)``
    plus ``ops.log_normal_diag_backward(-d)``. These are the *direct* gradients
    (``z`` held fixed); ``dz`` still has to go through the reparameterization
    (:func:`reparam_kl_backward`) after the decoder's ``dz`` is added to it. The
    gradient with respect to ``nll`` is ``-dlog_w``. Sums over samples in float64.

    Parameters
    ----------
    dlog_w : ndarray, shape (B, S)
    z, eps : ndarray, shape (B, S, L)
    log_var : ndarray, shape (B, L)
    dz : ndarray, shape (B, S, L)
        Written (not added to).
    dmu, dlog_var : ndarray, shape (B, L)
        Written.
    """
    B, S, L = z.shape
    inv_sigma = np.empty(L, dtype=np.float64)
    acc_r = np.empty(L, dtype=np.float64)
    acc_q = np.empty(L, dtype=np.float64)
    for b in range(B):
        for j in range(L):
            inv_sigma[j] = np.exp(-0.5 * np.float64(log_var[b, j]))
            acc_r[j] = 0.0
            acc_q[j] = 0.0
        for s in range(S):
            d = np.float64(dlog_w[b, s])
            for j in range(L):
                ej = np.float64(eps[b, s, j])
                dr = d * ej * inv_sigma[j]
                dz[b, s, j] = dr - d * z[b, s, j]
                acc_r[j] += dr
                acc_q[j] += d * (ej * ej - 1.0)
        for j in range(L):
            dmu[b, j] = -acc_r[j]
            dlog_var[b, j] = -0.5 * acc_q[j]


@kernel
def logsumexp_weights(log_w, bound, w_tilde):
    """IWAE bound and normalized importance weights, per example.

    ``bound[b] = logsumexp_s(log_w[b, s]) - log S`` (``objectives.iwae_forward``) and
    ``w_tilde[b, s] = exp(log_w[b, s] - logsumexp_s(log_w[b]))``, the softmax over
    samples (``ops.logsumexp_backward`` with ``dout = 1``; ``objectives.iwae_backward``
    is ``dbound[:, None] * w_tilde``). Stable: the row maximum is subtracted, computed
    in float64, and the weights are formed as ``exp(log_w - max) / sum`` (accurate to
    a few ulps however large ``|log_w|``; the reference's ``exp(log_w - logsumexp)``
    loses ``ulp(|log_w|)``, e.g. 1e-13 relative at ``log_w = -500``). Rows that are
    all ``-inf`` give ``bound = -inf`` and NaN weights, as the reference does.

    Parameters
    ----------
    log_w : ndarray, shape (B, S)
    bound : ndarray, shape (B,)
        Written.
    w_tilde : ndarray, shape (B, S)
        Written. May be ``log_w`` itself (in place).
    """
    group_logsumexp_weights(log_w, 1, bound, w_tilde)     # one group of all S samples


@kernel
def group_logsumexp_weights(log_w, groups, bound, w_tilde):
    """MIWAE bound and the normalized importance weights within each group, per example.

    With ``K = S // groups`` and sample ``s`` in group ``s // K``:
    ``bound[b] = mean_m [logsumexp_k(log_w[b, m*K + k]) - log K]`` (``objectives.miwae_forward``)
    and ``w_tilde[b, m*K + k]`` the softmax of ``log_w[b, m*K : m*K + K]`` (so that
    ``objectives.miwae_backward`` is ``dbound / M * w_tilde``). Each group as
    :func:`logsumexp_weights` does a row (stable, float64); the mean over groups in float64.
    With ``groups = 1`` the same numbers as :func:`logsumexp_weights`, bit for bit.

    Parameters
    ----------
    log_w : ndarray, shape (B, S)
    groups : int
        ``M``, which divides ``S``.
    bound : ndarray, shape (B,)
        Written.
    w_tilde : ndarray, shape (B, S)
        Written.
    """
    B, S = log_w.shape
    K = S // groups
    log_K = math.log(K)
    for b in range(B):
        acc = np.float64(0.0)
        for g in range(groups):
            s0 = g * K
            m = np.float64(log_w[b, s0])
            for s in range(s0 + 1, s0 + K):
                v = np.float64(log_w[b, s])
                if v > m or v != v:  # NaN wins, as in np.max
                    m = v
            if not math.isfinite(m):
                m = 0.0
            total = np.float64(0.0)
            for s in range(s0, s0 + K):
                total += np.exp(np.float64(log_w[b, s]) - m)
            acc += (np.log(total) + m) - log_K
            for s in range(s0, s0 + K):
                w_tilde[b, s] = np.exp(np.float64(log_w[b, s]) - m) / total
        bound[b] = acc / groups
