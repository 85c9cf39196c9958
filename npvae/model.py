"""The VAE: parameters, configuration, validation at the boundary; and its file format.

The model is the MLP VAE of Kingma & Welling (2014) and of the classic Keras
example: a Gaussian encoder ``q(z|x) = N(mu(x), diag(exp(log_var(x))))``, the
reparameterization ``z = mu + exp(log_var / 2) * eps`` with ``eps`` of shape
``(B, S, L)``, and a Bernoulli decoder ``p(x|z)`` given by logits.

:class:`VAE` holds the parameters and the configuration and checks every input at its
public methods; the computing is its engine's (:mod:`npvae.engines`: the NumPy reference,
or the numba fast path). The model file (:func:`save_model`, :func:`load_model`) is a
pickle-free ``.npz`` written through :mod:`npvae.io`.
"""

import os
from pathlib import Path

import numpy as np

from . import _validate as check
from . import objectives as obj
from . import serialization
from .engines.registry import make_engine, resolve_backend
from .io import ModelFileError
from .ops import ACTIVATIONS, sigmoid
from .params import Schema

__all__ = ["VAE", "save_model", "load_model", "model_arrays", "model_from_arrays", "MODEL_FORMAT",
           "MODEL_VERSION"]

class VAE:
    """A variational autoencoder with hand-written forward and backward passes.

    Parameters
    ----------
    input_dim : int, default 784
        Data size ``D``.
    hidden : int or sequence of int, default (256,)
        Hidden layer sizes of the encoder; the decoder uses them reversed.
    latent_dim : int, default 2
        Latent size ``L``.
    activation : {"relu", "tanh"}, default "relu"
        Hidden-layer activation.
    seed : int or None, default 0
        Seed of the weights' initialization (Keras' glorot_uniform, biases 0).
    dtype : {np.float64, np.float32}, default np.float64
        Parameter and computation dtype. The default is float64, the precision of
        gradient checks; train in float32 for speed (``npvae train`` does by default).
    backend : {"auto", "numba", "numpy"}, default "auto"
        The engine that computes bounds and gradients (:mod:`npvae.engines`):
        ``"numpy"`` composes the reference ops of :mod:`npvae.ops` (the
        specification); ``"numba"`` runs the fused kernels of :mod:`npvae.fast`
        (same results to float rounding, several times faster, preallocated
        workspaces). ``"auto"`` picks numba when it is installed, else NumPy with
        a warning. Resolved here, once (numba, when used, is imported now). Not
        part of :attr:`config`: a saved model loads with ``"auto"``.
    threads : int or None, default None
        Threads of a numba-backend step: a large step (from 2048 rows ``B * S``)
        is split into this many groups of examples, run at once, each with
        single-threaded matrix products; a smaller one runs as one group, its
        products threaded by BLAS and, in float32, its elementwise passes split
        over BLAS's threads (:mod:`npvae.fast.threads`). None: as many as NumPy's
        OpenBLAS uses (set by ``OPENBLAS_NUM_THREADS`` or ``OMP_NUM_THREADS``,
        else the cores), or 1 where the BLAS is not an OpenBLAS npvae can
        control (then BLAS threads its own products). Results depend on it only
        through the order of float additions. Not part of :attr:`config`; may be
        reassigned.

    Attributes
    ----------
    params : dict of str to ndarray
        ``"enc.0.W"``, ``"enc.0.b"``, ... (one pair per hidden layer),
        ``"enc.mu.W"``, ``"enc.mu.b"``, ``"enc.logvar.W"``, ``"enc.logvar.b"``,
        ``"dec.0.W"``, ``"dec.0.b"``, ..., ``"dec.out.W"``, ``"dec.out.b"``.
        ``W`` is shaped ``(fan_in, fan_out)``. The arrays may be assigned
        (same shape and dtype) or updated in place.
    backend : str
        ``"numba"`` or ``"numpy"``, as resolved from the ``backend`` argument. May be
        reassigned (any of the ``backend`` names): the model then gets a new engine.
    engine : npvae.engines.Engine
        What computes the model's bounds and gradients (read only): an
        :class:`npvae.engines.ReferenceEngine` or an :class:`npvae.fast.NumbaEngine`.
    schema : npvae.params.Schema
        The parameters' names and shapes, from the architecture (read only).
    threads : int or None
        As the argument: the engine's setting (``model.engine.threads``), kept when
        :attr:`backend` is reassigned; the NumPy engine keeps it without using it.

    Examples
    --------
    >>> import numpy as np, npvae
    >>> model = npvae.VAE(input_dim=784, hidden=(256,), latent_dim=2, seed=0)
    >>> x = np.random.default_rng(0).random((5, 784))
    >>> eps = model.sample_eps(5, mc_samples=3, rng=np.random.default_rng(1))
    >>> loss, grads = model.loss_and_grads(x, eps, objective="elbo")
    """

    def __init__(self, input_dim=784, hidden=(256,), latent_dim=2, activation="relu",
                 seed=0, dtype=np.float64, backend="auto", threads=None):
        self.input_dim = check.positive_int(input_dim, "input_dim")
        if isinstance(hidden, (int, np.integer)) and not isinstance(hidden, bool):
            hidden = (hidden,)
        try:
            hidden = tuple(hidden)
        except TypeError:
            raise ValueError(f"hidden: expected an int or a sequence of ints, got {hidden!r}") from None
        self.hidden = tuple(check.positive_int(h, "hidden") for h in hidden)
        if not self.hidden:
            raise ValueError("hidden: expected at least one hidden layer size, got ()")
        self.latent_dim = check.positive_int(latent_dim, "latent_dim")
        self.activation = check.choice(activation, "activation", tuple(ACTIVATIONS))
        if seed is not None:
            seed = check.non_negative_int(seed, "seed")
        self.seed = seed
        self.dtype = check.float_dtype(dtype)
        self.schema = Schema(self.input_dim, self.hidden, self.latent_dim)
        self._check_size()
        self._threads = check.optional_positive_int(threads, "threads")
        self.backend = backend
        self.params = self._init_params(np.random.default_rng(seed))

    @property
    def threads(self):
        """Threads of the engine's calls (the engine's setting; see the class docstring)."""
        return self._engine.threads

    @threads.setter
    def threads(self, value):
        self._engine.threads = value

    @property
    def backend(self):
        return self._backend

    @backend.setter
    def backend(self, value):
        threads = self._engine.threads if hasattr(self, "_engine") else self._threads
        self._backend = resolve_backend(value)
        self._engine = make_engine(self, self._backend, threads)

    @property
    def engine(self):
        return self._engine

    # ------------------------------------------------------------------
    # Architecture and parameters
    # ------------------------------------------------------------------
    def layer_shapes(self):
        """``(name, fan_in, fan_out)`` of every dense layer, encoder then decoder
        (:attr:`schema`'s layers: :class:`npvae.params.Layer`).

        Each layer has the parameters ``name + ".W"`` of shape ``(fan_in, fan_out)`` and
        ``name + ".b"`` of shape ``(fan_out,)``.
        """
        return list(self.schema.layers)

    def param_shapes(self):
        """``{name: shape}`` of every parameter the architecture has (:meth:`npvae.params.Schema.shapes`)."""
        return self.schema.shapes()

    def _check_size(self):
        """Refuse, before allocating, parameters larger than the memory available (an absurd
        ``input_dim`` or ``hidden`` would otherwise end in a MemoryError without a name)."""
        count = self.schema.count()
        need = count * (self.dtype.itemsize + 8)          # the parameters, and their float64 draw
        have = check.available_memory()
        if have is not None and need > 0.9 * have:
            raise ValueError(f"input_dim, hidden, latent_dim: the model would have {count:,} parameters, "
                             f"{need / 2**30:.1f} GiB to initialize, more than the {have / 2**30:.1f} GiB "
                             f"available (got input_dim={self.input_dim}, hidden={self.hidden}, "
                             f"latent_dim={self.latent_dim})")

    def _init_params(self, rng):
        # Keras' glorot_uniform: U(-a, a), a = sqrt(6 / (fan_in + fan_out)).
        # Drawn in float64 so that float32 and float64 models of one seed agree.
        params = {}
        for name, fan_in, fan_out in self.schema.layers:
            limit = np.sqrt(6.0 / (fan_in + fan_out))
            params[f"{name}.W"] = rng.uniform(-limit, limit, (fan_in, fan_out)).astype(self.dtype)
            params[f"{name}.b"] = np.zeros(fan_out, dtype=self.dtype)
        return params

    def check_params(self):
        """Raise ValueError, naming the parameter, unless every array of :attr:`params` has
        the architecture's shape and the model's dtype (they may have been reassigned)."""
        for key, shape in self.param_shapes().items():
            p = self.params.get(key)
            if not isinstance(p, np.ndarray) or p.shape != shape or p.dtype != self.dtype:
                got = "missing" if p is None else (
                    f"shape {getattr(p, 'shape', '?')} dtype {getattr(p, 'dtype', type(p).__name__)}")
                raise ValueError(f"params[{key!r}]: expected shape {shape} dtype {self.dtype}, got {got}")

    def __repr__(self):
        return (f"VAE(input_dim={self.input_dim}, hidden={self.hidden}, latent_dim={self.latent_dim}, "
                f"activation={self.activation!r}, seed={self.seed}, dtype=np.{self.dtype.name})")

    @property
    def config(self):
        """The constructor arguments, as a dict (what :func:`npvae.load` rebuilds from)."""
        return dict(input_dim=self.input_dim, hidden=list(self.hidden), latent_dim=self.latent_dim,
                    activation=self.activation, seed=self.seed, dtype=self.dtype.name)

    # ------------------------------------------------------------------
    # Input checks (the public boundary)
    # ------------------------------------------------------------------
    def check_data(self, x, name="x"):
        """``x`` as an array of the model's dtype, after checking it is data for this model.

        Raises ValueError naming ``name`` unless ``x`` is a non-empty float array of shape
        ``(N, input_dim)`` with finite values in [0, 1]; says so when the number of columns
        does not match the model (the data of another model).
        """
        try:
            a = np.asarray(x)
        except (ValueError, TypeError) as exc:           # ragged nested lists, say
            raise ValueError(f"{name}: expected a float array of shape (N, {self.input_dim}), got "
                             f"{type(x).__name__} that NumPy cannot convert ({exc})") from None
        if a.ndim == 2 and a.shape[1] != self.input_dim:
            raise ValueError(f"{name}: the model takes {self.input_dim}-dimensional inputs (input_dim="
                             f"{self.input_dim}) but the data has {a.shape[1]} columns, shape {a.shape}; "
                             "is this the model trained on this data?")
        return check.float_array(x, name, ("B", self.input_dim), dtype=self.dtype, lo=0.0, hi=1.0)

    #: The largest ``|eps|`` accepted: standard normal noise beyond it has probability below
    #: 1e-200000, so such an ``eps`` is a mistake (and would overflow ``z`` into NaN).
    EPS_LIMIT = 1e3

    def _check_eps(self, eps, batch):
        try:
            eps = np.asarray(eps)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"eps: expected a float array of shape ({batch}, S, {self.latent_dim}), got "
                             f"{type(eps).__name__} that NumPy cannot convert ({exc})") from None
        return check.float_array(eps, "eps", (batch, "S", self.latent_dim), dtype=self.dtype,
                                 lo=-self.EPS_LIMIT, hi=self.EPS_LIMIT)

    def sample_eps(self, batch, mc_samples=1, rng=None):
        """Draw standard normal noise of shape ``(batch, mc_samples, latent_dim)``.

        Drawn in float64 whatever the model's dtype, then cast: a float32 run sees the
        same noise as a float64 run of the same seed, rounded.

        Parameters
        ----------
        batch, mc_samples : int
        rng : numpy.random.Generator or int or None
            The source of randomness (an int seeds a new Generator; a Generator is used
            as it is, and advanced).
        """
        batch = check.positive_int(batch, "batch")
        mc_samples = check.positive_int(mc_samples, "mc_samples")
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        return rng.standard_normal((batch, mc_samples, self.latent_dim)).astype(self.dtype, copy=False)

    # ------------------------------------------------------------------
    # Public API
    # ------------------------------------------------------------------
    def encode(self, x):
        """Parameters of ``q(z|x)``.

        Parameters
        ----------
        x : ndarray, shape (B, input_dim), values in [0, 1]

        Returns
        -------
        mu, log_var : ndarray, shape (B, latent_dim)
        """
        self.check_params()
        return self.engine.encode(self.check_data(x))

    def decode(self, z):
        """Bernoulli means ``sigmoid(logits)`` of ``p(x|z)``.

        Parameters
        ----------
        z : ndarray, shape (..., latent_dim)
            Any leading axes, e.g. ``(B, latent_dim)`` or ``(B, S, latent_dim)``.

        Returns
        -------
        probs : ndarray, shape (..., input_dim)
        """
        self.check_params()
        z = np.asarray(z)
        if z.dtype.kind != "f" or z.ndim < 1 or z.shape[-1] != self.latent_dim or z.size == 0:
            raise ValueError(f"z: expected a float array of shape (..., {self.latent_dim}), "
                             f"got dtype {z.dtype} shape {z.shape}")
        z = z.astype(self.dtype, copy=False)
        if not np.isfinite(z).all():
            raise ValueError("z: expected finite values, got NaN or inf")
        return sigmoid(self.engine.decode_logits(z))

    def loss_and_grads(self, x, eps, objective="elbo", kl="analytic", estimator="standard", return_bound=False):
        """The training loss on a batch and its gradient for every parameter.

        Parameters
        ----------
        x : ndarray, shape (B, input_dim)
            Targets in [0, 1] (grayscale or binarized).
        eps : ndarray, shape (B, S, latent_dim)
            Standard normal noise; ``S`` is the number of Monte Carlo samples.
        objective : {"elbo", "iwae"}
            The bound whose negative batch mean is the loss (see
            :mod:`npvae.objectives`).
        kl : {"analytic", "mc"}, default "analytic"
            For the ELBO: the closed-form KL (as in the Keras example), or its
            Monte Carlo estimate ``mean_s log q(z_s|x) - log p(z_s)``, which
            makes the ELBO the mean of the IWAE's log weights. Ignored by IWAE.
        estimator : {"standard", "stl", "dreg"}, default "standard"
            How the encoder's gradient is estimated (the decoder's is the same
            for all three); see :data:`npvae.objectives.ESTIMATORS`. ``"stl"``
            needs log weights (``objective="iwae"`` or ``kl="mc"``);
            ``"dreg"`` needs ``objective="iwae"``. Only ``"standard"`` is the
            exact gradient of the returned loss.
        return_bound : bool, default False
            Return a :class:`npvae.objectives.Bound` (loss, per-example bound,
            reconstruction and KL terms) in place of the scalar loss.

        Returns
        -------
        loss : float or Bound
        grads : dict of str to ndarray
            Same keys, shapes and dtype as :attr:`params`.
        """
        objective, kl, estimator = obj.check_objective(objective, kl, estimator)
        self.check_params()
        x = self.check_data(x)
        eps = self._check_eps(eps, x.shape[0])
        bound, grads = self.engine.loss_and_grads(x, eps, objective, kl, estimator)
        # fresh arrays: an engine may hand out its workspace's (the numba engine does)
        grads = {k: g.copy() for k, g in grads.items()}
        return (bound if return_bound else bound.loss), grads

    def bound(self, x, eps, objective="elbo", kl="analytic"):
        """Evaluate a bound on a batch without gradients.

        Same arguments as :meth:`loss_and_grads`; returns a
        :class:`npvae.objectives.Bound`.
        """
        objective, kl, _ = obj.check_objective(objective, kl)
        self.check_params()
        x = self.check_data(x)
        return self.engine.bound(x, self._check_eps(eps, x.shape[0]), objective, kl)

    # ------------------------------------------------------------------
    # Files
    # ------------------------------------------------------------------
    def save(self, path):
        """Write the architecture and parameters to a versioned ``.npz`` (atomically).

        Load it back with :func:`npvae.load`.
        """
        return serialization.save_model(self, path)


