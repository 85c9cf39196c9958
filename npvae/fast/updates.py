"""Optimizer updates on the fast path: one pass per parameter for SGD, RMSprop and Adam.

Reference: the NumPy ufunc updates of :class:`npvae.optim.SGD`, :class:`npvae.optim.RMSprop`
and :class:`npvae.optim.Adam` followed by their subnormal flush
(``npvae.optim``'s module docstring). Each kernel does the same float operations in the
same order, with the scalars cast to the parameter's dtype as NumPy casts a Python
float, so results are the same bit for bit (tested); it reads and writes each array
once instead of the six to ten passes of the ufuncs. The step count and the
hyperparameters stay with the optimizer: :meth:`npvae.optim.Optimizer.step` calls these
through the ``update`` it is given (:meth:`npvae.fast.NumbaEngine.optimizer_update`).
"""

import numpy as np

from ._jit import kernel, wide_vectors

__all__ = ["sgd_step", "rmsprop_step", "adam_step"]


@kernel
def rmsprop_step(p, g, v, lr, rho, eps):
    """One RMSprop step (Keras 2), in place, flushing subnormal state in the same pass.

    ``v <- rho * v + (1 - rho) * g^2``; ``p <- p - lr * g / (sqrt(v) + eps)``; then
    entries of ``v`` below ``np.finfo(v.dtype).tiny`` are set to 0. Operation for
    operation (and rounding for rounding, scalars cast to ``p``'s dtype first) the
    ``_update`` plus ``_flush_subnormals`` of :class:`npvae.optim.RMSprop`, so results
    are bit for bit the same; the step count is kept by the caller.

    Parameters
    ----------
    p : ndarray, any shape, C-contiguous
        Parameter, updated in place.
    g : ndarray, same shape
        Gradient (``p``'s dtype, or float64, rounded as the reference does).
    v : ndarray, same shape and dtype as ``p``
        Running mean of squared gradients, updated in place.
    lr, rho, eps : float
    """
    wide_vectors()
    pf = p.reshape(p.size)
    gf = g.reshape(g.size)
    vf = v.reshape(v.size)
    t = p.dtype.type
    lr_ = t(lr)
    rho_ = t(rho)
    one_minus_rho = t(1.0 - rho)
    eps_ = t(eps)
    tiny = np.finfo(v.dtype).tiny
    zero = t(0.0)
    for i in range(pf.size):
        gi = gf[i]
        vi = vf[i] * rho_ + t(gi * gi) * one_minus_rho
        step = t(gi / (np.sqrt(vi) + eps_)) * lr_
        pf[i] = pf[i] - step
        vf[i] = zero if vi < tiny else vi


@kernel
def sgd_step(p, g, v, lr, momentum, nesterov):
    """One SGD step (Keras 2 form), in place, flushing subnormal velocity in the same pass.

    ``momentum == 0``: ``p <- p - lr * g`` (``v`` unused: pass any array of ``p``'s dtype).
    Else ``v <- mu * v - lr * g`` then ``p <- p + v``, or with ``nesterov``
    ``p <- (p - lr * g) + mu * v``; entries of ``v`` with ``|v| < tiny`` are then set to 0.
    The operations and roundings of :meth:`npvae.optim.SGD._update` and its flush, bit for bit.

    Parameters
    ----------
    p : ndarray, C-contiguous
        Parameter, updated in place.
    g : ndarray, same shape
        Gradient (``p``'s dtype, or float64, rounded as the reference does).
    v : ndarray, same shape and dtype as ``p`` (momentum > 0)
        Velocity, updated in place.
    lr, momentum : float
    nesterov : bool
    """
    wide_vectors()
    pf = p.reshape(p.size)
    gf = g.reshape(g.size)
    t = p.dtype.type
    lr_g = g.dtype.type(lr)            # NumPy: g * lr in g's dtype, then rounded into p's
    if momentum == 0.0:
        for i in range(pf.size):
            pf[i] = pf[i] - t(gf[i] * lr_g)
        return
    vf = v.reshape(v.size)
    mu = t(momentum)
    tiny = np.finfo(v.dtype).tiny
    zero = t(0.0)
    for i in range(pf.size):
        step = t(gf[i] * lr_g)
        vi = vf[i] * mu - step
        if nesterov:
            pf[i] = (pf[i] - step) + vi * mu
        else:
            pf[i] = pf[i] + vi
        vf[i] = zero if abs(vi) < tiny else vi


@kernel
def adam_step(p, g, m, v, alpha, beta1, beta2, eps):
    """One Adam step (Keras form, bias correction in ``alpha``), in place, flushing subnormal
    moments in the same pass.

    ``m <- beta1 * m + (1 - beta1) * g``, ``v <- beta2 * v + (1 - beta2) * g^2``,
    ``p <- p - alpha * m / (sqrt(v) + eps)``, then entries of ``m`` with ``|m| < tiny`` and of
    ``v`` below ``tiny`` set to 0. ``alpha = lr * sqrt(1 - beta2^t) / (1 - beta1^t)`` is
    computed by the caller in float64, as :meth:`npvae.optim.Adam._update` does; the
    operations and roundings are that method's and its flush's, bit for bit.

    Parameters
    ----------
    p : ndarray, C-contiguous
        Parameter, updated in place.
    g : ndarray, same shape
        Gradient (``p``'s dtype, or float64).
    m, v : ndarray, same shape and dtype as ``p``
        First and second moments, updated in place.
    alpha, beta1, beta2, eps : float
    """
    wide_vectors()
    pf = p.reshape(p.size)
    gf = g.reshape(g.size)
    mf = m.reshape(m.size)
    vf = v.reshape(v.size)
    t = p.dtype.type
    c1 = g.dtype.type(1.0 - beta1)     # NumPy: g * (1 - beta1) in g's dtype, then rounded
    b1 = t(beta1)
    b2 = t(beta2)
    c2 = t(1.0 - beta2)
    eps_ = t(eps)
    alpha_ = t(alpha)
    tiny = np.finfo(v.dtype).tiny
    zero = t(0.0)
    for i in range(pf.size):
        gi = gf[i]
        mi = mf[i] * b1 + t(gi * c1)
        vi = vf[i] * b2 + t(gi * gi) * c2
        step = (mi / (np.sqrt(vi) + eps_)) * alpha_
        pf[i] = pf[i] - step
        mf[i] = zero if abs(mi) < tiny else mi
        vf[i] = zero if vi < tiny else vi
