"""Independent PyTorch (CPU) peer of the classic Keras MLP VAE on MNIST.

Used only by the benchmarks (accuracy and speed comparison); it deliberately
does not import ``npvae``, and ``npvae`` must never import this module.

    x (B,784) -> Dense(hidden, act)... -> mu, log_var (B,L)
    z = mu + exp(log_var/2) * eps,  eps ~ N(0,I) of shape (B,S,L)
    z -> Dense(hidden reversed, act)... -> logits (B,S,784), Bernoulli likelihood

``act`` is relu (the Keras example's, the default) or tanh (Burda et al.'s).
Weights: Keras glorot_uniform, biases zero.  Optimizer: RMSprop(lr=1e-3,
rho=0.9, eps=1e-7 outside the sqrt) as in Keras (the default), or torch's Adam
(:func:`adam`).  Random streams (all seeded from ``seed``): init -> seed,
shuffling -> seed, training eps -> seed+1, validation eps -> seed+2 (re-seeded
for every evaluation, so every epoch sees the same validation noise).
"""
import functools
import json
import math
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from mnist_idx import load_mnist
from peer_args import optimizer_settings, print_epoch, training_parser

__all__ = ["VAE", "ACTIVATIONS", "build_model", "rmsprop", "adam", "OPTIMIZERS", "make_optimizer", "evaluate",
           "train", "load_mnist"]

LOG_2PI = math.log(2.0 * math.pi)
#: The hidden layers' activations by name.
ACTIVATIONS = {"relu": F.relu, "tanh": torch.tanh}


class VAE(nn.Module):
    def __init__(self, input_dim=784, hidden=(256,), latent_dim=2, activation="relu"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation: expected one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.activation = ACTIVATIONS[activation]
        hidden = [hidden] if isinstance(hidden, int) else list(hidden)
        enc_sizes = [input_dim] + hidden
        self.encoder = nn.ModuleList(nn.Linear(a, b) for a, b in zip(enc_sizes[:-1], enc_sizes[1:]))
        self.mu = nn.Linear(hidden[-1], latent_dim)
        self.log_var = nn.Linear(hidden[-1], latent_dim)
        dec_sizes = [latent_dim] + hidden[::-1]
        self.decoder = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dec_sizes[:-1], dec_sizes[1:]))
        self.out = nn.Linear(hidden[0], input_dim)
        self.latent_dim = latent_dim

    def encode(self, x):
        h = x
        for layer in self.encoder:
            h = self.activation(layer(h))
        return self.mu(h), self.log_var(h)

    def decode(self, z):
        h = z
        for layer in self.decoder:
            h = self.activation(layer(h))
        return self.out(h)  # logits

    def loss(self, x, mc_samples=1, objective="elbo", generator=None, eps=None):
        """Mean over the batch of the per-example loss (negative ELBO / IWAE bound).

        eps (B, S, L) may be given explicitly (e.g. to compare with another implementation)."""
        mu, log_var = self.encode(x)                                    # (B, L)
        if eps is None:
            eps = torch.randn(x.shape[0], mc_samples, self.latent_dim,
                              generator=generator, dtype=x.dtype)       # (B, S, L)
        eps = eps.to(x.dtype)
        mc_samples = eps.shape[1]
        z = mu[:, None, :] + torch.exp(0.5 * log_var)[:, None, :] * eps
        logits = self.decode(z)                                         # (B, S, D)
        target = x[:, None, :].expand_as(logits)
        nll = F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(-1)  # (B, S)
        if objective == "elbo":
            kl = -0.5 * torch.sum(1.0 + log_var - mu.square() - torch.exp(log_var), dim=-1)
            return (nll.mean(dim=1) + kl).mean()
        if objective == "iwae":
            log_pz = -0.5 * torch.sum(z.square() + LOG_2PI, dim=-1)
            log_qz = -0.5 * torch.sum(eps.square() + LOG_2PI + log_var[:, None, :], dim=-1)
            log_w = -nll + log_pz - log_qz                              # (B, S)
            bound = torch.logsumexp(log_w, dim=1) - math.log(mc_samples)
            return -bound.mean()
        raise ValueError(f"unknown objective {objective!r}")


def build_model(input_dim=784, hidden=(256,), latent_dim=2, seed=0, activation="relu"):
    model = VAE(input_dim, hidden, latent_dim, activation)
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.Linear):  # Keras glorot_uniform: U(-a, a), a = sqrt(6/(fan_in+fan_out))
            nn.init.xavier_uniform_(m.weight, generator=g)
            nn.init.zeros_(m.bias)
    return model


def _as_tensor(x, dtype):
    return torch.as_tensor(np.asarray(x), dtype=dtype) if not torch.is_tensor(x) else x.to(dtype)