# ----------------------------------------------------------------------------------------
# The model file: written and read by npvae.serialization; the VAE is built here.
# ----------------------------------------------------------------------------------------
MODEL_FORMAT = serialization.MODEL_FORMAT
MODEL_VERSION = serialization.MODEL_VERSION
model_arrays = serialization.model_arrays
save_model = serialization.save_model
checked_headers = serialization.checked_headers


def build_model(config, params, source):
    """A :class:`VAE` of ``config`` holding ``params`` (as :mod:`npvae.serialization` reads
    and checks them from ``source``); ModelFileError naming ``source`` if the stored
    architecture is not one a VAE takes."""
    try:
        model = VAE(**config)
    except (TypeError, ValueError) as exc:
        raise ModelFileError(f"{source}: the stored architecture is not valid: {exc}") from exc
    model.params.update(params)
    return model


def model_from_arrays(arrays, source):
    """Rebuild a :class:`VAE` from :func:`model_arrays`' output (read from ``source``).

    Raises :class:`npvae.io.ModelFileError` naming ``source`` when the format, the version or
    the parameters do not match what the stored architecture needs.
    """
    return build_model(*serialization.model_parts(arrays, source), source)


def load_model(path):
    """Load a model written by :meth:`VAE.save` (or any file that holds one: a training
    checkpoint does).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ModelFileError
        A ``ValueError`` naming the file: damaged file, unknown format or version, or
        parameters that do not fit the stored architecture (found from the arrays'
        headers, before any parameter is read).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected a str or os.PathLike naming a model file, got {type(path).__name__}")
    return build_model(*serialization.read_model(path), repr(str(Path(path))))
