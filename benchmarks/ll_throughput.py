"""Throughput of the importance-sampled log-likelihood (``npvae.log_likelihood``) on the engines.

``log_likelihood(model, x, k)`` runs ``N * k`` decoder rows. Each row's products are
``(1, 256) @ (256, 784)`` (the output layer; the latent layer's 2 x 256 is a fused kernel),
so its floor is set by this machine's matrix-multiply rate. This script measures, for the
seed model (784-256-2, trained briefly so that its logits are those of a real model) and
each contender (engine x dtype x threads):

* decoder rows per second (``N * k / wall``) and the CPU time beside the wall time;
* the fraction of the products' rate: ``N * k * 2 * 256 * 784`` FLOPs over the wall time,
  divided by the rate of the same product, ``(4096, 256) @ (256, 784)`` in the dtype, measured
  in this run right after each measurement, both as one BLAS call on T threads and as T
  single-threaded calls at once on T threads (what the numba engine runs), taking the faster;
* the CPU time other processes used during the measurement (``/proc/stat`` busy time minus
  this process's), marked *disturbed* above ``--disturbed`` (share of the machine) and measured
  again (once).

Contenders alternate within each round (the order rotated per round); the report gives
medians and ranges over the rounds. ``--full`` also times the whole 10,000-image test set at
``k = 5000`` in float32 on all threads (Burda et al.'s protocol).

    python benchmarks/ll_throughput.py --rounds 3 --n 500 --k 5000 --full

writes ``benchmarks/results/ll_throughput.md`` (``--out`` to choose).
"""

import argparse
import os
import sys

import numpy as np

import _common  # noqa: F401  (first: this checkout's npvae on sys.path)
from _common import RESULTS, REPO, gemm_rate, gemm_rate_parallel, load_mnist, machine, plural
from hostload import Meter

GEMM_ROWS = 4096


def output_layer(model):
    """``(fan_in, fan_out)`` of the decoder's output layer: each decoder row's product."""
    return next((fan_in, fan_out) for name, fan_in, fan_out in model.layer_shapes() if name == "dec.out")


def products_rate(model, threads, reps=10):
    """GFLOP/s of ``(4096, 256) @ (256, 784)`` (the output layer's product on 4096 rows) in the
    model's dtype: ``(best, threaded, parallel)`` of one call on ``threads`` BLAS threads and
    ``threads`` single-threaded calls at once."""
    from npvae.fast import blas
    shape = (GEMM_ROWS, *output_layer(model))
    before = blas.current_threads()
    blas.set_threads(threads)
    try:
        threaded = gemm_rate(*shape, dtype=model.dtype, reps=reps)
    finally:
        if before is not None:
            blas.set_threads(before)
    parallel = gemm_rate_parallel(*shape, dtype=model.dtype, threads=threads, reps=reps)
    return max(threaded, parallel), threaded, parallel


def row_flops(model):
    """FLOPs of one decoder row's output product."""
    fan_in, fan_out = output_layer(model)
    return 2.0 * fan_in * fan_out


def trained_model(x_train, dtype, backend, epochs, seed=0):
    import npvae
    model = npvae.VAE(dtype=dtype, backend=backend, seed=seed)
    npvae.fit(model, x_train, epochs=epochs, batch_size=100, verbose=0, seed=seed)
    return model


def measure(model, x, k, threads, seed=0):
    import npvae
    from npvae.fast import blas
    model.threads = threads
    before = blas.current_threads()
    blas.set_threads(threads)
    try:
        with Meter() as m:
            ll = npvae.log_likelihood(model, x, k=k, seed=seed, progress=False)
    finally:
        if before is not None:
            blas.set_threads(before)
    return m, ll


def fmt_range(values, spec):
    return f"{format(min(values), spec)}-{format(max(values), spec)}"


def build_models(args, x_train, x):
    """One model per (engine, dtype) of the contenders, trained, compiled and warmed up."""
    import npvae
    models = {}
    for e, d, _ in args.contenders:
        if (e, d) not in models:
            models[e, d] = trained_model(x_train[:10000], d, e, args.train_epochs)
            npvae.log_likelihood(models[e, d], x[:4], k=64, progress=False)      # compile, workspaces
    return models


def measure_once(args, model, x, contender, r, log):
    """One measurement of a contender, measured again (once) if others disturbed it."""
    e, d, t = contender
    rows = args.n * args.k
    for attempt in range(2):
        m, ll = measure(model, x, args.k, t)
        rate, threaded, parallel = products_rate(model, t)
        disturbed = m.others is not None and m.others > args.disturbed
        line = (f"round {r + 1} {e}-{d} T={t}: {m.wall:.2f} s wall, {m.cpu:.2f} s CPU, "
                f"{rows / m.wall:.3g} rows/s, products {rate:.0f} GFLOP/s, fraction "
                f"{rows * row_flops(model) / m.wall / 1e9 / rate:.2f}, others {100 * (m.others or 0):.0f}%"
                + (" DISTURBED" if disturbed else ""))
        print(line, flush=True)
        log.append(line)
        if not disturbed or attempt == 1:
            return dict(wall=m.wall, cpu=m.cpu, others=m.others, rate=rate, threaded=threaded, parallel=parallel,
                        ll=ll.mean, load=os.getloadavg()[0], disturbed=disturbed)


