"""The VAE: parameters, encoder, decoder, and the loss with its gradients.

The model is the MLP VAE of Kingma & Welling (2014) and of the classic Keras
example: a Gaussian encoder ``q(z|x) = N(mu(x), diag(exp(log_var(x))))``, the
reparameterization ``z = mu + exp(log_var / 2) * eps`` with ``eps`` of shape
``(B, S, L)``, and a Bernoulli decoder ``p(x|z)`` given by logits.
"""

import warnings
from contextlib import nullcontext

import numpy as np

from . import _validate as check
from . import objectives as obj
from . import ops

__all__ = ["VAE"]

BACKENDS = ("auto", "numba", "numpy")
_warned_no_numba = False


def _numba_importable():
    """Whether numba can be imported, without importing it (that costs ~1 s)."""
    import importlib.util
    import sys
    if "numba" in sys.modules:                 # imported, or blocked with sys.modules["numba"] = None
        return sys.modules["numba"] is not None
    try:
        return importlib.util.find_spec("numba") is not None
    except (ImportError, ValueError):
        return False


def _warn_no_numba(reason="numba is not installed"):
    global _warned_no_numba
    if not _warned_no_numba:
        _warned_no_numba = True
        warnings.warn(f"{reason}; npvae uses its NumPy reference path (slower). pip install numba",
                      RuntimeWarning, stacklevel=4)


