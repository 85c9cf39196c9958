"""Independent JAX (XLA on the CPU) peer of the classic Keras MLP VAE on MNIST.

Used only by the benchmarks (speed, and a check of the loss and gradients on npvae's weights);
it does not import ``npvae``, and ``npvae`` never imports this module. The same model, loss and
optimizer as ``torch_vae.py``:

    x (B,784) -> Dense(hidden, relu)... -> mu, log_var (B,L)
    z = mu + exp(log_var/2) * eps,  eps ~ N(0,I) of shape (B,S,L)
    z -> Dense(hidden reversed, relu)... -> logits (B,S,784), Bernoulli likelihood from logits

Weights: Keras glorot_uniform, biases zero. RMSprop with Keras 2 semantics (lr 1e-3, rho 0.9,
eps 1e-7 outside the square root). The whole training step (loss, gradients by ``jax.grad``,
the RMSprop update) is one ``jax.jit``-compiled function; noise comes from ``jax.random``.

XLA's CPU thread pool takes its size from the CPUs the process may run on, not from an
environment variable: call :func:`setup` (``os.sched_setaffinity`` to ``threads`` CPUs) before
anything imports jax. ``python benchmarks/peers/jax_vae.py --threads T`` does.
"""
import argparse
import functools
import json
import math
import os
import sys
import time

import numpy as np
from mnist_idx import load_mnist  # noqa: F401  (the peers' reader; main and the benchmarks use it)

LOG_2PI = math.log(2.0 * math.pi)
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


def loss_fn(params, x, eps, objective="elbo"):
    """Mean over the batch of the negative ELBO (analytic KL) or IWAE bound; eps (B, S, L)."""
    jax = setup()
    jnp = jax.numpy
    nh = _n_hidden(params)
    h = x
    for i in range(nh):
        h = jax.nn.relu(h @ params[f"enc.{i}.W"] + params[f"enc.{i}.b"])
    mu = h @ params["enc.mu.W"] + params["enc.mu.b"]
    log_var = h @ params["enc.logvar.W"] + params["enc.logvar.b"]
    z = mu[:, None, :] + jnp.exp(0.5 * log_var)[:, None, :] * eps
    h = z
    for i in range(nh):
        h = jax.nn.relu(h @ params[f"dec.{i}.W"] + params[f"dec.{i}.b"])
    logits = h @ params["dec.out.W"] + params["dec.out.b"]                  # (B, S, D)
    nll = jnp.sum(jax.nn.softplus(logits) - x[:, None, :] * logits, axis=-1)   # (B, S)
    if objective == "elbo":
        kl = -0.5 * jnp.sum(1.0 + log_var - mu * mu - jnp.exp(log_var), axis=-1)
        return jnp.mean(jnp.mean(nll, axis=1) + kl)
    log_pz = -0.5 * jnp.sum(z * z + LOG_2PI, axis=-1)
    log_qz = -0.5 * jnp.sum(eps * eps + LOG_2PI + log_var[:, None, :], axis=-1)
    bound = jax.scipy.special.logsumexp(-nll + log_pz - log_qz, axis=1) - math.log(eps.shape[1])
    return -jnp.mean(bound)


@functools.lru_cache(maxsize=None)
def make_step(mc_samples, latent_dim, objective="elbo", lr=1e-3, rho=0.9, epsilon=1e-7):
    """The jit-compiled training step ``(params, v, x, key) -> (params, v, loss)``: noise from
    ``key``, the loss and its gradient, Keras' RMSprop update. One per setting (cached), so
    that a warm-up run compiles what the timed run uses."""
    jax = setup()
    jnp = jax.numpy

    def step(params, v, x, key):
        eps = jax.random.normal(key, (x.shape[0], mc_samples, latent_dim), dtype=x.dtype)
        loss, grads = jax.value_and_grad(loss_fn)(params, x, eps, objective)
        v = {k: rho * v[k] + (1.0 - rho) * grads[k] * grads[k] for k in params}
        params = {k: params[k] - lr * grads[k] / (jnp.sqrt(v[k]) + epsilon) for k in params}
        return params, v, loss

    return jax.jit(step, donate_argnums=(0, 1))


def evaluate(params, x, mc_samples=1, objective="elbo", seed=0, chunk=None):
    """Mean loss over ``x`` in chunks, with fresh noise from a seeded key."""
    jax = setup()
    jnp = jax.numpy
    latent = params["enc.mu.b"].shape[0]
    chunk = chunk or max(1, 20000 // mc_samples)
    f = jax.jit(lambda p, xb, e: loss_fn(p, xb, e, objective))
    key = jax.random.PRNGKey(seed)
    total = 0.0
    for i in range(0, len(x), chunk):
        xb = jnp.asarray(x[i:i + chunk])
        key, sub = jax.random.split(key)
        eps = jax.random.normal(sub, (xb.shape[0], mc_samples, latent), dtype=xb.dtype)
        total += float(f(params, xb, eps)) * xb.shape[0]
    return total / len(x)


def train(params, x_train, epochs, batch_size=100, mc_samples=1, objective="elbo", seed=0, x_val=None,
          threads=None, dtype="float32", callback=None):
    """Train; returns ``(params, history)``, a list of per-epoch dicts (epoch, loss, val_loss, seconds).

    The last, smaller batch of an epoch is a step too (its own compiled shape), as in npvae.
    """
    jax = setup(threads)
    jnp = jax.numpy
    params = {k: jnp.asarray(p, dtype=dtype) for k, p in params.items()}
    v = {k: jnp.zeros_like(p) for k, p in params.items()}
    # batches are gathered in NumPy and handed to the compiled step: slicing a jax array with a
    # new Python start index would compile a new slice for every step
    x_train = np.ascontiguousarray(x_train, dtype=dtype)
    n = x_train.shape[0]
    step = make_step(mc_samples, params["enc.mu.b"].shape[0], objective)
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
            params, v, loss = step(params, v, xb, sub)
            losses.append((loss, xb.shape[0]))
        total = sum(float(loss) * b for loss, b in losses)     # one sync at the end of the epoch
        seconds = time.perf_counter() - t0
        val = None if x_val is None else evaluate(params, x_val, mc_samples, objective, seed + 2)
        rec = {"epoch": epoch, "loss": total / n, "val_loss": val, "seconds": seconds}
        history.append(rec)
        if callback is not None:
            callback(rec)
    return params, history


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="folder with MNIST *.gz IDX files")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--hidden", type=int, nargs="+", default=[256])
    p.add_argument("--latent", type=int, default=2)
    p.add_argument("--mc-samples", type=int, default=1)
    p.add_argument("--objective", choices=["elbo", "iwae"], default="elbo")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="CPUs the process (and XLA's pool) may use")
    p.add_argument("--out", default=None, help="write {config, history} JSON here")
    a = p.parse_args(argv)
    jax = setup(a.threads)
    x_train, x_test = load_mnist(a.data)
    params = build_model(x_train.shape[1], a.hidden, a.latent, a.seed)
    _, history = train(params, x_train, a.epochs, a.batch_size, a.mc_samples, a.objective, a.seed, x_val=x_test,
                       callback=lambda r: print(f"epoch {r['epoch']:3d}  loss {r['loss']:.4f}  "
                                                f"val_loss {r['val_loss']:.4f}  {r['seconds']:.2f}s", flush=True))
    if a.out:
        config = dict(vars(a), peer="jax", jax_version=jax.__version__, cpus=len(os.sched_getaffinity(0)))
        with open(a.out, "w") as f:
            json.dump({"config": config, "history": history}, f, indent=1)


if __name__ == "__main__":
    main()
