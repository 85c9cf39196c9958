"""Training speed per epoch: npvae (numba float32, numba float64, NumPy reference) against the PyTorch peer.

The seed's model (784-256-2, relu, batch 100, RMSprop lr 1e-3 rho 0.9, ELBO with analytic KL),
MNIST grayscale. Every measurement runs in its own subprocess with the same thread count for
BLAS, OpenMP and torch, and the contenders alternate (S by S, in a rotated order per repeat), so
the ratios come from one run under the same load. Reported per contender and S: the median
training time per epoch (validation excluded, as in ``npvae.fit``'s and the peer's
``seconds``), its spread (min-max over the timed epochs), the ratio to the peer, the peak
memory of the process (``ru_maxrss``, and its growth over the process's footprint after
setup), and the fraction of this machine's matrix-multiply rate achieved: the dense layers'
FLOPs of an epoch divided by the epoch time, over the rate of a single
``(100*S, 256) @ (256, 784)`` product of the same dtype measured in this run with NumPy's BLAS.

Also: a per-phase profile of the numba float32 step (S=1 and S=25), and per-epoch times of a
20-epoch run of npvae numba float32 (and the peer) at S=1 on a subset, to show that epoch time
does not drift upward (RMSprop's running averages decaying into subnormal floats).

    python benchmarks/speed.py --epochs 1 --repeats 3 --samples 1 5 25 50 --threads 2 --numpy-samples 1 5 \\
        --drift-epochs 20 --drift-subset 10000 --profile-samples 1 5 25

Writes a Markdown report to ``benchmarks/results/speed_2threads.md`` (``speed_1thread.md`` with one
thread; ``--out`` to choose). ``benchmarks/results/speed.md`` is the hand-written summary of the
committed reports, and ``benchmarks/plot_speed.py`` draws them.
"""

import argparse
import functools
import importlib.util
import json
import os
import resource
import subprocess
import sys
import time
from typing import NamedTuple

import numpy as np

import _common  # noqa: F401  (first: this checkout's npvae and the peers on sys.path)
from _common import RESULTS, epoch_flops, gemm_rate, library_versions, load_mnist, loadavg, machine
from hostload import DISTURBED, Meter

CONTENDERS = ("numba-float32", "numba-float64", "numpy-float64", "torch-float32", "jax-float32")
PEER = "torch-float32"
JAX_PEER = "jax-float32"
#: The largest ratio numba float32 / peer aimed at, by peer and S: at the seed's S = 1 and 5,
#: 0.6 of PyTorch's time and 0.75 of JAX's; elsewhere 0.67 of PyTorch's and JAX's.
TARGETS = {PEER: lambda S: 0.6 if S <= 5 else 0.67, JAX_PEER: lambda S: 0.75 if S <= 5 else 0.67}
BATCH = 100
#: float32 sigmoid(l) is subnormal below this logit (log of the smallest normal float32, -87.34):
#: there ``sigmoid(l) - x`` for a pixel x = 0 is subnormal unless flushed (npvae flushes it).
DEEP_LOGIT = float(np.log(np.finfo(np.float32).tiny))
DEEP_PROBE = 1000           # images whose logits (decoded at the encoder's mean) are counted


@functools.lru_cache(maxsize=None)
def seed_layers():
    """``(name, fan_in, fan_out)`` of the seed model's dense layers (``VAE().layer_shapes()``)."""
    import npvae
    return tuple(npvae.VAE(backend="numpy").layer_shapes())


def output_product(S):
    """``(rows, inner, cols)`` of the decoder's output layer's product in a step of S samples:
    ``(100*S, 256) @ (256, 784)`` for the seed model."""
    _, fan_in, fan_out = next(layer for layer in seed_layers() if layer[0] == "dec.out")
    return BATCH * S, fan_in, fan_out


# --------------------------------------------------------------------------
# Workers (one subprocess per measurement)
# --------------------------------------------------------------------------
def _rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _maxrss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _load_x(subset):
    x, _ = load_mnist(download=False)
    return x if subset is None else x[:subset]


class EpochClock:
    """Process CPU time at the end of each epoch: a file for ``npvae.fit(verbose=2)`` (one line
    per epoch) or a callback for the peer's ``train``."""

    def __init__(self):
        self.start()

    def start(self):
        self.marks = [time.process_time()]

    def write(self, text):
        if text.strip():
            self.marks.append(time.process_time())

    def flush(self):
        pass

    def __call__(self, record):
        self.marks.append(time.process_time())

    def per_epoch(self):
        return [b - a for a, b in zip(self.marks, self.marks[1:])]


