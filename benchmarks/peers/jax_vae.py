"""Independent JAX (XLA on the CPU) peer of the classic Keras MLP VAE on MNIST.

Used only by the benchmarks (speed, and a check of the loss and gradients on npvae's weights);
it does not import ``npvae``, and ``npvae`` never imports this module. The same model, loss and
optimizers as ``torch_vae.py``:

    x (B,784) -> Dense(hidden, act)... -> mu, log_var (B,L)
    z = mu + exp(log_var/2) * eps,  eps ~ N(0,I) of shape (B,S,L)
    z -> Dense(hidden reversed, act)... -> logits (B,S,784), Bernoulli likelihood from logits

``act`` is relu (the default) or tanh. Weights: Keras glorot_uniform, biases zero. RMSprop
with Keras 2 semantics (lr 1e-3, rho 0.9, eps 1e-7 outside the square root; the default) or
Adam with Keras' (:class:`Adam`, npvae's too). The whole training step (loss, gradients by
``jax.grad``, the optimizer's update) is one ``jax.jit``-compiled function; noise comes from
``jax.random``.

XLA's CPU thread pool takes its size from the CPUs the process may run on, not from an
environment variable: call :func:`setup` (``os.sched_setaffinity`` to ``threads`` CPUs) before
anything imports jax. ``python benchmarks/peers/jax_vae.py --threads T`` does.
"""
import functools
import json
import math
import os
import sys
import time
from typing import NamedTuple

import numpy as np
from mnist_idx import load_mnist  # noqa: F401  (the peers' reader; main and the benchmarks use it)
from peer_args import optimizer_settings, print_epoch, training_parser

LOG_2PI = math.log(2.0 * math.pi)
#: The hidden layers' activations (names of ``jax.nn`` / ``jax.numpy`` functions).
ACTIVATIONS = ("relu", "tanh")
_jax = None


def setup(threads=None):
    """Pin this process to ``threads`` CPUs (if given), then import jax; returns the module.

    Must run before jax is first imported: XLA sizes its thread pool from the affinity mask.
    """
    global _jax
    if _jax is not None:
        return _jax
    if "jax" in sys.modules and threads:
        raise RuntimeError("jax_vae.setup: jax was imported before the CPUs were pinned")
    if threads:
        cpus = sorted(os.sched_getaffinity(0))[:threads]
        os.sched_setaffinity(0, cpus)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    jax.config.update("jax_enable_x64", True)   # float64 available for the gradient check
    _jax = jax
    return jax


def layer_sizes(input_dim=784, hidden=(256,), latent_dim=2):
    """[(name, fan_in, fan_out)] in npvae's order and names (encoder, mu, logvar, decoder, out)."""
    hidden = [hidden] if isinstance(hidden, int) else list(hidden)
    sizes = [input_dim] + hidden
    layers = [(f"enc.{i}", sizes[i], sizes[i + 1]) for i in range(len(hidden))]
    layers += [("enc.mu", hidden[-1], latent_dim), ("enc.logvar", hidden[-1], latent_dim)]
    sizes = [latent_dim] + hidden[::-1]
    layers += [(f"dec.{i}", sizes[i], sizes[i + 1]) for i in range(len(hidden))]
    layers.append(("dec.out", hidden[0], input_dim))
    return layers


def build_model(input_dim=784, hidden=(256,), latent_dim=2, seed=0, dtype="float32"):
    """Parameters ``{name: array}`` (names as npvae's), Keras glorot_uniform from a NumPy seed."""
    jnp = setup().numpy
    rng = np.random.default_rng(seed)
    params = {}
    for name, fan_in, fan_out in layer_sizes(input_dim, hidden, latent_dim):
        a = math.sqrt(6.0 / (fan_in + fan_out))
        params[f"{name}.W"] = jnp.asarray(rng.uniform(-a, a, (fan_in, fan_out)), dtype=dtype)
        params[f"{name}.b"] = jnp.zeros(fan_out, dtype=dtype)
    return params


def _n_hidden(params):
    return sum(1 for k in params if k.startswith("enc.") and k.endswith(".W") and k[4:-2].isdigit())


def _activation(name):
    if name not in ACTIVATIONS:
        raise ValueError(f"activation: expected one of {list(ACTIVATIONS)}, got {name!r}")
    jax = setup()
    return jax.nn.relu if name == "relu" else jax.numpy.tanh


