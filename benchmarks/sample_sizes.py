"""What does the number of Monte Carlo samples S buy? A study over S, objectives and seeds.

For every cell (S, objective, seed) of the grid this trains the seed's model (784-256-2,
RMSprop with Keras' settings, batch 100) with ``S`` samples per example, then measures on
the test images:

* the test ELBO (analytic KL, averaged over 10 samples per image), and its KL term (the
  encoder's posterior width) and the active units (latent dimensions whose encoder mean varies
  over the test images by more than 0.01, Burda et al. 2016, section 5.2),
* the test IWAE bound with ``k = S`` (the bound the cell trained, for IWAE) and ``k = 50``,
* the importance-sampled log-likelihood (``npvae.evaluate.log_likelihood``, ``k = --k``), with
  its Monte Carlo standard error and effective sample size,
* wall time per training epoch (median over epochs), and with ``--curve N`` the test IWAE bound
  (k = 50, first N test images) after every epoch, for the equal-wall-clock view (which S is
  best for a fixed budget of training seconds),
* the signal-to-noise ratio of the encoder's and the decoder's minibatch gradient
  (``npvae.diagnostics.gradient_snr``, median over coordinates) with the cell's S and
  objective, at each cell's own (trained) parameters and at the initialization. Across S this
  compares different trained models, not S at fixed parameters (``snr_vs_k.py`` measures that).
  A median at the noise floor (under ``3 / sqrt(R)`` with R draws, or more than a quarter of
  the coordinates under it: ``npvae.diagnostics.at_noise_floor``) is reported as an upper bound
  (:func:`snr_at_floor`).

Objectives: ``elbo``, ``iwae`` and ``iwae-dreg`` (the IWAE bound trained with the DReG
estimator of Tucker et al. 2018), and the splits of a sample budget of Rainforth et al. (2018),
their parameter in the name: ``miwae-M8`` (the mean of M = 8 IWAE bounds of K = S / 8 samples
each; ``miwae-dreg-M8`` with DReG), ``piwae-M8`` (the decoder on the IWAE bound of all S
samples, the encoder on MIWAE(8, S / 8)) and ``ciwae-b0.5`` (beta ELBO + (1 - beta) IWAE, beta =
0.5). For them S is the budget M * K: ``--samples 8 16 64 --objectives iwae miwae-M4 miwae-M8``
compares splits of each budget, and a cell whose S is not a multiple of its M is left out of the
grid. ``--binarize dynamic`` trains on a fresh Bernoulli draw of
every batch (Burda et al.) and evaluates on one fixed binarization of the test images;
``--dtype`` is float32 (the numba engine's fast path, as ``npvae train``) unless float64 is asked.

Cells are independent: they run in local worker processes (``--workers N``) or on an
existing Dask distributed cluster (``--scheduler tcp://HOST:PORT``; ``pip install
"dask[distributed]"``). Each finished cell writes ``<out>/cells/<cell>/result.json``
(atomically) and is not recomputed on the next run; an interrupted cell resumes from its
last epoch's checkpoint. At the end ``<out>.md`` (table, command, machine) and
``<out>_*.png`` (metrics against S, log-scale axis) are written. ``--out`` defaults to
``runs/sample_sizes``; a folder holding finished cells of other settings (epochs, sizes, dtype,
...) is refused, so that one study's report never mixes in or overwrites another's. Where the
data was read from (``--data``) is recorded in each cell but is not a setting: the same MNIST
gives the same numbers from any folder.

Example (the committed first run, made when float64 was the default)::

    python benchmarks/sample_sizes.py --samples 1 5 25 50 --objectives elbo iwae --seeds 0 1 2 3 \\
        --epochs 3 --subset 10000 --test-subset 500 --k 1000 --workers 1 --dtype float64 \\
        --out benchmarks/results/sample_sizes

On several machines, with Dask. A Dask scheduler runs whatever code a client that reaches it
sends, and its dashboard listens on every interface unless bound (``--dashboard-address``), so
start both on a private interface that only the machines of the study reach (here 10.0.0.5)::

    dask scheduler --host 10.0.0.5 --port 8786 --dashboard-address 10.0.0.5:8787
    NPVAE_DATA=/data/mnist dask worker tcp://10.0.0.5:8786 --nthreads 1 --host 10.0.0.6  # each machine
    python benchmarks/sample_sizes.py ... --scheduler tcp://10.0.0.5:8786 --out /shared/sample_sizes

``--out`` must be a folder every worker reaches at the same path (a relative one is made absolute
here, on the client, before the cells are sent). Anywhere beyond a trusted network, use Dask's
TLS (``tls://`` addresses; certificates signed by a CA of your own): ``dask scheduler --protocol
tls --tls-ca-file ca.pem --tls-cert scheduler.pem --tls-key scheduler.key``, the same options to
``dask worker tls://10.0.0.5:8786``, and here ``--scheduler tls://10.0.0.5:8786 --tls-ca-file
ca.pem --tls-cert client.pem --tls-key client.key`` (a ``distributed.security.Security``).
"""

import os
import sys


def _early_threads(argv):
    # BLAS reads its thread count when NumPy is imported, so it is set before that
    # (worker processes inherit the environment).
    n = "1"
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            n = argv[i + 1]
        elif a.startswith("--threads="):
            n = a.split("=", 1)[1]
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, n)


if __name__ == "__main__":
    _early_threads(sys.argv[1:])

import argparse  # noqa: E402
import concurrent.futures as cf  # noqa: E402
import contextlib  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import signal  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

import _common  # noqa: E402,F401  (this checkout's npvae on sys.path)
from _common import machine, plural  # noqa: E402

import npvae  # noqa: E402
from npvae import io  # noqa: E402
from npvae.diagnostics import FLOOR_SHARE, at_noise_floor, gradient_snr  # noqa: E402
from npvae.evaluate import evaluate_bound, log_likelihood  # noqa: E402

RESULT = "result.json"
ERROR = "error.txt"
METRICS = [  # (key, label, higher is better)
    ("test_elbo", "test ELBO", True),
    ("test_iwae_S", "test IWAE bound, k = S", True),
    ("test_iwae_50", "test IWAE bound, k = 50", True),
    ("log_likelihood", "log-likelihood (IS)", True),
    ("log_likelihood_mc_se", "its Monte Carlo SE", False),
    ("ess_median", "ESS of the k samples (median over images)", True),
    ("test_kl", "test KL(q || p)", False),
    ("active_units", "active units", True),
    ("seconds_per_epoch", "seconds per epoch", False),
    ("snr_encoder", "encoder gradient SNR", True),
    ("snr_decoder", "decoder gradient SNR", True),
    ("snr_encoder_init", "encoder gradient SNR at init", True),
    ("snr_decoder_init", "decoder gradient SNR at init", True),
]


