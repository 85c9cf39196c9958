"""The speed of annealed importance sampling (AIS): its leapfrog step's decoder pass, and whole runs.

Every leapfrog step of :func:`npvae.ais.ais_log_likelihood` evaluates ``log p(x|z)`` and its
gradient in ``z`` for ``images x chains`` rows: the decoder's forward, the Bernoulli pass and the
backward to ``z`` (:meth:`npvae.engines.Engine.log_joint`). This script times that call on the
numba engine (fused: :func:`npvae.fast.step.log_joint_into`) and on the reference engine (the
NumPy ops), alternating in each round, at AIS's own row count (``max_rows`` = 4096: 256 images
x 16 chains); sets its rate beside the rate of its matrix products run alone (each product's
shape timed as one NumPy call on the same threads); and times whole AIS runs on the first
``--images`` test images with the fused engine (and, on ``--reference-images``, with the reference).

Models: the seed model (784-256-2, ReLU) at its initialization (the work of AIS does not depend on
the weights: it is images x chains x steps x leapfrog decoder passes) and Burda et al.'s
architecture (784-200-200-50, tanh), trained (``benchmarks/results/burda_table1``'s vae-k1 model)
when that file is there, else at its initialization. Float32.

    python benchmarks/ais_speed.py --threads 2
"""

import _common  # noqa: F401  (first: puts the repository on sys.path)

import argparse
import json
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np

from _common import RESULTS, REPO, gemm_rate, load_mnist, machine
from hostload import Meter

BURDA_MODEL = RESULTS / "burda_table1" / "cells" / "vae-k1-seed0" / "model.npz"
ROWS, CHAINS = 4096, 16


def make_model(which):
    """``(model, description)``: the seed model at initialization, or Burda's architecture."""
    import npvae
    if which == "seed":
        return npvae.VAE(dtype="float32", seed=0), "784-256-2 ReLU, at its initialization"
    if BURDA_MODEL.exists():
        model = npvae.load(BURDA_MODEL)
        return model, f"784-200-200-50 tanh, trained ({BURDA_MODEL.relative_to(REPO)})"
    return (npvae.VAE(hidden=(200, 200), latent_dim=50, activation="tanh", dtype="float32", seed=0),
            "784-200-200-50 tanh, at its initialization")


def decoder_products(model, rows):
    """The ``(rows, inner, cols)`` products of one log-joint call with its gradient: each decoder
    layer's forward ``h @ W`` and its backward ``d @ W.T``."""
    sizes = [model.latent_dim] + list(model.hidden[::-1]) + [model.input_dim]
    forward = [(rows, a, b) for a, b in zip(sizes[:-1], sizes[1:])]
    return forward + [(rows, b, a) for _, a, b in forward]


def time_call(f, reps):
    """Median wall and CPU seconds of ``reps`` calls of ``f`` (after one warm-up)."""
    f()
    wall, cpu = [], []
    for _ in range(reps):
        t, c = time.perf_counter(), time.process_time()
        f()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return float(np.median(wall)), float(np.median(cpu))


