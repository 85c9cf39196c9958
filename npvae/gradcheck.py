"""Finite-difference gradient checks, usable on any op, that know a kink when they meet one.

The check compares an analytic gradient with central differences computed in
float64, coordinate by coordinate, and reports the largest relative error
``|a - b| / max(|a|, |b|, tiny)``. The default stencil is the fourth-order one,
``(-f(p+2h) + 8 f(p+h) - 8 f(p-h) + f(p-2h)) / 12h``: its truncation error
(``O(h^4)``) stays negligible at a step ``h = 1e-4`` large enough for rounding
in ``f`` (about ``1e-16 |f| / h``) not to swamp small gradients. The
second-order stencil ``(f(p+h) - f(p-h)) / 2h`` is there with ``order=2``.
Well-implemented backward passes give errors around 1e-8 or below; 1e-6 or
above is a bug or a step ``h`` too small for the size of the gradients
(rounding error grows as 1/h).

**Kinks.** Where ``f`` is not differentiable within the stencil's reach (a ReLU
input at or within ``2h`` of zero; biases initialised to zero put whole layers
exactly there), a central difference averages the two one-sided slopes and
disagrees with any correct backward. The checks therefore also form the
one-sided second-order differences from the same evaluations and ``f(p)``,

``left = (3 f(p) - 4 f(p-h) + f(p-2h)) / 2h``,  ``right = (-3 f(p) + 4 f(p+h) - f(p+2h)) / 2h``.

For a smooth ``f`` they differ by ``h^3 f''''(p) / 2`` (their ``h^2`` errors are
equal and cancel), far below any tolerance; across a kink they differ by the
jump in slope. The rule: a coordinate is a *kink* when ``|left - right|``
exceeds ``tolerance`` times ``max(|left|, |right|)`` and the rounding error of
the differences (``64 eps max|f| / h``); where a ``probe`` is given (as
:func:`check_model` does for a ReLU model: the masks ``a > 0`` of every hidden
pre-activation ``a``), it must moreover show a pre-activation changing sign
over the stencil's points ``p - 2h ... p + 2h``. At a kink the analytic value
must equal one of the two one-sided slopes, the subgradient convention of
:func:`npvae.ops.relu_backward` (the unit counts as inactive at 0): when the kink
sits at ``p`` both slopes are exact, and when it sits within ``2h`` beside ``p``
the slope on ``p``'s side is ``f'(p)`` itself. When a kink at ``p`` and another
beside it spoil both sides, the slopes are taken again at ``h/10`` and ``h/100``
(:data:`REFINE`), which the kink beside ``p`` leaves. A kink is therefore never a
mismatch, and a wrong gradient there still is one: its error is the distance to
the nearer one-sided slope. The kinks are listed (:class:`Kink`: position, both
slopes, the central difference, the analytic value and the side it matches).

Limits: a coordinate whose derivative is ~1e-6 of the loss's size is below what
float64 differences resolve at 1e-6 relative error. Two pre-activations exactly
at 0 that move in opposite directions with one coordinate make the convention's
gradient neither one-sided slope (the check reports it unmatched); another seed
tells that from a bug.

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

A ReLU input exactly at its kink is reported as such, not as an error:

>>> a = np.array([[-1.0, 0.0, 2.0]])
>>> errors = gradcheck.check_op(ops.relu_forward, ops.relu_backward, [a], dout=np.ones((1, 3)))
>>> kink = errors.kinks[0][0]
>>> errors[0] < 1e-6, kink.index, kink.left, round(kink.right, 6), kink.side
(True, (0, 1), 0.0, 1.0, 'left')
"""

import inspect
from typing import NamedTuple

import numpy as np

from . import objectives as obj
from . import ops
from .model import VAE
from .params import Schema

__all__ = ["relative_error", "numerical_gradient", "check_gradient", "gradient_report", "check_op",
           "check_model", "relu_probe", "Kink", "GradientReport", "OpErrors", "ModelErrors", "check_all",
           "format_table", "op_pairs", "MODEL_CHECKS", "ESTIMATOR_CHECKS", "TOLERANCE", "REFINE"]