class Workload(NamedTuple):
    """What a training run trains, in the terms npvae and both peers take: the model
    (784-``hidden``-``latent_dim``, the decoder mirrored, ``activation``), the batch, the
    objective, and the optimizer: its name and hyperparameters (``((name, value), ...)``,
    named as :mod:`npvae.optim`'s; each library's defaults where not given). The default is
    the seed's: 784-256-2 relu, batch 100, ELBO, RMSprop with Keras' settings."""
    hidden: tuple = (256,)
    latent_dim: int = 2
    activation: str = "relu"
    batch_size: int = BATCH
    objective: str = "elbo"
    optimizer: str = "rmsprop"
    hyperparameters: tuple = ()

    def npvae_optimizer(self):
        """A fresh :mod:`npvae.optim` optimizer."""
        from npvae import optim
        return optim.get_optimizer(self.optimizer, **dict(self.hyperparameters))


SEED = Workload()


def warm_up_data(x, batch_size):
    """The images of a warm-up epoch: two full batches and a last one of the size an epoch over
    ``x`` ends with, so that a compiled step (JAX's) exists for every batch shape the timed
    epochs take."""
    return x[:2 * batch_size + len(x) % batch_size]


def train_jax(x, S, epochs, threads, seed, clock, workload=SEED):
    """The JAX peer's run: a warm-up that compiles the step, then ``epochs`` timed epochs;
    returns their seconds and losses and the process's RSS after the warm-up (MB)."""
    import jax_vae as jv
    jv.setup(threads)            # pinned to `threads` CPUs before jax is imported: XLA's pool follows
    w = workload
    build = functools.partial(jv.build_model, hidden=w.hidden, latent_dim=w.latent_dim, seed=seed)
    run = functools.partial(jv.train, batch_size=w.batch_size, mc_samples=S, objective=w.objective, seed=seed,
                            optimizer=jv.make_optimizer(w.optimizer, **dict(w.hyperparameters)),
                            activation=w.activation)
    run(build(), warm_up_data(x, w.batch_size), 1)    # compiles the steps (XLA), outside the clock
    rss0 = _rss_mb()
    model = build()
    clock.start()
    _, history = run(model, x, epochs, callback=clock)
    return [r["seconds"] for r in history], [r["loss"] for r in history], rss0


def train_torch(x, S, epochs, threads, seed, clock, workload=SEED):
    """The PyTorch peer's run, as :func:`train_jax`."""
    import torch
    import torch_vae as tv
    torch.set_num_threads(threads)
    w = workload
    build = functools.partial(tv.build_model, hidden=w.hidden, latent_dim=w.latent_dim, seed=seed,
                              activation=w.activation)
    run = functools.partial(tv.train, batch_size=w.batch_size, mc_samples=S, objective=w.objective, seed=seed,
                            threads=threads, optimizer=tv.make_optimizer(w.optimizer, **dict(w.hyperparameters)))
    run(build(), warm_up_data(x, w.batch_size), 1)   # allocator warm-up
    rss0 = _rss_mb()
    model = build()
    clock.start()
    history = run(model, x, epochs, callback=clock)
    return [r["seconds"] for r in history], [r["loss"] for r in history], rss0


def train_npvae(contender, x, S, epochs, seed, clock, workload=SEED):
    """npvae's run (``contender``: "backend-dtype") through ``npvae.fit``, as :func:`train_jax`."""
    import npvae
    backend, dtype = contender.split("-")
    w = workload
    build = functools.partial(npvae.VAE, hidden=w.hidden, latent_dim=w.latent_dim, activation=w.activation,
                              dtype=dtype, backend=backend, seed=seed)
    run = functools.partial(npvae.fit, batch_size=w.batch_size, mc_samples=S, objective=w.objective)
    run(build(), warm_up_data(x, w.batch_size), epochs=1, optimizer=w.npvae_optimizer(), verbose=0)  # numba cache
    x = x.astype(dtype, copy=False)  # as fit would, outside the clock and the memory growth
    rss0 = _rss_mb()
    model = build()
    clock.start()
    history = run(model, x, epochs=epochs, optimizer=w.npvae_optimizer(), verbose=2, seed=seed, file=clock)
    return list(history["seconds"]), list(history["loss"]), rss0


def train_contender(contender, x, S, epochs, threads, seed, clock, workload=SEED):
    """Train a fresh model of ``contender`` on ``x`` (after a warm-up outside the clock): the
    timed epochs' seconds and losses, and the RSS after the warm-up (MB)."""
    if contender.startswith("jax"):
        return train_jax(x, S, epochs, threads, seed, clock, workload)
    if contender.startswith("torch"):
        return train_torch(x, S, epochs, threads, seed, clock, workload)
    return train_npvae(contender, x, S, epochs, seed, clock, workload)


