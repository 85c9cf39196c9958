"""Training speed on the study's workload: npvae (numba float32) against the JAX and PyTorch peers.

The study (issue 24) trains Burda et al.'s architecture: 784-200-200-50, tanh (the decoder
mirrored), a Bernoulli decoder, batch 20, Adam (``npvae.protocol.burda_adam``: lr 1e-3, beta1
0.99, beta2 0.999, epsilon 1e-4 / 20 on the batch-mean loss), the IWAE bound, S = 1, 5, 50, on
binarized MNIST. Here every contender trains that workload on the same images, binarized once
(a seeded draw, pixel on with probability its grey level: the statistics of dynamic
binarization without its per-batch draw, which only npvae's ``fit`` would do).

Each run (one S, one contender) is a fresh process with ``--threads`` T for every library
(speed.py's ``thread_env``; JAX pinned to T CPUs before it is imported): a warm-up outside
the clock (XLA's compilation, numba's cache load), then ``--epochs`` timed epochs. The rounds
(``--repeats``) alternate the contenders, every (S, contender) once per round, in an order
rotated each round. Recorded per run: each epoch's wall and CPU seconds (the process's), and
the share of the machine others took meanwhile (``hostload``; a disturbed run is measured again,
once, as in speed.py). Per round and S, a separate process measures the products' rate: each
matrix product of a training step (``_common.step_products``: forward, dW, dX) timed in
float32 with NumPy's BLAS on T threads (or T single-threaded products at once where npvae's
step would run groups), combined into the step's products' rate (its FLOPs over their summed
times). npvae's achieved rate is the epoch's product FLOPs over its median wall seconds.

    python benchmarks/speed_study.py --threads 2 --repeats 3 --samples 1 5 50

Writes ``benchmarks/results/speed_study.md`` (``--out``) and the measurements beside it
(``speed_study.json``), after every run; ``--report-only`` redraws the Markdown from the JSON.
"""

import argparse
import functools
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

import _common  # noqa: F401  (first: this checkout's npvae and the peers on sys.path)
from _common import (REPO, RESULTS, epoch_flops, gemm_rate, gemm_rate_parallel, library_versions, load_mnist,
                     loadavg, machine, plural, step_flops, step_products)
from hostload import DISTURBED
from speed import EpochClock, Workload, fmt_s, print_result, rotation, spawn, train_contender, train_once

CONTENDERS = ("numba-float32", "jax-float32", "torch-float32")
NPVAE = "numba-float32"
BATCH = 20
LR = 1e-3
#: Seeds the one binarization of the images (the same in every process).
BINARIZE_SEED = 0


@functools.lru_cache(maxsize=None)
def workload():
    """The study's :class:`speed.Workload`: Burda et al.'s architecture, tanh, batch 20, IWAE,
    and their Adam in npvae's units (:func:`npvae.protocol.burda_adam`)."""
    from npvae.protocol import burda_adam
    adam = burda_adam(lr=LR, batch_size=BATCH).get_config()
    return Workload(hidden=(200, 200), latent_dim=50, activation="tanh", batch_size=BATCH, objective="iwae",
                    optimizer="adam", hyperparameters=tuple(adam.items()))


@functools.lru_cache(maxsize=None)
def layers():
    """``(name, fan_in, fan_out)`` of the workload's dense layers (npvae's ``layer_shapes``)."""
    import npvae
    w = workload()
    model = npvae.VAE(hidden=w.hidden, latent_dim=w.latent_dim, activation=w.activation, backend="numpy")
    return tuple((name, fan_in, fan_out) for name, fan_in, fan_out in model.layer_shapes())


def study_data(subset=None):
    """MNIST's training images (the first ``subset``), binarized once: ``u < x`` for
    ``u ~ U(0, 1)`` drawn from :data:`BINARIZE_SEED`; float32 ``(n, 784)`` of 0 and 1."""
    x, _ = load_mnist(download=False)
    x = x if subset is None else x[:subset]
    u = np.random.default_rng(BINARIZE_SEED).random(x.shape, dtype=np.float32)
    return (u < x).astype(np.float32)