# ---------------------------------------------------------------------------
# One cell
# ---------------------------------------------------------------------------
#: ``--objectives`` names: (objective, estimator) of :func:`npvae.fit`.
OBJECTIVES = {"elbo": ("elbo", "standard"), "iwae": ("iwae", "standard"), "iwae-dreg": ("iwae", "dreg")}
#: How the report names each objective.
OBJECTIVE_TEXT = {"elbo": "elbo (analytic KL)", "iwae": "iwae",
                  "iwae-dreg": "iwae-dreg (the IWAE bound trained with the DReG estimator)"}
#: The splits of a sample budget, named with their parameter (``miwae-M8``, ``ciwae-b0.5``):
#: prefix -> (objective, estimator, parameter, its letter in the name).
SPLITS = {"miwae": ("miwae", "standard", "outer", "M"), "miwae-dreg": ("miwae", "dreg", "outer", "M"),
          "piwae": ("piwae", "standard", "outer", "M"), "ciwae": ("ciwae", "standard", "beta", "b")}


def objective_spec(name):
    """``(objective, estimator, params)`` of an ``--objectives`` name, ``params`` the keyword
    arguments of :func:`npvae.fit` that the name sets (``{"outer": 8}`` for ``miwae-M8``,
    ``{"beta": 0.5}`` for ``ciwae-b0.5``, ``{}`` for the others). Raises ValueError for a name
    that is neither, or whose parameter the objective refuses (:func:`npvae.objectives.make`)."""
    if name in OBJECTIVES:
        return (*OBJECTIVES[name], {})
    prefix, _, value = name.rpartition("-")
    split = SPLITS.get(prefix)
    if split is not None and value[:1] == split[3]:
        objective, estimator, param, _ = split
        try:
            v = int(value[1:]) if param == "outer" else float(value[1:])
            npvae.objectives.make(objective, **{param: v})       # the objective's own check of the value
        except ValueError:
            v = None
        if v is not None and name == split_name(prefix, v):       # one spelling a split, one cell name
            return objective, estimator, {param: v}
    raise ValueError(f"expected one of {', '.join(OBJECTIVES)}, or a split named with its parameter: miwae-M8, "
                     f"miwae-dreg-M8, piwae-M8 (M >= 1 groups), ciwae-b0.5 (beta in [0, 1]); got {name!r}")


def split_name(prefix, value):
    """The ``--objectives`` name of a split: ``split_name("miwae", 8) == "miwae-M8"``."""
    _, _, param, letter = SPLITS[prefix]
    return f"{prefix}-{letter}{value if param == 'outer' else f'{value:g}'}"


def objective_text(name):
    """How the report names an objective."""
    if name in OBJECTIVE_TEXT:
        return OBJECTIVE_TEXT[name]
    objective, estimator, params = objective_spec(name)
    if objective == "ciwae":
        b = params["beta"]
        return f"{name} ({b:g} ELBO + {1 - b:g} IWAE of the same S samples)"
    M = params["outer"]
    what = (f"the mean of {M} IWAE bounds of S / {M} samples" if objective == "miwae" else
            f"the decoder on the IWAE bound of all S samples, the encoder on MIWAE({M}, S / {M})")
    return f"{name} ({what}" + (", DReG's estimator)" if estimator == "dreg" else ")")


def _objective(name):
    """The objective of an ``--objectives`` name (:func:`npvae.objectives.make` with the name's
    parameter) and its estimator."""
    objective, estimator, params = objective_spec(name)
    return npvae.objectives.make(objective, **params), estimator


def fits(name, S):
    """Whether the objective ``name`` can use ``S`` samples per example (for a split: a multiple of
    its M; the objective's own :meth:`~npvae.objectives.Objective.check_samples`)."""
    try:
        _objective(name)[0].check_samples(S)
    except ValueError:
        return False
    return True


#: Settings added after the first committed grid, with the values that grid used: a stored
#: cell without them was computed with these.
LATER_SETTINGS = {"dtype": "float64", "binarize": "none", "activation": "relu", "curve": 0}
#: A cell's entries that are not settings: where it is and where its data and checkpoints are
#: kept change no number, so two studies differing only there are the same study.
NOT_SETTINGS = ("dir", "data", "keep_checkpoint")
#: The grid's axes: a study holds cells of many values of these.
GRID = ("mc_samples", "objective", "seed")
#: The fixed binarization of the test images (``--binarize dynamic``), the same for every cell.
TEST_BINARIZATION_SEED = 20160101


def cell_name(cell):
    return f"{cell['objective']}-S{cell['mc_samples']}-seed{cell['seed']}"


def active_units(model, x, threshold=0.01, batch=1000):
    """Latent dimensions whose encoder mean varies over ``x`` by more than ``threshold``
    (``Var_x E_q[z_j] > 0.01``, Burda et al. 2016, section 5.2)."""
    mu = np.concatenate([model.encode(x[i:i + batch])[0] for i in range(0, len(x), batch)])
    return int(np.sum(mu.astype(np.float64).var(axis=0) > threshold))


def _load_data(cell):
    if cell.get("synthetic"):
        # Tiny stand-in for tests: binary images from a fixed seed, never MNIST-sized.
        rng = np.random.default_rng(1234)
        d = cell["synthetic"]
        proto = rng.random((4, d)) < 0.3
        pick = rng.integers(0, 4, cell["subset"] + cell["test_subset"])
        x = (proto[pick] ^ (rng.random((len(pick), d)) < 0.05)).astype(np.float64)
        return x[:cell["subset"]], x[cell["subset"]:]
    x_train, x_test = _common.load_mnist(cell.get("data"))
    x_train, x_test = x_train[:cell["subset"]], x_test[:cell["test_subset"]]
    if cell.get("binarize", "none") == "dynamic":
        x_test = npvae.binarize(x_test, "dynamic", rng=np.random.default_rng(TEST_BINARIZATION_SEED))
    return x_train, x_test


def run_cell(cell):
    """Train and measure one (S, objective, seed) cell; returns its result dict.

    ``cell`` holds the settings (see :func:`make_cells`), including ``dir``, the cell's
    folder. A ``result.json`` there means the cell is done: it is read back, not
    recomputed. Otherwise training resumes from ``checkpoint.npz`` if one exists.
    A cell that fails returns ``{"failed": True, ...}`` with the worker's name and the
    error's message (its traceback goes to ``error.txt`` in the cell's folder), so that the
    client can say where it failed; the other cells go on.
    """
    try:
        return _run_cell(cell)
    except Exception as exc:  # noqa: BLE001 (any error of one cell is reported, not raised)
        return _failure(cell, exc)