def loss_fn(params, x, eps, objective="elbo", activation="relu"):
    """Mean over the batch of the negative ELBO (analytic KL) or IWAE bound; eps (B, S, L)."""
    jax = setup()
    jnp = jax.numpy
    act = _activation(activation)
    nh = _n_hidden(params)
    h = x
    for i in range(nh):
        h = act(h @ params[f"enc.{i}.W"] + params[f"enc.{i}.b"])
    mu = h @ params["enc.mu.W"] + params["enc.mu.b"]
    log_var = h @ params["enc.logvar.W"] + params["enc.logvar.b"]
    z = mu[:, None, :] + jnp.exp(0.5 * log_var)[:, None, :] * eps
    h = z
    for i in range(nh):
        h = act(h @ params[f"dec.{i}.W"] + params[f"dec.{i}.b"])
    logits = h @ params["dec.out.W"] + params["dec.out.b"]                  # (B, S, D)
    nll = jnp.sum(jax.nn.softplus(logits) - x[:, None, :] * logits, axis=-1)   # (B, S)
    if objective == "elbo":
        kl = -0.5 * jnp.sum(1.0 + log_var - mu * mu - jnp.exp(log_var), axis=-1)
        return jnp.mean(jnp.mean(nll, axis=1) + kl)
    log_pz = -0.5 * jnp.sum(z * z + LOG_2PI, axis=-1)
    log_qz = -0.5 * jnp.sum(eps * eps + LOG_2PI + log_var[:, None, :], axis=-1)
    bound = jax.scipy.special.logsumexp(-nll + log_pz - log_qz, axis=1) - math.log(eps.shape[1])
    return -jnp.mean(bound)


class RMSprop(NamedTuple):
    """RMSprop with Keras 2 semantics: ``v <- rho v + (1 - rho) g**2``,
    ``p <- p - lr g / (sqrt(v) + epsilon)``, ``v`` started at 0. Hashable: a key of :func:`make_step`."""
    lr: float = 1e-3
    rho: float = 0.9
    epsilon: float = 1e-7

    def init(self, params):
        """The state before the first step: ``{"v": zeros like params}``."""
        jnp = setup().numpy
        return {"v": {k: jnp.zeros_like(p) for k, p in params.items()}}

    def update(self, params, grads, state):
        """``(params, state)`` after one step on ``grads`` (traced inside the compiled step)."""
        jnp = setup().numpy
        v = {k: self.rho * state["v"][k] + (1.0 - self.rho) * grads[k] * grads[k] for k in params}
        params = {k: params[k] - self.lr * grads[k] / (jnp.sqrt(v[k]) + self.epsilon) for k in params}
        return params, {"v": v}


class Adam(NamedTuple):
    """Adam with Keras' semantics (npvae's ``optim.Adam``): at step ``t = 1, 2, ...``
    ``m <- beta1 m + (1 - beta1) g``, ``v <- beta2 v + (1 - beta2) g**2``,
    ``p <- p - alpha_t m / (sqrt(v) + epsilon)`` with ``alpha_t = lr sqrt(1 - beta2**t) /
    (1 - beta1**t)`` (in float64, rounded to the parameters' dtype); moments started at 0.
    Hashable: a key of :func:`make_step`."""
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    epsilon: float = 1e-7

    def init(self, params):
        """The state before the first step: ``{"m", "v": zeros like params, "t": 0}``."""
        jnp = setup().numpy
        zeros = lambda: {k: jnp.zeros_like(p) for k, p in params.items()}  # noqa: E731
        return {"m": zeros(), "v": zeros(), "t": jnp.zeros((), jnp.int32)}

    def update(self, params, grads, state):
        """``(params, state)`` after one step on ``grads`` (traced inside the compiled step)."""
        jnp = setup().numpy
        t = state["t"] + 1
        tf = t.astype(jnp.float64)
        alpha = self.lr * jnp.sqrt(1.0 - self.beta2 ** tf) / (1.0 - self.beta1 ** tf)
        m = {k: self.beta1 * state["m"][k] + (1.0 - self.beta1) * grads[k] for k in params}
        v = {k: self.beta2 * state["v"][k] + (1.0 - self.beta2) * grads[k] * grads[k] for k in params}
        params = {k: params[k] - alpha.astype(params[k].dtype) * m[k] / (jnp.sqrt(v[k]) + self.epsilon)
                  for k in params}
        return params, {"m": m, "v": v, "t": t}


#: The optimizers by name, their hyperparameters named as npvae's.
OPTIMIZERS = {"rmsprop": RMSprop, "adam": Adam}


