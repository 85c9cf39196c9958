"""NumPy reference ops: every forward beside its backward.

Each op comes as a pair ``x_forward(...) -> (out, cache)`` and
``x_backward(dout, cache) -> grads``, in the style of cs231n's ``layers.py``.
The forward keeps what the backward needs in ``cache``; the backward receives
the gradient of a scalar loss with respect to ``out`` and returns the
gradients with respect to the forward's differentiable inputs, in order.

These functions are the specification of npvae's math. The numba kernels in
:mod:`npvae.fast` share their contracts and are tested equal to them: bit for
bit where they do the same float operations, else to rounding (float64 ~1e-12;
float32 to its precision, e.g. the float32 Bernoulli pass, which computes its own
``exp`` and ``log1p``, is within a few ulps of the exact values).

Shapes use ``B`` batch, ``S`` Monte Carlo samples, ``L`` latent size, ``D``
data size, ``H`` hidden size. Inputs are trusted here: validation happens at
the public boundary (:class:`npvae.VAE`, :func:`npvae.fit`).
"""

import math

import numpy as np

LOG_2PI = math.log(2.0 * math.pi)

__all__ = [
    "dense_forward", "dense_backward",
    "relu_forward", "relu_backward",
    "tanh_forward", "tanh_backward",
    "sigmoid", "flush_subnormal",
    "reparam_forward", "reparam_backward",
    "bernoulli_nll_forward", "bernoulli_nll_backward",
    "gaussian_kl_forward", "gaussian_kl_backward",
    "log_standard_normal_forward", "log_standard_normal_backward",
    "log_normal_diag_forward", "log_normal_diag_backward",
    "logsumexp_forward", "logsumexp_backward",
    "ACTIVATIONS",
]


# --------------------------------------------------------------------------
# Dense (affine) layer
# --------------------------------------------------------------------------
def dense_forward(x, W, b):
    """Affine layer on inputs with any leading axes.

    ``out = x @ W + b``

    Parameters
    ----------
    x : ndarray, shape (..., F_in)
        E.g. ``(B, D)`` in the encoder or ``(B, S, H)`` in the decoder.
    W : ndarray, shape (F_in, F_out)
    b : ndarray, shape (F_out,)

    Returns
    -------
    out : ndarray, shape (..., F_out)
    cache : tuple ``(x, W)``
    """
    # A 2-D view lets BLAS see one (N, F_in) @ (F_in, F_out) product,
    # whatever the leading axes (B, or B and S).
    x2 = x.reshape(-1, x.shape[-1])
    out = (x2 @ W + b).reshape(x.shape[:-1] + (W.shape[1],))
    return out, (x, W)


def dense_backward(dout, cache):
    """Backward of :func:`dense_forward`.

    ``dx = dout @ W.T``, ``dW = sum_n x_n^T dout_n``, ``db = sum_n dout_n``,
    where ``n`` runs over all leading axes (batch and samples).

    Parameters
    ----------
    dout : ndarray, shape (..., F_out)
    cache : from :func:`dense_forward`

    Returns
    -------
    dx : ndarray, shape (..., F_in)
    dW : ndarray, shape (F_in, F_out)
    db : ndarray, shape (F_out,)
    """
    x, W = cache
    x2 = x.reshape(-1, x.shape[-1])
    dout2 = dout.reshape(-1, dout.shape[-1])
    dx = (dout2 @ W.T).reshape(x.shape)
    dW = x2.T @ dout2
    db = dout2.sum(axis=0)
    return dx, dW, db


# --------------------------------------------------------------------------
# Activations
# --------------------------------------------------------------------------
def relu_forward(a):
    """``out = max(a, 0)``; shape preserved. Cache: the mask ``a > 0``."""
    mask = a > 0
    return a * mask, mask


def relu_backward(dout, cache):
    """``da = dout * 1[a > 0]`` (the subgradient at 0 is taken as 0)."""
    return dout * cache