def worker_train(contender, S, epochs, subset, threads, seed=0):
    """Train a fresh model for ``epochs`` epochs; return per-epoch wall and CPU seconds, memory,
    and the matrix-multiply rate measured in the same process right after."""
    if contender.startswith("jax"):
        import jax_vae
        jax_vae.setup(threads)       # before anything (the data's loader included) imports jax
    x = _load_x(subset)
    clock = EpochClock()
    seconds, losses, rss0 = train_contender(contender, x, S, epochs, threads, seed, clock)
    maxrss = _maxrss_mb()
    lib = contender.split("-")[0] if contender.startswith(("torch", "jax")) else "numpy"
    rate = gemm_rate(*output_product(S), dtype="float32" if contender.endswith("32") else "float64", lib=lib)
    return dict(seconds=[float(s) for s in seconds], cpu=clock.per_epoch(), loss=[float(v) for v in losses],
                rss_setup_mb=rss0, maxrss_mb=maxrss, gemm_gflops=rate)


def _drift_torch(x, epochs, threads, seed):
    import torch
    import torch_vae as tv
    optimizers = []

    def recording_rmsprop(parameters):           # the peer's optimizer, kept for its running averages
        optimizers.append(tv.rmsprop(parameters))
        return optimizers[-1]

    model = tv.build_model(seed=seed)
    tiny = torch.finfo(torch.float32).tiny
    probe = torch.from_numpy(np.ascontiguousarray(x[:DEEP_PROBE], dtype=np.float32))
    records, cpu = [], [time.process_time()]

    def count(tensors):
        return int(sum(((t != 0) & (t.abs() < tiny)).sum().item() for t in tensors))

    def callback(r):
        now = time.process_time()
        state = [s["square_avg"] for s in optimizers[-1].state.values()]
        with torch.no_grad():
            deep = float((model.decode(model.encode(probe)[0]) < DEEP_LOGIT).double().mean())
        records.append(dict(seconds=r["seconds"], cpu=now - cpu[0], subnormal_state=count(state),
                            subnormal_params=count(list(model.parameters())), deep=deep))
        cpu[0] = time.process_time()

    tv.train(model, x, epochs, batch_size=BATCH, mc_samples=1, seed=seed, threads=threads, callback=callback,
             optimizer=recording_rmsprop)
    return records


def _drift_npvae(contender, x, epochs, seed):
    import npvae
    from npvae import optim
    backend, dtype = contender.split("-")
    warm = npvae.VAE(dtype=dtype, backend=backend, seed=seed)
    npvae.fit(warm, x[:2 * BATCH], epochs=1, batch_size=BATCH, verbose=0)  # numba cache load
    model = npvae.VAE(dtype=dtype, backend=backend, seed=seed)
    opt = optim.RMSprop()
    x = x.astype(dtype)
    tiny = np.finfo(dtype).tiny
    records = []

    def count(arrays):
        return int(sum(np.count_nonzero((a != 0) & (np.abs(a) < tiny)) for a in arrays))

    for epoch in range(epochs):  # one fit call per epoch, the optimizer (and its state) carried over
        c0 = time.process_time()
        h = npvae.fit(model, x, epochs=1, batch_size=BATCH, mc_samples=1, optimizer=opt, seed=seed + epoch,
                      verbose=0)
        mu, _ = model.encode(x[:DEEP_PROBE])
        deep = float(np.mean(model.engine.decode_logits(mu) < DEEP_LOGIT))
        averages = [a for key, a in opt.state_dict().items() if key.startswith("v/")]   # RMSprop's slot "v"
        records.append(dict(seconds=float(h["seconds"][0]), cpu=time.process_time() - c0,
                            subnormal_state=count(averages), subnormal_params=count(model.params.values()),
                            deep=deep))
    return records


def worker_drift(contender, epochs, subset, threads, seed=0):
    """Per-epoch wall and CPU seconds of one long run at S=1, with the number of subnormal
    floats in the optimizer's running averages and in the parameters after each epoch."""
    x = _load_x(subset)
    if contender.startswith("torch"):
        return _drift_torch(x, epochs, threads, seed)
    return _drift_npvae(contender, x, epochs, seed)


def worker_gemm(S, threads, reps=15):
    """GFLOPS of ``(100*S, 256) @ (256, 784)`` in NumPy (float32, float64) and torch (float32)."""
    shape = output_product(S)
    out = {f"numpy-{dtype}": gemm_rate(*shape, dtype=dtype, reps=reps) for dtype in ("float32", "float64")}
    if importlib.util.find_spec("torch"):
        import torch
        torch.set_num_threads(threads)
        out["torch-float32"] = gemm_rate(*shape, lib="torch", reps=reps)
    return out