TINY = 1e-12
#: Default tolerance on the largest relative error (see the module docstring); also the
#: relative gap between the one-sided slopes above which a coordinate is a kink candidate.
TOLERANCE = 1e-6
# Rounding error of a one-sided difference is at most (3 + 4 + 1) / 2 eps |f| / h per side;
# a gap below 64 eps max|f| / h (4x their sum) is noise, not a kink.
_ROUNDING = 64 * np.finfo(np.float64).eps


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
    return float(_relative(a, b, tiny).max())


def _relative(a, b, tiny=TINY):
    """Elementwise ``|a - b| / max(|a|, |b|, tiny)``."""
    return np.abs(a - b) / np.maximum(np.maximum(np.abs(a), np.abs(b)), tiny)


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


def _check_inputs(p, order):
    """The flat view of ``p`` that perturbing writes through; refuses what cannot be differenced."""
    if not isinstance(p, np.ndarray) or p.dtype != np.float64:
        raise ValueError(f"p: expected a float64 ndarray, got {getattr(p, 'dtype', type(p).__name__)}"
                         " (finite differences need float64)")
    if order not in _STENCILS:
        raise ValueError(f"order: expected 2 or 4, got {order!r}")
    flat = p.reshape(-1)
    if not np.shares_memory(flat, p):
        raise ValueError("p: expected a contiguous array that can be perturbed in place")
    return flat


def _perturbed(f, flat, h, indices, steps):
    """``f()`` with ``flat[i]`` moved by ``k h`` for each ``i`` of ``indices`` and ``k`` of ``steps``,
    in that order, restored after each coordinate: shape ``(len(indices), len(steps))``."""
    out = np.empty((len(indices), len(steps)))
    for row, i in enumerate(indices):
        old = flat[i]
        for col, k_steps in enumerate(steps):
            flat[i] = old + k_steps * h
            out[row, col] = float(f())
        flat[i] = old
    return out


def _central(values, steps, order, h):
    """The central difference of ``order`` from the columns of :func:`_perturbed` (``steps`` holds +-k)."""
    offsets, weights, scale = _STENCILS[order]
    total = 0.0
    for k_steps, weight in zip(offsets, weights):
        total = total + weight * (values[:, steps.index(k_steps)] - values[:, steps.index(-k_steps)])
    return total / (scale * h)