def tanh_forward(a):
    """``out = tanh(a)``; shape preserved. Cache: ``out`` itself."""
    out = np.tanh(a)
    return out, out


def tanh_backward(dout, cache):
    """``da = dout * (1 - tanh(a)^2)``."""
    return dout * (1.0 - cache * cache)


# name -> (forward, backward), as scikit-learn keeps its activations.
ACTIVATIONS = {
    "relu": (relu_forward, relu_backward),
    "tanh": (tanh_forward, tanh_backward),
}


def flush_subnormal(a):
    """``a`` with its subnormal entries (nonzero, below the dtype's smallest normal
    magnitude ``np.finfo(dtype).tiny``) set to 0, in place; returns ``a``.

    Subnormal floats are exact but slow: on x86 every multiply that meets one takes
    a microcode assist. npvae's gradient of the Bernoulli likelihood would hold them
    once the decoder is confident (``sigmoid(l) - x`` for a pixel ``x = 0`` with a
    logit below ``log(tiny)``, about -87.3 in float32; on 10,000 MNIST images that
    was 0.1-0.2% of the pixels after 20 epochs), and the products that take the
    gradient (``dW``, ``dh``) then ran several times slower: 0.15% of subnormal
    entries made a float32 ``dW`` product 2-2.6x slower on the development machine.
    With the float32 kernel's own subnormals (``npvae.fast.bernoulli._log1p_unit_f32``), a
    trained model's step was 1.4-1.7x slower than a fresh one's. Setting them to 0
    changes each entry by less than ``tiny`` (1.2e-38 in float32, 2.2e-308 in float64).
    :mod:`npvae.optim` flushes its running averages by the same rule with its own
    helper, into preallocated buffers: that module imports nothing from npvae, so
    that it stands alone (tested).
    """
    tiny = np.finfo(a.dtype).tiny
    a[np.abs(a) < tiny] = 0
    return a


def _exp_neg_abs(a):
    """``exp(-|a|)`` with results below the dtype's ``tiny`` flushed to 0
    (:func:`flush_subnormal`): the ``e`` that :func:`sigmoid` and the Bernoulli NLL share."""
    return flush_subnormal(np.asarray(np.exp(-np.abs(a))))