def worker_profile(S, steps, subset, threads, dtype="float32"):
    """Share of each phase of the numba step (+ RMSprop) over ``steps`` training steps."""
    import npvae
    from npvae import optim
    from npvae.fast.step import Profiler
    x = _load_x(subset)
    model = npvae.VAE(dtype=dtype, backend="numba")
    opt = optim.RMSprop()
    rng = np.random.default_rng(0)
    x = x.astype(dtype)

    def batch(i):
        xb = x[(i * BATCH) % (len(x) - BATCH):][:BATCH]
        return xb, model.sample_eps(BATCH, S, rng)

    engine = model.engine
    update = engine.optimizer_update(opt)
    with engine.steps(BATCH, S):  # as in fit: BLAS held at one thread if the steps run groups
        for i in range(3):  # warm-up: compile cache, workspaces, optimizer state
            _, g = engine.loss_and_grads(*batch(i), "elbo")
            opt.step(model.params, g, update=update)
        prof = engine.profiler = Profiler()  # marked by the group on the calling thread
        total = 0.0
        for i in range(steps):
            xb, eps = batch(i)
            t0 = time.perf_counter()
            prof.start()
            _, g = engine.loss_and_grads(xb, eps, "elbo")
            opt.step(model.params, g, update=update)
            prof.mark("optimizer (RMSprop, fused kernel)")
            total += time.perf_counter() - t0
    return dict(step_ms=1e3 * total / steps, phases={k: v / total for k, v in prof.seconds.items()})


def run_worker(args):
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    if args.worker == "train":
        res = worker_train(args.contender, args.S, args.epochs, args.subset, args.threads)
    elif args.worker == "drift":
        res = worker_drift(args.contender, args.epochs, args.subset, args.threads)
    elif args.worker == "gemm":
        res = worker_gemm(args.S, args.threads)
    else:
        res = worker_profile(args.S, args.steps, args.subset, args.threads)
    if isinstance(res, list):
        res = {"records": res}
    print_result(res)


def print_result(res):
    """A worker's answer: the RESULT line that :func:`spawn` reads."""
    print("RESULT " + json.dumps(res), flush=True)


# --------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------
def thread_env(threads):
    """The environment of a measured process: ``threads`` for every library's pool, and this
    checkout's npvae first on the import path."""
    env = dict(os.environ)
    for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env[k] = str(threads)
    env["PYTHONPATH"] = str(_common.REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def spawn(threads, *argv, script=__file__):
    """Run ``script`` (this one by default) as a worker (``argv``) in a fresh process with
    ``threads`` threads (:func:`thread_env`); its RESULT line (:func:`print_result`) as a dict."""
    cmd = [sys.executable, os.path.abspath(script), *map(str, argv), "--threads", str(threads)]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=thread_env(threads))
    if p.returncode != 0:
        raise RuntimeError(f"worker {argv} failed:\n{p.stderr[-3000:]}")
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    res = json.loads(line[len("RESULT "):])
    res["wall"] = time.perf_counter() - t0
    return res


class Measurements:
    """What the training runs measured, by ``(contender, S)``."""

    def __init__(self):
        self.times = {}        # epoch seconds
        self.cpus = {}         # epoch CPU seconds
        self.mem = {}          # (maxrss, growth over the footprint after setup), MB
        self.losses = {}       # train loss of the last epoch (first repeat)
        self.rates = {}        # GEMM GFLOPS measured in the worker right after training
        self.gemm = {}         # S -> list of {library-dtype: GFLOPS} from separate processes
        self.disturbances = []  # one line per training run: the share of the machine others took

    def add(self, c, S, res):
        self.times.setdefault((c, S), []).extend(res["seconds"])
        self.cpus.setdefault((c, S), []).extend(res["cpu"])
        self.rates.setdefault((c, S), []).append(res["gemm_gflops"])
        self.losses.setdefault((c, S), res["loss"][-1])
        m = self.mem.get((c, S), (0.0, 0.0))
        self.mem[(c, S)] = (max(m[0], res["maxrss_mb"]), max(m[1], res["maxrss_mb"] - res["rss_setup_mb"]))


def _subset_args(subset):
    return ["--subset", subset] if subset else []


def train_once(args, rep, c, S, script=__file__):
    """One training run of contender ``c`` at ``S`` (``script``'s worker "train", which takes
    ``--contender --S --epochs --subset``), measured again (once) if others disturbed it; returns
    the worker's result (with ``others``, the share of the machine others took) and the line
    that says how busy the machine was."""
    seen = []
    for _ in range(2):
        with Meter(args.disturbed) as meter:
            res = spawn(args.threads, "--worker", "train", "--contender", c, "--S", S, "--epochs", args.epochs,
                        *_subset_args(args.subset), script=script)
        res["others"] = meter.others or 0.0
        seen.append(f"{res['others']:.0%}")
        if not meter.disturbed:
            break
    line = f"rep {rep} S={S} {c}: others took {seen[-1]} of the machine"
    if len(seen) == 2:
        line += (f" (measured again: others took {seen[0]} of the first run"
                 + ("; disturbed again, kept)" if meter.disturbed else ")"))
    return res, line


def rotation(contenders, rep):
    """The order of ``contenders`` in round ``rep``: rotated by ``rep``, so that each runs first in turn."""
    k = rep % len(contenders)
    return list(contenders[k:]) + list(contenders[:k])