def numerical_gradient(f, p, h=1e-4, indices=None, order=4):
    """Central-difference gradient of the scalar function ``f()`` with respect to ``p``.

    ``p`` is perturbed in place, one coordinate at a time, and restored. The plain
    central difference: at a kink it averages the two one-sided slopes
    (:func:`gradient_report` tells such coordinates apart).

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
    flat = _check_inputs(p, order)
    all_coords = indices is None
    indices = np.arange(flat.size) if all_coords else np.asarray(indices)
    steps = [s for k in _STENCILS[order][0] for s in (k, -k)]
    out = _central(_perturbed(f, flat, h, indices, steps), steps, order, h)
    return out.reshape(p.shape) if all_coords else out


class Kink(NamedTuple):
    """A coordinate where ``f`` is not differentiable within the stencil's reach.

    Attributes
    ----------
    index : tuple of int
        Its position in the array checked.
    left, right : float
        The one-sided second-order differences from below and from above (see the
        module docstring): the slopes on each side of the kink.
    central : float
        The central difference, which averages them (what a kink-blind check compares).
    analytic : float
        The gradient checked.
    side : str
        Which one-sided slope ``analytic`` equals to within the tolerance: ``"left"``,
        ``"right"``, ``"both"``, or ``""`` for neither (a wrong gradient).
    error : float
        Relative error of ``analytic`` to the nearer one-sided slope.
    where : tuple of str
        The pieces whose probe changed over the stencil (for :func:`check_model`, the
        hidden layers, e.g. ``("dec.1",)``, with a ReLU pre-activation crossing 0);
        ``()`` without a probe.
    h : float
        The step of ``left`` and ``right``: the check's ``h``, or a fraction of it
        (:data:`REFINE`) when a second kink beside ``p`` hid the clean slope at ``h``.
    """

    index: tuple
    left: float
    right: float
    central: float
    analytic: float
    side: str
    error: float
    where: tuple
    h: float


class GradientReport(NamedTuple):
    """What :func:`gradient_report` found for one array.

    Attributes
    ----------
    error : float
        The largest relative error: against the central difference at the
        differentiable coordinates, against the nearer one-sided slope at the kinks.
    kinks : tuple of Kink
        The coordinates at a kink, in the order checked.
    n_coords : int
        Coordinates checked.
    """

    error: float
    kinks: tuple
    n_coords: int


def gradient_report(f, p, analytic, h=1e-4, n_coords=None, rng=None, order=4, tolerance=TOLERANCE, probe=None):
    """Compare ``analytic`` with finite differences of ``f`` at ``p``, kinks told apart.

    Each coordinate costs four evaluations of ``f`` (``p +- h``, ``p +- 2h``, whatever
    ``order``), plus one of ``f(p)`` in all; a kink candidate, five of ``probe``.

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
    tolerance : float, default :data:`TOLERANCE`
        Relative gap between the one-sided slopes above which a coordinate is a
        kink candidate, and within which ``analytic`` matches a one-sided slope.
    probe : callable, optional
        ``probe()`` returns a dict ``{piece: array}`` that identifies the smooth piece
        ``f`` is on at the current ``p`` (e.g. ReLU masks ``a > 0``). When given, a
        candidate is a kink only if some array changes over ``p - 2h ... p + 2h``;
        otherwise it is checked as differentiable.

    Returns
    -------
    GradientReport
    """
    flat = _check_inputs(p, order)
    analytic = np.asarray(analytic)
    if analytic.shape != p.shape:
        raise ValueError(f"analytic: expected shape {p.shape} (that of p), got {analytic.shape}")
    idx = _coordinates(p.shape, n_coords, np.random.default_rng(rng))
    steps = [1, -1, 2, -2]
    f0 = float(f())
    values = _perturbed(f, flat, h, idx, steps)                                 # (n, 4)
    central = _central(values, steps, order, h)
    left, right = _one_sided(f0, values[:, 0], values[:, 1], values[:, 2], values[:, 3], h)
    gap = np.abs(left - right)
    noise = _ROUNDING * np.maximum(np.abs(values).max(axis=1, initial=0.0), abs(f0)) / h
    candidate = (gap > tolerance * np.maximum(np.maximum(np.abs(left), np.abs(right)), TINY)) & (gap > noise)
    a = analytic.reshape(-1)[idx].astype(np.float64)
    errors = _relative(a, central)
    kinks = []
    for row in np.flatnonzero(candidate):
        where = () if probe is None else _pieces_changed(probe, flat, idx[row], h)
        if probe is not None and not where:
            continue                     # the probe saw no kink: a differentiable coordinate
        kink = _resolve_kink(f, flat, idx[row], f0, h, left[row], right[row], a[row], tolerance)
        errors[row] = kink["error"]
        kinks.append(Kink(tuple(int(i) for i in np.unravel_index(idx[row], p.shape)), central=float(central[row]),
                          analytic=float(a[row]), where=where, **kink))
    return GradientReport(float(errors.max(initial=0.0)), tuple(kinks), len(idx))


#: Steps, in units of ``h``, at which a kink's one-sided slopes are taken again while the
#: analytic value matches neither (see :func:`gradient_report`).
REFINE = (0.1, 0.01)


def _resolve_kink(f, flat, i, f0, h, left, right, analytic, tolerance):
    """The one-sided slopes at ``h``, then at the steps of :data:`REFINE` until ``analytic`` matches one.

    A kink beside ``p`` (not at it) leaves the one-sided stencil on ``p``'s side as the step
    shrinks, while one at ``p`` stays put: so a second kink within ``2h`` on the other side
    no longer hides the clean slope. Returns the fields ``left``, ``right``, ``side``,
    ``error`` and ``h`` of :class:`Kink`.
    """
    step = h
    for factor in (None,) + REFINE:
        if factor is not None:
            step = h * factor
            left, right = _one_sided(f0, *_perturbed(f, flat, step, [i], [1, -1, 2, -2])[0], step)
        to_left, to_right = float(_relative(analytic, left)), float(_relative(analytic, right))
        side = {(True, True): "both", (True, False): "left", (False, True): "right"}.get(
            (to_left <= tolerance, to_right <= tolerance), "")
        if side:
            break
    return {"left": float(left), "right": float(right), "side": side, "error": min(to_left, to_right),
            "h": float(step)}


def _one_sided(f0, fp1, fm1, fp2, fm2, h):
    """The second-order one-sided differences ``left, right`` from ``f(p)`` and ``f(p +- h)``,
    ``f(p +- 2h)``: ``(3 f0 - 4 f(-h) + f(-2h)) / 2h`` and ``(-3 f0 + 4 f(h) - f(2h)) / 2h``, formed
    from differences to ``f0`` so that a side on which ``f`` is flat gives exactly 0."""
    left = (4.0 * (f0 - fm1) - (f0 - fm2)) / (2.0 * h)
    right = (4.0 * (fp1 - f0) - (fp2 - f0)) / (2.0 * h)
    return left, right


def _pieces_changed(probe, flat, i, h):
    """Names of the arrays of ``probe()`` that differ anywhere between ``flat[i] + k h``, ``k = -2..2``."""
    old = flat[i]
    states = []
    for k_steps in (-2, -1, 0, 1, 2):
        flat[i] = old + k_steps * h
        states.append(probe())
    flat[i] = old
    return tuple(name for name in states[0] if any(not np.array_equal(s[name], states[0][name]) for s in states))


def check_gradient(f, p, analytic, h=1e-4, n_coords=None, rng=None, order=4, tolerance=TOLERANCE, probe=None):
    """Largest relative error between ``analytic`` and the numerical gradient of ``f`` at ``p``.

    :func:`gradient_report`'s ``error``: against the central difference at the
    differentiable coordinates, against the nearer one-sided slope at kinks (see the
    module docstring); :func:`gradient_report` lists the kinks.

    Parameters
    ----------
    f, p, analytic, h, n_coords, rng, order, tolerance, probe
        As in :func:`gradient_report`: ``f()`` a scalar of ``p`` (float64, perturbed in place
        and restored), ``analytic`` the gradient to check.

    Returns
    -------
    float
    """
    return gradient_report(f, p, analytic, h=h, n_coords=n_coords, rng=rng, order=order, tolerance=tolerance,
                           probe=probe).error


class OpErrors(list):
    """:func:`check_op`'s result: a list of the largest relative errors, one per input in
    ``wrt``, and ``kinks``, a list of the same length of tuples of :class:`Kink`."""

    def __init__(self, errors=(), kinks=None):
        super().__init__(errors)
        self.kinks = list(kinks) if kinks is not None else [() for _ in self]

    def __repr__(self):
        return f"OpErrors({list.__repr__(self)}, kinks={[len(k) for k in self.kinks]})"


class ModelErrors(dict):
    """:func:`check_model`'s result: a dict ``{parameter name: largest relative error}``
    (at kinks, to the nearer one-sided slope), and ``kinks``, a dict of the same keys
    whose values are tuples of :class:`Kink` (empty where there is none).

    Printed, it shows the errors and how many kink coordinates each parameter has."""

    def __init__(self, errors=(), kinks=None):
        super().__init__(errors)
        self.kinks = dict(kinks) if kinks is not None else {name: () for name in self}

    def __repr__(self):
        return f"ModelErrors({dict.__repr__(self)}, kinks={ {n: len(k) for n, k in self.kinks.items() if k} })"


def check_op(forward, backward, inputs, wrt=None, dout=None, h=1e-4, n_coords=None, rng=None, order=4,
             tolerance=TOLERANCE):
    """Check an op's backward pass against finite differences of its forward.

    The op's output is reduced to a scalar with a random upstream gradient,
    ``f = sum(forward(*inputs)[0] * dout)``, so ``backward(dout, cache)``
    must return ``df/dinput`` for each differentiable input. Kinks of any op are
    told apart by its one-sided slopes alone (see the module docstring).

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
    h, n_coords, rng, order, tolerance
        As in :func:`gradient_report`.

    Returns
    -------
    OpErrors
        A list: the largest relative error for each input in ``wrt``; its ``kinks``
        attribute lists each one's :class:`Kink` coordinates.
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

    reports = [gradient_report(f, inputs[i], g, h=h, n_coords=n_coords, rng=rng, order=order, tolerance=tolerance)
               for i, g in zip(wrt, grads)]
    return OpErrors([r.error for r in reports], [r.kinks for r in reports])


