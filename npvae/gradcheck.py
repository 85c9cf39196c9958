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


# --------------------------------------------------------------------------
# Everything at once: every op, the whole model, the estimators
# --------------------------------------------------------------------------
#: The (objective, kl) pairs whose loss :func:`check_all` differentiates by default.
MODEL_CHECKS = (("elbo", "analytic"), ("elbo", "mc"), ("iwae", "analytic"))
#: The (objective, kl, estimator) triples of the encoder estimators :func:`check_all` checks by default.
ESTIMATOR_CHECKS = (("elbo", "mc", "stl"), ("iwae", "analytic", "stl"), ("iwae", "analytic", "dreg"))
#: Default tolerance on the largest relative error (see the module docstring).
TOLERANCE = 1e-6


def _op_inputs(rng, B=2, S=3, L=2, D=4, H=3):
    """Float64 test inputs of every op pair, by name: ``(inputs, wrt)``.

    Shapes carry the sample axis wherever the op sees it, with distinct sizes so
    that a sum over the wrong axis cannot go unnoticed.
    """
    def normal(*shape):
        return rng.standard_normal(shape)

    def off_kink(a):
        # ReLU's derivative jumps at 0: keep the stencil's points (p +- 2h) on one side.
        a[np.abs(a) < 1e-2] = 0.5
        return a

    return {
        "dense": ([normal(B, S, H), normal(H, D), normal(D)], None),
        "relu": ([off_kink(normal(B, S, H))], None),
        "tanh": ([normal(B, S, H)], None),
        "reparam": ([normal(B, L), normal(B, L), normal(B, S, L)], [0, 1]),      # eps is noise, not a parameter
        "bernoulli_nll": ([2.0 * normal(B, S, D), rng.random((B, D))], [0]),   # x is data
        "gaussian_kl": ([normal(B, L), normal(B, L)], None),
        "log_standard_normal": ([normal(B, S, L)], None),
        "log_normal_diag": ([normal(B, S, L), normal(B, L), normal(B, L)], None),
        "logsumexp": ([2.0 * normal(B, S)], None),
    }


def _objective_inputs(rng, B=2, S=3):
    """Float64 test inputs of the bounds of :mod:`npvae.objectives`, as in :func:`_op_inputs`."""
    return {
        "elbo": ([rng.standard_normal((B, S)), rng.standard_normal(B)], None),
        "iwae": ([2.0 * rng.standard_normal((B, S))], None),
    }


def op_pairs(module):
    """Names ``x`` of the ``x_forward`` / ``x_backward`` pairs that ``module`` exports, in order.

    Parameters
    ----------
    module : module
        E.g. :mod:`npvae.ops` or :mod:`npvae.objectives`; its ``__all__`` is read.

    Returns
    -------
    list of str
    """
    names = getattr(module, "__all__", dir(module))
    return [n[:-len("_forward")] for n in names
            if n.endswith("_forward") and f"{n[:-len('_forward')]}_backward" in names]


def _row(check, parameter, error, tolerance):
    error = float(error)
    return {"check": check, "parameter": parameter, "max_rel_error": error, "tolerance": float(tolerance),
            "passed": bool(error <= tolerance)}   # NaN fails


def _check_pairs(module, prefix, inputs, tolerance, h, rng):
    import inspect
    rows = []
    for name in op_pairs(module):
        forward, backward = getattr(module, f"{name}_forward"), getattr(module, f"{name}_backward")
        if name not in inputs:
            # A new op without test inputs fails loudly rather than going unchecked.
            rows.append(_row(f"{prefix}.{name}", "(no inputs in gradcheck)", float("nan"), tolerance))
            continue
        args, wrt = inputs[name]
        wrt = list(range(len(args))) if wrt is None else wrt
        arg_names = list(inspect.signature(forward).parameters)
        errors = check_op(forward, backward, args, wrt=wrt, h=h, rng=rng)
        rows.extend(_row(f"{prefix}.{name}", arg_names[i], e, tolerance) for i, e in zip(wrt, errors))
    return rows


def _parse_objective(spec, n, argument):
    """``"elbo/mc"`` or ``("elbo", "mc")`` (or with an estimator, ``n = 3``) -> validated tuple."""
    from . import objectives
    parts = tuple(spec.split("/")) if isinstance(spec, str) else tuple(spec)
    if len(parts) != n:
        example = "'elbo/mc' or ('elbo', 'mc')" if n == 2 else "'iwae/analytic/dreg' or ('iwae', 'analytic', 'dreg')"
        raise ValueError(f"{argument}: expected entries such as {example}, got {spec!r}")
    return objectives.check_objective(*parts)[:n]


def _small_model(seed):
    from .model import VAE   # here, not at the top: model imports this module's neighbours
    model = VAE(input_dim=6, hidden=(5, 4), latent_dim=2, activation="tanh", seed=seed, backend="numpy")
    rng = np.random.default_rng(seed)
    for name, p in model.params.items():
        if name.endswith(".b"):   # nonzero, so that no gradient is checked only at a special point
            p[:] = 0.3 * rng.standard_normal(p.shape)
    return model