def make_optimizer(name="rmsprop", **hyperparameters):
    """The ``optimizer`` argument of :func:`train`: an optimizer of :data:`OPTIMIZERS` with
    ``hyperparameters`` (its defaults for those not given)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer: expected one of {sorted(OPTIMIZERS)}, got {name!r}")
    return OPTIMIZERS[name](**hyperparameters)


@functools.lru_cache(maxsize=None)
def make_step(mc_samples, latent_dim, objective="elbo", optimizer=RMSprop(), activation="relu"):
    """The jit-compiled training step ``(params, state, x, key) -> (params, state, loss)``:
    noise from ``key``, the loss and its gradient, the optimizer's update (``state`` is
    ``optimizer.init(params)`` before the first step). One per setting (cached: the optimizer
    and its hyperparameters are part of the key), so that a warm-up run compiles what the
    timed run uses."""
    jax = setup()

    def step(params, state, x, key):
        eps = jax.random.normal(key, (x.shape[0], mc_samples, latent_dim), dtype=x.dtype)
        loss, grads = jax.value_and_grad(loss_fn)(params, x, eps, objective, activation)
        params, state = optimizer.update(params, grads, state)
        return params, state, loss

    return jax.jit(step, donate_argnums=(0, 1))


def evaluate(params, x, mc_samples=1, objective="elbo", seed=0, chunk=None, activation="relu"):
    """Mean loss over ``x`` in chunks, with fresh noise from a seeded key."""
    jax = setup()
    jnp = jax.numpy
    latent = params["enc.mu.b"].shape[0]
    chunk = chunk or max(1, 20000 // mc_samples)
    f = jax.jit(lambda p, xb, e: loss_fn(p, xb, e, objective, activation))
    key = jax.random.PRNGKey(seed)
    total = 0.0
    for i in range(0, len(x), chunk):
        xb = jnp.asarray(x[i:i + chunk])
        key, sub = jax.random.split(key)
        eps = jax.random.normal(sub, (xb.shape[0], mc_samples, latent), dtype=xb.dtype)
        total += float(f(params, xb, eps)) * xb.shape[0]
    return total / len(x)


def train(params, x_train, epochs, batch_size=100, mc_samples=1, objective="elbo", seed=0, x_val=None,
          threads=None, dtype="float32", callback=None, optimizer=RMSprop(), activation="relu"):
    """Train; returns ``(params, history)``, a list of per-epoch dicts (epoch, loss, val_loss, seconds).

    ``optimizer``: :class:`RMSprop` (default, Keras' settings) or :class:`Adam`, e.g. from
    :func:`make_optimizer`; ``activation``: the hidden layers', "relu" or "tanh". The last,
    smaller batch of an epoch is a step too (its own compiled shape), as in npvae.
    """
    jax = setup(threads)
    jnp = jax.numpy
    params = {k: jnp.asarray(p, dtype=dtype) for k, p in params.items()}
    state = optimizer.init(params)
    # batches are gathered in NumPy and handed to the compiled step: slicing a jax array with a
    # new Python start index would compile a new slice for every step
    x_train = np.ascontiguousarray(x_train, dtype=dtype)
    n = x_train.shape[0]
    step = make_step(mc_samples, params["enc.mu.b"].shape[0], objective, optimizer, activation)
    order_rng = np.random.default_rng(seed)
    key = jax.random.PRNGKey(seed + 1)
    history = []
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        perm = order_rng.permutation(n)
        losses = []
        for i in range(0, n, batch_size):
            xb = x_train[perm[i:i + batch_size]]
            key, sub = jax.random.split(key)
            params, state, loss = step(params, state, xb, sub)
            losses.append((loss, xb.shape[0]))
        total = sum(float(loss) * b for loss, b in losses)     # one sync at the end of the epoch
        seconds = time.perf_counter() - t0
        val = None if x_val is None else evaluate(params, x_val, mc_samples, objective, seed + 2,
                                                  activation=activation)
        rec = {"epoch": epoch, "loss": total / n, "val_loss": val, "seconds": seconds}
        history.append(rec)
        if callback is not None:
            callback(rec)
    return params, history


def main(argv=None):
    p = training_parser(__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=None, help="CPUs the process (and XLA's pool) may use")
    a = p.parse_args(argv)
    jax = setup(a.threads)
    x_train, x_test = load_mnist(a.data)
    params = build_model(x_train.shape[1], a.hidden, a.latent, a.seed)
    name, hyperparameters = optimizer_settings(a)
    _, history = train(params, x_train, a.epochs, a.batch_size, a.mc_samples, a.objective, a.seed, x_val=x_test,
                       callback=print_epoch, optimizer=make_optimizer(name, **hyperparameters),
                       activation=a.activation)
    if a.out:
        config = dict(vars(a), peer="jax", jax_version=jax.__version__, cpus=len(os.sched_getaffinity(0)))
        with open(a.out, "w") as f:
            json.dump({"config": config, "history": history}, f, indent=1)


if __name__ == "__main__":
    main()
