"""Hand-written first-order optimizers: SGD (with momentum), RMSprop and Adam.

Every optimizer updates a dict of parameter arrays ``{name: ndarray}`` **in place**:
the model owns the arrays and keeps referring to the same objects, the optimizer only
writes into them. The optimizer's own state (step count, running averages) lives in the
optimizer, apart from the model, as in scikit-learn's
``sklearn/neural_network/_stochastic_optimizers.py``.

The update rules follow Keras 2.x (``keras/optimizers.py``), including where epsilon
sits: RMSprop divides by ``sqrt(v) + epsilon``. Keras 3 moved that epsilon inside the
square root (``sqrt(v + epsilon)``); we keep the 2.x form on purpose.

State is allocated lazily on the first :meth:`Optimizer.step`, one array per parameter
with the parameter's shape and dtype, so float32 models keep float32 state. The update
uses preallocated scratch buffers and in-place ufuncs, so a step allocates no
parameter-sized temporaries once the first step has run.

Subnormal flushing
------------------
Running averages of a parameter whose gradient stays zero decay geometrically
(``v <- rho * v``) and, after a few hundred (RMSprop, Adam's first moment) to a few
ten thousand (Adam's second moment, float32) steps, become subnormal floats. Arithmetic
on subnormals is one to two orders of magnitude slower on most CPUs, and such values
can persist for thousands of steps before underflowing to zero. So after every step,
each state array has its entries with ``|s| < np.finfo(dtype).tiny`` set to exactly 0:
an ``np.abs`` into the scratch buffer (skipped for the non-negative second moments), a
compare into a preallocated boolean mask and a masked ``np.copyto``, no allocation.
Doing it every step keeps the rule simple and means no state is ever carried subnormal;
it adds about a fifth to a half to the optimizer's own time (measured on 1M float32
parameters), a few percent of a VAE training step. The flush runs *after* the update,
so the current step always uses the exact running average; only what is carried into
the next step is changed, and by less than ``tiny`` in absolute value. That changes a
later update by a relative amount of order ``sqrt(tiny) / epsilon`` at most (~1e-12
for float32 with ``epsilon=1e-7``, ~1e-147 for float64), below float noise for any
``epsilon`` much larger than ``sqrt(tiny)`` (1e-19 in float32, 1e-154 in float64).

State dicts
-----------
:meth:`Optimizer.state_dict` returns a flat ``dict[str, ndarray]`` of plain arrays
(no objects), so it can be stored in an ``.npz`` and read back with
``allow_pickle=False``::

    "name"              0-d unicode array, e.g. np.array("adam")
    "iterations"        0-d int64, the number of steps taken
    "<hyperparameter>"  0-d float64 (or bool for "nesterov"), e.g. "lr", "rho"
    "<slot>/<param>"    one array per state slot and parameter, the parameter's
                        shape and dtype, e.g. "m/enc_w1", "v/enc_w1"

Slots are ``"velocity"`` (SGD with momentum), ``"v"`` (RMSprop), ``"m"`` and ``"v"``
(Adam). A parameter name may itself contain ``"/"``; only the first ``"/"`` separates
the slot from the parameter name.
"""

from __future__ import annotations

import math
import numbers
from typing import Dict, Mapping, NamedTuple, Optional, Tuple, Union

import numpy as np

__all__ = [
    "Optimizer",
    "SGD",
    "RMSprop",
    "Adam",
    "get_optimizer",
    "optimizer_from_state",
    "FusedSpec",
]


class FusedSpec(NamedTuple):
    """What a fused kernel needs to reproduce an optimizer's update of this step bit for bit.

    An optimizer publishes it (:meth:`Optimizer.fused_spec`); an engine that has a kernel
    for ``rule`` offers that kernel as :meth:`Optimizer.step`'s ``update=`` and never reads
    the optimizer's attributes or state layout itself.

    Attributes
    ----------
    rule : str
        The update rule (``"sgd"``, ``"rmsprop"``, ``"adam"``).
    slots : tuple of str
        The state slots the kernel takes, in its argument order.
    scalars : tuple
        The scalars the kernel takes after the slots, in its order, for the current step.
    """

    rule: str
    slots: Tuple[str, ...]
    scalars: tuple