def _log_weights_frozen_q(model, x, eps, mu0, log_var0):
    """``log w (B, S)`` with ``log q``'s parameters frozen at ``(mu0, log_var0)``.

    Built from the public ``encode`` / ``decode`` and the ops, not from the engine
    whose gradients are checked. ``z`` still moves with the encoder's parameters.
    """
    from . import ops
    mu, log_var = model.encode(x)
    z, _ = ops.reparam_forward(mu, log_var, eps)                        # (B, S, L)
    probs = model.decode(z)                                             # (B, S, D)
    xb = x[:, None, :]
    log_px = (xb * np.log(probs) + (1.0 - xb) * np.log1p(-probs)).sum(axis=-1)
    log_pz, _ = ops.log_standard_normal_forward(z)
    log_qz, _ = ops.log_normal_diag_forward(z, mu0, log_var0)
    return log_px + log_pz - log_qz


def _check_estimator(model, x, eps, objective, kl, estimator, tolerance, h, n_coords, rng):
    """Rows for one estimator: the encoder against its surrogate, the decoder against the standard.

    STL and DReG are not gradients of the loss, but each is the exact gradient of
    the surrogate ``-(1/B) sum_b sum_s c_bs log w_bs`` where ``log q`` inside
    ``log w`` has its parameters frozen (only ``z`` moves) and the coefficients
    ``c`` are frozen at the current point: ``1/S`` (STL, ELBO), ``w~`` (STL, IWAE),
    ``w~^2`` (DReG). Their decoder gradients are the standard ones, exactly.
    """
    from . import ops
    label = f"{estimator} {objective}/{kl}"
    B, S = eps.shape[0], eps.shape[1]
    mu0, log_var0 = model.encode(x)
    log_w = _log_weights_frozen_q(model, x, eps, mu0, log_var0)
    w_tilde = np.exp(log_w - ops.logsumexp_forward(log_w)[0][:, None])   # (B, S), rows sum to 1
    if estimator == "dreg":
        coef = w_tilde ** 2
    elif objective == "iwae":
        coef = w_tilde
    else:
        coef = np.full((B, S), 1.0 / S)
    _, g_std = model.loss_and_grads(x, eps, objective=objective, kl=kl)
    _, g_est = model.loss_and_grads(x, eps, objective=objective, kl=kl, estimator=estimator)

    def surrogate():
        return -float((coef * _log_weights_frozen_q(model, x, eps, mu0, log_var0)).sum()) / B

    rows = []
    for name, p in model.params.items():
        if name.startswith("enc."):
            err = check_gradient(surrogate, p, g_est[name], h=h, n_coords=n_coords, rng=rng)
            rows.append(_row(f"{label} (surrogate)", name, err, tolerance))
        else:
            rows.append(_row(f"{label} (decoder = standard)", name, relative_error(g_est[name], g_std[name]),
                             tolerance))
    return rows