def measure_training(args):
    """Every contender at every S, ``args.repeats`` times, alternating in a rotated order."""
    m = Measurements()
    for rep in range(args.repeats):
        for S in args.samples:
            m.gemm.setdefault(S, []).append(spawn(args.threads, "--worker", "gemm", "--S", S))
            for c in rotation(args.contenders, rep):
                if c.startswith("numpy") and args.numpy_samples is not None and S not in args.numpy_samples:
                    continue
                res, line = train_once(args, rep, c, S)
                m.disturbances.append(line)
                m.add(c, S, res)
                print(f"rep {rep} S={S:3d} {c:14s} epochs {['%.2f' % s for s in res['seconds']]} "
                      f"cpu {['%.2f' % s for s in res['cpu']]} gemm {res['gemm_gflops']:.1f} "
                      f"loss {res['loss'][-1]:.3f} maxrss {res['maxrss_mb']:.0f} MB load {loadavg()} "
                      f"others {res['others']:.0%}", flush=True)
    return m


def measure_profiles(args):
    profiles = {}
    for S in args.profile_samples:
        profiles[S] = spawn(args.threads, "--worker", "profile", "--S", S, "--steps", args.profile_steps,
                            *_subset_args(args.subset))
        print(f"profile S={S}: {profiles[S]['step_ms']:.2f} ms/step", flush=True)
    return profiles


def measure_drift(args):
    drift = {}
    for c in args.drift_contenders if args.drift_epochs else ():
        drift[c] = spawn(args.threads, "--worker", "drift", "--contender", c, "--epochs", args.drift_epochs,
                         "--subset", args.drift_subset)["records"]
        print(f"drift {c}: {['%.2f' % r['seconds'] for r in drift[c]]}", flush=True)
    return drift


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------
def torch_blas():
    """torch's version and math libraries (asked in a subprocess: importing torch here would
    load its own OpenMP beside NumPy's BLAS), or None without torch."""
    if importlib.util.find_spec("torch") is None:
        return None
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__); "
                          "print(torch.__config__.show())"], capture_output=True, text=True).stdout
    lines = out.splitlines()
    if not lines:
        return None
    mkl = [ln.strip(" -") for ln in lines if "Math Kernel" in ln or "MKL-DNN" in ln]
    return f"torch {lines[0]} ({'; '.join(mkl)})"


def header(args, command, started, loads):
    T, n = args.threads, args.subset or 60000
    threads = ("npvae's numba step runs as one group with BLAS threading its products.  " if T == 1 else
               f"npvae's numba step (`VAE.threads` = {T}) runs {T} groups of examples at once when a step has at "
               "least 2 x `npvae.fast.threads.MIN_GROUP_ROWS` = 2048 rows (here S >= 21), each with single-threaded "
               "BLAS; below that, one group with BLAS threading its products and, in float32, the row passes on "
               "BLAS's threads (`npvae.fast.threads.job_parts`).  ")
    libraries = "; ".join(filter(None, [library_versions(("numba",)), torch_blas()]))
    return ["# Training speed per epoch", "",
            f"Command: `{command}`  ", f"Started {started}; machine: {machine()}.  ",
            f"Threads: {T} for every contender (OPENBLAS/OMP/MKL_NUM_THREADS={T}, torch.set_num_threads({T})); "
            + threads,
            f"Libraries: {libraries or 'npvae and NumPy only'}.  ",
            f"Load average (1/5/15 min) at start {loads[0]}, at end {loads[1]}: the machine was shared, "
            "so absolute times are noisy; the ratios come from the same run, contenders alternating.  ",
            f"Data: the first {n} MNIST training images (grayscale), batch {BATCH}, 784-256-2 relu, RMSprop "
            f"(lr 1e-3, rho 0.9), ELBO with analytic KL; {args.epochs} timed epoch(s) per contender and S, "
            f"{args.repeats} repeat(s); one warm-up step per process before timing (numba's cache load). "
            "Epoch time is training only (no validation).", ""]


def time_sections(args, m):
    """The wall and CPU seconds tables; returns their lines and the seconds the rates divide
    (CPU seconds with one thread, wall seconds with more)."""
    rows, verdicts, med = time_table(args.samples, args.contenders, m.times)
    lines = ["## Seconds per epoch (median, [min-max]) and ratio to the PyTorch peer", "", *rows, "",
             "Targets: numba float32 at most 0.6x PyTorch and 0.75x JAX at S <= 5, 0.67x both beyond.", "",
             *verdicts, ""]
    rows, verdicts, cmed = time_table(args.samples, args.contenders, m.cpus, ", CPU time")
    lines += ["## CPU seconds per epoch (median, [min-max]) and ratio to the peer", "",
              "The process's CPU time (`time.process_time`) per epoch: with one thread per contender it "
              "leaves out the time the process waited for a core on the shared machine, so these ratios "
              "are steadier than the wall-clock ones (caches and memory bandwidth stay shared). npvae's "
              "first epoch includes `fit`'s input checks (a pass over the data, ~1% at S=1).", "",
              *rows, "", *verdicts, ""]
    return lines, (cmed if args.threads == 1 else med)