def run_rounds(args, models, x):
    """``args.rounds`` rounds of every contender, alternating in a rotated order; the records by
    contender and the log of every measurement."""
    results = {c: [] for c in args.contenders}
    log = []
    for r in range(args.rounds):
        order = args.contenders[r % len(args.contenders):] + args.contenders[:r % len(args.contenders)]
        for c in order:
            results[c].append(measure_once(args, models[c[:2]], x, c, r, log))
    return results, log


def measure_full(args, models, x_train, x_test, log):
    """The whole test set at ``k``, float32 on the largest thread count."""
    t = max(args.threads)
    model = models.get(("numba", "float32")) or trained_model(x_train[:10000], "float32", "numba", args.train_epochs)
    m, ll = measure(model, x_test, args.k, t)
    rate = products_rate(model, t)[0]
    full = dict(wall=m.wall, cpu=m.cpu, others=m.others, ll=ll.mean, mc_se=ll.mc_se, threads=t, rate=rate,
                fraction=len(x_test) * args.k * row_flops(model) / m.wall / 1e9 / rate, n=len(x_test))
    line = (f"full test set, float32, T={t}: {m.wall:.1f} s wall, {m.cpu:.1f} s CPU, log-likelihood "
            f"{ll.mean:.3f} (MC SE {ll.mc_se:.3f}), fraction {full['fraction']:.2f}")
    print(line, flush=True)
    log.append(line)
    return full


def report(args, command, results, full, log, flops_per_row):
    rows = args.n * args.k
    out = [
        "# Log-likelihood throughput",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine()}.  ",
        f"Model: the seed's 784-256-2 (relu), trained {plural(args.train_epochs, 'epoch')} on 10,000 images; "
        f"{args.n} test images x k = {args.k} = {rows:.3g} decoder rows per measurement; "
        f"{args.rounds} rounds, contenders alternating.",
        "",
        "Products' rate: `(4096, 256) @ (256, 784)` in the dtype, measured right after each measurement "
        "(best of one call on T BLAS threads and T single-threaded calls at once). Fraction: the "
        "rows' product FLOPs (2 x 256 x 784 each) per second of wall time over that rate. Others: the "
        "CPU share of the machine that other processes took during the measurement.",
        "",
        "| engine | dtype | threads | rows/s (median) | range | wall s (median) | CPU s (median) | "
        "products GFLOP/s | fraction of products' rate (median) | range | others % (max) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (e, d, t), recs in results.items():
        rps = [rows / r["wall"] for r in recs]
        frac = [rows * flops_per_row / r["wall"] / 1e9 / r["rate"] for r in recs]
        out.append(f"| {e} | {d} | {t} | {np.median(rps):.3g} | {fmt_range(rps, '.3g')} | "
                   f"{np.median([r['wall'] for r in recs]):.2f} | {np.median([r['cpu'] for r in recs]):.2f} | "
                   f"{np.median([r['rate'] for r in recs]):.0f} | {np.median(frac):.2f} | {fmt_range(frac, '.2f')} | "
                   f"{100 * max(r['others'] or 0 for r in recs):.0f}"
                   + (" (disturbed)" if any(r["disturbed"] for r in recs) else "") + " |")
    if full is not None:
        out += ["", f"**Whole test set** ({full['n']:,} images, k = {args.k}, float32, {full['threads']} threads): "
                f"{full['wall']:.1f} s wall ({full['wall'] / 60:.1f} min), {full['cpu']:.1f} s CPU, "
                f"{full['n'] * args.k / full['wall']:.3g} rows/s, {full['fraction']:.2f} of the products' rate "
                f"({full['rate']:.0f} GFLOP/s); log-likelihood {full['ll']:.3f} nats (Monte Carlo SE "
                f"{full['mc_se']:.3f}) for this briefly trained model; others took "
                f"{100 * (full['others'] or 0):.0f}% of the machine."]
    return out + ["", "Every measurement, in the order run:", "", "```"] + log + ["```", ""]


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="rounds of the alternation")
    p.add_argument("--n", type=int, default=500, help="test images per measurement")
    p.add_argument("--k", type=int, default=5000, help="importance samples per image")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts measured")
    p.add_argument("--dtypes", nargs="+", default=["float32", "float64"], help="dtypes measured")
    p.add_argument("--numpy", action="store_true", help="also the NumPy reference engine (slow)")
    p.add_argument("--train-epochs", type=int, default=2, help="epochs of the model measured (on 10,000 images)")
    p.add_argument("--disturbed", type=float, default=0.10, help="others' share of the machine that marks a run")
    p.add_argument("--full", action="store_true", help="also the whole test set, float32, all threads")
    p.add_argument("--out", default=str(RESULTS / "ll_throughput.md"), help="the report")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    engines = ["numba"] + (["numpy"] if args.numpy else [])
    args.contenders = [(e, d, t) for e in engines for d in args.dtypes for t in args.threads]
    x_train, x_test = load_mnist()
    x = x_test[:args.n]
    models = build_models(args, x_train, x)
    results, log = run_rounds(args, models, x)
    full = measure_full(args, models, x_train, x_test, log) if args.full else None
    command = "python benchmarks/ll_throughput.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = report(args, command, results, full, log, row_flops(next(iter(models.values()))))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines))
    print(f"wrote {os.path.relpath(args.out, REPO)}")


if __name__ == "__main__":
    main()
