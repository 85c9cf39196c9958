"""npvae against an independent PyTorch implementation of the same VAE.

Two checks, in the spirit of a hand-written model trusted only once it agrees
with an independent reference:

1. Same weights, same data, same ``eps``: the loss and every parameter's
   gradient of npvae (float64) against PyTorch autograd (float64), for the ELBO
   and the IWAE bound.
2. Same training recipe (architecture, Keras glorot_uniform init, RMSprop with
   Keras settings, batch 100, S, fresh noise, float32): the test loss after
   ``--report-epochs`` epochs for several seeds, npvae beside the peer.

Each training run is stored as JSON under ``--work`` and skipped when present,
so the script can be interrupted and started again.

Usage::

    pip install torch==2.13.0
    python benchmarks/compare_peer.py --epochs 50 --seeds 0 1 2 --report-epochs 10 50
"""

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

import _common  # noqa: F401  (first: this checkout's npvae and the peers on sys.path)
from _common import RESULTS, load_mnist, machine, plural

import npvae


def torch_peer():
    import torch
    import torch_vae
    return torch, torch_vae


# ---------------------------------------------------------------------------
# 1. Same weights
# ---------------------------------------------------------------------------
def copy_weights(model, peer, torch):
    """Copy npvae's weights into the peer; returns ``[(npvae layer name, torch Linear)]``.

    The peer's layers, in npvae's order (``model.layer_shapes()``): encoder, mu, log_var,
    decoder, output. npvae's W is (fan_in, fan_out); torch's Linear.weight is (fan_out, fan_in).
    """
    linears = [*peer.encoder, peer.mu, peer.log_var, *peer.decoder, peer.out]
    layers = [(name, linear) for (name, _, _), linear in zip(model.layer_shapes(), linears)]
    with torch.no_grad():
        for name, linear in layers:
            linear.weight.copy_(torch.from_numpy(model.params[f"{name}.W"].T.copy()))
            linear.bias.copy_(torch.from_numpy(model.params[f"{name}.b"]))
    return layers


def same_weights_check(x, hidden=(256,), mc_samples=5, seed=0):
    torch, torch_vae = torch_peer()
    model = npvae.VAE(input_dim=x.shape[1], hidden=hidden, latent_dim=2, seed=seed, backend="numpy")
    peer = torch_vae.build_model(input_dim=x.shape[1], hidden=hidden, latent_dim=2, seed=seed).double()
    layers = copy_weights(model, peer, torch)
    eps = model.sample_eps(x.shape[0], mc_samples, rng=seed)
    rows = []
    for objective in ("elbo", "iwae"):
        loss, grads = model.loss_and_grads(x, eps, objective=objective)
        peer.zero_grad()
        peer_loss = peer.loss(torch.from_numpy(x), mc_samples, objective, eps=torch.from_numpy(eps))
        peer_loss.backward()
        worst = 0.0
        for name, linear in layers:
            worst = max(worst,
                        npvae.gradcheck.relative_error(grads[f"{name}.W"], linear.weight.grad.numpy().T),
                        npvae.gradcheck.relative_error(grads[f"{name}.b"], linear.bias.grad.numpy()))
        rows.append(dict(objective=objective, loss=loss, peer_loss=peer_loss.item(),
                         loss_rel_err=abs(loss - peer_loss.item()) / abs(loss), grad_max_rel_err=worst))
    return rows


def same_steps_check(x, steps=300, seed=0):
    """Train both from the same weights on the same batches and eps (float64, RMSprop)."""
    torch, torch_vae = torch_peer()
    model = npvae.VAE(seed=seed, backend="numpy")
    peer = torch_vae.build_model(seed=seed).double()
    layers = copy_weights(model, peer, torch)
    opt = npvae.optim.RMSprop()
    peer_opt = torch_vae.rmsprop(peer.parameters())
    rng = np.random.default_rng(seed)
    order = rng.permutation(x.shape[0])
    worst_loss = 0.0
    for step in range(steps):
        xb = x[order[(step * 100) % len(order):][:100]]
        eps = model.sample_eps(xb.shape[0], 1, rng)
        loss, grads = model.loss_and_grads(xb, eps)
        opt.step(model.params, grads)
        peer_opt.zero_grad()
        peer_loss = peer.loss(torch.from_numpy(xb), 1, "elbo", eps=torch.from_numpy(eps))
        peer_loss.backward()
        peer_opt.step()
        worst_loss = max(worst_loss, abs(loss - peer_loss.item()) / abs(loss))
    # parameters compared relative to each array's scale: single coordinates pass through 0
    param_err = max(float(np.abs(model.params[f"{n}.W"] - l.weight.detach().numpy().T).max()
                          / np.abs(model.params[f"{n}.W"]).max()) for n, l in layers)
    return dict(steps=steps, loss_rel_err=worst_loss, param_rel_err=param_err, final_loss=loss)