def achieved(n, S, secs, rate):
    """The share of the product rate ``rate`` (GFLOPS) an epoch of ``secs`` seconds achieved."""
    return epoch_flops(seed_layers(), n, S, BATCH) / secs / 1e9 / rate


def rate_section(args, m, secs):
    n = args.subset or 60000
    lines = ["## Matrix-multiply rate and achieved fraction", "",
             "Rate: GFLOPS of one `(100*S, 256) @ (256, 784)` product (the decoder's output layer), measured "
             "in each training process right after its epochs (median over the processes; same threads, same "
             "load), with the contender's own library and dtype (NumPy's BLAS for npvae, torch's MKL for the "
             "peer). The columns NumPy/torch GFLOPS are the same product timed in separate processes "
             "before each S. Achieved: dense-layer FLOPs of an epoch (forward, dW, dX; no dX for the input "
             "layer) / median seconds of an epoch / that rate, where the seconds are "
             + ("CPU seconds (one thread: the time the process ran)" if args.threads == 1 else
                f"wall seconds (the rate is that of {args.threads} threads over wall time; CPU seconds would "
                "count each thread's)") + ".", "",
             "| S | GFLOP/epoch | NumPy f32 GFLOPS | NumPy f64 GFLOPS | torch f32 GFLOPS | "
             + " | ".join(f"{c}: rate, achieved" for c in args.contenders) + " |",
             "|---" * (5 + len(args.contenders)) + "|"]
    for S in args.samples:
        g = {k: float(np.median([r[k] for r in m.gemm[S] if k in r])) for k in m.gemm[S][0]}
        own = {c: float(np.median(m.rates[(c, S)])) for c in args.contenders if (c, S) in secs}
        cells = [f"{own[c]:.0f} GFLOPS, {achieved(n, S, secs[(c, S)], own[c]):.0%}" if c in own else "-"
                 for c in args.contenders]
        lines.append(f"| {S} | {epoch_flops(seed_layers(), n, S, BATCH) / 1e9:.0f} | {g['numpy-float32']:.1f} | "
                     f"{g['numpy-float64']:.1f} | {g.get('torch-float32', float('nan')):.1f} | "
                     + " | ".join(cells) + " |")
    lines += ["", "Target: numba float32 at S >= 25 at least 60% of the machine's measured rate.", ""]
    if "numba-float32" in args.contenders:
        for S in args.samples:
            if S >= 25 and ("numba-float32", S) in secs:
                frac = achieved(n, S, secs[("numba-float32", S)], np.median(m.rates[("numba-float32", S)]))
                lines.append(f"- S={S}: {frac:.0%} of the measured rate, "
                             + ("met" if frac >= 0.6 else f"missed by {0.6 - frac:.0%} points"))
        lines.append("")
    if "numba-float32" in args.contenders and PEER in args.contenders:
        lines += floor_section(args.samples, n, secs, m.rates)
    return lines


def run_sections(args, m):
    """What else ran on the machine, peak memory, and the training losses."""
    return ["## What else ran on the machine", "",
            "Per training run: the share of the machine (wall x CPUs) that other processes took while it "
            "ran (`/proc/stat` busy time minus this run's CPU time). Above "
            f"{args.disturbed:.0%} a run counts as disturbed and is measured again, once; the second "
            "measurement is kept either way.", "", *(f"- {d}" for d in m.disturbances), "",
            "## Peak memory (MB)", "",
            "`ru_maxrss` of the worker process (data, libraries and training), and in brackets its growth over "
            "the process's RSS after loading data and libraries (what training itself added).", "",
            *contender_table(args.samples, args.contenders, lambda c, S: (
                "-" if (c, S) not in m.mem else f"{m.mem[(c, S)][0]:.0f} (+{m.mem[(c, S)][1]:.0f})")), "",
            "## Training loss after the timed epochs (same seed, same data)", "",
            "npvae's float32 and float64 runs draw the same noise (in float64, rounded), so they agree to float32 "
            "noise; the peer draws its own noise and initial weights from torch's generators.", "",
            *contender_table(args.samples, args.contenders, lambda c, S: (
                "-" if (c, S) not in m.losses else f"{m.losses[(c, S)]:.4f}")), ""]