# ----------------------------------------------------------------------------------------
# Hyperparameter validation (public boundary)
# ----------------------------------------------------------------------------------------

def _check_real(name: str, value) -> float:
    # bool is an int subclass; lr=True is always a mistake, never 1.0
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name}: expected a real number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    return value


def _check_positive(name: str, value) -> float:
    value = _check_real(name, value)
    if value <= 0.0:
        raise ValueError(f"{name}: expected a number > 0, got {value!r}")
    return value


def _check_unit_interval(name: str, value) -> float:
    """A decay factor: 0 <= value < 1 (1 would never forget, so never adapt)."""
    value = _check_real(name, value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name}: expected a number in [0, 1), got {value!r}")
    return value


def _check_bool(name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name}: expected a bool, got {value!r} ({type(value).__name__})")
    return bool(value)


# ----------------------------------------------------------------------------------------
# Base class
# ----------------------------------------------------------------------------------------

def _fingerprint(params, grads):
    """What :meth:`Optimizer.step` checked its arguments by: the same key order, and per key the
    same parameter and gradient objects with the same shape, dtype and writability (None for
    anything that is not a dict of arrays: then the full check runs and says what is wrong)."""
    try:
        return (tuple(params), tuple(grads),
                tuple((id(p), p.shape, p.dtype, p.flags.writeable) for p in params.values()),
                tuple((id(g), g.shape, g.dtype) for g in grads.values()))
    except AttributeError:
        return None