def check_all(seed=0, objectives=MODEL_CHECKS, estimators=ESTIMATOR_CHECKS, model=None, batch=3, mc_samples=3,
              tolerance=TOLERANCE, h=None, n_coords=None, include_ops=True):
    """Check every op, the whole model for each objective, and the STL and DReG estimators.

    All in float64 against central differences (:func:`check_op`,
    :func:`check_model`, :func:`check_gradient`):

    1. every ``x_forward`` / ``x_backward`` pair of :mod:`npvae.ops` and of
       :mod:`npvae.objectives`, with a random upstream gradient ``dout``;
    2. :meth:`npvae.VAE.loss_and_grads` for every parameter and every entry of
       ``objectives`` (the numerical gradient comes from the forward-only bound);
    3. each entry of ``estimators``: STL and DReG are not gradients of the loss,
       so their encoder gradients are checked against the central differences of
       the surrogate whose exact gradient they are (``log q``'s parameters and the
       sample weights frozen: ``1/S`` for STL on the ELBO, ``w~`` for STL on the
       IWAE bound, ``w~^2`` for DReG), and their decoder gradients against the
       standard estimator's, which they equal.

    Parameters
    ----------
    seed : int, default 0
        Seeds the default model, its biases, the data ``x``, the noise ``eps``,
        the ops' inputs and the upstream gradients.
    objectives : sequence of (objective, kl) or "objective/kl", default :data:`MODEL_CHECKS`
        ``("elbo", "analytic")``, ``("elbo", "mc")``, ``("iwae", "analytic")``.
    estimators : sequence of (objective, kl, estimator) or "objective/kl/estimator"
        Default :data:`ESTIMATOR_CHECKS`: STL on the ELBO with a Monte Carlo KL, STL
        and DReG on the IWAE bound. ``"standard"`` entries are checked as in 2.
    model : npvae.VAE, optional
        A float64 model to check (its parameters are perturbed and restored).
        Default: ``VAE(input_dim=6, hidden=(5, 4), latent_dim=2,
        activation="tanh", seed=seed, backend="numpy")`` with biases drawn from
        ``0.3 N(0, 1)``. With ReLU, an input within ``2h`` of the kink can fail a
        correct backward (see the module docstring).
    batch, mc_samples : int, default 3
        ``B`` and ``S`` of the model checks (``S > 1`` so that DReG differs from STL).
    tolerance : float, default 1e-6
        A row passes when its largest relative error is at most this.
    h : float, optional
        Step of the central differences. Default: ``1e-3`` when the model's
        activation is smooth (``"tanh"``, as the default model's), else ``1e-4``
        (closer to ReLU's kinks). The larger step keeps rounding error (about
        ``1e-16 |f| / h``) well below the tolerance at coordinates whose
        derivative is small, while the fourth-order stencil's truncation error
        (``O(h^4)``) stays negligible for smooth functions.
    n_coords : int, optional
        Check at most this many random coordinates of each model parameter.
    include_ops : bool, default True
        Check the op pairs (1); False checks only the model (2, 3).

    Returns
    -------
    list of dict
        One row per (check, parameter): ``check`` (e.g. ``"ops.dense"``,
        ``"model elbo/mc"``, ``"dreg iwae/analytic (surrogate)"``), ``parameter``
        (an op's input name or a model parameter's key), ``max_rel_error``,
        ``tolerance`` and ``passed``. An op pair with no test inputs here gives a
        failed row, so that a new op cannot go unchecked.

    Examples
    --------
    >>> from npvae import gradcheck
    >>> rows = gradcheck.check_all(objectives=["elbo/mc"], estimators=[])
    >>> all(r["passed"] for r in rows)
    True
    """
    from . import objectives as obj_module
    from . import ops
    model_checks = [_parse_objective(s, 2, "objectives") for s in objectives]
    estimator_checks = [_parse_objective(s, 3, "estimators") for s in estimators]
    rng = np.random.default_rng(seed)
    if model is None and (model_checks or estimator_checks):
        model = _small_model(seed)
    if model is not None and np.dtype(model.dtype) != np.float64:
        raise ValueError(f"model.dtype: expected float64 for finite differences, got {model.dtype}")
    if h is None:
        h = 1e-3 if model is None or model.activation == "tanh" else 1e-4
    rows = []
    if include_ops:
        rows += _check_pairs(ops, "ops", _op_inputs(rng), tolerance, h, rng)
        rows += _check_pairs(obj_module, "objectives", _objective_inputs(rng), tolerance, h, rng)
    if not (model_checks or estimator_checks):
        return rows
    x = rng.random((batch, model.input_dim))
    eps = model.sample_eps(batch, mc_samples, rng=rng)
    for objective, kl in model_checks:
        errors = check_model(model, x, eps, objective=objective, kl=kl, h=h, n_coords=n_coords, rng=rng)
        rows.extend(_row(f"model {objective}/{kl}", name, e, tolerance) for name, e in errors.items())
    for objective, kl, estimator in estimator_checks:
        if estimator == "standard":
            errors = check_model(model, x, eps, objective=objective, kl=kl, h=h, n_coords=n_coords, rng=rng)
            rows.extend(_row(f"model {objective}/{kl}", name, e, tolerance) for name, e in errors.items())
        else:
            rows += _check_estimator(model, x, eps, objective, kl, estimator, tolerance, h, n_coords, rng)
    return rows


def format_table(rows):
    """The rows of :func:`check_all` as an aligned text table, one line per row.

    Columns: check, parameter, max relative error (``%.2e``), tolerance, and
    ``ok`` or ``FAIL``; a last line counts the failures.

    Parameters
    ----------
    rows : list of dict
        With keys ``check``, ``parameter``, ``max_rel_error``, ``tolerance``, ``passed``.

    Returns
    -------
    str
    """
    header = ("check", "parameter", "max rel error", "tolerance", "result")
    body = [(r["check"], r["parameter"], f"{r['max_rel_error']:.2e}", f"{r['tolerance']:.0e}",
             "ok" if r["passed"] else "FAIL") for r in rows]
    widths = [max(len(line[i]) for line in [header] + body) for i in range(len(header))]
    right = (False, False, True, True, False)   # numbers right-aligned

    def fmt(line):
        return "  ".join(cell.rjust(w) if r else cell.ljust(w) for cell, w, r in zip(line, widths, right)).rstrip()

    lines = [fmt(header), "  ".join("-" * w for w in widths)] + [fmt(line) for line in body]
    failed = sum(not r["passed"] for r in rows)
    lines.append(f"{len(rows) - failed} of {len(rows)} passed" + (f", {failed} FAILED" if failed else ""))
    return "\n".join(lines)


__all__ += ["check_all", "format_table", "op_pairs", "MODEL_CHECKS", "ESTIMATOR_CHECKS", "TOLERANCE"]