def profile_section(profiles, steps):
    if not profiles:
        return []
    lines = ["## Where the numba float32 step spends its time", "",
             f"Share of each phase over {steps} training steps (batch {BATCH}, ELBO), "
             "timed with `npvae.fast.step.Profiler` marks; GEMM phases include the bias/activation "
             "kernels around them.", "",
             "| phase | " + " | ".join(f"S={S}" for S in profiles) + " |", "|---" * (1 + len(profiles)) + "|"]
    for ph in next(iter(profiles.values()))["phases"]:
        lines.append(f"| {ph} | " + " | ".join(f"{profiles[S]['phases'].get(ph, 0):.1%}" for S in profiles) + " |")
    lines.append("| step (ms) | " + " | ".join(f"{profiles[S]['step_ms']:.2f}" for S in profiles) + " |")
    return lines + [""]


def drift_section(drift, epochs, subset):
    if not drift:
        return []
    lines = [f"## Epoch time over {epochs} epochs (S=1, first {subset} images)", "",
             "Per epoch, in order: wall seconds / CPU seconds of the process / subnormal floats in RMSprop's "
             "running averages (and in the parameters) at the end of the epoch / the share of logits below "
             f"{DEEP_LOGIT:.2f} (the first {DEEP_PROBE} images, decoded at the encoder's mean), where float32 "
             "`sigmoid(l) - x` is subnormal for a pixel x = 0. npvae flushes subnormal running averages "
             "to zero every step (`npvae.optim`, `npvae.fast.updates.rmsprop_step`), and the Bernoulli "
             "gradient's subnormal entries (`npvae.ops.flush_subnormal`); the peer does neither "
             "(`--flush-denormal` is off by default): its sigmoid gives 0 below about -88.7, but its "
             "gradient (scaled by 1 / batch) holds subnormal entries for logits from -88.7 to -82.7. "
             "The machine was shared: wall time follows the load; the counts are exact.", "",
             "| epoch | " + " | ".join(drift) + " |", "|---" * (1 + len(drift)) + "|"]
    for e in range(epochs):
        cells = ["-" if e >= len(drift[c]) else
                 "{seconds:.2f} / {cpu:.2f} / {subnormal_state} ({subnormal_params}) / {deep:.3%}".format(**drift[c][e])
                 for c in drift]
        lines.append(f"| {e + 1} | " + " | ".join(cells) + " |")
    for c in drift:
        d, cpu = [r["seconds"] for r in drift[c]], [r["cpu"] for r in drift[c]]
        if len(d) >= 10:
            lines.append(f"\n{c}: median wall of epochs 2-6 {np.median(d[1:6]):.2f} s, of the last 5 "
                         f"{np.median(d[-5:]):.2f} s (ratio {np.median(d[-5:]) / np.median(d[1:6]):.2f}); "
                         f"CPU {np.median(cpu[1:6]):.2f} s and {np.median(cpu[-5:]):.2f} s "
                         f"(ratio {np.median(cpu[-5:]) / np.median(cpu[1:6]):.2f}).")
    return lines + [""]