def worker_name():
    """Who runs this cell: the Dask worker (its name and address) or this host and process."""
    if "distributed" in sys.modules:
        from distributed import get_worker
        try:
            w = get_worker()
        except ValueError:          # not inside a Dask task
            pass
        else:
            return f"Dask worker {w.name} ({w.address})" if str(w.name) != w.address else f"Dask worker {w.address}"
    return f"{platform.node()}, process {os.getpid()}"


def _failure(cell, exc):
    where = Path(cell["dir"]) / ERROR
    try:
        io.atomic_write_text(where, "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    except OSError:
        where = None
    return {"failed": True, "cell": cell_name(cell), "worker": worker_name(),
            "error": f"{type(exc).__name__}: {exc}", "traceback": None if where is None else str(where)}


def _snr(model, x, cell, seed):
    objective, estimator = _objective(cell["objective"])
    return gradient_snr(model, x, cell["mc_samples"], objective, estimator=estimator, repeats=cell["snr_repeats"],
                        seed=seed)


def _curve(cell, x_test):
    """The per-epoch callback of ``--curve``: the test IWAE bound (k = 50) on the first N images."""
    if not cell.get("curve", 0):
        return None
    x_curve, seed = x_test[:cell["curve"]], cell["seed"]

    def curve_iwae(model, record):
        b = evaluate_bound(model, x_curve, mc_samples=50, objective="iwae", seed=[seed, 17, record["epoch"]],
                           batch_size=100)
        return {"curve_iwae_50": -b["loss"]}

    return curve_iwae


def _test_metrics(model, x_test, cell):
    """The test bounds, KL, active units and log-likelihood of a trained cell."""
    S, seed = cell["mc_samples"], cell["seed"]
    elbo = evaluate_bound(model, x_test, mc_samples=10, objective="elbo", seed=[seed, 10])
    iwae_s = evaluate_bound(model, x_test, mc_samples=S, objective="iwae", seed=[seed, 11], batch_size=200)
    iwae_50 = evaluate_bound(model, x_test, mc_samples=50, objective="iwae", seed=[seed, 12], batch_size=200)
    ll = log_likelihood(model, x_test, k=cell["k"], seed=[seed, 14], progress=False)
    return {"test_elbo": -elbo["loss"], "test_iwae_S": -iwae_s["loss"], "test_iwae_50": -iwae_50["loss"],
            "test_kl": elbo["kl"], "active_units": active_units(model, x_test),
            "log_likelihood": ll.mean, "log_likelihood_mc_se": ll.mc_se, "log_likelihood_se": ll.se,
            "ess_median": float(np.median(ll.ess))}


def _run_cell(cell):
    folder = Path(cell["dir"])
    done = folder / RESULT
    if done.exists():
        return json.loads(done.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    t_cell = time.perf_counter()
    x_train, x_test = _load_data(cell)
    S, seed = cell["mc_samples"], cell["seed"]
    objective, estimator, params = objective_spec(cell["objective"])
    binarize = cell.get("binarize", "none")
    model = npvae.VAE(input_dim=x_train.shape[1], hidden=cell["hidden"], latent_dim=cell["latent_dim"], seed=seed,
                      activation=cell.get("activation", "relu"), dtype=cell.get("dtype", "float64"))
    x_snr = x_train[:cell["snr_batch"]]
    if binarize == "dynamic":
        x_snr = npvae.binarize(x_snr, "dynamic", rng=np.random.default_rng([seed, 16]))
    snr_init = _snr(model, x_snr, cell, [seed, 13])
    checkpoint = folder / "checkpoint.npz"
    history = npvae.fit(model, x_train, epochs=cell["epochs"], batch_size=cell["batch_size"], mc_samples=S,
                        objective=objective, estimator=estimator, binarize=binarize, seed=seed,
                        checkpoint=checkpoint, resume=True, verbose=0, callback=_curve(cell, x_test), **params)
    t_eval = time.perf_counter()
    metrics = _test_metrics(model, x_test, cell)
    snr = _snr(model, x_snr, cell, [seed, 15])
    result = {
        "cell": cell_name(cell), "mc_samples": S, "objective": cell["objective"], "estimator": estimator,
        "seed": seed, **metrics,
        "seconds_per_epoch": float(np.median(history["seconds"])),
        "train_seconds": float(np.sum(history["seconds"])),
        "train_loss": history[-1]["loss"],
        "snr_encoder": snr.summary["encoder"]["median_snr"], "snr_decoder": snr.summary["decoder"]["median_snr"],
        "snr_encoder_init": snr_init.summary["encoder"]["median_snr"],
        "snr_decoder_init": snr_init.summary["decoder"]["median_snr"],
        "snr_summary": snr.summary, "snr_summary_init": snr_init.summary,
        "backend": getattr(model, "backend", "numpy"),
        "history": list(history), "eval_seconds": time.perf_counter() - t_eval,
        "cell_seconds": time.perf_counter() - t_cell, "host": platform.node(),
        "settings": {k: v for k, v in cell.items() if k != "dir"},
    }
    io.atomic_write_text(done, json.dumps(result, indent=1, default=_jsonable) + "\n")
    (folder / ERROR).unlink(missing_ok=True)   # an earlier attempt's error, now mended
    if not cell.get("keep_checkpoint"):
        checkpoint.unlink(missing_ok=True)   # the result is what is kept; checkpoints are large
    return result


def _jsonable(v):
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    raise TypeError(f"not JSON serializable: {type(v).__name__}")


def make_cells(args):
    """The grid's cells, in the order of ``--order``. Their folders are absolute paths (resolved
    here, on the client): a Dask worker runs in a folder of its own."""
    out = Path(args.out).expanduser().resolve()
    cells = []
    for S in args.samples:
        for objective in (o for o in args.objectives if fits(o, S)):     # a split's S: a multiple of its M
            for seed in args.seeds:
                cell = dict(mc_samples=S, objective=objective, seed=seed, epochs=args.epochs, subset=args.subset,
                            test_subset=args.test_subset, k=args.k, batch_size=args.batch_size,
                            hidden=list(args.hidden), latent_dim=args.latent_dim, snr_batch=args.snr_batch,
                            snr_repeats=args.snr_repeats, data=args.data, synthetic=args.synthetic,
                            keep_checkpoint=args.keep_checkpoints, dtype=args.dtype, binarize=args.binarize,
                            activation=args.activation, curve=args.curve)
                cell["dir"] = str(out / "cells" / cell_name(cell))
                cells.append(cell)
    # largest first, so that parallel workers finish together; smallest first (--order) gives a
    # single worker finished cells early
    return sorted(cells, key=lambda c: cost(c) if getattr(args, "order", "largest") == "smallest" else -cost(c))


def cost(cell):
    """Relative cost of a cell, for the ETA: training is about linear in S + 1, plus evaluation."""
    train = cell["epochs"] * cell["subset"] * (cell["mc_samples"] + 1)
    evaluate = cell["test_subset"] * (cell["k"] + 60 + cell["mc_samples"]) / 3
    snr = 2 * cell["snr_repeats"] * cell["snr_batch"] * (cell["mc_samples"] + 1)
    return train + evaluate + snr


def finished_cells(out):
    """``{cell folder name: result}`` of every finished cell under ``out/cells``."""
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(Path(out, "cells").glob(f"*/{RESULT}"))}


def check_settings(cells, finished, out):
    """Refuse an ``out`` holding finished cells of other settings than ``cells``' (the grid's axes
    S, objective and seed aside, and the entries of :data:`NOT_SETTINGS`): one folder, one study."""
    want = {k: v for k, v in cells[0].items() if k not in NOT_SETTINGS + GRID}
    clashes = {}
    for name, result in finished.items():
        stored = dict(LATER_SETTINGS, **result.get("settings", {}))
        for k in want:
            if stored.get(k) != want[k]:
                clashes.setdefault(k, (stored.get(k), want[k], []))[2].append(name)
    if clashes:
        what = "; ".join(f"{k}: {there!r} there, {here!r} here ({len(names)} cell(s), e.g. {names[0]})"
                         for k, (there, here, names) in sorted(clashes.items()))
        raise SystemExit(f"sample_sizes.py: {out} holds finished cells computed with other settings ({what}); "
                         "use another --out, or remove those cells")


# ---------------------------------------------------------------------------
# Executors
# ---------------------------------------------------------------------------
@contextlib.contextmanager
def _sigint_deferred():
    """Hold Ctrl-C until the block is done: submitting starts the local workers, and a
    KeyboardInterrupt in the middle of a process start could leave a worker the executor does
    not know of yet, which would keep the interrupted client alive until its cell finished.
    The pending signal is delivered, as a KeyboardInterrupt, when the block ends."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _ignore_sigint():
    # Ctrl-C reaches the whole process group: the client handles it (and ends the workers)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class _Local:
    def __init__(self, workers):
        self.others = set(multiprocessing.active_children())    # children not of this pool
        self.pool = cf.ProcessPoolExecutor(max_workers=workers, initializer=_ignore_sigint)

    def submit(self, fn, arg):
        return self.pool.submit(fn, arg)

    def as_completed(self, futures):
        return cf.as_completed(futures)

    def close(self, interrupted=False):
        if interrupted:    # the running cells stop now; they resume from their checkpoints
            for child in set(multiprocessing.active_children()) - self.others:
                child.terminate()
        self.pool.shutdown(wait=not interrupted, cancel_futures=True)


class _Dask:
    def __init__(self, address, timeout=30.0, tls=None):
        try:
            from distributed import Client, as_completed
            from distributed.security import Security
        except ImportError:
            raise SystemExit('--scheduler needs Dask distributed: pip install "dask[distributed]"') from None
        security = None if tls is None else Security(
            tls_ca_file=tls[0], tls_client_cert=tls[1], tls_client_key=tls[2], require_encryption=True)
        try:
            self.client = Client(address, timeout=timeout, security=security)
        except (OSError, TimeoutError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise SystemExit(f"sample_sizes.py: cannot reach the Dask scheduler at {address} within {timeout:g} s "
                             f"({reason}); is it running there (and is --connect-timeout long enough)?") from None
        self._as_completed = as_completed

    def submit(self, fn, arg):
        return self.client.submit(fn, arg, pure=False)

    def as_completed(self, futures):
        return self._as_completed(futures)

    def close(self, interrupted=False):
        self.client.close()


def run_grid(cells, finished=None, workers=1, scheduler=None, file=None, connect_timeout=30.0, tls=None):
    """Run the unfinished cells through the executor; returns (results, failures).

    Cells in ``finished`` (``{folder name: result}``, default: read from their folders) are
    taken as they are, without being submitted. One line per cell is printed to ``file``
    (default stdout) with the elapsed time and an ETA weighted by each cell's estimated
    :func:`cost`; a failed cell's line names the worker and gives the error's message.
    """
    file = file if file is not None else sys.stdout
    if finished is None:
        finished = {Path(c["dir"]).name: json.loads((Path(c["dir"]) / RESULT).read_text())
                    for c in cells if (Path(c["dir"]) / RESULT).exists()}
    results = [finished[Path(c["dir"]).name] for c in cells if Path(c["dir"]).name in finished]
    todo = [c for c in cells if Path(c["dir"]).name not in finished]
    print(f"{len(cells)} cells: {len(results)} already done, {len(todo)} to run "
          f"({'scheduler ' + scheduler if scheduler else f'{workers} local worker(s)'})", file=file, flush=True)
    failures = []
    if not todo:
        return results, failures
    executor = _Dask(scheduler, connect_timeout, tls) if scheduler else _Local(workers)
    clean = False
    try:
        _collect(executor, todo, results, failures, file)
        clean = True
    finally:
        executor.close(interrupted=not clean)
    return results, failures


def _collect(executor, todo, results, failures, file):
    """Submit ``todo`` and take the cells as they finish, printing a line for each."""
    t0 = time.perf_counter()
    total, finished = sum(cost(c) for c in todo), 0.0
    with _sigint_deferred():
        futures = {executor.submit(run_cell, c): c for c in todo}
    for i, fut in enumerate(executor.as_completed(list(futures)), 1):
        cell = futures[fut]
        finished += cost(cell)
        elapsed = time.perf_counter() - t0
        eta = elapsed * (total - finished) / finished
        try:
            r = fut.result()
        except Exception as exc:  # noqa: BLE001 (the worker died, or the cluster lost the cell)
            r = {"failed": True, "cell": cell_name(cell), "worker": "an unknown worker",
                 "error": f"{type(exc).__name__}: {exc}", "traceback": None}
        if r.get("failed"):
            failures.append(r)
            print(f"[{i}/{len(todo)}] {cell_name(cell)} FAILED on {r['worker']}:\n{r['error']}"
                  + (f"\n(traceback in {r['traceback']})" if r.get("traceback") else ""), file=file, flush=True)
            continue
        results.append(r)
        print(f"[{i}/{len(todo)}] {cell_name(cell)}: LL {r['log_likelihood']:.2f}, "
              f"{r['seconds_per_epoch']:.1f} s/epoch, cell {r['cell_seconds']:.0f} s; "
              f"elapsed {_hms(elapsed)}, ETA {_hms(eta)}", file=file, flush=True)


def _hms(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------
#: The median SNR columns and where each cell keeps the summary they come from.
SNR_METRICS = {"snr_encoder": ("snr_summary", "encoder"), "snr_decoder": ("snr_summary", "decoder"),
               "snr_encoder_init": ("snr_summary_init", "encoder"),
               "snr_decoder_init": ("snr_summary_init", "decoder")}


def snr_at_floor(result, metric):
    """``(at_floor, limit)``: whether a cell's median SNR ``metric`` is at the noise floor, and
    the floor ``3 / sqrt(R)`` of its R gradient draws.

    At the floor (:func:`npvae.diagnostics.at_noise_floor`, the one rule of every SNR report), the
    median is under ``3 / sqrt(R)`` or more than :data:`npvae.diagnostics.FLOOR_SHARE` of the
    coordinates are (``share_below_floor``, which cells of the first grid did not store: for them
    the median alone decides): the value is an upper bound, not a measurement.
    """
    key, part = SNR_METRICS[metric]
    summary = result.get(key, {}).get(part, {})
    repeats = result.get("settings", {}).get("snr_repeats")
    floor = summary["floor"] if "floor" in summary else (1 / np.sqrt(repeats) if repeats else np.nan)
    median = summary.get("median_snr", result.get(metric, np.nan))
    return at_noise_floor(floor, summary.get("share_below_floor", np.nan), median), float(3 * floor)


def aggregate(results):
    """{(objective, S): {metric: (mean, sd, n)}} over seeds; ``row["at_floor"]`` gives, for each
    median SNR column, ``(cells at the noise floor, the largest floor 3 / sqrt(R))``
    (:func:`snr_at_floor`)."""
    table = {}
    for r in results:
        table.setdefault((r["objective"], r["mc_samples"]), []).append(r)
    out = {}
    for key, rs in sorted(table.items()):
        row = {}
        for m, _, _ in METRICS:
            v = np.array([r.get(m, np.nan) for r in rs], dtype=float)   # metrics added later: NaN
            row[m] = (float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else float("nan"), len(v))
        floors = {m: [snr_at_floor(r, m) for r in rs] for m in SNR_METRICS}
        row["at_floor"] = {m: (sum(b for b, _ in f), max(lim for _, lim in f)) for m, f in floors.items()}
        out[key] = row
    return out


#: Decimals of a table column, where not 2.
DIGITS = {"seconds_per_epoch": 1, "log_likelihood_mc_se": 4, "ess_median": 0}


def _fmt(mean, sd, digits=2):
    if not np.isfinite(mean):
        return "—"                 # not measured (a metric added after the cell was computed)
    s = f"{mean:.{digits}f}"
    return s + (f" ± {sd:.{digits}f}" if np.isfinite(sd) else "")


def duration(seconds, short=False):
    """Hours to one decimal from 0.1 h (6 minutes) on, else minutes from one minute, else seconds:
    ``"4.4 hours"``, ``"12 minutes"``, ``"40 seconds"`` (``short``: ``"4.4 h"``, ``"12 min"``,
    ``"40 s"``)."""
    if seconds >= 360:
        return f"{seconds / 3600:.1f} h" if short else f"{seconds / 3600:.1f} hours"
    if seconds >= 60:
        return f"{seconds / 60:.0f} min" if short else plural(round(seconds / 60), "minute")
    return f"{seconds:.0f} s" if short else plural(round(seconds), "second")


def setup_line(args, results):
    """The report's paragraph on what ran: model, data, objectives (those of the cells), estimates."""
    seeds = sorted({r["seed"] for r in results})
    ran = sorted({r["objective"] for r in results}, key=lambda o: (o not in OBJECTIVES, o))
    estimator = ("the cell's S, objective and estimator" + (": DReG's for the iwae-dreg cells"
                                                            if "iwae-dreg" in ran else ""))
    return (
        f"Setup: {args.hidden} hidden ({args.activation}), latent {args.latent_dim}, RMSprop lr 1e-3, batch "
        f"{args.batch_size}, {args.dtype}; {plural(args.epochs, 'epoch')} on the first {args.subset} training "
        "images (" + ("grayscale targets" if args.binarize == "none" else "dynamically binarized, a fresh draw per "
                      "batch; the test images binarized once") + f"), seeds {seeds}; test metrics on the first "
        f"{args.test_subset} test images. Objectives: {', '.join(objective_text(o) for o in ran)}. "
        f"Log-likelihood: importance sampling with k = {args.k} (`npvae.evaluate.log_likelihood`); "
        "± is the SD over seeds (rows with n > 1); the log-likelihood's Monte Carlo standard error and the "
        "effective sample size of its k importance samples (median over the test images) are means over seeds. "
        f"SNR: median over the coordinates of |mean| / std of the minibatch gradient ({args.snr_batch} training "
        f"images, {args.snr_repeats} draws of eps, {estimator}), at each cell's own (trained) parameters and at "
        "the initialization: across S these are different models, not S at fixed parameters (that is "
        "`snr_vs_k.py`). A median under the noise floor 3 / sqrt(R) (R draws) is an upper bound "
        f"(shown as `< floor`); one with more than {FLOOR_SHARE:.0%} of the coordinates under the floor is not a "
        "measurement either (marked `†`): neither is read as a trend. "
        "Seconds per epoch: median over epochs, one worker per cell, on a machine shared with "
        "other jobs (compare ratios, not absolute times).")


def metrics_table(agg):
    """The table of every (objective, S); a median SNR at the noise floor in every seed's cell, with
    the mean under ``3/sqrt(R)``, is shown as ``< 3/sqrt(R)``; at the floor in some cells, or by the
    share of coordinates under it alone, it is shown with a mark and a footnote."""
    head = ["objective", "S", "n"] + [label for _, label, _ in METRICS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    bounded = marked = False
    for (objective, S), row in agg.items():
        cells = [objective, str(S), str(row["test_elbo"][2])]
        for m, _, _ in METRICS:
            text = _fmt(*row[m][:2], DIGITS.get(m, 2))
            at_floor, limit = row.get("at_floor", {}).get(m, (0, np.nan))
            if at_floor and at_floor == row[m][2] and row[m][0] < limit:
                text, bounded = f"< {limit:.2f}", True
            elif at_floor:
                text, marked = f"{text} †{at_floor}", True
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    notes = [""] if bounded or marked else []
    if bounded:
        notes.append("SNR `< x`: in every seed's cell the median is at the noise floor x = 3 / sqrt(R) and their "
                     "mean under it: an upper bound, not a value.")
    if marked:
        notes.append("SNR `†n`: n of the seeds' cells are at the noise floor there (the median under 3 / sqrt(R), "
                     f"or more than {FLOOR_SHARE:.0%} of the coordinates under it), so the mean is made, in part or "
                     "(n = every seed) in whole, of values that are not measurements: no trend is read from it.")
    return lines + notes + [""]


def _run_line(md):
    """The ``Date: ... Machine: ...`` line of the report at ``md`` (the run's), or None."""
    try:
        text = md.read_text()
    except OSError:
        return None
    return next((line for line in text.splitlines() if line.startswith("Date: ")), None)


def write_report(results, args, command, failures=()):
    agg = aggregate(results)
    out = Path(args.out)
    md = out.with_suffix(".md") if out.suffix != ".md" else out
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    now = datetime.datetime.now().strftime('%Y-%m-%d %H:%M')
    run_line = (f"Date: {now}. Machine: {machine()}; load average {load} (1/5/15 min) at the end; "
                f"OMP/OPENBLAS threads {os.environ.get('OPENBLAS_NUM_THREADS', '?')}.")
    earlier = _run_line(md) if getattr(args, "report_only", False) else None
    if earlier is not None:       # a redraw: the cells ran where and when the run's report says
        run_line = (f"{earlier}\n\nRedrawn from the cells' files on {now} (`--report-only`); the line above is "
                    "the run's (date, machine, load).")
    lines = ["# What the number of samples S buys: ELBO vs IWAE training", "", f"Command: `{command}`", "",
             run_line, "", setup_line(args, results), "", compute_line(results), ""]
    if failures:
        lines += ["Failed cells: " + "; ".join(f"{f['cell']} on {f['worker']} ({f['error'].splitlines()[0]})"
                                               for f in failures), ""]
    lines += metrics_table(agg) + equal_time_section(results)
    if is_burda_architecture(args):
        lines += burda_section(agg, args)
    plots = [] if getattr(args, "no_plots", False) else write_plots(agg, out)
    if plots:
        lines += ["Plots: " + ", ".join(f"`{p.name}`" for p in plots), ""]
        lines += [f"![{p.stem}]({p.name})" for p in plots] + [""]
    notes = Path(str(out) + "_notes.md")
    if notes.exists():
        lines += [notes.read_text().rstrip(), ""]
    io.atomic_write_text(md, "\n".join(lines))
    io.atomic_write_text(Path(str(out) + ".json"), json.dumps(
        {"command": command, "results": sorted(results, key=lambda r: (r["objective"], r["mc_samples"], r["seed"]))},
        indent=1, default=_jsonable) + "\n")
    return md


def compute_line(results):
    """What the finished cells cost: one worker (one thread) per cell, so seconds are core-seconds.

    A cell resumed from a checkpoint records only its last process in ``cell_seconds``, so a cell
    counts ``max(cell_seconds, train_seconds + eval_seconds)`` (its training time covers every epoch).
    A cell of the first grid, which stored no ``train_seconds``, counts the seconds of its epochs.
    """
    def trained(r):
        return r.get("train_seconds", sum(h.get("seconds", 0.0) for h in r.get("history", [])))

    train = sum(trained(r) for r in results)
    evaluation = sum(r.get("eval_seconds", 0.0) for r in results)
    total = sum(max(r.get("cell_seconds", 0.0), trained(r) + r.get("eval_seconds", 0.0)) for r in results)
    return (f"Compute: {plural(len(results), 'cell')} took {duration(total)} of one core in all (training "
            f"{duration(train, short=True)}, the log-likelihood and test bounds {duration(evaluation, short=True)}, "
            "the rest SNR and set-up), one thread per cell.")


#: Burda et al. (2016), Table 1, MNIST, one stochastic layer (two deterministic layers of 200 tanh
#: units, 50 latent, dynamically binarized): test NLL (nats, k = 5000) and active units, by
#: objective and k (their k is our S), after 3,280 passes over the training set.
BURDA_TABLE1 = {("elbo", 1): (86.76, 19), ("elbo", 5): (86.47, 20), ("elbo", 50): (86.35, 20),
                ("iwae", 1): (86.76, 19), ("iwae", 5): (85.54, 22), ("iwae", 50): (84.78, 25)}
BURDA_EPOCHS = 3280
#: Their training images (the first 59,600; npvae.protocol.BURDA) and minibatch: updates per epoch.
BURDA_TRAIN_IMAGES, BURDA_BATCH = 59600, 20
BURDA_UPDATES_PER_EPOCH = BURDA_TRAIN_IMAGES // BURDA_BATCH


def is_burda_architecture(args):
    """Whether the grid runs Burda et al.'s one-stochastic-layer model on their data."""
    return (list(args.hidden) == [200, 200] and args.activation == "tanh" and args.latent_dim == 50
            and args.binarize == "dynamic")


def burda_protocol_differences(args):
    """Markdown list: every way the cells' protocol differs from Burda et al.'s (section 5 of the
    paper and their code, as :mod:`npvae.protocol` cites it), the training length in updates last."""
    per_epoch = -(-args.subset // args.batch_size)           # the last, partial minibatch is an update
    ours, theirs = args.epochs * per_epoch, BURDA_EPOCHS * BURDA_UPDATES_PER_EPOCH
    return [
        "- the VAE's objective: `elbo` with the analytic KL here, the sampled KL (the mean of the log weights) "
        "there;",
        "- the optimizer: RMSprop at a constant learning rate of 1e-3 here, Adam with their schedule there "
        "(3^i epochs at 1e-3 · 10^(-i/7), i = 0 … 7);",
        f"- the minibatch: {args.batch_size} here, {BURDA_BATCH} there;",
        "- the output bias at the start: zero here, the logit of the training mean there;",
        f"- the training images: the first {args.subset:,}, shuffled every epoch, here; the first "
        f"{BURDA_TRAIN_IMAGES:,} in the same order every epoch there;",
        "- the test images: binarized once (one draw for every cell) here, anew at each evaluation there;",
        "- active units: the variance of the encoder's mean over the test images here, over the first 500 "
        "training images there;",
        f"- the training length: {args.epochs} epochs × {per_epoch:,} updates = {ours:,} updates here, "
        f"{BURDA_EPOCHS:,} epochs × {BURDA_UPDATES_PER_EPOCH:,} updates = {theirs:,} there ({ours / theirs:.2%} "
        "of theirs).",
    ]


def burda_section(agg, args):
    """Markdown: the cells beside Burda et al.'s Table 1 (NLL = -log-likelihood), with every
    difference of protocol named, and the ordering of the objectives and the direction of the
    gaps after the cells' epochs, in ours and theirs."""
    samples = sorted({S for (_, S) in BURDA_TABLE1 if any((o, S) in agg for o in OBJECTIVES)})
    if not samples:
        return []

    def ours(objective, S, metric="log_likelihood"):
        row = agg.get((objective, S))
        if row is None or not np.isfinite(row[metric][0]):
            return None
        return -row[metric][0] if metric == "log_likelihood" else row[metric][0]

    def num(v, digits=2):
        return "—" if v is None else f"{v:.{digits}f}"

    after = f"after {plural(args.epochs, 'epoch')}"
    n_test = getattr(args, "test_subset", 10000)
    test = "the 10,000 test images" if n_test >= 10000 else f"the first {n_test:,} test images (theirs: all 10,000)"
    lines = ["## Beside Burda et al. (2016), Table 1", "",
             "The same architecture and data (two hidden layers of 200 tanh units, 50 latent, dynamically "
             f"binarized MNIST, NLL by importance sampling with k = 5000 on {test}), their k being "
             "our S, but not their protocol. What differs:", ""]
    lines += burda_protocol_differences(args)
    lines += ["", f"So the numbers here are {after}, far from convergence, and are not comparable to Table 1's "
              "converged values; only the ordering of the objectives and the direction of the gaps are set beside "
              "theirs, and a direction here says what holds at this point of training, not at theirs. "
              "`benchmarks/burda_table1.py` is the staged reproduction under their protocol. NLL in nats (lower "
              "is better); — : not run.", "",
              "| S (their k) | elbo, analytic KL, here | VAE (sampled KL) there | IWAE here | IWAE there | "
              "IWAE-DReG here | IWAE gain over elbo here | IWAE gain over the VAE there | "
              "active units elbo / IWAE here | there |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    verdicts = []
    for S in samples:
        v_here, i_here, d_here = ours("elbo", S), ours("iwae", S), ours("iwae-dreg", S)
        v_there, i_there = BURDA_TABLE1[("elbo", S)], BURDA_TABLE1[("iwae", S)]
        gain_here = None if v_here is None or i_here is None else v_here - i_here
        gain_there = v_there[0] - i_there[0]
        au = f"{num(ours('elbo', S, 'active_units'), 0)} / {num(ours('iwae', S, 'active_units'), 0)}"
        lines.append(f"| {S} | {num(v_here)} | {v_there[0]:.2f} | {num(i_here)} | {i_there[0]:.2f} | {num(d_here)} | "
                     f"{num(gain_here)} | {gain_there:.2f} | {au} | {v_there[1]} / {i_there[1]} |")
        if gain_here is not None and S > 1:
            verdicts.append(f"- S = {S}: {after}, the IWAE bound trains {'a better' if gain_here > 0 else 'a worse'} "
                            f"model than the ELBO (analytic KL) here ({gain_here:+.2f} nats); after {BURDA_EPOCHS:,} "
                            f"epochs, a better one than the VAE there ({gain_there:+.2f}): "
                            + ("the same direction." if gain_here > 0 else "**the opposite direction**."))
    for objective, name in (("elbo", "elbo (analytic KL)"), ("iwae", "IWAE")):
        here = [(S, ours(objective, S)) for S in samples if ours(objective, S) is not None]
        if len(here) > 1:
            falls = all(b <= a for (_, a), (_, b) in zip(here, here[1:]))
            verdicts.append(f"- {name}: NLL against S here {after} " + ", ".join(f"{v:.2f}" for _, v in here)
                            + (" (falls with S, as it does there)." if falls else " (does not fall monotonically "
                               "with S; it does there)."))
    lines += [""] + verdicts + [""] if verdicts else [""]
    return lines


def curve_at(result, budget):
    """The cell's per-epoch test IWAE bound (k = 50) after the last epoch that ended within
    ``budget`` training seconds, or None if its first epoch took longer."""
    elapsed, value = 0.0, None
    for record in result.get("history", []):
        elapsed += record["seconds"]
        if elapsed > budget:
            break
        value = record.get("curve_iwae_50")
    return value


def equal_time_section(results):
    """Markdown: which S is best for a fixed budget of training seconds (cells run with --curve).

    The budgets are the median total training times of each S's cells; for every budget and
    (objective, S), the mean over seeds of the per-epoch test IWAE bound (k = 50) reached
    within it."""
    with_curve = [r for r in results if r.get("history") and "curve_iwae_50" in r["history"][0]]
    if not with_curve:
        return []
    samples = sorted({r["mc_samples"] for r in with_curve})
    budgets = [float(np.median([sum(h["seconds"] for h in r["history"]) for r in with_curve
                                if r["mc_samples"] == S])) for S in samples]
    lines = ["## Equal wall-clock time: which S wins for a budget of training seconds", "",
             "Test IWAE bound (k = 50, the images of `--curve`) after the last epoch that ended within the "
             "budget, mean over seeds (— : not one epoch within it). Budgets: the median training time of all "
             "epochs of the cells of each S.", ""]
    head = ["objective", "S"] + [f"{b:.0f} s (S = {S}'s)" for b, S in zip(budgets, samples)]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    best = {}
    for objective in sorted({r["objective"] for r in with_curve}):
        for S in samples:
            cells = [r for r in with_curve if r["objective"] == objective and r["mc_samples"] == S]
            row = [objective, str(S)]
            for j, b in enumerate(budgets):
                vals = [curve_at(r, b) for r in cells]
                if not cells or any(v is None for v in vals):
                    row.append("—")
                    continue
                mean = float(np.mean(vals))
                row.append(f"{mean:.2f}")
                if mean > best.get((objective, j), (None, -np.inf))[1]:
                    best[(objective, j)] = (S, mean)
            lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    for objective in sorted({o for o, _ in best}):
        wins = ", ".join(f"{budgets[j]:.0f} s: S = {best[(objective, j)][0]}" for j in range(len(budgets))
                         if (objective, j) in best)
        lines.append(f"Best S for {objective}, by budget: {wins}.")
    return lines + [""]


def write_plots(agg, out):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        print("matplotlib not installed: plots skipped", file=sys.stderr)
        return []
    groups = [("bounds", ["test_elbo", "test_iwae_S", "test_iwae_50", "log_likelihood"]),
              ("snr", ["snr_encoder", "snr_decoder", "snr_encoder_init", "snr_decoder_init"]),
              ("time", ["seconds_per_epoch"])]
    labels = {m: label for m, label, _ in METRICS}
    paths = []
    for name, metrics in groups:
        fig = Figure(figsize=(4.2 * len(metrics), 3.6), dpi=110)
        FigureCanvasAgg(fig)
        for j, m in enumerate(metrics):
            ax = fig.add_subplot(1, len(metrics), j + 1)
            for objective in sorted({o for o, _ in agg}):
                keys = sorted(S for o, S in agg if o == objective)
                mean = np.array([agg[(objective, S)][m][0] for S in keys])
                sd = np.array([agg[(objective, S)][m][1] for S in keys])
                line, = ax.plot(keys, mean, "o-", label=objective)
                if np.isfinite(sd).all():
                    ax.fill_between(keys, mean - sd, mean + sd, alpha=0.2)
                if m in SNR_METRICS:        # at the noise floor: an upper bound, drawn as one
                    floor = [agg[(objective, S)].get("at_floor", {}).get(m, (0, np.nan)) for S in keys]
                    at = [S for S, (n, _) in zip(keys, floor) if n]
                    ax.plot(at, [agg[(objective, S)][m][0] for S in at], "v", ms=10, mfc="none",
                            color=line.get_color())
                    limits = [lim for _, lim in floor if np.isfinite(lim)]
                    if limits:
                        ax.axhline(max(limits), ls=":", color="grey", lw=1)
            ax.set_xscale("log")
            if name == "snr" or name == "time":
                ax.set_yscale("log")
            ax.set_xlabel("S (Monte Carlo samples in training)")
            ax.set_title(labels[m] + (" (▽: at the floor ···)" if m in SNR_METRICS else ""), fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = Path(f"{out}_{name}.png")
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------
class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """``--help`` with every option's default, below the description as written."""


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=_HelpFormatter)
    p.add_argument("--samples", type=int, nargs="+", default=[1, 5, 25, 50], help="values of S")
    p.add_argument("--objectives", nargs="+", default=["elbo", "iwae"], metavar="OBJECTIVE",
                   help=f"training objectives: {', '.join(OBJECTIVES)}, or a split of the S samples named with its "
                        "parameter: miwae-M8, miwae-dreg-M8, piwae-M8 (M groups of K = S / M), ciwae-b0.5 (beta)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds of every (S, objective)")
    p.add_argument("--epochs", type=int, default=5, help="training epochs of every cell")
    p.add_argument("--subset", type=int, default=10000, help="training images (the first N)")
    p.add_argument("--test-subset", type=int, default=1000, help="test images (the first N)")
    p.add_argument("--k", type=int, default=5000, help="importance samples of the log-likelihood")
    p.add_argument("--batch-size", type=int, default=100, help="training batch size")
    p.add_argument("--hidden", type=int, nargs="+", default=[256], help="hidden layer sizes")
    p.add_argument("--latent-dim", type=int, default=2, help="latent dimensions")
    p.add_argument("--activation", choices=("relu", "tanh"), default="relu", help="hidden activation")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="training and evaluation dtype (float32: the numba engine's fast path, as npvae train)")
    p.add_argument("--binarize", choices=("none", "dynamic"), default="none",
                   help="targets: grayscale, or a fresh Bernoulli draw per batch (Burda et al.)")
    p.add_argument("--curve", type=int, default=0, metavar="N",
                   help="after every epoch, the test IWAE bound (k = 50) on the first N test images (0: none)")
    p.add_argument("--snr-batch", type=int, default=100, help="training images of the SNR minibatch")
    p.add_argument("--snr-repeats", type=int, default=50, help="eps draws of the SNR estimate")
    p.add_argument("--workers", type=int, default=1, help="local worker processes")
    p.add_argument("--order", choices=("largest", "smallest"), default="largest",
                   help="cells largest first (parallel workers finish together) or smallest first (early results)")
    p.add_argument("--scheduler", help="address of a Dask distributed scheduler, e.g. tcp://HOST:8786 "
                   "(see the module's docstring for a safe set-up)")
    p.add_argument("--connect-timeout", type=float, default=30.0, help="seconds to reach the Dask scheduler")
    p.add_argument("--tls-ca-file", help="with a tls:// scheduler: the CA's certificate (PEM)")
    p.add_argument("--tls-cert", help="with a tls:// scheduler: this client's certificate (PEM)")
    p.add_argument("--tls-key", help="with a tls:// scheduler: this client's private key (PEM)")
    p.add_argument("--threads", type=int, default=1, help="BLAS threads per local worker")
    p.add_argument("--data", help="folder holding MNIST (None: $NPVAE_DATA, then the user cache); recorded in "
                   "each cell, not a setting")
    p.add_argument("--out", default=os.path.join("runs", "sample_sizes"),
                   help="cells go to OUT/cells/, the report to OUT.md and OUT_*.png")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep each cell's checkpoint.npz")
    p.add_argument("--report-only", action="store_true", help="redraw the report from the finished cells")
    p.add_argument("--no-plots", action="store_true", help="write the table only")
    p.add_argument("--synthetic", type=int, default=0, metavar="D", help=argparse.SUPPRESS)  # tests
    return p


def check_args(p, args):
    for name in ("samples", "seeds"):
        for v in getattr(args, name):
            if v < (1 if name == "samples" else 0):
                p.error(f"--{name}: expected integers >= {1 if name == 'samples' else 0}, got {v}")
    for name in ("epochs", "subset", "test_subset", "k", "batch_size", "latent_dim", "snr_batch", "workers",
                 "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}: expected an integer >= 1, got {getattr(args, name)}")
    for name in args.objectives:
        try:
            objective_spec(name)
        except ValueError as exc:
            p.error(f"--objectives: {exc}")
        if not any(fits(name, S) for S in args.samples):
            p.error(f"--objectives: {name} splits S into {objective_spec(name)[2]['outer']} groups, but no S of "
                    f"--samples ({', '.join(map(str, args.samples))}) is a multiple of it")
    if args.snr_repeats < 2:
        p.error(f"--snr-repeats: expected an integer >= 2, got {args.snr_repeats}")
    if args.test_subset < 2:
        p.error(f"--test-subset: expected an integer >= 2, got {args.test_subset}")
    if not args.connect_timeout > 0:
        p.error(f"--connect-timeout: expected seconds > 0, got {args.connect_timeout}")
    tls = (args.tls_ca_file, args.tls_cert, args.tls_key)
    if any(tls) and not all(tls):
        p.error("--tls-ca-file, --tls-cert, --tls-key: expected all three, got "
                + ", ".join(f"--{n}" for n, v in zip(("tls-ca-file", "tls-cert", "tls-key"), tls) if v))
    if any(tls) and not (args.scheduler or "").startswith("tls://"):
        p.error(f"--tls-*: expected a --scheduler tls://HOST:PORT address, got {args.scheduler!r}")


def main(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    check_args(p, args)
    # the command that computes the cells (a --report-only redraw records the run's command)
    command = "python benchmarks/sample_sizes.py " + " ".join(shlex.quote(a) for a in (
        sys.argv[1:] if argv is None else argv) if a not in ("--report-only", "--no-plots"))
    args.out = str(Path(args.out).expanduser().resolve())    # the same folder for every worker
    try:
        return _study(args, command)
    except KeyboardInterrupt:
        print("Interrupted: finished cells are kept; run the same command to continue.", file=sys.stderr, flush=True)
        return 130


def _study(args, command):
    cells = make_cells(args)
    finished = finished_cells(args.out)
    check_settings(cells, finished, args.out)
    if args.report_only:
        results = [finished[Path(c["dir"]).name] for c in cells if Path(c["dir"]).name in finished]
        failures = []
    else:
        tls = (args.tls_ca_file, args.tls_cert, args.tls_key) if args.tls_ca_file else None
        results, failures = run_grid(cells, finished, workers=args.workers, scheduler=args.scheduler,
                                     connect_timeout=args.connect_timeout, tls=tls)
    if results:
        md = write_report(results, args, command, failures)
        print(f"Report: {md}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