def _resolve_backend(backend):
    """"auto" -> "numba" if numba is installed, else "numpy" with one warning per process."""
    backend = check.choice(backend, "backend", BACKENDS)
    if backend == "numba":
        from . import kernels
        kernels.require()
    elif backend == "auto":
        if _numba_importable():
            backend = "numba"
        else:
            backend = "numpy"
            _warn_no_numba()
    return backend


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
        Parameter and computation dtype. Gradient checks need float64.
    backend : {"auto", "numba", "numpy"}, default "auto"
        How the loss and gradients are computed: ``"numpy"`` composes the
        reference ops of :mod:`npvae.ops` (the specification); ``"numba"`` runs
        the fused kernels of :mod:`npvae.fused` (same results to float rounding,
        several times faster, preallocated workspaces). ``"auto"`` picks numba
        when it is installed, else NumPy with a warning. Not part of
        :attr:`config`: a saved model loads with ``"auto"``.
    threads : int or None, default None
        Threads of a numba-backend step: a large step (from 2048 rows ``B * S``)
        is split into this many groups of examples, run at once, each with
        single-threaded matrix products; a smaller one runs as one group, its
        products threaded by BLAS and, in float32, its elementwise passes split
        over BLAS's threads (:mod:`npvae.fused`). None: as many as NumPy's
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
        ``"numba"`` or ``"numpy"``, as resolved from the ``backend`` argument.
    threads : int or None
        As the argument.

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
        self.activation = check.choice(activation, "activation", tuple(ops.ACTIVATIONS))
        if seed is not None:
            seed = check.positive_int(seed, "seed", minimum=0)
        self.seed = seed
        self.dtype = check.float_dtype(dtype)
        self.backend = _resolve_backend(backend)
        self.threads = threads
        self.params = self._init_params(np.random.default_rng(seed))

    @property
    def threads(self):
        return self._threads

    @threads.setter
    def threads(self, value):
        self._threads = None if value is None else check.positive_int(value, "threads")

    # ------------------------------------------------------------------
    def _layer_shapes(self):
        """(name, fan_in, fan_out) of every dense layer, encoder then decoder."""
        layers = []
        sizes = (self.input_dim,) + self.hidden
        for i in range(len(self.hidden)):
            layers.append((f"enc.{i}", sizes[i], sizes[i + 1]))
        layers.append(("enc.mu", self.hidden[-1], self.latent_dim))
        layers.append(("enc.logvar", self.hidden[-1], self.latent_dim))
        sizes = (self.latent_dim,) + self.hidden[::-1]
        for i in range(len(self.hidden)):
            layers.append((f"dec.{i}", sizes[i], sizes[i + 1]))
        layers.append(("dec.out", self.hidden[0], self.input_dim))
        return layers

    def _init_params(self, rng):
        # Keras' glorot_uniform: U(-a, a), a = sqrt(6 / (fan_in + fan_out)).
        # Drawn in float64 so that float32 and float64 models of one seed agree.
        params = {}
        for name, fan_in, fan_out in self._layer_shapes():
            limit = np.sqrt(6.0 / (fan_in + fan_out))
            params[f"{name}.W"] = rng.uniform(-limit, limit, (fan_in, fan_out)).astype(self.dtype)
            params[f"{name}.b"] = np.zeros(fan_out, dtype=self.dtype)
        return params

    def _check_params(self):
        for name, fan_in, fan_out in self._layer_shapes():
            for key, shape in ((f"{name}.W", (fan_in, fan_out)), (f"{name}.b", (fan_out,))):
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

    def _fused(self):
        """:mod:`npvae.fused` if this model runs the numba backend, else None.

        Imported here, on first use, so that ``import npvae`` never imports numba.
        """
        if self.backend != "numba":
            return None
        from . import fused
        if not fused.K.AVAILABLE:  # "auto" found numba installed, but it failed to import
            self.backend = "numpy"
            _warn_no_numba(f"numba could not be imported ({fused.K._IMPORT_ERROR})")
            return None
        return fused

    # ------------------------------------------------------------------
    # Input checks
    # ------------------------------------------------------------------
    def _steps(self, batch, mc_samples):
        """Context manager for a loop of steps of ``batch`` examples and ``mc_samples``
        samples: :func:`npvae.fused.steps_context` with the numba backend, else nothing."""
        fused = self._fused()
        return nullcontext() if fused is None else fused.steps_context(self, batch, mc_samples)

    def _check_x(self, x, name="x"):
        return check.float_array(x, name, ("B", self.input_dim), dtype=self.dtype, lo=0.0, hi=1.0)

    def _check_eps(self, eps, batch):
        eps = check.float_array(eps, "eps", (batch, "S", self.latent_dim), dtype=self.dtype)
        return eps

    def sample_eps(self, batch, mc_samples=1, rng=None):
        """Draw standard normal noise of shape ``(batch, mc_samples, latent_dim)``.

        Parameters
        ----------
        batch, mc_samples : int
        rng : numpy.random.Generator or int or None
            The source of randomness (an int seeds a new Generator).
        """
        batch = check.positive_int(batch, "batch")
        mc_samples = check.positive_int(mc_samples, "mc_samples")
        return self._draw_eps(np.random.default_rng(rng), batch, mc_samples)

    def _draw_eps(self, rng, batch, mc_samples):
        # Drawn in float64 whatever the model's dtype: a float32 run then sees the
        # same noise as a float64 run of the same seed, rounded.
        return rng.standard_normal((batch, mc_samples, self.latent_dim)).astype(self.dtype, copy=False)

    # ------------------------------------------------------------------
    # Forward pieces
    # ------------------------------------------------------------------
    def _hidden_forward(self, prefix, h):
        """The hidden stack ``prefix.0``, ``prefix.1``, ...: dense then activation, with caches."""
        act_forward, _ = ops.ACTIVATIONS[self.activation]
        caches = []
        for i in range(len(self.hidden)):
            a, c_dense = ops.dense_forward(h, self.params[f"{prefix}.{i}.W"], self.params[f"{prefix}.{i}.b"])
            h, c_act = act_forward(a)
            caches.append((c_dense, c_act))
        return h, caches

    def _hidden_backward(self, prefix, dh, caches, grads):
        """Backward of :meth:`_hidden_forward`: fills ``grads`` and returns the input's gradient."""
        _, act_backward = ops.ACTIVATIONS[self.activation]
        for i in reversed(range(len(self.hidden))):
            c_dense, c_act = caches[i]
            dh, grads[f"{prefix}.{i}.W"], grads[f"{prefix}.{i}.b"] = ops.dense_backward(act_backward(dh, c_act), c_dense)
        return dh

    def _encode(self, x):
        h, caches = self._hidden_forward("enc", x)                              # (B, H)
        mu, c_mu = ops.dense_forward(h, self.params["enc.mu.W"], self.params["enc.mu.b"])
        log_var, c_lv = ops.dense_forward(h, self.params["enc.logvar.W"], self.params["enc.logvar.b"])
        return mu, log_var, (caches, c_mu, c_lv)

    def _encode_backward(self, dmu, dlog_var, cache, grads):
        caches, c_mu, c_lv = cache
        dh, grads["enc.mu.W"], grads["enc.mu.b"] = ops.dense_backward(dmu, c_mu)
        dh_lv, grads["enc.logvar.W"], grads["enc.logvar.b"] = ops.dense_backward(dlog_var, c_lv)
        self._hidden_backward("enc", dh + dh_lv, caches, grads)  # the data's gradient is not needed

    def _decode_logits(self, z):
        h, caches = self._hidden_forward("dec", z)                              # (..., H)
        logits, c_out = ops.dense_forward(h, self.params["dec.out.W"], self.params["dec.out.b"])
        return logits, (caches, c_out)

    def _decode_backward(self, dlogits, cache, grads):
        caches, c_out = cache
        dh, grads["dec.out.W"], grads["dec.out.b"] = ops.dense_backward(dlogits, c_out)
        return self._hidden_backward("dec", dh, caches, grads)

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
        self._check_params()
        mu, log_var, _ = self._encode(self._check_x(x))
        return mu, log_var

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
        self._check_params()
        z = np.asarray(z)
        if z.dtype.kind != "f" or z.ndim < 1 or z.shape[-1] != self.latent_dim or z.size == 0:
            raise ValueError(f"z: expected a float array of shape (..., {self.latent_dim}), "
                             f"got dtype {z.dtype} shape {z.shape}")
        z = z.astype(self.dtype, copy=False)
        if not np.isfinite(z).all():
            raise ValueError("z: expected finite values, got NaN or inf")
        logits, _ = self._decode_logits(z)
        return ops.sigmoid(logits)

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
        self._check_params()
        x = self._check_x(x)
        eps = self._check_eps(eps, x.shape[0])
        loss, grads = self._loss_and_grads(x, eps, objective, kl, estimator, return_bound)
        if self.backend == "numba":
            # the fused path's grads live in a workspace that the next call overwrites
            grads = {k: g.copy() for k, g in grads.items()}
        return loss, grads

    def bound(self, x, eps, objective="elbo", kl="analytic"):
        """Evaluate a bound on a batch without gradients.

        Same arguments as :meth:`loss_and_grads`; returns a
        :class:`npvae.objectives.Bound`.
        """
        objective, kl, _ = obj.check_objective(objective, kl)
        self._check_params()
        x = self._check_x(x)
        return self._forward(x, self._check_eps(eps, x.shape[0]), objective, kl)[0]

    def _loss_and_grads(self, x, eps, objective, kl="analytic", estimator="standard", return_bound=False):
        """:meth:`loss_and_grads` on trusted inputs (the training loop checks once).

        With the numba backend the grads are views into a workspace that the next
        call of the same shapes overwrites (see :func:`npvae.fused.loss_and_grads`).
        """
        fused = self._fused()
        if fused is not None:
            return fused.loss_and_grads(self, x, eps, objective, kl, estimator, return_bound)
        bound, cache = self._forward(x, eps, objective, kl)
        grads = self._backward(cache, estimator)
        return (bound if return_bound else bound.loss), grads

    def _forward(self, x, eps, objective, kl):
        """The bound, and every op's cache for :meth:`_backward`.

        With the numba backend: the bound from :func:`npvae.fused.forward` and no cache
        (``None``); only the NumPy path's :meth:`_loss_and_grads` uses the cache.
        """
        fused = self._fused()
        if fused is not None:
            return fused.forward(self, x, eps, objective, kl), None
        c = {"objective": objective, "log_weights": objective == "iwae" or kl == "mc"}
        mu, log_var, c["enc"] = self._encode(x)                     # (B, L) each
        z, c["z"] = ops.reparam_forward(mu, log_var, eps)           # (B, S, L)
        logits, c["dec"] = self._decode_logits(z)                   # (B, S, D)
        nll, c["nll"] = ops.bernoulli_nll_forward(logits, x)        # (B, S)
        kl_exact, c["kl"] = ops.gaussian_kl_forward(mu, log_var)    # (B,)
        if c["log_weights"]:
            log_pz, c["pz"] = ops.log_standard_normal_forward(z)    # (B, S)
            log_qz, c["qz"] = ops.log_normal_diag_forward(z, mu, log_var)
            log_w = -nll + log_pz - log_qz                          # (B, S)
        if objective == "iwae":
            bound, c["bound"] = obj.iwae_forward(log_w)             # (B,)
        elif c["log_weights"]:
            bound, c["bound"] = obj.elbo_forward(log_w, np.zeros_like(kl_exact))
        else:
            bound, c["bound"] = obj.elbo_forward(-nll, kl_exact)
        result = obj.Bound(float(-bound.mean()), bound, float(nll.mean()), float(kl_exact.mean()))
        return result, c

    def _backward(self, c, estimator="standard"):
        """Gradients of the loss ``-mean(bound)`` for every parameter, in reverse order of :meth:`_forward`."""
        grads = {}
        B = c["kl"][0].shape[0]
        dbound = np.full(B, -1.0 / B, dtype=self.dtype)             # d loss / d bound
        if c["objective"] == "iwae":
            dlog_w = obj.iwae_backward(dbound, c["bound"])          # (B, S)
        elif c["log_weights"]:
            dlog_w, _ = obj.elbo_backward(dbound, c["bound"])
        if c["log_weights"]:
            dlog_px = dlog_w
            dz = ops.log_standard_normal_backward(dlog_w, c["pz"])  # (B, S, L)
            dz_q, dmu, dlog_var = ops.log_normal_diag_backward(-dlog_w, c["qz"])
            dz = dz + dz_q
            if estimator != "standard":
                # STL and DReG drop the score term: log q's direct dependence on mu, log_var
                dmu, dlog_var = np.zeros_like(dmu), np.zeros_like(dlog_var)
        else:
            dlog_px, dkl = obj.elbo_backward(dbound, c["bound"])    # (B, S), (B,)
            dmu, dlog_var = ops.gaussian_kl_backward(dkl, c["kl"])  # (B, L)
            dz = 0.0
        dlogits = ops.bernoulli_nll_backward(-dlog_px, c["nll"])    # (B, S, D)
        dz = dz + self._decode_backward(dlogits, c["dec"], grads)   # (B, S, L)
        if estimator == "dreg":
            dz = obj.dreg_rescale(dz, c["bound"])                   # weights w~ -> w~^2 on the path to the encoder
        dmu_z, dlog_var_z = ops.reparam_backward(dz, c["z"])        # (B, L)
        self._encode_backward(dmu + dmu_z, dlog_var + dlog_var_z, c["enc"], grads)
        return grads

    # ------------------------------------------------------------------
    # Files
    # ------------------------------------------------------------------
    def save(self, path):
        """Write the architecture and parameters to a versioned ``.npz`` (atomically).

        Load it back with :func:`npvae.load`.
        """
        from .io import save_model
        return save_model(self, path)