def sigmoid(a):
    """Logistic function ``1 / (1 + exp(-a))``, without overflow for any ``a``.

    Results below the dtype's smallest normal number are 0 (``exp(-|a|)`` goes
    through :func:`flush_subnormal`): in float32 ``sigmoid(a) = 0`` for
    ``a < -87.33654``, where the exact value is below 1.18e-38.
    """
    e = _exp_neg_abs(a)
    return np.where(a >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(a.dtype, copy=False)


# --------------------------------------------------------------------------
# Reparameterization
# --------------------------------------------------------------------------
def reparam_forward(mu, log_var, eps):
    """Reparameterized samples of the diagonal Gaussian ``q(z|x)``.

    ``z[b, s] = mu[b] + exp(log_var[b] / 2) * eps[b, s]``
    (Kingma & Welling 2014, eq. 10).

    Parameters
    ----------
    mu, log_var : ndarray, shape (B, L)
    eps : ndarray, shape (B, S, L)
        Standard normal noise, one row per Monte Carlo sample.

    Returns
    -------
    z : ndarray, shape (B, S, L)
    cache : tuple ``(sigma, eps)``, ``sigma`` of shape (B, L)
    """
    sigma = np.exp(0.5 * log_var)
    z = mu[:, None, :] + sigma[:, None, :] * eps
    return z, (sigma, eps)


def reparam_backward(dz, cache):
    """Backward of :func:`reparam_forward`.

    Each of the S samples depends on the same ``mu`` and ``log_var``, so
    their gradients are sums over the sample axis:
    ``dmu = sum_s dz[:, s]``, ``dlog_var = sum_s dz[:, s] * eps[:, s] * sigma / 2``.

    Parameters
    ----------
    dz : ndarray, shape (B, S, L)

    Returns
    -------
    dmu, dlog_var : ndarray, shape (B, L)
    """
    sigma, eps = cache
    dmu = dz.sum(axis=1)
    dlog_var = 0.5 * sigma * (dz * eps).sum(axis=1)
    return dmu, dlog_var


# --------------------------------------------------------------------------
# Bernoulli likelihood from logits
# --------------------------------------------------------------------------
def bernoulli_nll_forward(logits, x):
    """Bernoulli negative log-likelihood from logits, summed over pixels.

    For targets ``x`` in [0, 1] and logits ``l``,
    ``-log p(x|z) = sum_d softplus(l_d) - x_d * l_d``,
    computed as ``max(l, 0) - x*l + log1p(exp(-|l|))`` so that it is exact and
    finite for any logit (no ``log(sigmoid)``, no clipping). For grayscale
    targets this is the binary cross-entropy of the original Keras example.
    ``exp(-|l|)`` below the dtype's ``tiny`` is taken as 0, as in :func:`sigmoid`
    (a pixel's term then differs from the exact one by less than ``tiny``).

    Parameters
    ----------
    logits : ndarray, shape (B, S, D)
    x : ndarray, shape (B, D)
        Targets, broadcast over the sample axis.

    Returns
    -------
    nll : ndarray, shape (B, S)
        Per example and per sample.
    cache : tuple ``(logits, x)``
    """
    xb = x[:, None, :]
    elementwise = np.maximum(logits, 0) - xb * logits + np.log1p(_exp_neg_abs(logits))
    # Sum the D pixels in float64: float32 sums of 784 terms drift.
    nll = elementwise.sum(axis=-1, dtype=np.float64).astype(logits.dtype, copy=False)
    return nll, (logits, x)


def bernoulli_nll_backward(dnll, cache):
    """Backward of :func:`bernoulli_nll_forward` with respect to the logits.

    ``dlogits[b, s, d] = dnll[b, s] * (sigmoid(l[b, s, d]) - x[b, d])``, with
    subnormal results set to 0 (:func:`flush_subnormal`: they would slow down the
    products that take this gradient several times over, and the change is below
    the dtype's ``tiny``). The targets are data, not parameters: no gradient is
    returned for them.

    Parameters
    ----------
    dnll : ndarray, shape (B, S)

    Returns
    -------
    dlogits : ndarray, shape (B, S, D)
    """
    logits, x = cache
    return flush_subnormal(dnll[:, :, None] * (sigmoid(logits) - x[:, None, :]))


# --------------------------------------------------------------------------
# KL divergence to the prior
# --------------------------------------------------------------------------
def gaussian_kl_forward(mu, log_var):
    """Analytic ``KL(N(mu, diag(exp(log_var))) || N(0, I))`` per example.

    ``KL = -1/2 sum_l (1 + log_var_l - mu_l^2 - exp(log_var_l))``
    (Kingma & Welling 2014, appendix B).

    Parameters
    ----------
    mu, log_var : ndarray, shape (B, L)

    Returns
    -------
    kl : ndarray, shape (B,)
    cache : tuple ``(mu, var)``
    """
    var = np.exp(log_var)
    kl = -0.5 * (1.0 + log_var - mu * mu - var).sum(axis=-1)
    return kl, (mu, var)


def gaussian_kl_backward(dkl, cache):
    """``dmu = dkl * mu``, ``dlog_var = dkl * (exp(log_var) - 1) / 2``; shapes (B, L)."""
    mu, var = cache
    d = dkl[:, None]
    return d * mu, d * 0.5 * (var - 1.0)


# --------------------------------------------------------------------------
# Log-densities for importance weights
# --------------------------------------------------------------------------
def log_standard_normal_forward(z):
    """Log-density of the prior ``log p(z) = log N(z; 0, I)``.

    ``log p(z) = -1/2 sum_l (z_l^2 + log 2 pi)``

    Parameters
    ----------
    z : ndarray, shape (B, S, L)

    Returns
    -------
    log_pz : ndarray, shape (B, S)
    cache : ``z``
    """
    log_pz = -0.5 * (z * z).sum(axis=-1) - 0.5 * z.shape[-1] * LOG_2PI
    return log_pz, z


def log_standard_normal_backward(dlog_pz, cache):
    """``dz = -dlog_pz * z``; shape (B, S, L)."""
    return -dlog_pz[:, :, None] * cache


def log_normal_diag_forward(z, mu, log_var):
    """Log-density of the encoder ``log q(z|x) = log N(z; mu, diag(exp(log_var)))``.

    ``log q = -1/2 sum_l (log 2 pi + log_var_l + (z_l - mu_l)^2 exp(-log_var_l))``

    ``z`` is an input in its own right: for reparameterized samples the
    gradient reaches ``mu`` and ``log_var`` both directly (returned here) and
    through ``z`` (via :func:`reparam_backward`). Estimators such as
    "sticking the landing" keep only the path through ``z``.

    Parameters
    ----------
    z : ndarray, shape (B, S, L)
    mu, log_var : ndarray, shape (B, L)

    Returns
    -------
    log_qz : ndarray, shape (B, S)
    cache : tuple ``(u, inv_std)``, the standardized residual ``u = (z - mu) * exp(-log_var / 2)``
        and ``inv_std = exp(-log_var / 2)``

    The quadratic term is formed as ``u^2``, not ``(z - mu)^2 * exp(-log_var)``: for a sharp
    posterior in float32 (``log_var < -88``) ``exp(-log_var)`` overflows to inf while
    ``z - mu`` rounds to 0, and ``0 * inf`` would make ``log q`` NaN; ``exp(-log_var / 2)``
    stays finite down to ``log_var = -176``.
    """
    inv_std = np.exp(-0.5 * log_var)
    u = (z - mu[:, None, :]) * inv_std[:, None, :]
    quad = (u * u).sum(axis=-1)
    log_qz = -0.5 * (quad + log_var.sum(axis=-1)[:, None] + z.shape[-1] * LOG_2PI)
    return log_qz, (u, inv_std)


def log_normal_diag_backward(dlog_qz, cache):
    """Backward of :func:`log_normal_diag_forward`.

    With ``u = (z - mu) exp(-log_var / 2)`` and ``r = u exp(-log_var / 2) = (z - mu) / var``:
    ``dz = -dlog_qz * r``, ``dmu = sum_s dlog_qz * r``,
    ``dlog_var = sum_s dlog_qz * (u^2 - 1) / 2``.

    Returns
    -------
    dz : ndarray, shape (B, S, L)
    dmu, dlog_var : ndarray, shape (B, L)
    """
    u, inv_std = cache
    r = u * inv_std[:, None, :]
    d = dlog_qz[:, :, None]
    dz = -d * r
    dmu = (d * r).sum(axis=1)
    dlog_var = 0.5 * (d * (u * u - 1.0)).sum(axis=1)
    return dz, dmu, dlog_var


def logsumexp_forward(a):
    """Numerically stable ``log sum_s exp(a_s)`` over the last axis.

    The maximum is subtracted before exponentiating; rows that are all
    ``-inf`` give ``-inf`` (not NaN).

    Parameters
    ----------
    a : ndarray, shape (..., S)

    Returns
    -------
    out : ndarray, shape (...)
    cache : tuple ``(a, out)``
    """
    m = a.max(axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        out = np.log(np.exp(a - m).sum(axis=-1)) + m[..., 0]
    return out, (a, out)


def logsumexp_backward(dout, cache):
    """``da = dout * softmax(a)``: the normalized weights ``exp(a - out)``."""
    a, out = cache
    return dout[..., None] * np.exp(a - out[..., None])