def relu_probe(model, x, eps):
    """A ``probe`` for :func:`gradient_report`: the ReLU masks of ``model`` on ``x, eps``.

    Returns a callable giving ``{layer: a > 0}`` for every hidden layer (``"enc.0"``,
    ..., ``"dec.0"``, ...) of a ReLU model, its pre-activations ``a`` recomputed from
    the current parameters with :mod:`npvae.ops` ((B, H) in the encoder, (B, S, H) in
    the decoder); ``{}`` for a smooth activation, which has no kink.
    """
    if model.activation != "relu":
        return lambda: {}

    def masks():
        p, out = model.params, {}

        def hidden(prefix, h):
            for i in range(len(model.hidden)):
                a, _ = ops.dense_forward(h, p[f"{prefix}.{i}.W"], p[f"{prefix}.{i}.b"])
                out[f"{prefix}.{i}"] = a > 0
                h, _ = ops.relu_forward(a)
            return h

        h = hidden("enc", x)                                                   # (B, H)
        mu, _ = ops.dense_forward(h, p["enc.mu.W"], p["enc.mu.b"])             # (B, L)
        log_var, _ = ops.dense_forward(h, p["enc.logvar.W"], p["enc.logvar.b"])
        hidden("dec", ops.reparam_forward(mu, log_var, eps)[0])                # z (B, S, L)
        return out

    return masks


