"""Independent PyTorch (CPU) peer of the classic Keras MLP VAE on MNIST.

Used only by the benchmarks (accuracy and speed comparison); it deliberately
does not import ``npvae``, and ``npvae`` must never import this module.

    x (B,784) -> Dense(hidden, relu)... -> mu, log_var (B,L)
    z = mu + exp(log_var/2) * eps,  eps ~ N(0,I) of shape (B,S,L)
    z -> Dense(hidden reversed, relu)... -> logits (B,S,784), Bernoulli likelihood

Weights: Keras glorot_uniform, biases zero.  Optimizer: RMSprop(lr=1e-3,
rho=0.9, eps=1e-7 outside the sqrt) as in Keras.  Random streams (all seeded
from ``seed``): init -> seed, shuffling -> seed, training eps -> seed+1,
validation eps -> seed+2 (re-seeded for every evaluation, so every epoch sees
the same validation noise).
"""
import argparse
import json
import math
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from mnist_idx import load_mnist

__all__ = ["VAE", "build_model", "rmsprop", "evaluate", "train", "load_mnist"]

LOG_2PI = math.log(2.0 * math.pi)


class VAE(nn.Module):
    def __init__(self, input_dim=784, hidden=(256,), latent_dim=2):
        super().__init__()
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
            h = F.relu(layer(h))
        return self.mu(h), self.log_var(h)

    def decode(self, z):
        h = z
        for layer in self.decoder:
            h = F.relu(layer(h))
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


def build_model(input_dim=784, hidden=(256,), latent_dim=2, seed=0):
    model = VAE(input_dim, hidden, latent_dim)
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


def rmsprop(parameters):
    """RMSprop with Keras' settings: lr 1e-3, rho (torch's alpha) 0.9, eps 1e-7 outside the root."""
    return torch.optim.RMSprop(parameters, lr=1e-3, alpha=0.9, eps=1e-7)


def train(model, x_train, epochs, batch_size=100, mc_samples=1, objective="elbo", seed=0,
          x_val=None, threads=None, dtype=torch.float32, callback=None, optimizer=rmsprop):
    """Train in place; return a list of per-epoch dicts (epoch, loss, val_loss, seconds).

    ``optimizer``: a function of the model's parameters that returns the torch optimizer to
    train with (default :func:`rmsprop`); a caller that wants to look at the optimizer's state
    passes one that keeps what it returns."""
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
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="folder with MNIST *.gz IDX files")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--hidden", type=int, nargs="+", default=[256])
    p.add_argument("--latent", type=int, default=2)
    p.add_argument("--mc-samples", type=int, default=1)
    p.add_argument("--objective", choices=["elbo", "iwae"], default="elbo")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--flush-denormal", action="store_true",
                   help="torch.set_flush_denormal(True) (off by default, like Keras/NumPy)")
    p.add_argument("--out", default=None, help="write {config, history} JSON here")
    a = p.parse_args(argv)

    if a.flush_denormal:
        torch.set_flush_denormal(True)
    x_train, x_test = load_mnist(a.data)
    model = build_model(x_train.shape[1], a.hidden, a.latent, a.seed)
    history = train(model, x_train, a.epochs, a.batch_size, a.mc_samples, a.objective, a.seed,
                    x_val=x_test, threads=a.threads, dtype=getattr(torch, a.dtype),
                    callback=lambda r: print(
                        f"epoch {r['epoch']:3d}  loss {r['loss']:.4f}  val_loss {r['val_loss']:.4f}"
                        f"  {r['seconds']:.2f}s", flush=True))
    if a.out:
        config = dict(vars(a), peer="torch", torch_version=torch.__version__,
                      num_threads=torch.get_num_threads())
        with open(a.out, "w") as f:
            json.dump({"config": config, "history": history}, f, indent=1)


if __name__ == "__main__":
    main()
