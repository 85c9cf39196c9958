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
import threading
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

from hostload import Meter, cpu_name  # noqa: E402

D, H, L = 784, 256, 2
GEMM_ROWS = 4096


def gemm_rate(dtype, threads, reps=10):
    """GFLOP/s of ``(4096, 256) @ (256, 784)``: best of one call on ``threads`` BLAS threads and
    ``threads`` single-threaded calls at once."""
    from npvae.fast import blas
    rng = np.random.default_rng(0)
    a = [rng.random((GEMM_ROWS, H)).astype(dtype) for _ in range(threads)]
    b = rng.random((H, D)).astype(dtype)
    o = [np.empty((GEMM_ROWS, D), dtype) for _ in range(threads)]
    flops = 2.0 * GEMM_ROWS * H * D

    def run(i, n):
        for _ in range(n):
            np.matmul(a[i], b, out=o[i])

    before = blas.current_threads()
    blas.set_threads(threads)
    run(0, 2)
    t = time.perf_counter()
    run(0, reps)
    threaded = reps * flops / (time.perf_counter() - t)
    with blas.single_threaded():
        workers = [threading.Thread(target=run, args=(i, 2)) for i in range(threads)]
        [w.start() for w in workers]
        [w.join() for w in workers]
        workers = [threading.Thread(target=run, args=(i, reps)) for i in range(threads)]
        t = time.perf_counter()
        [w.start() for w in workers]
        [w.join() for w in workers]
        parallel = threads * reps * flops / (time.perf_counter() - t)
    if before is not None:
        blas.set_threads(before)
    return max(threaded, parallel) / 1e9, threaded / 1e9, parallel / 1e9


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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--n", type=int, default=500, help="test images per measurement")
    p.add_argument("--k", type=int, default=5000)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    p.add_argument("--numpy", action="store_true", help="also the NumPy reference engine (slow)")
    p.add_argument("--train-epochs", type=int, default=2, help="epochs of the model measured (on 10,000 images)")
    p.add_argument("--disturbed", type=float, default=0.10, help="others' share of the machine that marks a run")
    p.add_argument("--full", action="store_true", help="also the whole test set, float32, all threads")
    p.add_argument("--out", default=os.path.join(HERE, "results", "ll_throughput.md"))
    args = p.parse_args(argv)

    import npvae
    from npvae.fast import blas
    (x_train, _), (x_test, _) = npvae.load_mnist(progress=False)
    x = x_test[:args.n]
    engines = ["numba"] + (["numpy"] if args.numpy else [])
    contenders = [(e, d, t) for e in engines for d in args.dtypes for t in args.threads]
    models = {}
    for e, d, _ in contenders:
        if (e, d) not in models:
            models[e, d] = trained_model(x_train[:10000], d, e, args.train_epochs)
            npvae.log_likelihood(models[e, d], x[:4], k=64, progress=False)      # compile, workspaces
    rows = args.n * args.k
    flops = rows * 2.0 * H * D
    results = {c: [] for c in contenders}
    log = []
    for r in range(args.rounds):
        order = contenders[r % len(contenders):] + contenders[:r % len(contenders)]
        for c in order:
            e, d, t = c
            for attempt in range(2):
                m, ll = measure(models[e, d], x, args.k, t)
                rate, threaded, parallel = gemm_rate(np.dtype(d), t)
                rec = dict(wall=m.wall, cpu=m.cpu, others=m.others, rate=rate, threaded=threaded,
                           parallel=parallel, ll=ll.mean, load=os.getloadavg()[0])
                disturbed = m.others is not None and m.others > args.disturbed
                line = (f"round {r + 1} {e}-{d} T={t}: {m.wall:.2f} s wall, {m.cpu:.2f} s CPU, "
                        f"{rows / m.wall:.3g} rows/s, products {rate:.0f} GFLOP/s, fraction "
                        f"{flops / m.wall / 1e9 / rate:.2f}, others {100 * (m.others or 0):.0f}%"
                        + (" DISTURBED" if disturbed else ""))
                print(line, flush=True)
                log.append(line)
                if not disturbed or attempt == 1:
                    rec["disturbed"] = disturbed
                    results[c].append(rec)
                    break

    full = None
    if args.full:
        t = max(args.threads)
        model = models["numba", "float32"] if ("numba", "float32") in models else trained_model(
            x_train[:10000], "float32", "numba", args.train_epochs)
        m, ll = measure(model, x_test, args.k, t)
        rate = gemm_rate(np.float32, t)[0]
        full = dict(wall=m.wall, cpu=m.cpu, others=m.others, ll=ll.mean, mc_se=ll.mc_se, threads=t,
                    fraction=len(x_test) * args.k * 2.0 * H * D / m.wall / 1e9 / rate, rate=rate)
        line = (f"full test set, float32, T={t}: {m.wall:.1f} s wall, {m.cpu:.1f} s CPU, log-likelihood "
                f"{ll.mean:.3f} (MC SE {ll.mc_se:.3f}), fraction {full['fraction']:.2f}")
        print(line, flush=True)
        log.append(line)

    cmd = "python benchmarks/ll_throughput.py " + " ".join(argv if argv is not None else sys.argv[1:])
    libs = ", ".join(os.path.basename(p) for p in blas.library_paths()) or "not an OpenBLAS npvae controls"
    out = [
        "# Log-likelihood throughput",
        "",
        f"Command: `{cmd}`  ",
        f"Machine: {cpu_name()}, {os.cpu_count()} logical CPUs; "
        f"NumPy {np.__version__}, BLAS: {libs}; npvae {npvae.__version__}.  ",
        f"Model: the seed's 784-256-2 (relu), trained {args.train_epochs} epochs on 10,000 images; "
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
        frac = [flops / r["wall"] / 1e9 / r["rate"] for r in recs]
        out.append(f"| {e} | {d} | {t} | {np.median(rps):.3g} | {fmt_range(rps, '.3g')} | "
                   f"{np.median([r['wall'] for r in recs]):.2f} | {np.median([r['cpu'] for r in recs]):.2f} | "
                   f"{np.median([r['rate'] for r in recs]):.0f} | {np.median(frac):.2f} | {fmt_range(frac, '.2f')} | "
                   f"{100 * max(r['others'] or 0 for r in recs):.0f}"
                   + (" (disturbed)" if any(r["disturbed"] for r in recs) else "") + " |")
    if full is not None:
        out += ["", f"**Whole test set** (10,000 images, k = {args.k}, float32, {full['threads']} threads): "
                f"{full['wall']:.1f} s wall ({full['wall'] / 60:.1f} min), {full['cpu']:.1f} s CPU, "
                f"{len(x_test) * args.k / full['wall']:.3g} rows/s, {full['fraction']:.2f} of the products' rate "
                f"({full['rate']:.0f} GFLOP/s); log-likelihood {full['ll']:.3f} nats (Monte Carlo SE "
                f"{full['mc_se']:.3f}) for this briefly trained model; others took "
                f"{100 * (full['others'] or 0):.0f}% of the machine."]
    out += ["", "Every measurement, in the order run:", "", "```"] + log + ["```", ""]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(out))
    print(f"wrote {os.path.relpath(args.out, REPO)}")


if __name__ == "__main__":
    main()