class Optimizer:
    """Base class: validation, lazy state allocation, flushing and state dicts.

    Subclasses set :attr:`name`, :attr:`_hyperparameters` (constructor argument names,
    in order), :meth:`_slot_names` and implement :meth:`_update`.

    Attributes
    ----------
    iterations : int
        Number of steps taken so far (Keras' name). Adam's bias correction uses
        ``t = iterations`` after the increment, i.e. ``t = 1`` on the first step.
    """

    name = "optimizer"
    _hyperparameters: Tuple[str, ...] = ()
    # slots that are sums of squares, so flushing can skip taking |s|
    _nonnegative_slots: Tuple[str, ...] = ()

    def __init__(self, lr: float):
        self.lr = lr  # validated by the property
        self.iterations = 0
        # _state[slot][param] -> array with the param's shape and dtype
        self._state: Dict[str, Dict[str, np.ndarray]] = {s: {} for s in self._slot_names()}
        self._built = False
        self._checked, self._checked_arrays = None, None   # what step last checked (_fingerprint)
        # flat buffers shared by all params of one dtype; views are taken per param so
        # the memory cost is one largest-parameter-sized array, not one per parameter
        self._scratch: Dict[np.dtype, np.ndarray] = {}
        self._masks: Dict[np.dtype, np.ndarray] = {}

    # -- hyperparameters -----------------------------------------------------------------

    @property
    def lr(self) -> float:
        """Learning rate; may be changed between steps (e.g. a schedule), must be > 0."""
        return self._lr

    @lr.setter
    def lr(self, value: float) -> None:
        self._lr = _check_positive("lr", value)

    def get_config(self) -> Dict[str, Union[float, bool]]:
        """Hyperparameters as plain Python values (JSON-serializable).

        Returns
        -------
        dict
            ``{argument name: value}``; ``type(opt)(**opt.get_config())`` builds an
            optimizer with the same hyperparameters and fresh state.
        """
        return {h: getattr(self, h) for h in self._hyperparameters}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    # -- subclass hooks ------------------------------------------------------------------

    def _slot_names(self) -> Tuple[str, ...]:
        """Names of the per-parameter state arrays this optimizer keeps."""
        return ()

    def _update(self, p: np.ndarray, g: np.ndarray, slots: Dict[str, np.ndarray],
                scratch: np.ndarray) -> None:
        """Update ``p`` and its ``slots`` in place from gradient ``g``.

        ``scratch`` is a writable array of ``p``'s shape and dtype whose contents are
        undefined on entry and may be clobbered. ``self.iterations`` is already
        incremented.
        """
        raise NotImplementedError

    #: The rule of :meth:`fused_spec` (None: the update has no fused form), known before a step.
    fused_rule: Optional[str] = None

    def fused_spec(self) -> Optional[FusedSpec]:
        """The :class:`FusedSpec` of the current step (called during :meth:`step`, after
        ``iterations`` is incremented), or None when the update has no fused form (the default)."""
        return None

    # -- stepping ------------------------------------------------------------------------

    def step(self, params: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray], update=None) -> None:
        """Apply one update to every parameter, in place.

        Parameters
        ----------
        params : mapping of str to ndarray
            The model's parameters; each array is overwritten in place (the same
            objects hold the new values afterwards). Floating dtype (float32 or
            float64), writable.
        grads : mapping of str to ndarray
            Gradient of the loss with respect to each parameter: the same keys as
            ``params``, each with its parameter's shape. A float64 gradient for a
            float32 parameter is rounded to float32 as the update is computed.
        update : callable, optional
            A fused update to use instead of the NumPy ufuncs: ``update(p, g, slots)``
            updates one parameter ``p`` and its state ``slots`` (``{slot: array}``) in
            place, flush included, and returns True, or returns False to leave that
            parameter to the ufuncs. It must give the ufuncs' result bit for bit. If it
            has an attribute ``all``, ``update.all(params, grads, state)`` (``state``:
            ``{slot: {name: array}}``) is tried first: it updates every parameter at once and
            returns True, or returns False, having written nothing. The
            engine that computed ``grads`` offers one from :meth:`fused_spec`
            (:meth:`npvae.engines.Engine.optimizer_update`: None for the NumPy
            engine, one kernel pass per parameter for the numba engine, for all three
            optimizers); :func:`npvae.fit` passes it. The optimizer never imports numba.

        Raises
        ------
        ValueError
            If the keys differ, a shape differs, a parameter is not a writable
            floating array, or the parameters do not match the state this optimizer
            already holds (a different model, or one loaded from another checkpoint).
            Everything is checked before anything is written.

        Notes
        -----
        The first step allocates the state (zeros, one array per slot and parameter)
        and the scratch buffers. After each update, state entries below
        ``np.finfo(dtype).tiny`` in magnitude are flushed to 0 (see the module
        docstring).
        """
        seen = _fingerprint(params, grads)
        if seen is None or seen != self._checked:    # the same arrays as the last step's: checked then
            self._check_params_grads(params, grads)
        if not self._built:
            self._build(params)
        self._checked, self._checked_arrays = seen, (params, grads)      # (kept alive: their ids stay theirs)
        self.iterations += 1
        update_all = getattr(update, "all", None)
        if update_all is not None and update_all(params, grads, self._state):
            return
        for key, p in params.items():
            slots = {s: self._state[s][key] for s in self._state}
            if update is not None and update(p, grads[key], slots):
                continue
            scratch, mask = self._buffers(p)
            self._update(p, grads[key], slots, scratch)
            for s, a in slots.items():
                _flush_subnormals(a, scratch, mask, s in self._nonnegative_slots)

    def _build(self, params: Mapping[str, np.ndarray]) -> None:
        # Keras and scikit-learn both start running averages at zero
        for s in self._slot_names():
            self._state[s] = {k: np.zeros_like(p) for k, p in params.items()}
        self._built = True

    def _buffers(self, p: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Views of the shared scratch and mask buffers with ``p``'s shape."""
        dtype = p.dtype
        buf = self._scratch.get(dtype)
        if buf is None or buf.size < p.size:
            buf = self._scratch[dtype] = np.empty(p.size, dtype=dtype)
            self._masks[dtype] = np.empty(p.size, dtype=bool)
        mask = self._masks[dtype]
        return buf[: p.size].reshape(p.shape), mask[: p.size].reshape(p.shape)

    def _check_params_grads(self, params, grads) -> None:
        for arg, d in (("params", params), ("grads", grads)):
            if not isinstance(d, Mapping):
                raise ValueError(f"{arg}: expected a dict of name -> ndarray, got {type(d).__name__}")
        if params.keys() != grads.keys():
            raise ValueError(
                "grads: expected the keys of params; "
                f"missing from grads: {sorted(set(params) - set(grads))}, "
                f"not in params: {sorted(set(grads) - set(params))}")
        for key, p in params.items():
            g = grads[key]
            for arg, a in (("params", p), ("grads", g)):
                if not isinstance(a, np.ndarray) or a.dtype.kind != "f":
                    raise ValueError(
                        f"{arg}[{key!r}]: expected a floating-point ndarray, got {_describe(a)}")
            if not p.flags.writeable:
                raise ValueError(
                    f"params[{key!r}]: expected a writable array (it is updated in place), got a read-only one")
            if g.shape != p.shape:
                raise ValueError(
                    f"grads[{key!r}]: expected the shape of params[{key!r}], {p.shape}, got {g.shape}")
        if not self._built:
            return
        for s, arrays in self._state.items():
            if arrays.keys() != params.keys():
                raise ValueError(
                    "params: expected the keys this optimizer holds state for, "
                    f"{sorted(arrays)}, got {sorted(params)}; "
                    "use a fresh optimizer for a new model")
            for key, p in params.items():
                a = arrays[key]
                if a.shape != p.shape or a.dtype != p.dtype:
                    raise ValueError(
                        f"params[{key!r}]: expected the optimizer state '{s}/{key}''s "
                        f"shape {a.shape} and dtype {a.dtype}, "
                        f"got shape {p.shape} and dtype {p.dtype}")

    # -- state dicts ---------------------------------------------------------------------

    def state_dict(self) -> Dict[str, np.ndarray]:
        """The full optimizer state as a flat dict of plain arrays (copies).

        Returns
        -------
        dict of str to ndarray
            ``"name"`` (0-d unicode), ``"iterations"`` (0-d int64), one 0-d array per
            hyperparameter (float64, or bool for ``nesterov``) and ``"<slot>/<param>"``
            per state array (the parameter's shape and dtype). No object arrays, so
            it round-trips through ``np.savez``/``np.load(allow_pickle=False)``.
        """
        d: Dict[str, np.ndarray] = {
            "name": np.array(self.name),
            "iterations": np.array(self.iterations, dtype=np.int64),
        }
        for h, v in self.get_config().items():
            d[h] = np.array(v, dtype=bool if isinstance(v, bool) else np.float64)
        for s, arrays in self._state.items():
            for key, a in arrays.items():
                d[f"{s}/{key}"] = a.copy()
        return d

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore hyperparameters, step count and running averages from :meth:`state_dict`.

        After loading, stepping continues bit-for-bit as the saved optimizer would have.
        The hyperparameters come from ``state``, replacing this optimizer's.

        Parameters
        ----------
        state : mapping of str to ndarray
            As returned by :meth:`state_dict` of the same optimizer class (possibly via
            an ``.npz`` file). The arrays are copied.

        Raises
        ------
        ValueError
            If ``state`` is for another optimizer, misses or has unknown keys, or holds
            invalid values. ``self`` is left unchanged then.
        """
        # everything is parsed and validated into a fresh instance first, so a bad
        # state leaves self untouched
        fresh = _parse_state(state, expected=type(self))
        self.__dict__.update(fresh.__dict__)


def _describe(x) -> str:
    dtype = getattr(x, "dtype", None)
    return type(x).__name__ + ("" if dtype is None else f" of dtype {dtype}")


def _parse_state(state, expected=None) -> Optimizer:
    """Validate a state dict and return a new optimizer holding it (arrays copied)."""
    if not isinstance(state, Mapping):
        raise ValueError(f"state: expected a dict of name -> ndarray, got {type(state).__name__}")
    if "name" not in state:
        raise ValueError("state: expected a 'name' key (the optimizer's name, e.g. 'adam'), got none")
    a = np.asarray(state["name"])
    if a.shape != () or a.dtype.kind != "U":
        raise ValueError(f"state['name']: expected a 0-d unicode array, got {a!r}")
    name = str(a.item())
    if name not in _OPTIMIZERS:
        raise ValueError(
            f"state['name']: expected one of {', '.join(map(repr, _OPTIMIZERS))}, got {name!r}")
    cls = _OPTIMIZERS[name]
    if expected is not None and cls is not expected:
        raise ValueError(
            f"state: expected a {expected.name!r} optimizer state, got {name!r}; "
            "use optimizer_from_state() to rebuild whichever optimizer it holds")

    scalars = ("name", "iterations") + cls._hyperparameters
    missing = [k for k in scalars if k not in state]
    if missing:
        raise ValueError(f"state is missing keys {missing} for a {name!r} optimizer")
    config = {}
    for h in cls._hyperparameters:
        a = np.asarray(state[h])
        if a.shape != ():
            raise ValueError(f"state[{h!r}]: expected a 0-d array, got shape {a.shape}")
        config[h] = a.item()
    opt = cls(**config)  # validates the hyperparameters

    it = np.asarray(state["iterations"])
    if it.shape != () or it.dtype.kind not in "iu" or int(it) < 0:
        raise ValueError(f"state['iterations']: expected a 0-d integer >= 0, got {it!r}")
    opt.iterations = int(it)

    slots = opt._slot_names()  # from the state's hyperparameters (SGD momentum)
    for k, v in state.items():
        if k in scalars:
            continue
        slot, sep, param = k.partition("/")
        if not sep or slot not in opt._state or not param:
            raise ValueError(
                f"state has an unknown key {k!r}; a {name!r} state with these "
                f"hyperparameters holds {list(scalars)} and '<slot>/<param>' "
                f"with slot in {list(slots)}")
        v = np.asarray(v)
        if v.dtype.kind != "f":
            raise ValueError(f"state[{k!r}]: expected a floating-point array, got dtype {v.dtype}")
        opt._state[slot][param] = v.copy()
    if slots:
        ref = opt._state[slots[0]]
        for s in slots[1:]:
            other = opt._state[s]
            if other.keys() != ref.keys() or any(
                    other[k].shape != ref[k].shape or other[k].dtype != ref[k].dtype
                    for k in ref):
                raise ValueError(
                    f"state: expected the slots {list(slots)} to hold arrays for the same parameters "
                    "with the same shapes and dtypes")
        opt._built = bool(ref)
    else:
        # nothing to allocate; "built" only records that params were seen
        opt._built = opt.iterations > 0
    return opt


def _flush_subnormals(s: np.ndarray, scratch: np.ndarray, mask: np.ndarray,
                      nonnegative: bool) -> None:
    """Set entries of ``s`` with ``|s| < finfo.tiny`` to exactly 0, in place.

    See the module docstring for why. Signed state needs ``|s|``, computed into
    ``scratch``; the second moments are non-negative, so they skip that pass.
    """
    tiny = np.finfo(s.dtype).tiny
    if nonnegative:
        np.less(s, tiny, out=mask)
    else:
        np.abs(s, out=scratch)
        np.less(scratch, tiny, out=mask)
    np.copyto(s, 0, where=mask)


# ----------------------------------------------------------------------------------------
# The optimizers
# ----------------------------------------------------------------------------------------

def _average_squares(v, g, decay, scratch):
    """``v = decay v + (1 - decay) g^2`` in place (the running average of RMSprop and Adam)."""
    np.multiply(g, g, out=scratch)
    np.multiply(scratch, 1.0 - decay, out=scratch)
    np.multiply(v, decay, out=v)
    np.add(v, scratch, out=v)


def _scaled_step(p, direction, v, step_size, epsilon, scratch):
    """``p -= step_size * direction / (sqrt(v) + epsilon)`` in place, epsilon outside the root (Keras)."""
    np.sqrt(v, out=scratch)
    np.add(scratch, epsilon, out=scratch)
    np.divide(direction, scratch, out=scratch)
    np.multiply(scratch, step_size, out=scratch)
    np.subtract(p, scratch, out=p)


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum, Keras 2 form.

    Without momentum: ``p <- p - lr * g``. With momentum ``mu > 0`` a velocity
    ``v`` (starting at 0) is kept per parameter::

        v <- mu * v - lr * g
        p <- p + v                      (classical momentum)
        p <- p + mu * v - lr * g        (nesterov=True, with the new v)

    The learning rate sits inside the velocity (Keras, scikit-learn), unlike PyTorch's
    ``buf <- mu * buf + g; p <- p - lr * buf``; the two agree for a constant ``lr``
    (``v = -lr * buf``) and differ only when ``lr`` changes between steps.

    Parameters
    ----------
    lr : float, default 0.01
        Learning rate, > 0.
    momentum : float, default 0.0
        Momentum ``mu`` in [0, 1). 0 keeps no state.
    nesterov : bool, default False
        Use Nesterov momentum; requires ``momentum > 0``.

    References
    ----------
    Sutskever, Martens, Dahl, Hinton (2013), "On the importance of initialization and
    momentum in deep learning", ICML, eqs. (1)-(4).
    """

    name = "sgd"
    _hyperparameters = ("lr", "momentum", "nesterov")

    def __init__(self, lr: float = 0.01, momentum: float = 0.0, nesterov: bool = False):
        self.momentum = _check_unit_interval("momentum", momentum)
        self.nesterov = _check_bool("nesterov", nesterov)
        if self.nesterov and self.momentum == 0.0:
            raise ValueError("nesterov=True requires momentum > 0, got momentum=0.0")
        super().__init__(lr)

    def _slot_names(self):
        return ("velocity",) if self.momentum > 0.0 else ()

    fused_rule = "sgd"

    def fused_spec(self):
        """``sgd``: the velocity slot (none without momentum); ``lr, momentum, nesterov``."""
        return FusedSpec(self.fused_rule, self._slot_names(), (self.lr, self.momentum, self.nesterov))

    def _update(self, p, g, slots, scratch):
        np.multiply(g, self.lr, out=scratch)            # lr * g
        if self.momentum == 0.0:
            np.subtract(p, scratch, out=p)
            return
        v = slots["velocity"]
        np.multiply(v, self.momentum, out=v)
        np.subtract(v, scratch, out=v)                  # v = mu * v - lr * g
        if self.nesterov:
            np.subtract(p, scratch, out=p)
            np.multiply(v, self.momentum, out=scratch)
            np.add(p, scratch, out=p)                   # p += mu * v - lr * g
        else:
            np.add(p, v, out=p)


class RMSprop(Optimizer):
    """RMSprop with Keras 2 semantics (epsilon outside the square root).

    With a running mean of squared gradients ``v`` starting at 0::

        v <- rho * v + (1 - rho) * g**2
        p <- p - lr * g / (sqrt(v) + epsilon)

    Keras 3 and PyTorch differ: Keras 3 uses ``sqrt(v + epsilon)``, PyTorch
    ``sqrt(v) + eps`` with ``eps=1e-8``. The placement matters only when
    ``sqrt(v)`` is comparable to ``epsilon`` (gradients of order 1e-7 or smaller).

    Parameters
    ----------
    lr : float, default 1e-3
        Learning rate, > 0.
    rho : float, default 0.9
        Decay of the running mean, in [0, 1).
    epsilon : float, default 1e-7
        Added to ``sqrt(v)``, > 0 (keeps ``0 / 0`` out of zero-gradient entries).

    References
    ----------
    Tieleman and Hinton (2012), Coursera "Neural Networks for Machine Learning",
    lecture 6.5.
    """

    name = "rmsprop"
    _hyperparameters = ("lr", "rho", "epsilon")
    _nonnegative_slots = ("v",)

    def __init__(self, lr: float = 1e-3, rho: float = 0.9, epsilon: float = 1e-7):
        self.rho = _check_unit_interval("rho", rho)
        self.epsilon = _check_positive("epsilon", epsilon)
        super().__init__(lr)

    def _slot_names(self):
        return ("v",)

    fused_rule = "rmsprop"

    def fused_spec(self):
        """``rmsprop``: the slot ``v``; ``lr, rho, epsilon``."""
        return FusedSpec(self.fused_rule, ("v",), (self.lr, self.rho, self.epsilon))

    def _update(self, p, g, slots, scratch):
        v = slots["v"]
        _average_squares(v, g, self.rho, scratch)       # v = rho v + (1 - rho) g^2
        _scaled_step(p, g, v, self.lr, self.epsilon, scratch)   # p -= lr g / (sqrt(v) + eps)


class Adam(Optimizer):
    """Adam with Keras semantics (bias correction folded into the step size).

    With first and second moment estimates ``m``, ``v`` starting at 0 and
    ``t = 1, 2, ...`` the step number::

        m <- beta1 * m + (1 - beta1) * g
        v <- beta2 * v + (1 - beta2) * g**2
        alpha_t = lr * sqrt(1 - beta2**t) / (1 - beta1**t)
        p <- p - alpha_t * m / (sqrt(v) + epsilon)

    This is the form given just before Section 2.1 of Kingma and Ba, used by Keras 2
    and 3 and TensorFlow. It equals the textbook ``lr * m_hat / (sqrt(v_hat) + eps)``
    (``m_hat = m / (1 - beta1**t)``, ``v_hat = v / (1 - beta2**t)``) with
    ``eps = epsilon * sqrt(1 - beta2**t)``, so it differs from PyTorch's Adam only
    through epsilon, mostly in the first steps.

    Parameters
    ----------
    lr : float, default 1e-3
        Learning rate, > 0.
    beta1 : float, default 0.9
        Decay of the first moment, in [0, 1).
    beta2 : float, default 0.999
        Decay of the second moment, in [0, 1).
    epsilon : float, default 1e-7
        "Epsilon hat", added to ``sqrt(v)``, > 0.

    References
    ----------
    Kingma and Ba (2015), "Adam: A Method for Stochastic Optimization", ICLR,
    Algorithm 1 and the paragraph before Section 2.1.
    """

    name = "adam"
    _hyperparameters = ("lr", "beta1", "beta2", "epsilon")
    _nonnegative_slots = ("v",)

    def __init__(self, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999,
                 epsilon: float = 1e-7):
        self.beta1 = _check_unit_interval("beta1", beta1)
        self.beta2 = _check_unit_interval("beta2", beta2)
        self.epsilon = _check_positive("epsilon", epsilon)
        super().__init__(lr)

    def _slot_names(self):
        return ("m", "v")

    fused_rule = "adam"

    def fused_spec(self):
        """``adam``: the slots ``m, v``; this step's size ``alpha_t`` (:meth:`step_size`), ``beta1, beta2, epsilon``."""
        return FusedSpec(self.fused_rule, ("m", "v"), (self.step_size(), self.beta1, self.beta2, self.epsilon))

    def step_size(self) -> float:
        """``alpha_t = lr * sqrt(1 - beta2**t) / (1 - beta1**t)`` for ``t = iterations``.

        A Python float (float64), so that the step size is identical for float32 and
        float64 parameters up to the final rounding.
        """
        t = self.iterations
        return self.lr * math.sqrt(1.0 - self.beta2 ** t) / (1.0 - self.beta1 ** t)

    def _update(self, p, g, slots, scratch):
        m, v = slots["m"], slots["v"]
        alpha = self.step_size()
        np.multiply(g, 1.0 - self.beta1, out=scratch)
        np.multiply(m, self.beta1, out=m)
        np.add(m, scratch, out=m)                       # m = b1 m + (1 - b1) g
        _average_squares(v, g, self.beta2, scratch)     # v = b2 v + (1 - b2) g^2
        _scaled_step(p, m, v, alpha, self.epsilon, scratch)     # p -= alpha m / (sqrt(v) + eps)


# ----------------------------------------------------------------------------------------
# Factories
# ----------------------------------------------------------------------------------------

_OPTIMIZERS = {cls.name: cls for cls in (SGD, RMSprop, Adam)}


def get_optimizer(name_or_instance: Union[str, Optimizer], **kwargs) -> Optimizer:
    """Build an optimizer from its name, or pass an instance through.

    Parameters
    ----------
    name_or_instance : str or Optimizer
        ``"sgd"``, ``"rmsprop"`` or ``"adam"`` (case-insensitive, surrounding spaces
        ignored), or an :class:`Optimizer`, returned as is.
    **kwargs
        Hyperparameters for the named optimizer (e.g. ``lr=1e-3, rho=0.9``).
        Not allowed with an instance.

    Returns
    -------
    Optimizer

    Raises
    ------
    ValueError
        For an unknown name, an unknown or invalid hyperparameter, or hyperparameters
        given together with an instance.
    TypeError
        If ``name_or_instance`` is neither a str nor an Optimizer.

    Examples
    --------
    >>> get_optimizer("RMSprop", lr=1e-3)
    RMSprop(lr=0.001, rho=0.9, epsilon=1e-07)
    """
    if isinstance(name_or_instance, Optimizer):
        if kwargs:
            raise ValueError(
                f"hyperparameters {sorted(kwargs)} can only be given with an optimizer "
                f"name, not with the instance {name_or_instance!r}")
        return name_or_instance
    if not isinstance(name_or_instance, str):
        raise TypeError(
            "name_or_instance: expected an optimizer name "
            f"({', '.join(map(repr, _OPTIMIZERS))}) or an Optimizer, "
            f"got {type(name_or_instance).__name__}")
    key = name_or_instance.strip().lower()
    if key not in _OPTIMIZERS:
        raise ValueError(
            f"name_or_instance: expected one of {', '.join(map(repr, _OPTIMIZERS))}, "
            f"got {name_or_instance!r}")
    cls = _OPTIMIZERS[key]
    unknown = sorted(set(kwargs) - set(cls._hyperparameters))
    if unknown:
        raise ValueError(
            f"unknown hyperparameter(s) {unknown} for {key!r}; "
            f"expected some of {list(cls._hyperparameters)}")
    return cls(**kwargs)


def optimizer_from_state(state: Mapping[str, np.ndarray]) -> Optimizer:
    """Rebuild an optimizer, hyperparameters and running averages, from a state dict.

    Parameters
    ----------
    state : mapping of str to ndarray
        As returned by :meth:`Optimizer.state_dict`; the arrays are copied.

    Returns
    -------
    Optimizer
        The class named by ``state["name"]``; it continues bit-for-bit as the
        optimizer that produced ``state``.

    Raises
    ------
    ValueError
        If the name is unknown or the state is invalid.
    """
    return _parse_state(state)