# ---------------------------------------------------------------------------
# 2. Training
# ---------------------------------------------------------------------------
def train_npvae(x_train, x_test, epochs, seed, mc_samples, dtype, backend):
    model = npvae.VAE(seed=seed, dtype=dtype, backend=backend)
    history = npvae.fit(model, x_train, epochs=epochs, batch_size=100, mc_samples=mc_samples,
                        validation_data=x_test, seed=seed, verbose=0)
    return [dict(epoch=r["epoch"], loss=r["loss"], val_loss=r["val_loss"], seconds=r["seconds"]) for r in history]


def train_peer(x_train, x_test, epochs, seed, mc_samples, dtype, threads):
    torch, torch_vae = torch_peer()
    peer = torch_vae.build_model(seed=seed)
    return torch_vae.train(peer, x_train, epochs, batch_size=100, mc_samples=mc_samples, seed=seed,
                           x_val=x_test, threads=threads,
                           dtype=torch.float32 if dtype == "float32" else torch.float64)


def run_cell(work, name, fn):
    path = work / f"{name}.json"
    if path.exists():
        return json.loads(path.read_text())
    t0 = time.perf_counter()
    history = fn()
    npvae.io.atomic_write_text(path, json.dumps(history, indent=1))
    print(f"  {name}: {time.perf_counter() - t0:.0f} s, final val_loss {history[-1]['val_loss']:.3f}", flush=True)
    return history


def summarize(values):
    v = np.asarray(values, dtype=float)
    return v.mean(), (v.std(ddof=1) if len(v) > 1 else float("nan"))


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--epochs", type=int, default=50, help="training epochs of each run")
    parser.add_argument("--report-epochs", type=int, nargs="+", default=[10, 50], help="epochs the table reports")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of each implementation")
    parser.add_argument("--mc-samples", type=int, default=1, help="S in training")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="training dtype")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; set OPENBLAS_NUM_THREADS to the same for NumPy")
    parser.add_argument("--backend", choices=("numpy", "numba", "auto"), default="numpy",
                        help="npvae backend (numpy: the NumPy reference path)")
    parser.add_argument("--data", default=None, help="folder holding MNIST (None: $NPVAE_DATA, then the cache)")
    parser.add_argument("--same-steps", type=int, default=300,
                        help="training steps of the same-batches, same-eps check")
    parser.add_argument("--work", default="runs/compare_peer", help="finished training runs (JSON), kept")
    parser.add_argument("--out", default=str(RESULTS / "peer_accuracy.md"), help="the report")
    return parser


def same_state_checks(x_train, x_test, same_steps):
    """Section 1's two checks, printed as they finish."""
    print("1. same weights, same eps (float64):", flush=True)
    same = same_weights_check(x_test[:100].astype(np.float64))
    for r in same:
        print(f"  {r['objective']}: loss {r['loss']:.10f} vs {r['peer_loss']:.10f}, "
              f"max grad rel err {r['grad_max_rel_err']:.2e}", flush=True)
    steps = same_steps_check(x_train.astype(np.float64), steps=same_steps)
    print(f"  {steps['steps']} RMSprop steps on the same batches and eps: largest loss difference "
          f"{steps['loss_rel_err']:.1e} (relative), parameters {steps['param_rel_err']:.1e} "
          f"(relative to each array's largest entry)", flush=True)
    return same, steps


def train_all(args, x_train, x_test):
    """Every seed of both implementations, each run read back from ``--work`` when finished."""
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    print(f"2. training, {args.epochs} epochs, seeds {args.seeds}:", flush=True)
    runs = {"npvae": {}, "pytorch": {}}
    for seed in args.seeds:
        tag = f"S{args.mc_samples}-{args.dtype}-e{args.epochs}-seed{seed}"
        runs["npvae"][seed] = run_cell(work, f"npvae-{args.backend}-{tag}", lambda: train_npvae(
            x_train, x_test, args.epochs, seed, args.mc_samples, args.dtype, args.backend))
        runs["pytorch"][seed] = run_cell(work, f"pytorch-{tag}", lambda: train_peer(
            x_train, x_test, args.epochs, seed, args.mc_samples, args.dtype, args.threads))
    return runs


