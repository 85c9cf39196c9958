"""Finite-difference gradient checks, usable on any op.

The check compares an analytic gradient with central differences computed in
float64, coordinate by coordinate, and reports the largest relative error
``|a - b| / max(|a|, |b|, tiny)``. The default stencil is the fourth-order one,
``(-f(p+2h) + 8 f(p+h) - 8 f(p-h) + f(p-2h)) / 12h``: its truncation error
(``O(h^4)``) stays negligible at a step ``h = 1e-4`` large enough for rounding
in ``f`` (about ``1e-16 |f| / h``) not to swamp small gradients. The
second-order stencil ``(f(p+h) - f(p-h)) / 2h`` is there with ``order=2``.
Well-implemented backward passes give errors around 1e-8 or below; 1e-6 or
above is a bug, a kink (e.g. a ReLU input within ``h`` of zero), or a step
``h`` too small for the size of the gradients (rounding error grows as 1/h).

Two limits of any finite-difference check, worth knowing when one fails:

* kinks: a ReLU input within ``2h`` of zero makes the difference quotient
  straddle the kink; the error is then large (1e-2 or more) at a few
  coordinates. Another seed, a smaller ``h``, or ``activation="tanh"`` tells
  a kink from a bug.
* tiny gradients: a coordinate whose derivative is ~1e-6 of the loss's size
  is below what float64 differences resolve at 1e-6 relative error.

Examples
--------
Check an op's backward with a random upstream gradient (ones would hide
mistakes in sums over axes):

>>> import numpy as np
>>> from npvae import ops, gradcheck
>>> rng = np.random.default_rng(0)
>>> x, W, b = rng.normal(size=(2, 3, 4)), rng.normal(size=(4, 5)), rng.normal(size=5)
>>> errors = gradcheck.check_op(ops.dense_forward, ops.dense_backward, [x, W, b], rng=rng)
>>> max(errors) < 1e-6
True
"""

import numpy as np

__all__ = ["relative_error", "numerical_gradient", "check_gradient", "check_op", "check_model"]

TINY = 1e-12