# --------------------------------------------------------------------------
# Workers (one subprocess per measurement)
# --------------------------------------------------------------------------
def worker_train(contender, S, epochs, subset, threads, seed=0):
    """Train a fresh model of ``contender`` on the workload: each timed epoch's wall and CPU
    seconds and train loss."""
    if contender.startswith("jax"):
        import jax_vae
        jax_vae.setup(threads)       # before anything imports jax
    x = study_data(subset)
    clock = EpochClock()
    seconds, losses, _ = train_contender(contender, x, S, epochs, threads, seed, clock, workload())
    return dict(seconds=[float(s) for s in seconds], cpu=clock.per_epoch(), loss=[float(v) for v in losses])


def step_groups(S, threads):
    """The groups npvae's numba step of ``BATCH`` examples and ``S`` samples runs in with
    ``threads`` threads (:func:`npvae.fast.threads.groups_for`); 1 without numba."""
    if importlib.util.find_spec("numba") is None:
        return 1
    import npvae
    from npvae.fast.threads import groups_for
    w = workload()
    model = npvae.VAE(hidden=w.hidden, latent_dim=w.latent_dim, activation=w.activation, dtype="float32",
                      backend="numba", threads=threads)
    return groups_for(model, BATCH, S)


def worker_rate(S, threads, reps=25):
    """GFLOP/s of each distinct product of a training step at ``S`` (float32, NumPy's BLAS),
    run as npvae's step runs them: one product threaded by BLAS, or where the step runs ``g``
    groups, ``g`` single-threaded products of a group's shape at once; and the step's products'
    rate: its product FLOPs over the products' summed times."""
    groups = step_groups(S, threads)
    shapes = step_products(layers(), BATCH // groups, S)
    rates = {}
    for shape in sorted(set(shapes)):
        rates[shape] = (gemm_rate(*shape, reps=reps) if groups == 1 else
                        gemm_rate_parallel(*shape, "float32", threads=groups, reps=reps))
    flops = [groups * 2.0 * r * k * c for r, k, c in shapes]             # over all groups
    seconds = sum(f / (rates[shape] * 1e9) for f, shape in zip(flops, shapes))
    return dict(groups=groups, gflops=sum(flops) / seconds / 1e9,
                products=[[*shape, rate] for shape, rate in rates.items()])


def run_worker(args):
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    if args.worker == "train":
        print_result(worker_train(args.contender, args.S, args.epochs, args.subset, args.threads))
    else:
        print_result(worker_rate(args.S, args.threads))


# --------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------
def repo_relative(argv):
    """``argv`` with every path inside the repository written relative to it."""
    out = []
    for arg in map(str, argv):
        path = Path(arg)
        if path.is_absolute() and REPO in path.resolve().parents:
            arg = str(path.resolve().relative_to(REPO))
        out.append(arg)
    return out


def new_record(args, argv):
    """The JSON record of a run before its first measurement."""
    w = workload()
    return dict(command=" ".join(["python benchmarks/speed_study.py", *repo_relative(argv)]),
                started=time.strftime("%Y-%m-%d %H:%M:%S"), finished=None, machine=machine(load=True),
                load_end=None, libraries=library_versions(("numba", "torch", "jax", "jaxlib")),
                settings=dict(threads=args.threads, epochs=args.epochs, subset=args.subset,
                              n=args.subset or 60000, repeats=args.repeats, samples=args.samples,
                              contenders=args.contenders, disturbed=args.disturbed),
                workload=dict(w._asdict(), hyperparameters=dict(w.hyperparameters)),
                layers=[list(layer) for layer in layers()], runs=[], rates=[])


def measure(args, record, save):
    """Every (S, contender) once per round, ``args.repeats`` rounds, the contenders in an
    order rotated each round; the products' rate once per round and S. ``save(record)``
    after every measurement."""
    for rep in range(args.repeats):
        for S in args.samples:
            rate = spawn(args.threads, "--worker", "rate", "--S", S, script=__file__)
            record["rates"].append(dict(round=rep, S=S, groups=rate["groups"], gflops=rate["gflops"],
                                        products=rate["products"]))
            print(f"rep {rep} S={S:3d} products' rate {rate['gflops']:.1f} GFLOP/s", flush=True)
            for c in rotation(args.contenders, rep):
                res, line = train_once(args, rep, c, S, script=__file__)
                record["runs"].append(dict(round=rep, S=S, contender=c, seconds=res["seconds"], cpu=res["cpu"],
                                           loss=res["loss"], others=res["others"], note=line))
                print(f"rep {rep} S={S:3d} {c:14s} epochs {['%.2f' % s for s in res['seconds']]} "
                      f"cpu {['%.2f' % s for s in res['cpu']]} loss {res['loss'][-1]:.2f} load {loadavg()} "
                      f"others {res['others']:.0%}", flush=True)
                save(record)
    record["finished"], record["load_end"] = time.strftime("%Y-%m-%d %H:%M:%S"), loadavg()
    save(record)


# --------------------------------------------------------------------------
# Report (from the JSON record alone)
# --------------------------------------------------------------------------
def per_round(record, what="seconds"):
    """``{(contender, S): {round: the median of that run's timed epochs' `what`}}``."""
    out = {}
    for run in record["runs"]:
        out.setdefault((run["contender"], run["S"]), {})[run["round"]] = float(np.median(run[what]))
    return out


def spread(values):
    """``(median, min, max)`` of ``values``."""
    values = list(values)
    return float(np.median(values)), float(min(values)), float(max(values))


def fastest_peer(values, contenders, S):
    """The peer with the lowest median over the rounds at ``S`` (``values``: :func:`per_round`), or None."""
    peers = [c for c in contenders if c != NPVAE and (c, S) in values]
    return min(peers, key=lambda c: np.median(list(values[(c, S)].values())), default=None)


def peer_ratios(values, S, peer):
    """npvae's seconds over ``peer``'s, round by round (the rounds both ran)."""
    own, theirs = values.get((NPVAE, S), {}), values[(peer, S)]
    return [own[r] / theirs[r] for r in sorted(own) if r in theirs]


def cell(values):
    med, lo, hi = spread(values)
    return f"{fmt_s(med)} [{fmt_s(lo)}-{fmt_s(hi)}]"


def seconds_section(record):
    """The table of wall seconds per epoch and npvae's ratio to the fastest peer."""
    settings = record["settings"]
    contenders, values = settings["contenders"], per_round(record)
    cpus = per_round(record, "cpu")
    rows = ["| S | " + " | ".join(contenders) + " | fastest peer | npvae / fastest peer |",
            "|---" * (len(contenders) + 3) + "|"]
    for S in settings["samples"]:
        cells = [cell(values[(c, S)].values()) if (c, S) in values else "-" for c in contenders]
        peer = fastest_peer(values, contenders, S)
        ratios = peer_ratios(values, S, peer) if peer else []
        ratio = "-" if not ratios else "{:.2f} [{:.2f}-{:.2f}]".format(*spread(ratios))
        rows.append(f"| {S} | " + " | ".join(cells) + f" | {peer or '-'} | {ratio} |")
    cpu_rows = ["| S | " + " | ".join(contenders) + " |", "|---" * (len(contenders) + 1) + "|"]
    for S in settings["samples"]:
        cpu_rows.append(f"| {S} | " + " | ".join(
            fmt_s(spread(cpus[(c, S)].values())[0]) if (c, S) in cpus else "-" for c in contenders) + " |")
    return ["## Seconds per epoch", "",
            "Wall seconds of a timed epoch (training only): per round the median of the run's timed epochs; "
            "the cells give the median over the rounds [min-max]. The fastest peer has the lowest median; "
            "npvae / fastest peer is the ratio of npvae's seconds to that peer's in the same round, its median "
            "[min-max] over the rounds (below 1: npvae is faster).", "", *rows, "",
            "## CPU seconds per epoch", "",
            "The process's CPU seconds (`time.process_time`, all its threads) per timed epoch, median over the "
            "rounds: above the wall seconds where several threads worked, below where the process waited "
            "for a core.", "", *cpu_rows, ""]


def rates_section(record):
    """The products' rate and the fraction of it npvae's epochs achieved."""
    settings, batch = record["settings"], record["workload"]["batch_size"]
    n, found = settings["n"], per_round(record)
    lay = [tuple(layer) for layer in record["layers"]]
    fan_in, fan_out = next((i, o) for name, i, o in lay if name == "dec.out")
    rows = ["| S | groups | GFLOP per step | GFLOP per epoch | products' rate (GFLOP/s) | output product "
            "(GFLOP/s) | npvae achieved (GFLOP/s) | fraction |", "|---" * 8 + "|"]
    for S in settings["samples"]:
        measured = [r for r in record["rates"] if r["S"] == S]
        if not measured:
            continue
        rate = spread(r["gflops"] for r in measured)[0]
        out_shape = [batch // measured[0]["groups"] * S, fan_in, fan_out]      # a group's rows
        out_rate = spread(p[3] for r in measured for p in r["products"] if p[:3] == out_shape)[0]
        flops = epoch_flops(lay, n, S, batch=batch)
        if (NPVAE, S) in found:
            achieved = flops / spread(found[(NPVAE, S)].values())[0] / 1e9
            tail = f"{achieved:.1f} | {achieved / rate:.0%}"
        else:
            tail = "- | -"
        rows.append(f"| {S} | {measured[0]['groups']} | {step_flops(lay, batch, S) / 1e9:.3f} | "
                    f"{flops / 1e9:.1f} | {rate:.1f} | {out_rate:.1f} | {tail} |")
    return ["## The products' rate and what npvae achieves", "",
            "Products' rate: the step's product FLOPs (forward, dW, dX of every dense layer, no dX for the "
            "first; `_common.step_products`) over the summed times of those products, each timed alone in "
            "float32 with NumPy's BLAS on the run's threads (as npvae's step runs them: one group, BLAS "
            "threading each product, or `groups` single-threaded products at once), in a separate process "
            "once per round and S; the median over the rounds. Output product: the decoder's output layer's "
            f"forward product, `({batch}*S, {fan_in}) @ ({fan_in}, {fan_out})`, alone. npvae achieved: the "
            "epoch's product FLOPs over npvae's median wall seconds per epoch; fraction: that over the "
            "products' rate, the share of the epoch the products would fill at that rate.", "", *rows, ""]


def loss_and_load_sections(record):
    """The timed epochs' training loss (a sanity check: the same workload trains alike) and what
    else ran on the machine."""
    settings = record["settings"]
    contenders, losses = settings["contenders"], per_round(record, "loss")
    rows = ["| S | " + " | ".join(contenders) + " |", "|---" * (len(contenders) + 1) + "|"]
    for S in settings["samples"]:
        rows.append(f"| {S} | " + " | ".join(
            f"{spread(losses[(c, S)].values())[0]:.2f}" if (c, S) in losses else "-" for c in contenders) + " |")
    return ["## Training loss of the timed epochs", "",
            "The mean negative IWAE bound over the timed epoch(s) from a fresh model, median over the rounds: "
            "the same workload trains alike (the contenders draw their own initial weights and noise; the "
            "PyTorch peer's Adam weighs epsilon by `1 / sqrt(1 - beta2**t)` more in the first steps).", "",
            *rows, "",
            "## What else ran on the machine", "",
            "Per run: the share of the machine (wall x CPUs) that other processes took (`/proc/stat` busy time "
            f"minus the run's CPU time). Above {settings['disturbed']:.0%} a run counts as disturbed and is "
            "measured again, once; the second measurement is kept either way.", "",
            *(f"- {run['note']}" for run in record["runs"]), ""]


def header(record):
    settings, w = record["settings"], record["workload"]
    hp = w["hyperparameters"]
    T = settings["threads"]
    return ["# Training speed on the study's workload", "",
            f"Command: `{record['command']}`  ",
            f"Started {record['started']}, finished {record['finished'] or '(not yet)'}; machine: "
            f"{record['machine']}; at the end {record['load_end'] or '?'}.  ",
            f"Libraries: {record['libraries'] or 'npvae and NumPy only'}.  ",
            f"Workload: 784-{'-'.join(map(str, w['hidden']))}-{w['latent_dim']}, {w['activation']} (decoder "
            f"mirrored), Bernoulli decoder, batch {w['batch_size']}, {w['objective'].upper()} bound, "
            f"{w['optimizer'].capitalize()} (lr {hp['lr']:g}, beta1 {hp['beta1']:g}, beta2 {hp['beta2']:g}, "
            f"epsilon {hp['epsilon']:g} on the batch-mean loss: `npvae.protocol.burda_adam`); the first "
            f"{settings['n']} MNIST training images binarized once (seeded draw), the same for every contender. "
            "npvae: `VAE(backend=\"numba\", dtype=\"float32\")` through `npvae.fit`; the peers "
            "`benchmarks/peers/jax_vae.py` (one jit-compiled step, Keras' Adam) and `torch_vae.py` "
            "(`torch.optim.Adam`), float32.  ",
            f"Threads: {T} for every contender (OPENBLAS/OMP/MKL/NUMBA_NUM_THREADS={T}, torch.set_num_threads({T}), "
            f"JAX pinned to {plural(T, 'CPU')}). Each run is a fresh process: a warm-up epoch of two or three batches "
            f"outside the clock, then {plural(settings['epochs'], 'timed epoch')}; "
            f"{plural(settings['repeats'], 'round')}, the contenders alternating in an order rotated each round.", ""]


def build_report(record):
    """The Markdown report of a JSON record (:func:`new_record` filled by :func:`measure`)."""
    lines = header(record) + seconds_section(record) + rates_section(record) + loss_and_load_sections(record)
    return "\n".join(lines) + "\n"


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--worker", choices=["train", "rate"], help=argparse.SUPPRESS)
    p.add_argument("--contender", help=argparse.SUPPRESS)
    p.add_argument("--S", type=int, help=argparse.SUPPRESS)
    p.add_argument("--samples", type=int, nargs="+", default=[1, 5, 50], help="values of S")
    p.add_argument("--epochs", type=int, default=1, help="timed epochs per run (after a warm-up)")
    p.add_argument("--subset", type=int, default=None, help="train on the first N images (None: all 60000)")
    p.add_argument("--repeats", type=int, default=3, help="rounds, the contenders alternating")
    p.add_argument("--threads", type=int, default=2, help="threads of every contender")
    p.add_argument("--contenders", nargs="+", choices=CONTENDERS, help="what to time (default: all installed)",
                   default=[c for c in CONTENDERS if importlib.util.find_spec(c.split("-")[0])])
    p.add_argument("--disturbed", type=float, default=DISTURBED,
                   help="others' share of the machine that marks a run disturbed (measured again once)")
    p.add_argument("--out", default=str(RESULTS / "speed_study.md"), help="the report; the JSON goes beside it")
    p.add_argument("--report-only", action="store_true", help="redraw the report from the JSON, measure nothing")
    return p


def write_report(record, out):
    text = build_report(record)
    with open(out, "w") as f:
        f.write(text)
    return text


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if args.worker:
        return run_worker(args)
    out = Path(args.out)
    path = out.with_suffix(".json")
    if args.report_only:
        print(write_report(json.loads(path.read_text()), out))
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)

    def save(record):
        path.write_text(json.dumps(record, indent=1) + "\n")
        write_report(record, out)

    record = new_record(args, argv)
    print(f"threads {args.threads}, {record['settings']['n']} images; {record['machine']}", flush=True)
    measure(args, record, save)
    print(build_report(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