def time_table(samples, contenders, values, what=""):
    """A table of seconds per epoch: median [min-max] per contender and S, then each
    contender's ratio to the peer; the verdicts of numba float32 against the 0.67x
    target (``what`` names the kind of seconds); and the medians by (contender, S)."""
    med = {k: float(np.median(v)) for k, v in values.items()}
    others = [c for c in contenders if c != PEER]
    # numba float32 against each peer (PyTorch, and JAX where it ran)
    peers = [p for p in (PEER, JAX_PEER) if p in contenders and "numba-float32" in contenders]
    extra = [JAX_PEER] if JAX_PEER in peers else []
    rows = ["| S | " + " | ".join(contenders) + " | " + " | ".join(
                [f"{c} / peer" for c in others] + [f"numba-float32 / {p}" for p in extra]) + " |",
            "|---" * (1 + len(contenders) + len(others) + len(extra)) + "|"]
    for S in samples:
        cells = [("-" if not values.get((c, S)) else
                  f"{fmt_s(med[(c, S)])} [{fmt_s(min(values[(c, S)]))}-{fmt_s(max(values[(c, S)]))}]")
                 for c in contenders]
        ratios = [(f"{med[(c, S)] / med[(p, S)]:.2f}" if (c, S) in med and (p, S) in med else "-")
                  for c, p in [(c, PEER) for c in others] + [("numba-float32", p) for p in extra]]
        rows.append(f"| {S} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    verdicts = []
    for S in samples:
        for p in peers:
            if ("numba-float32", S) in med and (p, S) in med:
                target = TARGETS[p](S)
                r = med[("numba-float32", S)] / med[(p, S)]
                verdict = "met" if r <= target else f"missed by {r / target:.2f}x ({r:.2f} vs {target:.2f})"
                verdicts.append(f"- S={S}{what}, against {p}: ratio {r:.2f}, {verdict}")
    return rows, verdicts, med


def floor_section(samples, n, secs, rates, target=0.67):
    """Lines of the report's "what the products alone allow" section for numba float32.

    The floor is the epoch's dense-layer FLOPs at npvae's measured product rate: the
    epoch time if the products ran at that rate and nothing else took any time. Its
    ratio to the peer's epoch is the best ratio this BLAS allows; the share of the
    epoch the products must fill to meet ``target`` is ``floor / (target * peer)``.
    """
    c = "numba-float32"
    lines = ["## What the products alone allow (numba float32)", "",
             "Floor: the epoch's dense-layer FLOPs at npvae's own measured rate (the rate column above), i.e. "
             "the epoch time if the products ran at that rate and all else took no time. Best ratio: floor / "
             f"peer's epoch. Needed: the share of the epoch the products must fill, at that rate, for a ratio "
             f"of {target} (more than 100%: out of reach with this BLAS). BLAS speed: the peer's rate / "
             "npvae's, the same product in each library.", "",
             "| S | floor (s) | best ratio | share needed | share now | peer's BLAS / npvae's |",
             "|---|---|---|---|---|---|"]
    for S in samples:
        if (c, S) not in secs or (PEER, S) not in secs:
            continue
        own, peer_rate = float(np.median(rates[(c, S)])), float(np.median(rates[(PEER, S)]))
        floor = epoch_flops(seed_layers(), n, S, BATCH) / 1e9 / own
        lines.append(f"| {S} | {fmt_s(floor)} | {floor / secs[(PEER, S)]:.2f} | "
                     f"{floor / (target * secs[(PEER, S)]):.0%} | {floor / secs[(c, S)]:.0%} | "
                     f"{peer_rate / own:.2f} |")
    return lines + [""]


def contender_table(samples, contenders, cell):
    """Rows of a table with one column per contender: ``cell(contender, S)`` or "-"."""
    rows = ["| S | " + " | ".join(contenders) + " |", "|---" * (1 + len(contenders)) + "|"]
    for S in samples:
        rows.append(f"| {S} | " + " | ".join(cell(c, S) for c in contenders) + " |")
    return rows


def fmt_s(v):
    return f"{v:.2f}" if v < 100 else f"{v:.0f}"


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--worker", choices=["train", "gemm", "profile", "drift"], help=argparse.SUPPRESS)
    p.add_argument("--contender", help=argparse.SUPPRESS)
    p.add_argument("--S", type=int, help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, default=60, help=argparse.SUPPRESS)
    p.add_argument("--epochs", type=int, default=2, help="timed epochs per contender, S and repeat")
    p.add_argument("--samples", type=int, nargs="+", default=[1, 5, 25, 50], help="values of S")
    p.add_argument("--repeats", type=int, default=1, help="rounds of the alternation")
    p.add_argument("--threads", type=int, default=1, help="threads for BLAS, OpenMP and torch")
    p.add_argument("--subset", type=int, default=None, help="train on the first N images (None: all 60000)")
    p.add_argument("--contenders", nargs="+", choices=CONTENDERS, help="what to time (default: all installed)",
                   default=[c for c in CONTENDERS if not c.startswith("jax") or importlib.util.find_spec("jax")])
    p.add_argument("--numpy-samples", type=int, nargs="+", default=None,
                   help="values of S for the (slow) NumPy reference path (None: all)")
    p.add_argument("--drift-epochs", type=int, default=20, help="0 to skip the drift run")
    p.add_argument("--drift-subset", type=int, default=10000, help="images of the drift run")
    p.add_argument("--drift-contenders", nargs="+", default=["numba-float32", PEER], choices=CONTENDERS,
                   help="contenders of the drift run")
    p.add_argument("--profile-samples", type=int, nargs="*", default=[1, 25], help="values of S profiled")
    p.add_argument("--profile-steps", type=int, default=60, help="steps per profile")
    p.add_argument("--disturbed", type=float, default=DISTURBED,
                   help="others' share of the machine that marks a run disturbed (measured again once)")
    p.add_argument("--out", default=None,
                   help="report file (None: benchmarks/results/speed_1thread.md or speed_<T>threads.md)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.worker:
        return run_worker(args)
    if args.out is None:
        args.out = str(RESULTS / ("speed_1thread.md" if args.threads == 1 else f"speed_{args.threads}threads.md"))
    started, load_start = time.strftime("%Y-%m-%d %H:%M:%S"), loadavg()
    print(f"threads {args.threads}, {args.subset or 60000} images, load {load_start}", flush=True)
    m = measure_training(args)
    profiles = measure_profiles(args)
    drift = measure_drift(args)
    command = "python benchmarks/speed.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = header(args, command, started, (load_start, loadavg()))
    time_lines, secs = time_sections(args, m)
    lines += time_lines + rate_section(args, m, secs) + run_sections(args, m)
    lines += profile_section(profiles, args.profile_steps) + drift_section(drift, args.drift_epochs, args.drift_subset)
    text = "\n".join(lines) + "\n"
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    print(text)
    return None


if __name__ == "__main__":
    main()