def measure_pass(model, x, rounds, reps):
    """Per round, the fused and the reference log joint's seconds per call (alternating)."""
    z = np.random.default_rng(0).standard_normal((ROWS // CHAINS, CHAINS, model.latent_dim)).astype(model.dtype)
    xb = x[:ROWS // CHAINS]
    calls = {"fused (numba engine)": model.engine.log_joint, "reference (NumPy ops)": model.engine.reference.log_joint}
    out = {name: {"wall": [], "cpu": []} for name in calls}
    for r in range(rounds):
        for name in (list(calls) if r % 2 == 0 else list(calls)[::-1]):
            wall, cpu = time_call(lambda: calls[name](xb, z, grad=True), reps if name.startswith("fused") else 2)
            out[name]["wall"].append(wall)
            out[name]["cpu"].append(cpu)
    return out


def products_rate(model):
    """GFLOP/s of the call's products, each timed alone as one NumPy product (FLOPs over the
    sum of their times)."""
    shapes = decoder_products(model, ROWS)
    flops = [2.0 * m * k * n for m, k, n in shapes]
    seconds = sum(f / (gemm_rate(*s, reps=15) * 1e9) for f, s in zip(flops, shapes))
    return sum(flops) / seconds / 1e9, sum(flops)


def run_ais(model, x, seed=0):
    """Wall and CPU seconds of one AIS run (the defaults: 16 chains, 200 steps, 5 leapfrog)."""
    from npvae import ais
    t, c = time.perf_counter(), time.process_time()
    result = ais.ais_log_likelihood(model, x, seed=seed, progress=False)
    return time.perf_counter() - t, time.process_time() - c, float(result.mean)


def measure(args):
    from npvae.fast import blas
    blas.set_threads(args.threads)                       # the engines' default follows BLAS's count
    x = (load_mnist()[1] > 0.5).astype(np.float32)        # the test images, binarized at 0.5
    out = {}
    for which in args.models:
        model, description = make_model(which)
        rec = {"description": description, "rows": ROWS}
        print(f"[{datetime.now():%H:%M:%S}] {which}: the log joint's pass", file=sys.stderr, flush=True)
        rec["pass"] = measure_pass(model, x, args.rounds, args.reps)
        rec["products_gflops"], rec["call_flops"] = products_rate(model)
        rec["ais"] = {}
        if args.images:
            print(f"[{datetime.now():%H:%M:%S}] {which}: AIS on {args.images} images (fused)", file=sys.stderr, flush=True)
            rec["ais"]["fused (numba engine)"] = dict(zip(("wall", "cpu", "mean"), run_ais(model, x[:args.images])),
                                                       images=args.images)
        if args.reference_images:
            print(f"[{datetime.now():%H:%M:%S}] {which}: AIS on {args.reference_images} images (reference)",
                  file=sys.stderr, flush=True)
            model.engine.log_joint = model.engine.reference.log_joint     # this run only: the NumPy ops
            rec["ais"]["reference (NumPy ops)"] = dict(zip(("wall", "cpu", "mean"),
                                                           run_ais(model, x[:args.reference_images])),
                                                       images=args.reference_images)
        out[which] = rec
    return out


def report(data):
    """The Markdown report of a measurement (``data``: what :func:`main` wrote to the JSON)."""
    lines = ["# The speed of AIS: the leapfrog step's decoder pass, and whole runs", "",
             f"Command: `{data['command']}`", "",
             f"Date: {data['date']}. Machine: {data['machine']}; threads: {data['threads']}. Other processes "
             f"used {data['others']:.0%} of the machine during the run.", "",
             f"One call of the log joint with its gradient in z on {ROWS} rows ({ROWS // CHAINS} images x {CHAINS} "
             "chains, AIS's default `max_rows`), float32: the median over calls within a round, then the median "
             f"and range over {data['rounds']} rounds in which the two engines alternate. The products' rate: "
             "the call's matrix products (each decoder layer's forward and its backward to z), each timed alone as "
             "one NumPy product on the same threads; the fused call's FLOPs (those products') over its time, as a "
             "share of that rate.", "",
             "| model | engine | rows/s (median, range) | CPU/wall | GFLOP/s | share of the products' rate |",
             "|---|---|---|---|---|---|"]
    for which, rec in data["models"].items():
        for name, t in rec["pass"].items():
            wall = np.array(t["wall"])
            rate = rec["rows"] / wall
            gf = rec["call_flops"] / np.median(wall) / 1e9
            lines.append(f"| {which} | {name} | {np.median(rate):,.0f} ({rate.min():,.0f}-{rate.max():,.0f}) | "
                         f"{np.median(np.array(t['cpu']) / wall):.2f} | {gf:.0f} | "
                         f"{gf / rec['products_gflops']:.0%} of {rec['products_gflops']:.0f} |")
    lines += ["", "Models: " + "; ".join(f"{w}: {r['description']}" for w, r in data["models"].items()) + ".", "",
              "Whole AIS runs (16 chains, 200 annealing steps, 5 leapfrog steps; the first test images, binarized "
              "at 0.5; one run each, so a time here is one measurement, not a median):", "",
              "| model | engine | images | wall s | CPU s | s per 1,000 images | mean log p(x) |", "|---|---|---|---|---|---|---|"]
    for which, rec in data["models"].items():
        for name, r in rec["ais"].items():
            lines.append(f"| {which} | {name} | {r['images']} | {r['wall']:.1f} | {r['cpu']:.1f} | "
                         f"{r['wall'] * 1000 / r['images']:.0f} | {r['mean']:.2f} |")
    return "\n".join(lines) + "\n"


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", nargs="+", choices=["seed", "burda"], default=["seed", "burda"])
    p.add_argument("--threads", type=int, default=2, help="BLAS threads (npvae sets OpenBLAS's count)")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds of the pass")
    p.add_argument("--reps", type=int, default=20, help="fused calls per round (the reference's: 2)")
    p.add_argument("--images", type=int, default=1000, help="test images of the fused AIS run (0: none)")
    p.add_argument("--reference-images", type=int, default=100, help="test images of the reference AIS run (0: none)")
    p.add_argument("--out", default=str(RESULTS / "ais_speed.md"), help="report (a .json beside it)")
    p.add_argument("--report-only", action="store_true", help="redraw the report from the JSON")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    if args.report_only:
        out.write_text(report(json.loads(out.with_suffix(".json").read_text())))
        return
    argv_text = " ".join(sys.argv[1:] if argv is None else argv)
    data = {"command": f"python benchmarks/ais_speed.py {argv_text}".strip(), "threads": args.threads,
            "rounds": args.rounds, "date": f"{datetime.now():%Y-%m-%d %H:%M}"}
    with Meter() as meter:
        data["models"] = measure(args)
    data["machine"] = machine(load=True)
    data["others"] = meter.others
    out.with_suffix(".json").write_text(json.dumps(data, indent=1))
    out.write_text(report(data))
    print(out.read_text())


if __name__ == "__main__":
    main()