def check_model(model, x, eps, objective="elbo", kl="analytic", h=1e-4, n_coords=None, rng=None, order=4,
                tolerance=TOLERANCE):
    """Check :meth:`npvae.VAE.loss_and_grads` for every parameter.

    The analytic gradients come from one call of ``loss_and_grads`` (the backward
    pass); the numerical ones from central differences of the forward-only
    :meth:`npvae.VAE.bound`, so that the check does not lean on the backward pass it
    checks. Only the standard estimator is the gradient of the loss (STL and DReG
    are not, by design), so there is no ``estimator`` argument.

    Kinks: with ReLU, a coordinate is a kink when its one-sided slopes differ (see the
    module docstring) *and* some hidden pre-activation changes sign over the stencil
    (:func:`relu_probe`); there the gradient must equal one of the one-sided slopes.
    A zero-initialised model puts whole layers' pre-activations exactly at 0 (a layer
    whose inputs are all 0), so kinks are common before training.

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
    tolerance : float, default :data:`TOLERANCE`
        As in :func:`gradient_report`.

    An objective with an :attr:`~npvae.objectives.Objective.encoder_objective` (PIWAE) is
    the gradient of no one loss: its encoder's parameters are checked against the
    differences of the encoder objective's bound, its decoder's against its own.

    Returns
    -------
    ModelErrors
        A dict: the largest relative error for each parameter (at its kinks, to the
        nearer one-sided slope); its ``kinks`` attribute maps each parameter to its
        :class:`Kink` coordinates (``where`` names the layers that cross 0).
    """
    if np.dtype(model.dtype) != np.float64:
        raise ValueError(f"model.dtype: expected float64 for finite differences, got {model.dtype}")
    rng = np.random.default_rng(rng)
    _, grads = model.loss_and_grads(x, eps, objective=objective, kl=kl)
    probe = relu_probe(model, x, eps)
    # an objective whose encoder follows another (PIWAE): each network against its own bound
    encoder_objective = obj.get(objective).encoder_objective or objective

    def loss_of(objective):
        return lambda: model.bound(x, eps, objective=objective, kl=kl).loss

    f = {"encoder": loss_of(encoder_objective), "decoder": loss_of(objective)}
    reports = {name: gradient_report(f[Schema.network(name)], model.params[name], grads[name], h=h,
                                     n_coords=n_coords, rng=rng, order=order, tolerance=tolerance, probe=probe)
               for name in model.params}
    return ModelErrors({n: r.error for n, r in reports.items()}, {n: r.kinks for n, r in reports.items()})


# --------------------------------------------------------------------------
# Everything at once: every op, the whole model, the estimators
# --------------------------------------------------------------------------
#: The sample-budget objectives :func:`check_all` checks by default: ``S = M * K = 4`` samples
#: in ``M = 2`` groups (their own ``eps``, drawn apart from the others'), ``beta = 0.3``.
_BUDGET = {"miwae": obj.MIWAE(outer=2, inner=2), "ciwae": obj.CIWAE(beta=0.3), "piwae": obj.PIWAE(outer=2, inner=2)}
#: The (objective, kl) pairs whose loss :func:`check_all` differentiates by default.
MODEL_CHECKS = (("elbo", "analytic"), ("elbo", "mc"), ("iwae", "analytic"),
                (_BUDGET["miwae"], "analytic"), (_BUDGET["ciwae"], "analytic"), (_BUDGET["piwae"], "analytic"))
