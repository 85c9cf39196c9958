"""The command line both peers share (``torch_vae.py``, ``jax_vae.py``): the model, the
objective, the optimizer and the run; each peer adds its own options (threads, dtype ...).

The optimizer's hyperparameters are named as npvae's (``lr``, ``rho``, ``beta1``, ``beta2``,
``epsilon``), and their defaults are Keras' (npvae's): RMSprop lr 1e-3, rho 0.9, epsilon 1e-7;
Adam lr 1e-3, beta1 0.9, beta2 0.999, epsilon 1e-7. Like ``mnist_idx.py``, this does not import npvae.
"""
import argparse

OPTIMIZERS = ("rmsprop", "adam")
ACTIVATIONS = ("relu", "tanh")


def training_parser(description):
    """An argument parser with the options both peers take."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default=None, help="folder with MNIST *.gz IDX files")
    p.add_argument("--epochs", type=int, default=10, help="training epochs")
    p.add_argument("--batch-size", type=int, default=100, help="examples per step")
    p.add_argument("--hidden", type=int, nargs="+", default=[256], help="hidden sizes (decoder mirrored)")
    p.add_argument("--latent", type=int, default=2, help="latent size")
    p.add_argument("--activation", choices=ACTIVATIONS, default="relu", help="of the hidden layers")
    p.add_argument("--mc-samples", type=int, default=1, help="Monte Carlo samples S")
    p.add_argument("--objective", choices=["elbo", "iwae"], default="elbo", help="the bound")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="rmsprop", help="the optimizer")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (either optimizer)")
    p.add_argument("--epsilon", type=float, default=1e-7, help="added to the root (either optimizer)")
    p.add_argument("--rho", type=float, default=0.9, help="RMSprop's decay")
    p.add_argument("--beta1", type=float, default=0.9, help="Adam's first moment decay")
    p.add_argument("--beta2", type=float, default=0.999, help="Adam's second moment decay")
    p.add_argument("--seed", type=int, default=0, help="seeds init, order and noise")
    p.add_argument("--out", default=None, help="write {config, history} JSON here")
    return p


def optimizer_settings(args):
    """``(name, hyperparameters)`` of the optimizer the parsed ``args`` ask for."""
    names = ("lr", "rho", "epsilon") if args.optimizer == "rmsprop" else ("lr", "beta1", "beta2", "epsilon")
    return args.optimizer, {name: getattr(args, name) for name in names}


def print_epoch(record):
    """The line a peer prints after each epoch."""
    print(f"epoch {record['epoch']:3d}  loss {record['loss']:.4f}  val_loss {record['val_loss']:.4f}"
          f"  {record['seconds']:.2f}s", flush=True)