def relative_error(a, b, tiny=TINY):
    """Largest elementwise ``|a - b| / max(|a|, |b|, tiny)``.

    Parameters
    ----------
    a, b : array_like, same shape
    tiny : float
        Floor of the denominator, so that two exact zeros agree.

    Returns
    -------
    float
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"relative_error: shapes differ, {a.shape} and {b.shape}")
    if a.size == 0:
        return 0.0
    denom = np.maximum(np.maximum(np.abs(a), np.abs(b)), tiny)
    return float((np.abs(a - b) / denom).max())


# order -> (step multiples k, weights of f(p + k h) - f(p - k h), denominator in units of h).
# Differences of symmetric pairs are formed first, so that a coordinate ``f``
# does not depend on gives exactly 0 (a dead ReLU unit's exact zero gradient).
_STENCILS = {
    2: ((1,), (1.0,), 2.0),
    4: ((1, 2), (8.0, -1.0), 12.0),
}


def _coordinates(shape, n_coords, rng):
    size = int(np.prod(shape))
    if n_coords is None or n_coords >= size:
        return np.arange(size)
    return np.sort(rng.choice(size, size=n_coords, replace=False))


def numerical_gradient(f, p, h=1e-4, indices=None, order=4):
    """Central-difference gradient of the scalar function ``f()`` with respect to ``p``.

    ``p`` is perturbed in place, one coordinate at a time, and restored.

    Parameters
    ----------
    f : callable
        Takes no arguments and returns a scalar that depends on ``p``.
    p : ndarray of float64
        The array ``f`` reads; modified in place during the call.
    h : float
        Step size.
    indices : array of int, optional
        Flat indices of the coordinates to differentiate (default: all).
    order : {4, 2}
        Accuracy order of the central stencil.

    Returns
    -------
    ndarray of float64
        The derivatives at ``indices``, or of shape ``p.shape`` when all.
    """
    if not isinstance(p, np.ndarray) or p.dtype != np.float64:
        raise ValueError(f"p: expected a float64 ndarray, got {getattr(p, 'dtype', type(p).__name__)}"
                         " (finite differences need float64)")
    if order not in _STENCILS:
        raise ValueError(f"order: expected 2 or 4, got {order!r}")
    offsets, weights, scale = _STENCILS[order]
    flat = p.reshape(-1)
    if not np.shares_memory(flat, p):
        raise ValueError("p: expected a contiguous array that can be perturbed in place")
    all_coords = indices is None
    indices = np.arange(flat.size) if all_coords else np.asarray(indices)
    out = np.empty(len(indices))
    for k, i in enumerate(indices):
        old = flat[i]
        total = 0.0
        for k_steps, weight in zip(offsets, weights):
            flat[i] = old + k_steps * h
            f_plus = float(f())
            flat[i] = old - k_steps * h
            total += weight * (f_plus - float(f()))
        flat[i] = old
        out[k] = total / (scale * h)
    return out.reshape(p.shape) if all_coords else out


def check_gradient(f, p, analytic, h=1e-4, n_coords=None, rng=None, order=4):
    """Largest relative error between ``analytic`` and the numerical gradient of ``f`` at ``p``.

    Parameters
    ----------
    f : callable
        ``f()`` returns a scalar depending on ``p``.
    p : ndarray of float64
        Perturbed in place and restored.
    analytic : ndarray, shape of ``p``
        The gradient to check.
    h : float
        Step size.
    n_coords : int, optional
        Check a random subset of this many coordinates (for big arrays).
    rng : numpy.random.Generator or int, optional
        Chooses the subset.
    order : {4, 2}
        Accuracy order of the central stencil.

    Returns
    -------
    float
    """
    analytic = np.asarray(analytic)
    if analytic.shape != p.shape:
        raise ValueError(f"analytic: expected shape {p.shape} (that of p), got {analytic.shape}")
    idx = _coordinates(p.shape, n_coords, np.random.default_rng(rng))
    numeric = numerical_gradient(f, p, h=h, indices=idx, order=order)
    return relative_error(analytic.reshape(-1)[idx], numeric)


def check_op(forward, backward, inputs, wrt=None, dout=None, h=1e-4, n_coords=None, rng=None, order=4):
    """Check an op's backward pass against finite differences of its forward.

    The op's output is reduced to a scalar with a random upstream gradient,
    ``f = sum(forward(*inputs)[0] * dout)``, so ``backward(dout, cache)``
    must return ``df/dinput`` for each differentiable input.

    Parameters
    ----------
    forward : callable
        ``forward(*inputs) -> (out, cache)``.
    backward : callable
        ``backward(dout, cache) -> grad`` or a tuple of grads, one per entry of ``wrt``.
    inputs : list of ndarray (float64)
        Copied; the caller's arrays are not touched.
    wrt : list of int, optional
        Positions in ``inputs`` that ``backward`` returns gradients for, in
        order (default: all).
    dout : ndarray, optional
        Upstream gradient (default: standard normal draws).
    h, n_coords, rng, order
        As in :func:`check_gradient`.

    Returns
    -------
    list of float
        The largest relative error for each input in ``wrt``.
    """
    rng = np.random.default_rng(rng)
    inputs = [np.array(a, dtype=np.float64) for a in inputs]
    wrt = list(range(len(inputs))) if wrt is None else list(wrt)
    out, cache = forward(*inputs)
    if dout is None:
        dout = rng.standard_normal(np.shape(out))
    grads = backward(dout, cache)
    if not isinstance(grads, tuple):
        grads = (grads,)
    if len(grads) != len(wrt):
        raise ValueError(f"backward: expected {len(wrt)} gradients (one per wrt), got {len(grads)}")

    def f():
        return float(np.sum(forward(*inputs)[0] * dout))

    return [check_gradient(f, inputs[i], g, h=h, n_coords=n_coords, rng=rng, order=order)
            for i, g in zip(wrt, grads)]


def check_model(model, x, eps, objective="elbo", kl="analytic", h=1e-4, n_coords=None, rng=None, order=4):
    """Check :meth:`npvae.VAE.loss_and_grads` for every parameter.

    The analytic gradients come from one call of ``loss_and_grads`` (the backward
    pass); the numerical ones from central differences of the forward-only
    :meth:`npvae.VAE.bound`, so that the check does not lean on the backward pass it
    checks. Only the standard estimator is the gradient of the loss (STL and DReG
    are not, by design), so there is no ``estimator`` argument.

    Parameters
    ----------
    model : npvae.VAE
        A float64 model; its parameters are perturbed in place and restored.
    x : ndarray, shape (B, input_dim)
    eps : ndarray, shape (B, S, latent_dim)
        Held fixed, so the loss is a deterministic function of the parameters.
    objective : {"elbo", "iwae"}
    kl : {"analytic", "mc"}
        As in :meth:`npvae.VAE.loss_and_grads`.
    h, order
        Step size and stencil order, as in :func:`numerical_gradient`.
    n_coords : int, optional
        Check at most this many random coordinates of each parameter.
    rng : numpy.random.Generator or int, optional

    Returns
    -------
    dict of str to float
        The largest relative error for each parameter.
    """
    if np.dtype(model.dtype) != np.float64:
        raise ValueError(f"model.dtype: expected float64 for finite differences, got {model.dtype}")
    rng = np.random.default_rng(rng)
    _, grads = model.loss_and_grads(x, eps, objective=objective, kl=kl)

    def f():
        return model.bound(x, eps, objective=objective, kl=kl).loss

    return {name: check_gradient(f, model.params[name], grads[name], h=h, n_coords=n_coords, rng=rng, order=order)
            for name in model.params}