#: The (objective, kl, estimator) triples of the encoder estimators :func:`check_all` checks by default.
ESTIMATOR_CHECKS = (("elbo", "mc", "stl"), ("iwae", "analytic", "stl"), ("iwae", "analytic", "dreg"),
                    (_BUDGET["miwae"], "analytic", "stl"), (_BUDGET["miwae"], "analytic", "dreg"),
                    (_BUDGET["ciwae"], "analytic", "stl"), (_BUDGET["piwae"], "analytic", "dreg"))


def _op_inputs(rng, B=2, S=3, L=2, D=4, H=3):
    """Float64 test inputs of every op pair, by name: ``(inputs, wrt)``.

    Shapes carry the sample axis wherever the op sees it, with distinct sizes so
    that a sum over the wrong axis cannot go unnoticed.
    """
    def normal(*shape):
        return rng.standard_normal(shape)

    def kink_at_one(a):
        # ReLU's derivative jumps at 0: one input sits exactly there (a kink row, checked against
        # the one-sided slopes), the others are kept away from it by more than the stencil's reach.
        a[np.abs(a) < 1e-2] = 0.5
        a.flat[0] = 0.0
        return a

    return {
        "dense": ([normal(B, S, H), normal(H, D), normal(D)], None),
        "relu": ([kink_at_one(normal(B, S, H))], None),
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
        "miwae": ([2.0 * rng.standard_normal((B, 2 * S)), 2], [0]),     # M = 2 groups of K = S
        "ciwae": ([2.0 * rng.standard_normal((B, S)), 0.3], [0]),       # beta = 0.3
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


def _row(check, parameter, error, tolerance, kinks=()):
    error = float(error)
    return {"check": check, "parameter": parameter, "max_rel_error": error, "tolerance": float(tolerance),
            "passed": bool(error <= tolerance), "kinks": len(kinks)}   # NaN fails


def _check_pairs(module, prefix, inputs, tolerance, h, rng):
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
        errors = check_op(forward, backward, args, wrt=wrt, h=h, rng=rng, tolerance=tolerance)
        rows.extend(_row(f"{prefix}.{name}", arg_names[i], e, tolerance, k)
                    for i, e, k in zip(wrt, errors, errors.kinks))
    return rows


def _parse_objective(spec, n, argument):
    """``"elbo/mc"`` or ``("elbo", "mc")`` (or with an estimator, ``n = 3``) -> validated tuple."""
    parts = tuple(spec.split("/")) if isinstance(spec, str) else tuple(spec)
    if len(parts) != n:
        example = "'elbo/mc' or ('elbo', 'mc')" if n == 2 else "'iwae/analytic/dreg' or ('iwae', 'analytic', 'dreg')"
        raise ValueError(f"{argument}: expected entries such as {example}, got {spec!r}")
    return obj.check_objective(*parts)[:n]


def _small_model(seed):
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
    mu, log_var = model.encode(x)
    z, _ = ops.reparam_forward(mu, log_var, eps)                        # (B, S, L)
    probs = model.decode(z)                                             # (B, S, D)
    xb = x[:, None, :]
    log_px = (xb * np.log(probs) + (1.0 - xb) * np.log1p(-probs)).sum(axis=-1)
    log_pz, _ = ops.log_standard_normal_forward(z)
    log_qz, _ = ops.log_normal_diag_forward(z, mu0, log_var0)
    return log_px + log_pz - log_qz


def _normalized_weights(log_w, groups=1):
    """``w~`` (B, S): the softmax of ``log_w`` within each of ``groups`` groups of consecutive samples."""
    B, S = log_w.shape
    a = log_w.reshape(B, groups, S // groups)
    return np.exp(a - ops.logsumexp_forward(a)[0][..., None]).reshape(B, S)


def _surrogate_coefficients(rule, log_w, estimator):
    """The frozen coefficients ``c`` (B, S) of the surrogate ``-(1/B) sum c log w`` whose exact encoder
    gradient the estimator (STL or DReG) of the objective ``rule`` is, written here from the
    bounds' definitions (not from :mod:`npvae.objectives`' backwards, which they check):
    ``d bound / d log w`` for STL, times the path weights ``w~`` (within groups for MIWAE) for DReG."""
    S = log_w.shape[1]
    groups = rule.outer if isinstance(rule, obj.MIWAE) else 1
    w_tilde = _normalized_weights(log_w, groups)                        # (B, S), each group sums to 1
    if isinstance(rule, obj.ELBO):
        coef = np.full(log_w.shape, 1.0 / S)
    elif isinstance(rule, (obj.IWAE, obj.MIWAE)):
        coef = w_tilde / groups
    elif isinstance(rule, obj.CIWAE):
        coef = rule.beta / S + (1.0 - rule.beta) * w_tilde
    else:
        raise ValueError(f"objective: no surrogate for the estimators of {rule!r} in gradcheck")
    return coef * w_tilde if estimator == "dreg" else coef


def _check_estimator(model, x, eps, objective, kl, estimator, tolerance, h, n_coords, rng):
    """Rows for one estimator: the encoder against its surrogate, the decoder against the standard.

    STL and DReG are not gradients of the loss, but each is the exact gradient of
    the surrogate ``-(1/B) sum_b sum_s c_bs log w_bs`` where ``log q`` inside
    ``log w`` has its parameters frozen (only ``z`` moves) and the coefficients
    ``c`` are frozen at the current point: ``1/S`` (STL, ELBO), ``w~`` (STL, IWAE),
    ``w~^2`` (DReG). Their decoder gradients are the standard ones, exactly.
    With ReLU, the surrogate's kinks are told apart as in :func:`check_model`.
    """
    label = f"{estimator} {obj.get(objective).label}/{kl}"
    B = eps.shape[0]
    mu0, log_var0 = model.encode(x)
    log_w = _log_weights_frozen_q(model, x, eps, mu0, log_var0)
    coef = _surrogate_coefficients(obj.get(objective).encoder_objective or obj.get(objective), log_w, estimator)
    _, g_std = model.loss_and_grads(x, eps, objective=objective, kl=kl)
    _, g_est = model.loss_and_grads(x, eps, objective=objective, kl=kl, estimator=estimator)

    def surrogate():
        return -float((coef * _log_weights_frozen_q(model, x, eps, mu0, log_var0)).sum()) / B

    rows, probe = [], relu_probe(model, x, eps)
    for name, p in model.params.items():
        if name.startswith("enc."):
            report = gradient_report(surrogate, p, g_est[name], h=h, n_coords=n_coords, rng=rng, tolerance=tolerance,
                                     probe=probe)
            rows.append(_row(f"{label} (surrogate)", name, report.error, tolerance, report.kinks))
        else:
            rows.append(_row(f"{label} (decoder = standard)", name, relative_error(g_est[name], g_std[name]),
                             tolerance))
    return rows


def _eps_for(model, objective, eps, seed, drawn):
    """``eps``, or for an objective of a fixed ``M * K`` samples its own ``eps`` of as many samples,
    drawn from ``[seed, S]`` once (kept in ``drawn``) so that the other checks' draws do not move."""
    params = obj.get(objective).params()
    if params.get("inner") is None:
        return eps
    S = params["outer"] * params["inner"]
    if S not in drawn:
        drawn[S] = model.sample_eps(eps.shape[0], S, rng=np.random.default_rng([seed, S]))
    return drawn[S]


def check_all(seed=0, objectives=MODEL_CHECKS, estimators=ESTIMATOR_CHECKS, model=None, batch=3, mc_samples=3,
              tolerance=TOLERANCE, h=None, n_coords=None, include_ops=True):
    """Check every op, the whole model for each objective, and the STL and DReG estimators.

    All in float64 against central differences (:func:`check_op`,
    :func:`check_model`, :func:`gradient_report`), kinks told apart (see the
    module docstring):

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
        ``("elbo", "analytic")``, ``("elbo", "mc")``, ``("iwae", "analytic")`` and the
        sample-budget objectives (MIWAE, CIWAE, PIWAE). An objective may be an instance
        (``objectives.MIWAE(outer=2, inner=2)``); one with a fixed ``inner`` is checked on its
        own ``eps`` of ``outer * inner`` samples.
    estimators : sequence of (objective, kl, estimator) or "objective/kl/estimator"
        Default :data:`ESTIMATOR_CHECKS`: STL on the ELBO with a Monte Carlo KL, STL
        and DReG on the IWAE bound. ``"standard"`` entries are checked as in 2.
    model : npvae.VAE, optional
        A float64 model to check (its parameters are perturbed and restored).
        Default: ``VAE(input_dim=6, hidden=(5, 4), latent_dim=2,
        activation="tanh", seed=seed, backend="numpy")`` with biases drawn from
        ``0.3 N(0, 1)``. With ReLU, coordinates whose stencil crosses a kink are
        counted in the rows' ``kinks`` and checked against the one-sided slopes.
    batch, mc_samples : int, default 3
        ``B`` and ``S`` of the model checks (``S > 1`` so that DReG differs from STL).
    tolerance : float, default 1e-6
        A row passes when its largest relative error is at most this.
    h : float, optional
        Step of the central differences. Default: ``1e-3`` when the model's
        activation is smooth (``"tanh"``, as the default model's), else ``1e-4``
        (fewer of ReLU's kinks within reach). The larger step keeps rounding error (about
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
        (an op's input name or a model parameter's key), ``max_rel_error``
        (at kinks, to the nearer one-sided slope), ``tolerance``, ``passed`` and
        ``kinks`` (how many of the coordinates checked sit at a kink; ``ops.relu``
        has one input exactly at 0 on purpose). An op pair with no test inputs here gives a
        failed row, so that a new op cannot go unchecked.

    Examples
    --------
    >>> from npvae import gradcheck
    >>> rows = gradcheck.check_all(objectives=["elbo/mc"], estimators=[])
    >>> all(r["passed"] for r in rows)
    True
    """
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
        rows += _check_pairs(obj, "objectives", _objective_inputs(rng), tolerance, h, rng)
    if not (model_checks or estimator_checks):
        return rows
    x = rng.random((batch, model.input_dim))
    eps = model.sample_eps(batch, mc_samples, rng=rng)
    own_eps = {}

    def eps_for(objective):
        return _eps_for(model, objective, eps, seed, own_eps)

    def model_rows(objective, kl):
        errors = check_model(model, x, eps_for(objective), objective=objective, kl=kl, h=h, n_coords=n_coords,
                             rng=rng, tolerance=tolerance)
        return [_row(f"model {obj.get(objective).label}/{kl}", name, e, tolerance, errors.kinks[name])
                for name, e in errors.items()]

    for objective, kl in model_checks:
        rows += model_rows(objective, kl)
    for objective, kl, estimator in estimator_checks:
        if estimator == "standard":
            rows += model_rows(objective, kl)
        else:
            rows += _check_estimator(model, x, eps_for(objective), objective, kl, estimator, tolerance, h, n_coords,
                                     rng)
    return rows


def format_table(rows):
    """The rows of :func:`check_all` as an aligned text table, one line per row.

    Columns: check, parameter, max relative error (``%.2e``), tolerance, kinks
    (the number of kink coordinates, blank for none), and ``ok`` or ``FAIL``. When
    any row has kinks a note says how they were checked; a last line counts the
    failures.

    Parameters
    ----------
    rows : list of dict
        With keys ``check``, ``parameter``, ``max_rel_error``, ``tolerance``,
        ``passed`` and, optionally, ``kinks`` (default 0).

    Returns
    -------
    str
    """
    header = ("check", "parameter", "max rel error", "tolerance", "kinks", "result")
    body = [(r["check"], r["parameter"], f"{r['max_rel_error']:.2e}", f"{r['tolerance']:.0e}",
             str(r.get("kinks", 0) or ""), "ok" if r["passed"] else "FAIL") for r in rows]
    widths = [max(len(line[i]) for line in [header] + body) for i in range(len(header))]
    right = (False, False, True, True, True, False)   # numbers right-aligned

    def fmt(line):
        return "  ".join(cell.rjust(w) if r else cell.ljust(w) for cell, w, r in zip(line, widths, right)).rstrip()

    lines = [fmt(header), "  ".join("-" * w for w in widths)] + [fmt(line) for line in body]
    kinks = sum(r.get("kinks", 0) for r in rows)
    if kinks:
        lines.append(f"kinks: {kinks} coordinate(s) whose stencil crosses a kink (a ReLU input at 0): checked "
                     "against the one-sided slopes, one of which the gradient must equal")
    failed = sum(not r["passed"] for r in rows)
    lines.append(f"{len(rows) - failed} of {len(rows)} passed" + (f", {failed} FAILED" if failed else ""))
    return "\n".join(lines)