def same_state_section(same, steps):
    lines = ["## 1. Same weights, same data, same eps (float64)", "",
             "100 MNIST test images, S = 5, npvae's seed-0 initial weights copied into the peer.", "",
             "| objective | npvae loss | PyTorch loss | relative difference "
             "| max relative difference of any gradient |", "|---|---|---|---|---|"]
    lines += [f"| {r['objective']} | {r['loss']:.10f} | {r['peer_loss']:.10f} | {r['loss_rel_err']:.1e} | "
              f"{r['grad_max_rel_err']:.1e} |" for r in same]
    return lines + [
        "",
        f"Then {steps['steps']} RMSprop steps (float64) from those weights on the same shuffled training batches "
        f"and the same eps: the losses stay equal to {steps['loss_rel_err']:.1e} (largest relative difference over "
        f"the steps), the parameters to {steps['param_rel_err']:.1e} relative to each array's largest entry "
        f"(final loss {steps['final_loss']:.2f}). The two implementations take the same steps.", ""]


def training_section(args, runs):
    """Section 2's table and Welch's t; returns its lines and whether every reported epoch agrees."""
    lines = [
        "## 2. Test loss after training the same way", "",
        f"784-256-2 MLP VAE, Keras glorot_uniform init, RMSprop (lr 1e-3, rho 0.9, eps 1e-7 outside the root), "
        f"batch 100, S = {args.mc_samples}, fresh noise, {args.dtype}, grayscale targets, npvae backend "
        f"`{args.backend}`. Test loss = mean negative ELBO over the 10,000 test images (nats), each implementation "
        f"estimating it with its own fresh S-sample noise. Seeds {args.seeds}: each seed drives init, shuffling and "
        f"noise within an implementation (the two libraries' random streams differ, so runs are compared across "
        f"seeds, not pairwise).", "",
        "| epoch | " + " | ".join(f"npvae seed {s}" for s in args.seeds) + " | "
        + " | ".join(f"PyTorch seed {s}" for s in args.seeds) + " | npvae mean ± sd | PyTorch mean ± sd | "
        "difference of means | within seed spread? |",
        "|---" * (2 * len(args.seeds) + 5) + "|"]
    verdicts, welch = [], []
    for epoch in args.report_epochs:
        a = [runs["npvae"][s][epoch - 1]["val_loss"] for s in args.seeds]
        b = [runs["pytorch"][s][epoch - 1]["val_loss"] for s in args.seeds]
        (ma, sa), (mb, sb) = summarize(a), summarize(b)
        spread = max(max(a) - min(a), max(b) - min(b))
        welch.append((epoch, (ma - mb) / np.sqrt(sa ** 2 / len(a) + sb ** 2 / len(b))))
        verdicts.append(abs(ma - mb) <= spread)   # the same outcomes: means closer than the seeds' own spread
        lines.append(f"| {epoch} | " + " | ".join(f"{v:.2f}" for v in a) + " | " + " | ".join(f"{v:.2f}" for v in b)
                     + f" | {ma:.2f} ± {sa:.2f} | {mb:.2f} ± {sb:.2f} | {ma - mb:+.2f} | "
                     + ("yes" if verdicts[-1] else "**no**") + f" (largest range over seeds {spread:.2f}) |")
    lines += ["", "Welch's t of the difference of means (npvae - PyTorch): " + ", ".join(
        f"{t:+.2f} after {plural(e, 'epoch')}" for e, t in welch)
        + f" ({len(args.seeds)} seeds each; |t| > 2.8 would be a difference at the 5% level with ~4 degrees of "
        "freedom). Section 1 shows the two implementations take the same steps from the same state, so a "
        "difference here would come from the random streams alone."]
    secs = {k: np.median([r["seconds"] for s in args.seeds for r in runs[k][s]]) for k in runs}
    lines += ["", f"Median training time per epoch in these runs (shared 2-core machine, not a benchmark; see "
              f"`speed.md`): npvae {secs['npvae']:.1f} s, PyTorch {secs['pytorch']:.1f} s.", ""]
    return lines, all(verdicts)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if max(args.report_epochs) > args.epochs:
        parser.error("--report-epochs must not exceed --epochs")
    torch, _ = torch_peer()
    torch.set_num_threads(args.threads)
    x_train, x_test = load_mnist(args.data)
    same, steps = same_state_checks(x_train, x_test, args.same_steps)
    runs = train_all(args, x_train, x_test)
    command = "python benchmarks/compare_peer.py " + " ".join(argv if argv is not None else sys.argv[1:])
    training, agree = training_section(args, runs)
    lines = ["# npvae vs an independent PyTorch peer", "",
             f"Made by `{command}` on {datetime.now(timezone.utc):%Y-%m-%d} ({machine()}; torch {torch.__version__}, "
             f"{args.threads} torch thread(s)).", ""] + same_state_section(same, steps) + training
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