@torch.no_grad()
def evaluate(model, x, mc_samples=1, objective="elbo", seed=0, chunk=None):
    """Full-set mean loss, computed in chunks with fresh eps from a seeded generator."""
    dtype = next(model.parameters()).dtype
    x = _as_tensor(x, dtype)
    g = torch.Generator().manual_seed(seed)
    chunk = chunk or max(1, 20000 // mc_samples)
    total = 0.0
    for i in range(0, x.shape[0], chunk):
        xb = x[i:i + chunk]
        total += model.loss(xb, mc_samples, objective, g).item() * xb.shape[0]
    return total / x.shape[0]


def rmsprop(parameters, lr=1e-3, rho=0.9, epsilon=1e-7):
    """RMSprop with Keras' settings by default: lr 1e-3, rho (torch's alpha) 0.9, epsilon 1e-7
    outside the root."""
    return torch.optim.RMSprop(parameters, lr=lr, alpha=rho, eps=epsilon)


def adam(parameters, lr=1e-3, beta1=0.9, beta2=0.999, epsilon=1e-7):
    """torch's Adam, ``p -= lr * m_hat / (sqrt(v_hat) + epsilon)``, moments started at 0.

    Keras' (and npvae's, and the JAX peer's) Adam adds its epsilon to ``sqrt(v)`` before the
    bias correction, i.e. adds ``epsilon / sqrt(1 - beta2**t)`` to ``sqrt(v_hat)``: the same
    hyperparameters give the same steps but for epsilon's weight, larger here in the first
    steps (by 1 / sqrt(1 - beta2**t): 32 at t = 1, 1.02 at t = 3000 for beta2 = 0.999)."""
    return torch.optim.Adam(parameters, lr=lr, betas=(beta1, beta2), eps=epsilon)


#: The optimizers by name: functions of the parameters and the hyperparameters (named as npvae's).
OPTIMIZERS = {"rmsprop": rmsprop, "adam": adam}


def make_optimizer(name="rmsprop", **hyperparameters):
    """The ``optimizer`` argument of :func:`train` for an optimizer of :data:`OPTIMIZERS` with
    ``hyperparameters`` (its defaults for those not given)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer: expected one of {sorted(OPTIMIZERS)}, got {name!r}")
    return functools.partial(OPTIMIZERS[name], **hyperparameters)


def train(model, x_train, epochs, batch_size=100, mc_samples=1, objective="elbo", seed=0,
          x_val=None, threads=None, dtype=torch.float32, callback=None, optimizer=rmsprop):
    """Train in place; return a list of per-epoch dicts (epoch, loss, val_loss, seconds).

    ``optimizer``: a function of the model's parameters that returns the torch optimizer to
    train with (default :func:`rmsprop`; :func:`make_optimizer` makes one with other
    settings); a caller that wants to look at the optimizer's state passes one that keeps
    what it returns."""
    if threads:
        torch.set_num_threads(threads)
    model.to(dtype)
    x_train = _as_tensor(x_train, dtype)
    n = x_train.shape[0]
    opt = optimizer(model.parameters())
    shuffle_gen = torch.Generator().manual_seed(seed)
    eps_gen = torch.Generator().manual_seed(seed + 1)
    history = []
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=shuffle_gen)
        total = 0.0
        for i in range(0, n, batch_size):  # final partial batch included
            xb = x_train[perm[i:i + batch_size]]
            loss = model.loss(xb, mc_samples, objective, eps_gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * xb.shape[0]
        seconds = time.perf_counter() - t0
        val = None if x_val is None else evaluate(model, x_val, mc_samples, objective, seed + 2)
        rec = {"epoch": epoch, "loss": total / n, "val_loss": val, "seconds": seconds}
        history.append(rec)
        if callback is not None:
            callback(rec)
    return history


def main(argv=None):
    p = training_parser(__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (None: torch's default)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="of the parameters and data")
    p.add_argument("--flush-denormal", action="store_true",
                   help="torch.set_flush_denormal(True) (off by default, like Keras/NumPy)")
    a = p.parse_args(argv)

    if a.flush_denormal:
        torch.set_flush_denormal(True)
    x_train, x_test = load_mnist(a.data)
    model = build_model(x_train.shape[1], a.hidden, a.latent, a.seed, a.activation)
    name, hyperparameters = optimizer_settings(a)
    history = train(model, x_train, a.epochs, a.batch_size, a.mc_samples, a.objective, a.seed,
                    x_val=x_test, threads=a.threads, dtype=getattr(torch, a.dtype), callback=print_epoch,
                    optimizer=make_optimizer(name, **hyperparameters))
    if a.out:
        config = dict(vars(a), peer="torch", torch_version=torch.__version__,
                      num_threads=torch.get_num_threads())
        with open(a.out, "w") as f:
            json.dump({"config": config, "history": history}, f, indent=1)


if __name__ == "__main__":
    main()
