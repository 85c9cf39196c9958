"""Burda et al.'s Table 1 (MNIST, one stochastic layer) under their protocol, stage by stage.

Cells: the VAE (``elbo`` with the sampled KL, their VAE) at k = 1, 5, 50, the IWAE at k = 5,
50 and the IWAE trained with DReG (Tucker et al. 2018) at k = 5, 50; their architecture
(784-200-200-50, tanh, the decoder mirrored), float32, the numba engine, seed 0 (``--seeds``
for more). Each cell trains with ``npvae.fit(..., protocol="burda")`` (:mod:`npvae.protocol`
gives each choice with the line of their code it comes from) on their 59,600 training
images, and at the end of every stage of their schedule (epochs 1, 4, 13, 40, 121, 364,
1093, 3280) measures on the test images, binarized once (seed 123, one draw per image as
theirs):

* the log-likelihood by importance sampling, k = 5000 (``--k``; their experiments.py
  l. 61-63), with its Monte Carlo SE, ESS and Pareto k-hat;
* the test ELBO (analytic KL, 10 samples per image) and the posterior gap, log-likelihood
  minus ELBO, a lower bound on the mean KL(q || posterior);
* the active units their way: the variance of the encoder's mean over the first 500
  training images (binarized once) above 1e-2.

A cell's folder ``cells/<cell>/`` holds ``checkpoint.npz`` (after every epoch, compressed;
kept in the repository so that a run continues on another day or machine, bit for bit),
``model.npz`` (the model at the last stage ended, compressed) and ``result.json`` (every
stage's numbers, the epochs done, the seconds). A run stops cleanly at an epoch's end when
``--hours`` have passed, at ``--max-stage``, or on Ctrl-C (the last epoch's checkpoint
kept); run it again to continue. ``--report-only`` writes ``<out>.md``: a table per stage
beside Burda et al.'s numbers, the stage each cell reached and what the rest would cost.

Example (the real run, cheapest cells first)::

    OPENBLAS_NUM_THREADS=1 taskset -c 1 python benchmarks/burda_table1.py --hours 200

Each cell trains under a lock of its folder: the same command started once per core shares the
cells among the processes (a cell in training is skipped by the others).
"""

import os
import sys

if __name__ == "__main__":
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")      # read by BLAS when NumPy is imported

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import shlex  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

import _common  # noqa: E402,F401  (this checkout's npvae first on the path)
import npvae  # noqa: E402
from npvae import io, protocol  # noqa: E402
from npvae.datasets import binarize  # noqa: E402
from npvae.evaluate import evaluate_bound, log_likelihood  # noqa: E402
from npvae.runfolder import RunFolderError, RunLock  # noqa: E402
from npvae.train import load_checkpoint  # noqa: E402
from _common import code_version  # noqa: E402

#: The npvae code this process runs (read once, as its modules were imported: the files may change
#: on disk while a long run goes on).
CODE = code_version()

RESULT, CHECKPOINT, MODEL = "result.json", "checkpoint.npz", "model.npz"


def _cell(objective, k, estimator="standard", **extra):
    """A cell's training settings: the objective, its estimator, ``k`` samples per image
    (``mc_samples``) and the objective's own settings (``outer``, ``beta``)."""
    return dict(objective=objective, estimator=estimator, k=k, **extra)


#: Table 1's cells by name, cheapest first (the order of a run).
CELLS = {"vae-k1": _cell("elbo", 1), "vae-k5": _cell("elbo", 5), "iwae-k5": _cell("iwae", 5),
         "iwae-dreg-k5": _cell("iwae", 5, "dreg"), "vae-k50": _cell("elbo", 50), "iwae-k50": _cell("iwae", 50),
         "iwae-dreg-k50": _cell("iwae", 50, "dreg")}
#: The fixed-budget grid (Rainforth et al. 2018): 64 samples per image split M x K ways.
BUDGET_CELLS = {"vae-64": _cell("elbo", 64), "iwae-64": _cell("iwae", 64),
                "miwae-8x8": _cell("miwae", 64, outer=8), "miwae-4x16": _cell("miwae", 64, outer=4),
                "ciwae-0.5": _cell("ciwae", 64, beta=0.5), "piwae-8x8": _cell("piwae", 64, outer=8)}
#: The grids ``--grid`` runs: their cells, and the folder of their results under benchmarks/results.
GRIDS = {"table1": (CELLS, "burda_table1"), "budget": (BUDGET_CELLS, "budget_grid")}
ALL_CELLS = {**CELLS, **BUDGET_CELLS}
#: Burda et al. (2016), Table 1, MNIST, one stochastic layer: test NLL (k = 5000) and active
#: units after the whole schedule (3,280 epochs). DReG is not theirs.
BURDA_TABLE1 = {"vae-k1": (86.76, 19), "vae-k5": (86.47, 20), "vae-k50": (86.35, 20),
                "iwae-k5": (85.54, 22), "iwae-k50": (84.78, 25)}
#: The epochs each Table 1 cell is run to at least: every cell to the end of stage 5 (epoch 364;
#: stages count from 0 here, so this is the study issue's "stage 6"), the k = 1 and k = 5 cells on to
#: the end of stage 6 (1,093 epochs; the issue's "stage 7").
TABLE1_AIM = {name: (1093 if name.endswith(("-k1", "-k5")) else 364) for name in CELLS}
#: The epochs each budget-grid cell is run to (the end of stage 3; the issue asks for at least 40).
BUDGET_AIM = 40
ARCHITECTURE = dict(hidden=(200, 200), latent_dim=50, activation="tanh")
EVAL_SEED = 123                   # their evaluations' seed (iwae.py, measure_marginal_log_likelihood)
ACTIVE_IMAGES = 500               # iwae.py, get_units_variances


class Stop(Exception):
    """The time budget is spent: the run stops at an epoch's end."""


def log(text):
    print(f"[{datetime.datetime.now():%H:%M:%S}] {text}", file=sys.stderr, flush=True)


def cell_name(name, seed):
    return f"{name}-seed{seed}"


def load_data(args):
    """Their training split and the test images (a subset with ``--test-subset``), each
    binarized once for evaluation; the first 500 training images for the active units."""
    if args.synthetic:                       # tests: a small stand-in for MNIST
        rng = np.random.default_rng(0)
        x_all = rng.random((args.synthetic, 784)).astype(np.float32) ** 3
        x_test = rng.random((max(args.test_subset or 0, 50), 784)).astype(np.float32) ** 3
        n_val = min(protocol.BURDA_VALIDATION, args.synthetic // 5)
    else:
        (x_all, _), (x_test, _) = npvae.load_mnist(args.data)
        n_val = protocol.BURDA_VALIDATION
    x_train, _ = protocol.train_validation_split(x_all, n_val)
    if args.train_subset:
        x_train = x_train[:args.train_subset]
    x_test = x_test[:args.test_subset] if args.test_subset else x_test
    rng = np.random.default_rng(EVAL_SEED)
    return x_train, binarize(x_test, "dynamic", rng), binarize(x_train[:ACTIVE_IMAGES], "dynamic", rng)


def new_model(seed):
    return npvae.VAE(input_dim=784, seed=seed, dtype=np.float32, backend="numba", **ARCHITECTURE)


def compress(path):
    """Rewrite an ``.npz`` deflated (float32 parameters and Adam state: the checkpoint kept in
    the repository); the arrays are unchanged, so a resume is still bit for bit."""
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    io.atomic_savez(path, arrays, compress=True)


def read_result(folder, name, seed, args):
    path = folder / RESULT
    if path.exists():
        return json.loads(path.read_text())
    spec = ALL_CELLS[name]
    return {"cell": cell_name(name, seed), "name": name, **spec,
            "kl": "mc" if spec["objective"] == "elbo" else None, "seed": seed, "protocol": "burda",
            "architecture": dict(ARCHITECTURE, input_dim=784, dtype="float32"), "k_ll": args.k,
            "test_images": None, "epochs_done": 0, "train_seconds": 0.0, "epoch_seconds": [], "stages": []}


def train_epoch(folder, name, seed, epoch, x_train):
    """Train epoch ``epoch`` of a cell: fit resumes from the cell's checkpoint (fresh
    objects, as in a new process) and writes it at the epoch's end."""
    settings = dict(ALL_CELLS[name])
    settings["mc_samples"] = settings.pop("k")
    model = new_model(seed)
    history = npvae.fit(model, x_train, epochs=epoch, seed=seed, protocol="burda", checkpoint=folder / CHECKPOINT,
                        resume=True, verbose=0, **settings)
    compress(folder / CHECKPOINT)
    return model, history.records[-1]


def per_image_is_name(stage):
    """The file of a stage's per-image IS log-likelihoods (every test image), beside result.json."""
    return f"is-stage{stage}.npz"


def save_per_image_is(folder, stage, ll):
    """Keep a stage's per-image IS estimates (so that cells are compared on all test images, paired)."""
    io.atomic_savez(Path(folder) / per_image_is_name(stage),
                    {"log_likelihood": np.asarray(ll.per_example, np.float64), "k": np.asarray(ll.k)}, compress=True)


def load_per_image_is(folder, stage):
    """A stage's per-image IS estimates, or None if they were not kept."""
    path = Path(folder) / per_image_is_name(stage)
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as f:
        return f["log_likelihood"]


def evaluate_stage(model, stage, data, args, folder=None):
    """The numbers of a stage's end: log-likelihood, ELBO, posterior gap, active units; with
    ``folder``, the per-image log-likelihoods go to its ``is-stage<S>.npz``."""
    _, x_test, x_active = data
    t0 = time.perf_counter()
    ll = log_likelihood(model, x_test, k=args.k, seed=stage, progress=not args.quiet, file=sys.stderr)
    if folder is not None:
        save_per_image_is(folder, stage, ll)
    elbo = evaluate_bound(model, x_test, mc_samples=10, objective="elbo", batch_size=500, seed=stage)
    iwae64 = evaluate_bound(model, x_test, mc_samples=64, objective="iwae", batch_size=100, seed=stage)
    active = protocol.active_units(model, x_active)
    record = ll.to_dict()
    record.update(nll=-ll.mean, test_elbo=-elbo["loss"], test_kl=elbo["kl"], posterior_gap=ll.mean + elbo["loss"],
                  test_iwae64=-iwae64["loss"], active_units=active.count, eval_seconds=time.perf_counter() - t0)
    return record


def note_code(result, epoch):
    """Record in ``result["code"]`` the npvae code that trains from ``epoch`` on (:data:`CODE`, its
    commit), when it differs from the code that trained the epochs before:
    a change of the step's floats (a faster kernel, say) is then visible in the cell's record."""
    runs = result.setdefault("code", [])
    if not runs or runs[-1]["commit"] != CODE:
        runs.append({"from_epoch": epoch, "commit": CODE})


def run_cell(name, seed, data, args, deadline):
    """Train and evaluate one cell up to ``--max-stage``; raises Stop when out of time."""
    folder = Path(args.out) / "cells" / cell_name(name, seed)
    folder.mkdir(parents=True, exist_ok=True)
    result = read_result(folder, name, seed, args)
    result["test_images"] = int(data[1].shape[0])
    last_end = protocol.BURDA_STAGE_ENDS[args.max_stage]
    if len(result["stages"]) <= args.max_stage and args.command not in result.setdefault("commands", []):
        result["commands"].append(args.command)           # every command that trained this cell, in order
    while len(result["stages"]) <= args.max_stage:
        stage = len(result["stages"])
        end = protocol.BURDA_STAGE_ENDS[stage]
        model = None
        for epoch in range(result["epochs_done"] + 1, end + 1):
            if time.time() > deadline:
                raise Stop()
            note_code(result, epoch)
            model, record = train_epoch(folder, name, seed, epoch, data[0])
            result["epochs_done"], result["train_seconds"] = epoch, result["train_seconds"] + record["seconds"]
            result["epoch_seconds"].append(round(record["seconds"], 3))
            result["last_loss"] = record["loss"]
            io.atomic_write_text(folder / RESULT, json.dumps(result, indent=1) + "\n")
            log(f"{result['cell']}: epoch {epoch}/{last_end} (stage {stage}) loss {record['loss']:.3f} "
                f"lr {record['lr']:.2g} {record['seconds']:.1f} s")
        if model is None:               # the stage's epochs were done before an interruption
            model = load_checkpoint(folder / CHECKPOINT)["model"]
        record = dict(stage=stage, epochs=end, lr=protocol.learning_rate("burda", end, 1e-3))
        if stage >= args.eval_from:
            record.update(evaluate_stage(model, stage, data, args, folder))
        result["stages"].append(record)
        model.save(folder / MODEL)
        compress(folder / MODEL)
        io.atomic_write_text(folder / RESULT, json.dumps(result, indent=1) + "\n")
        log(f"{result['cell']}: stage {stage} (epoch {end}) " + (
            f"NLL {record['nll']:.2f} (k={args.k}), ELBO {record['test_elbo']:.2f}, gap {record['posterior_gap']:.2f}, "
            f"{record['active_units']} active units" if "nll" in record else "not evaluated (--eval-from)"))
    return result


# ----------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------
def read_results(out):
    return [json.loads(p.read_text()) for p in sorted((Path(out) / "cells").glob(f"*/{RESULT}"))]


def seconds_per_epoch(result):
    s = result.get("epoch_seconds") or []
    return float(np.median(s)) if s else None


def _hours(seconds):
    return "n/a" if seconds is None else f"{seconds / 3600:.1f} h"


def commands_lines(results, checks, command):
    """Lines: the commands that trained the cells (each cell's ``result.json`` keeps those that trained
    it), those that checked them by AIS (``ais.json``), and the one that wrote this report; the
    cells that keep no command are named."""
    def named(cell, later):
        return cell + (" (recorded after the run, from its notes)" if later else "")

    trained, checked, missing = {}, {}, []
    for r in results:
        for c in r.get("commands") or []:
            trained.setdefault(c, []).append(named(r["cell"], r.get("commands_recorded_later")))
        if not r.get("commands"):
            missing.append(r["cell"])
    for cell, check in checks.items():
        if check.get("command"):
            checked.setdefault(check["command"], []).append(named(cell, check.get("command_recorded_later")))
    lines = ["Commands (run from the repository's top folder; `OPENBLAS_NUM_THREADS=1`, one process per core):", ""]
    for what, found in (("trained", trained), ("checked by AIS", checked)):
        for c, cells in found.items():
            lines.append(f"- {what} {', '.join(cells)}: `{c}`")
    if missing:
        lines.append(f"- trained {', '.join(missing)}: not recorded in their result.json")
    return lines + [f"- this report: `{command}`", ""]


def progress_table(results, cells=(), goal=None):
    """Where each cell is: epochs and stages done, seconds per epoch, the hours to ``goal`` epochs
    (``{name: epochs}``, e.g. the end of stage 5 or 6, counting from 0) and to 3,280 epochs; the names of ``cells``
    not started yet get a row of their own."""
    goal = goal or {}
    head = "| cell | epochs done | stages evaluated | s / epoch | " + (
        "hours to the aim (the aim's epoch) | " if goal else "") + "hours to 3,280 epochs |"
    lines = ["## Where each cell is", "",
             "Hours: the median seconds per epoch so far times the epochs to go, one core each; the stages' "
             "evaluations (several minutes each) not counted; the median leaves out epochs a busy host slowed "
             "(the mean seconds per epoch are higher). Stages evaluated: a stage trained but not yet "
             "evaluated (an interrupted run) is evaluated first when the cell goes on. The aim is the study's, not a command's "
             "`--max-stage`, which may stop a cell short of it (stages 0-7 end at epochs "
             + ", ".join(f"{e:,}" for e in protocol.BURDA_STAGE_ENDS) + ").", "", head, "|---|---:|---:|---:|" + ("---:|" if goal else "") + "---:|"]
    for r in results:
        spe = seconds_per_epoch(r)
        rest = None if spe is None else spe * (protocol.BURDA_EPOCHS - r["epochs_done"])
        aim = goal.get(r["name"])
        to_aim = "" if not goal else (
            "-" if aim is None else
            f"{_hours(None if spe is None else spe * max(0, aim - r['epochs_done']))} ({aim:,}) | ")
        lines.append(f"| {r['cell']} | {r['epochs_done']} | {len(r['stages'])} of 8 | "
                     f"{'n/a' if spe is None else f'{spe:.1f}'} | {to_aim}{_hours(rest)} |")
    started = {r["name"] for r in results}
    for name in cells:
        if name not in started:
            aim = goal.get(name)
            to_aim = "" if not goal else ("-" if aim is None else f"not started ({aim:,}) | ")
            lines.append(f"| {name} | 0 | 0 of 8 | n/a | {to_aim}not started |")
    return lines


def _ordered(results, cells):
    order = {n: i for i, n in enumerate(cells)}
    return sorted(results, key=lambda r: (order.get(r["name"], 99), r["seed"]))


def report(results, command, checks=None, out=None):
    checks = checks or {}
    results = _ordered(results, CELLS)
    lines = ["# Burda et al.'s Table 1 under their protocol, stage by stage", "",
             "MNIST, one stochastic layer (784-200-200-50, tanh), trained as Burda et al.'s (2016) code "
             "trains it (`npvae.fit(..., protocol=\"burda\")`; `npvae/protocol.py` cites each choice, and "
             "`burda_table1/README.md` names where it departs: their Adam applies the previous step's moments, a "
             "one-step lag of every gradient, and their encoder outputs sigma = exp(linear) where npvae's outputs "
             "the log-variance; neither is reproduced). "
             "NLL: minus the importance-sampled log-likelihood on the test images, binarized once; "
             "theirs is after all 3,280 epochs (Table 1, k = 5000). MC SE: the delta-method Monte Carlo SE of the "
             "IS estimate, from the same heavy-tailed weights; where k-hat > 0.7 (most images, last column) it does "
             "not bound the estimate's error: IS with k = 5000 is below log p(x) by more (`ll_vs_k.md`: IS against "
             "k and AIS on vae-k1's epoch-364 model). Gap: log-likelihood minus test ELBO. "
             "Active: units whose encoder mean varies over 500 training images by more than 0.01.", "",
             "Their numbers: the NLLs of Burda et al.'s Table 1 (one stochastic layer, dynamic binarization) as "
             "the replication nbip/IWAE quotes them (its README); the paper's own text could not be read here. "
             "Their active units (19, 20, 20 for the VAE at k = 1, 5, 50; 22, 25 for IWAE at k = 5, 50) are from "
             "the study issue's reading of the paper, not checked here: no readable copy or replication lists them.",
             "",
             ] + commands_lines(results, checks, command)
    lines += progress_table(results, CELLS, TABLE1_AIM)
    for stage, end in enumerate(protocol.BURDA_STAGE_ENDS):
        rows = [(r, r["stages"][stage]) for r in results if len(r["stages"]) > stage and "nll" in r["stages"][stage]]
        if not rows:
            continue
        lines += ["", f"## Stage {stage}: epoch {end}, learning rate "
                      f"{protocol.learning_rate('burda', end, 1e-3):.2g}", "",
                  "| cell | NLL | MC SE | k | images | Burda et al. (3,280 epochs) | test ELBO | gap | "
                  "active | theirs (3,280 epochs) | ESS median | k-hat > 0.7 |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r, s in rows:
            theirs = BURDA_TABLE1.get(r["name"])
            lines.append(f"| {r['cell']} | {s['nll']:.2f} | {s['log_likelihood_mc_se']:.3f} | {s['k']} | {s['n']} | "
                         f"{'-' if theirs is None else f'{theirs[0]:.2f}'} | {s['test_elbo']:.2f} | "
                         f"{s['posterior_gap']:.2f} | {s['active_units']} | {'-' if theirs is None else theirs[1]} | "
                         f"{s['ess_median']:.1f} | {s.get('pareto_k_over_0.7', '-')} |")
        lines += [""] + gains(rows)
    lines += ais_section(results, checks, out, AGAINST["table1"])
    return "\n".join(lines)


#: Rainforth et al. (2018), Table 1 (MNIST; averages over 4 runs after Burda's 3,280 epochs, +- as given), by
#: our cell name: IWAE-64, log p(x) (the IWAE bound with k = 5000) and -KL(Q||P) (= IWAE-64 - log
#: p(x)), each (mean, +-). As transcribed from the paper by the reproducibility study
#: madhubabuv/TightIWAE (README, "Original paper" rows; the same values quoted by pythae's
#: benchmark and yoonholee/pytorch-vae): the paper's own text could not be read here.
#: MIWAE(4, 16): only its log p(x), -84.56 (no s.d.), quoted by yoonholee/pytorch-vae.
RAINFORTH = {"iwae-64": ((-86.11, 0.10), (-84.52, 0.02), (-1.59, 0.10)),
             "piwae-8x8": ((-85.74, 0.07), (-84.46, 0.06), (-1.28, 0.09)),
             "miwae-8x8": ((-85.69, 0.04), (-84.97, 0.10), (-0.72, 0.11)),
             "ciwae-0.5": ((-86.08, 0.08), (-85.24, 0.08), (-0.84, 0.11)),
             "vae-64": ((-86.69, 0.08), (-86.21, 0.19), (-0.47, 0.20)),
             "miwae-4x16": (None, (-84.56, None), None)}


def _theirs(value):
    if value is None:
        return "-"
    mean, sd = value
    return f"{mean:.2f}" if sd is None else f"{mean:.2f} ± {sd:.2f}"


def budget_report(results, command, checks=None, out=None):
    """The fixed-budget grid's report: per evaluated stage, each cell's IWAE-64, log-likelihood,
    ELBO, posterior gap and active units, and the seeds side by side (:func:`seeds_section`)."""
    results = _ordered(results, BUDGET_CELLS)
    lines = ["# 64 samples per image, split M x K ways, under Burda et al.'s protocol", "",
             "MNIST, Burda et al.'s architecture (784-200-200-50, tanh), trained with their protocol "
             "(`npvae.fit(..., protocol=\"burda\")`: dynamic binarization, batch 20, Adam with their schedule of "
             "stages) on 64 samples per image spent as: the VAE (the ELBO's mean over 64 samples, sampled KL), "
             "IWAE (K = 64), MIWAE (M = 8 bounds of K = 8, and M = 4 of K = 16), CIWAE (beta = 0.5: half the ELBO, "
             "half the IWAE bound, of the same 64 samples) and PIWAE (the decoder on the IWAE bound of all 64, the "
             "encoder on MIWAE(8, 8)). On the test images, binarized once: IWAE-64 (the IWAE bound with 64 fresh "
             "samples, one draw), log p(x) by importance sampling (k = 5000) with its Monte Carlo SE, the ELBO "
             "(analytic KL, 10 samples), the posterior gap (log p(x) minus the ELBO: an estimate, biased low as IS "
             "is below log p(x), of the mean KL(q || posterior), the encoder's quality; Rainforth et al.'s -KL(Q||P) is IWAE-64 minus log p(x) instead) and the "
             "active units.", ""] + commands_lines(results, checks or {}, command)
    lines += progress_table(results, BUDGET_CELLS, {name: BUDGET_AIM for name in BUDGET_CELLS})
    for stage, end in enumerate(protocol.BURDA_STAGE_ENDS):
        rows = [(r, r["stages"][stage]) for r in results if len(r["stages"]) > stage and "nll" in r["stages"][stage]]
        if not rows:
            continue
        lines += ["", f"## Stage {stage}: epoch {end}", "",
                  "| cell | IWAE-64 | log p(x) | MC SE | ELBO | gap | IWAE-64 - log p(x) | active | k-hat > 0.7 | "
                  "theirs: IWAE-64 | log p(x) | -KL(Q‖P) |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r, s in rows:
            ll = -s["nll"]
            iwae = s.get("test_iwae64")
            lines.append(f"| {r['cell']} | {'-' if iwae is None else f'{iwae:.2f}'} | {ll:.2f} | "
                         f"{s['log_likelihood_mc_se']:.3f} | {s['test_elbo']:.2f} | {s['posterior_gap']:.2f} | "
                         f"{'-' if iwae is None else f'{iwae - ll:.2f}'} | {s['active_units']} | "
                         f"{s.get('pareto_k_over_0.7', '-')} | "
                         + " | ".join(_theirs(v) for v in RAINFORTH.get(r["name"], (None,) * 3)) + " |")
    lines += ["", "Theirs: Rainforth et al. (2018), Table 1, as transcribed by the reproducibility study "
              "madhubabuv/TightIWAE (the paper's text could not be read here): averages over 4 runs after all "
              "3,280 epochs of Burda's schedule, ± as given there (per that study), so not comparable to a cell before its last "
              "stage. A second source, pythae's reproducibility benchmark, quotes the same log p(x) for "
              "PIWAE(8, 8) and MIWAE(8, 8) (its IWAE row is IWAE(50) against Burda et al.'s 87.1, not this table), "
              "and a CIWAE at beta = 0.05 (-84.57 ± 0.09), most likely another column "
              "of the same table beside beta = 0.5 (-85.24, TightIWAE's), as MIWAE(4, 16) (-84.56, quoted by "
              "yoonholee/pytorch-vae) most likely is; the paper could not be read to confirm. The values of "
              "IWAE(64), CIWAE(0.5) and the VAE, the VAE column's settings, every IWAE-64 and -KL(Q||P) value and "
              "MIWAE(4, 16) rest on one secondary source each. Other "
              "differences: their CIWAE's ELBO part is the single-sample VAE bound (beta ELBO(K = 1) + (1 - beta) "
              "IWAE(K = 64), per the reproduction), ours the ELBO's mean over the same 64 samples; their PIWAE "
              "trains the encoder and the decoder with two Adam optimizers, ours one over both (the same "
              "per-parameter update, as Adam's is elementwise); their VAE column is trained with K = 1 in the "
              "reproduction but listed as MIWAE(64, 1) elsewhere: ours spends the 64 samples as the ELBO's mean. Their "
              "log p(x) is the IWAE bound with 5000 samples and their -KL(Q||P) IWAE-64 minus it (per the reproduction); "
              "how many draws their IWAE-64 averaged and how their test images were binarized could not be read "
              "here (ours: one draw per image; the test images binarized once, seed 123).", ""]
    lines += seeds_section(results)
    if out is not None:
        lines += is_pairs_section(results, out, AGAINST["budget"])
    lines += ais_section(results, checks or {}, out, AGAINST["budget"])
    if out is not None:
        lines += neighbours_section(results, checks or {}, out)
    return "\n".join(lines) + "\n"


def rainforth_order():
    """The budget grid's cells in the order of Rainforth et al.'s log p(x) column (:data:`RAINFORTH`),
    the best first."""
    return sorted(RAINFORTH, key=lambda name: -RAINFORTH[name][1][0])


def neighbours_section(results, checks, out):
    """Lines: by AIS, each cell minus the next in :func:`rainforth_order` (paired, per seed, and the
    seeds together: :func:`comparisons`, :func:`ais_seeds`), i.e. whether each step of their ranking
    is resolved here."""
    order = rainforth_order()
    steps = dict(zip(order, order[1:]))
    results = sorted((r for r in results if r["name"] in order), key=lambda r: (order.index(r["name"]), r["seed"]))
    pairs = comparisons(results, checks, out, steps)
    if not pairs:
        return []
    shown = ", ".join(f"{n} ({RAINFORTH[n][1][0]:.2f})" for n in order)
    together = ais_seeds(results, checks, out, steps)
    return (["", "## Each step of Rainforth et al.'s ranking, by AIS", "",
             f"Their log p(x) column ranks the splits {shown}. Each cell minus the next in that order, on the "
             "same images (paired), read as above (beyond 2 SE plus the larger BDMC gap):", ""] + pairs
            + (["", "The seeds together (as above: the SE is the images' and the chains', not the seeds'):", ""]
               + together if together else []) + [""])


def is_pairs_section(results, out, against):
    """Lines: at each evaluated stage, each cell minus the cell it is compared with (``against``, the
    same seed) by IS on every test image, paired (the mean of the per-image differences and its SE),
    where both kept their per-image values (``is-stage<S>.npz``)."""
    by_cell = {r["cell"]: r for r in results}
    lines = []
    for r in results:
        ref = against.get(r["name"])
        other = by_cell.get(cell_name(ref, r["seed"])) if ref else None
        if other is None:
            continue
        for s in r["stages"]:
            mine = load_per_image_is(Path(out) / "cells" / r["cell"], s["stage"])
            theirs = load_per_image_is(Path(out) / "cells" / other["cell"], s["stage"])
            if mine is None or theirs is None or mine.shape != theirs.shape:
                continue
            d, se = _common.paired(mine, theirs)
            lines.append(f"- {r['cell']} minus {other['cell']} (stage {s['stage']}, epoch {s['epochs']}): "
                         f"{d:+.2f} ± {se:.2f} on {mine.size:,} images ({'beyond' if abs(d) > 2 * se else 'within'} 2 SE)")
    if not lines:
        return []
    return ["", "## Cells against each other by IS on every test image", "",
            "log p(x) by IS (k = 5000) per test image, each cell minus the one it is compared with, same seed, "
            "same stage: the mean of the per-image differences and its SE over the images. IS is below log p(x) "
            "by an amount that differs between models (the AIS section measures it on a subset), so a "
            "difference smaller than that difference in bias is not read as a difference in log p(x).", ""] + lines


#: What :func:`seeds_section` sets side by side: (the stage record's key, the column's name, sign).
SEED_COLUMNS = (("test_iwae64", "IWAE-64", 1), ("nll", "log p(x)", -1), ("test_elbo", "ELBO", 1),
                ("posterior_gap", "gap", 1), ("active_units", "active", 1))


def seeds_section(results, reference="iwae-64"):
    """Lines: at the last stage that two or more seeds of a cell reached, each cell's values per seed
    and their mean, and each cell minus ``reference`` of the same seed (IS on all test images), per
    seed: with so few seeds, the seeds' values are given, not an SE; a difference is called
    consistent only where every seed has the same sign."""
    by = {}
    for r in results:
        for s in r["stages"]:
            if "nll" in s:
                by.setdefault(s["stage"], {}).setdefault(r["name"], {})[r["seed"]] = s
    shared = [st for st, cells in by.items() if any(len(seeds) > 1 for seeds in cells.values())]
    if not shared:
        return []
    stage = max(shared)
    cells = {name: seeds for name, seeds in by[stage].items() if len(seeds) > 1}
    names = [n for n in BUDGET_CELLS if n in cells]
    seeds = sorted({seed for n in names for seed in cells[n]})
    end = protocol.BURDA_STAGE_ENDS[stage]

    def value(s, key, sign):
        v = s.get(key)
        return None if v is None else sign * v

    def fmt(values, digits=2):
        shown = [v for v in values if v is not None]
        if not shown:
            return "-"
        each = ", ".join("-" if v is None else f"{v:.{digits}f}" for v in values)
        mean = np.mean(shown)          # a count's mean keeps its half (19.5), never rounded to even
        return f"{mean:.{digits if digits or float(mean).is_integer() else 1}f} ({each})"

    lines = ["", f"## The seeds together: stage {stage} (epoch {end})", "",
             f"Each cell's mean over the seeds {', '.join(map(str, seeds))} that reached it, each seed's value in "
             "brackets (in the seeds' order); the seeds are too few for an SE, so the spread is the seeds' values "
             "themselves.", "",
             "| cell | seeds | " + " | ".join(c for _, c, _ in SEED_COLUMNS) + " |",
             "|---|---:|" + "---:|" * len(SEED_COLUMNS)]
    for n in names:
        row = [cells[n].get(seed) for seed in seeds]
        cols = [fmt([None if s is None else value(s, key, sign) for s in row], 0 if key == "active_units" else 2)
                for key, _, sign in SEED_COLUMNS]
        lines.append(f"| {n} | {sum(s is not None for s in row)} | " + " | ".join(cols) + " |")
    if reference in cells:
        lines += ["", f"Each cell minus {reference} of the same seed (log p(x) by IS, k = 5000, all test images; "
                  "the posterior gap), per seed; 'same sign in every seed' where all seeds agree:", ""]
        for n in names:
            if n == reference:
                continue
            both = [seed for seed in seeds if seed in cells[n] and seed in cells[reference]]
            if len(both) < 2:
                continue
            dll = [cells[reference][seed]["nll"] - cells[n][seed]["nll"] for seed in both]
            dgap = [cells[n][seed]["posterior_gap"] - cells[reference][seed]["posterior_gap"] for seed in both]
            agree = "same sign in every seed" if len({np.sign(d) for d in dll}) == 1 else "the seeds disagree in sign"
            lines.append(f"- {n}: log p(x) {', '.join(f'{d:+.2f}' for d in dll)} (seeds {', '.join(map(str, both))}; "
                         f"{agree}); posterior gap {', '.join(f'{d:+.2f}' for d in dgap)}.")
    return lines


def plot_stages(results, out, theirs=None):
    """``<out>.png``: each cell's test NLL and active units at the end of every evaluated stage,
    against the epochs (log scale), with ``theirs`` (``{name: (nll, active)}``, after 3,280 epochs)
    as marks at the right edge. Returns the path, or None without matplotlib or evaluated stages."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        log("matplotlib not installed: the figure is skipped")
        return None
    rows = [(r, [s for s in r["stages"] if "nll" in s]) for r in results]
    rows = [(r, stages) for r, stages in rows if stages]
    if not rows:
        return None
    fig = Figure(figsize=(10, 4), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for r, stages in rows:
        epochs = [s["epochs"] for s in stages]
        for ax, key in zip(axes, ("nll", "active_units")):
            line, = ax.plot(epochs, [s[key] for s in stages], "o-", label=r["cell"])
            if theirs and r["name"] in theirs:
                ax.plot([protocol.BURDA_EPOCHS], [theirs[r["name"]][0 if key == "nll" else 1]], "*", ms=10,
                        color=line.get_color())
    for ax, title in zip(axes, ("test NLL (IS, k = 5000), nats", "active units")):
        ax.set_xscale("log")
        ax.set_xlabel("epochs (ends of Burda's stages)")
        ax.set_title(title + ("; ★ Burda et al., 3,280 epochs" if theirs else ""), fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path = Path(out).with_suffix(".png")
    fig.savefig(path)
    return path


def plot_budget(results, out, pairs=()):
    """``<out>_split.png``: what each split of the 64 samples buys, at the last evaluated stage of
    every cell: the test log-likelihood (IS, k = 5000, all test images), the encoder's distance from
    the posterior (log p(x) - ELBO, and Rainforth et al.'s IWAE-64 - log p(x)), each seed a dot, with
    their published values (after 3,280 epochs) as stars, and, given ``pairs``
    (:func:`paired_checks`), each split minus IWAE(64) by AIS on the same images, paired, each seed a
    dot with bars of 2 SE. Returns the path, or None without matplotlib or evaluated cells."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    names = [n for n in BUDGET_CELLS if any(r["name"] == n and any("nll" in s for s in r["stages"]) for r in results)]
    if not names:
        return None
    pairs = [p for p in pairs if p["name"] in names]
    panels = 3 if pairs else 2
    fig = Figure(figsize=(5.5 * panels, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ll_ax, gap_ax = fig.add_subplot(1, panels, 1), fig.add_subplot(1, panels, 2)
    epochs = set()
    for i, name in enumerate(names):
        for j, r in enumerate(r for r in results if r["name"] == name):
            evaluated = [s for s in r["stages"] if "nll" in s]
            if not evaluated:
                continue
            last = evaluated[-1]
            epochs.add(last["epochs"])
            dx = 0.08 * (r["seed"] - 0.5)
            first = i == 0 and j == 0                                     # one legend entry each
            ll_ax.plot(i + dx, -last["nll"], "o", color="C0", label="IS, k = 5000 (a seed)" if first else None)
            gap_ax.plot(i + dx, last["posterior_gap"], "o", color="C1", label="log p(x) - ELBO" if first else None)
            if last.get("test_iwae64") is not None:
                gap_ax.plot(i + dx, -last["nll"] - last["test_iwae64"], "s", color="C4",
                            label="log p(x) - IWAE-64" if first else None)
        theirs = RAINFORTH.get(name)
        if theirs and theirs[1]:
            ll_ax.plot(i + 0.25, theirs[1][0], "*", ms=11, color="k",
                       label="Rainforth et al. (3,280 epochs)" if i == 0 else None)
        if theirs and theirs[2]:
            gap_ax.plot(i + 0.25, -theirs[2][0], "*", ms=11, color="C4",
                        label="theirs: log p(x) - IWAE-64" if i == 0 else None)
    when = ", ".join(str(e) for e in sorted(epochs))
    axes = [(ll_ax, f"test log-likelihood (nats), epoch {when}"),
            (gap_ax, f"the encoder's distance from the posterior (nats), epoch {when}")]
    if pairs:
        ais_ax = fig.add_subplot(1, panels, 3)
        ais_ax.axhline(0.0, color="k", lw=0.8, label=f"{pairs[0]['other'].rsplit('-seed', 1)[0]} (the reference)")
        for k, p in enumerate(pairs):
            (d, se), i = p["ais"], names.index(p["name"])
            ais_ax.errorbar(i + 0.08 * (p["seed"] - 0.5), d, yerr=2 * se, fmt="o", color="C2", capsize=3,
                            label=f"by AIS, {p['check']['images']} images, ± 2 SE (a seed)" if k == 0 else None)
        axes.append((ais_ax, "log p(x) minus the reference's, paired, by AIS (nats)"))
    for ax, title in axes:
        ax.set_xticks(range(len(names)), names, fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(str(out) + "_split.png")
    fig.savefig(path)
    return path


def gains(rows):
    """The IWAE-VAE gain and DReG's lead at each k of a stage (NLL differences, nats)."""
    nll = {r["name"]: s["nll"] for r, s in rows if r["seed"] == rows[0][0]["seed"]}
    out = []
    for k in (5, 50):
        parts = []
        if f"vae-k{k}" in nll and f"iwae-k{k}" in nll:
            parts.append(f"IWAE-VAE gain {nll[f'vae-k{k}'] - nll[f'iwae-k{k}']:.2f} nats (theirs "
                         f"{BURDA_TABLE1[f'vae-k{k}'][0] - BURDA_TABLE1[f'iwae-k{k}'][0]:.2f})")
        if f"iwae-k{k}" in nll and f"iwae-dreg-k{k}" in nll:
            parts.append(f"DReG's lead over IWAE {nll[f'iwae-k{k}'] - nll[f'iwae-dreg-k{k}']:.2f} nats")
        if parts:
            out.append(f"- k = {k}: " + "; ".join(parts))
    return out


# ----------------------------------------------------------------------------------------
def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--grid", choices=tuple(GRIDS), default="table1",
                   help="table1: Burda et al.'s Table 1; budget: 64 samples split M x K ways (Rainforth et al.)")
    p.add_argument("--cells", nargs="+", choices=tuple(ALL_CELLS), default=None,
                   help="cells to run, in this order (default: all of the grid's, cheapest first)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--max-stage", type=int, choices=range(8), default=7, help="the last stage to reach (0-7)")
    p.add_argument("--eval-from", type=int, choices=range(8), default=0,
                   help="evaluate (log-likelihood, bounds, active units) at the ends of this stage and later only")
    p.add_argument("--hours", type=float, default=None, help="stop at the first epoch's end after this time")
    p.add_argument("--k", type=int, default=5000, help="importance samples of the log-likelihood")
    p.add_argument("--test-subset", type=int, default=None, help="evaluate on the first N test images")
    p.add_argument("--train-subset", type=int, default=None, help=argparse.SUPPRESS)     # tests
    p.add_argument("--synthetic", type=int, default=0, help=argparse.SUPPRESS)           # tests
    p.add_argument("--ais", action="store_true",
                   help="at the last stage each cell reached: AIS and IS on --ais-images test images, BDMC (ais.json)")
    p.add_argument("--per-image-is", action="store_true",
                   help="keep the per-image IS values of cells evaluated before they were kept (IS again, checked "
                        "against the stored mean)")
    p.add_argument("--ais-images", type=int, default=500, help="test images AIS evaluates")
    p.add_argument("--ais-chains", type=int, default=16, help="AIS chains per image")
    p.add_argument("--ais-steps", type=int, default=200, help="AIS temperatures")
    p.add_argument("--bdmc-images", type=int, default=50,
                   help="images simulated from each model for BDMC beside --ais (0: none)")
    p.add_argument("--data", help="folder holding MNIST (default: $NPVAE_DATA, then the user cache)")
    p.add_argument("--out", default=None, help="the grid's folder (default: benchmarks/results/burda_table1 or "
                   "budget_grid); the report is <out>.md")
    p.add_argument("--report-only", action="store_true", help="write <out>.md from the cells' result.json")
    p.add_argument("--quiet", action="store_true", help="no progress of the log-likelihood")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    cells, folder = GRIDS[args.grid]
    args.cells = args.cells or list(cells)
    args.out = args.out or str(_common.RESULTS / folder)
    # this invocation, as the cells it trains or checks record it (result.json "commands", ais.json "command")
    args.command = command = "python benchmarks/burda_table1.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    if not args.report_only:
        status = train_cells(args)
        if status:
            return status
        if args.per_image_is:
            backfill_per_image_is(args)
        if args.ais:
            run_ais(args)
    results = read_results(args.out)
    text = (report if args.grid == "table1" else budget_report)(results, command, read_ais(args.out), args.out)
    figure = plot_stages(_ordered(results, ALL_CELLS), args.out,
                         {n: v for n, v in BURDA_TABLE1.items()} if args.grid == "table1" else None)
    if figure is not None:
        text += f"\n![NLL and active units against epochs]({figure.name})\n"
    split = (plot_budget(results, args.out, paired_checks(results, read_ais(args.out), args.out, AGAINST["budget"]))
             if args.grid == "budget" else None)
    if split is not None:
        text += f"\n![What each split buys]({split.name})\n"
    io.atomic_write_text(Path(args.out).with_suffix(".md"), text)
    log(f"report: {Path(args.out).with_suffix('.md')}")
    return 0


def backfill_per_image_is(args):
    """``--per-image-is``: for each cell whose last stage was evaluated before per-image values were
    kept, IS again on every test image with the stage's own seed, checked to give the stored mean
    (the same computation), and kept (:func:`save_per_image_is`)."""
    _, x_test, _ = load_data(args)
    for seed in args.seeds:
        for name in args.cells:
            folder = Path(args.out) / "cells" / cell_name(name, seed)
            if not (folder / RESULT).exists() or not (folder / MODEL).exists():
                continue
            stages = json.loads((folder / RESULT).read_text())["stages"]
            last = stages[-1] if stages else None
            if last is None or "nll" not in last or load_per_image_is(folder, last["stage"]) is not None:
                continue
            model = npvae.load(folder / MODEL)
            ll = log_likelihood(model, x_test, k=last["k"], seed=last["stage"], progress=not args.quiet,
                                file=sys.stderr)
            if abs(-ll.mean - last["nll"]) > 1e-6 * abs(last["nll"]):
                raise SystemExit(f"{folder.name}: IS again gives NLL {-ll.mean!r}, the stored {last['nll']!r}: "
                                 "not the computation that made it (another engine, dtype or thread count?); "
                                 "nothing kept")
            save_per_image_is(folder, last["stage"], ll)
            log(f"{folder.name}: per-image IS of stage {last['stage']} kept (NLL {-ll.mean:.4f}, as stored)")


#: Seeds (with the cell's seed) of the last stage's AIS, of IS on the same images, and of BDMC.
AIS_SEED, AIS_IS_SEED, BDMC_SEED = 25, 26, 27
AIS = "ais.json"


def run_ais(args):
    """The check of the last stage each cell reached (:func:`npvae.log_likelihood`, ``cells/<cell>/ais.json``):
    AIS on the first ``--ais-images`` test images (binarized as the IS numbers' test images),
    IS with ``--k`` samples on the same images (paired: AIS minus IS per image, its mean and SE),
    and BDMC (:func:`npvae.ais.bdmc`) on ``--bdmc-images`` images simulated from the model at the
    same chain settings: the forward/reverse gap bounds how far AIS of that length is from log p(x).
    A cell that another process is training (its folder locked) is skipped. A file of its own, so
    a cell that trains later loses nothing; the
    per-image values go to ``ais-stage<S>-<images>x<chains>x<steps>.npz`` (cells are compared on the
    same images, checked the same way); a
    stage checked already with the same settings is skipped (a rerun continues)."""
    from npvae.ais import bdmc
    images = args.ais_images
    _, x_test, _ = load_data(args)
    x = x_test[:images]
    for seed in args.seeds:
        for name in args.cells:
            folder = Path(args.out) / "cells" / cell_name(name, seed)
            if not (folder / MODEL).exists():
                continue
            try:                 # a cell another process trains: its last stage is not the one it will reach
                RunLock(folder).acquire().release()
            except RunFolderError as exc:
                log(f"{cell_name(name, seed)}: AIS skipped, {exc}".split("; wait")[0])
                continue
            stage = len(json.loads((folder / RESULT).read_text())["stages"]) - 1
            settings = dict(stage=stage, epochs=protocol.BURDA_STAGE_ENDS[stage], images=int(x.shape[0]),
                            chains=args.ais_chains, steps=args.ais_steps, k=args.k, bdmc_images=args.bdmc_images)
            done = json.loads((folder / AIS).read_text()) if (folder / AIS).exists() else []
            per_image = folder / per_image_name(settings)
            if per_image.exists() and any(all(r.get(key) == v for key, v in settings.items()) for r in done):
                continue
            done = [r for r in done if not all(r.get(key) == v for key, v in settings.items())]
            model = npvae.load(folder / MODEL)
            t0 = time.perf_counter()
            ais = log_likelihood(model, x, method="ais", chains=args.ais_chains, steps=args.ais_steps,
                                 seed=[seed, AIS_SEED], progress=not args.quiet, file=sys.stderr)
            is_ = log_likelihood(model, x, k=args.k, seed=[seed, AIS_IS_SEED], progress=not args.quiet, file=sys.stderr)
            diff, diff_se = _common.paired(ais.per_example, is_.per_example)
            record = dict(settings, ais=ais.to_dict(), is_log_likelihood=is_.mean, is_mc_se=is_.mc_se,
                          ais_minus_is=diff, ais_minus_is_se=diff_se, command=args.command)
            if args.bdmc_images:
                bd = bdmc(model, args.bdmc_images, chains=args.ais_chains, steps=args.ais_steps,
                          seed=[seed, BDMC_SEED], progress=not args.quiet, file=sys.stderr)
                record["bdmc"] = dict(bd.to_dict(), gap_se=float(_common.paired(bd.upper, bd.lower)[1]))
            record["seconds"] = time.perf_counter() - t0
            # per image, so that cells are compared on the same images (paired)
            io.atomic_savez(per_image, {"ais": np.asarray(ais.per_example, np.float64),
                                        "is": np.asarray(is_.per_example, np.float64)}, compress=True)
            done.append(record)
            io.atomic_write_text(folder / AIS, json.dumps(done, indent=1) + "\n")
            log(f"{cell_name(name, seed)}: stage {stage} AIS {ais.mean:.2f} ± {ais.se:.2f}, IS {is_.mean:.2f}, "
                f"AIS - IS {diff:.2f} ± {diff_se:.2f}" + (f", BDMC gap {record['bdmc']['gap']:.2f}" if "bdmc" in record else ""))


def read_ais(out):
    """``{cell: the last record of its ais.json}`` (the latest check of each cell)."""
    checks = {}
    for path in sorted((Path(out) / "cells").glob(f"*/{AIS}")):
        records = json.loads(path.read_text())
        if records:
            checks[path.parent.name] = records[-1]
    return checks


#: The cell each cell is compared with by AIS in the reports (the same seed, the same images).
AGAINST = {"table1": {"iwae-k5": "vae-k5", "iwae-k50": "vae-k50", "iwae-dreg-k5": "iwae-k5",
                      "iwae-dreg-k50": "iwae-k50"},
           "budget": {n: "iwae-64" for n in BUDGET_CELLS if n != "iwae-64"}}


def per_image_name(check):
    """The file of a check's per-image AIS and IS values (by its stage and settings)."""
    return f"ais-stage{check['stage']}-{check['images']}x{check['chains']}x{check['steps']}.npz"


def _per_image(out, cell, check):
    path = Path(out) / "cells" / cell / per_image_name(check)
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as f:
        return f["ais"], f["is"]


def paired_checks(results, checks, out, against):
    """Each cell against the cell it is compared with (``against``), where both were checked at the
    same stage on the same images: a list of dicts ``cell``, ``name``, ``seed``, ``other``,
    ``check`` (the cell's), ``ais`` and ``is_`` (``(mean, SE)`` over the images of the per-image
    difference), ``bias`` (the larger positive BDMC gap, None without BDMC) and ``resolved``
    (``|AIS difference|`` beyond 2 SE plus ``bias``)."""
    by_cell = {r["cell"]: r for r in results}
    pairs = []
    for r in results:
        ref = against.get(r["name"])
        other = cell_name(ref, r["seed"]) if ref else None
        a, b = checks.get(r["cell"]), checks.get(other)
        same = ("stage", "images", "chains", "steps", "k")
        if a is None or b is None or any(a.get(key) != b.get(key) for key in same) or other not in by_cell:
            continue
        mine, theirs = _per_image(out, r["cell"], a), _per_image(out, other, b)
        if mine is None or theirs is None:
            continue
        (da, sa), ais_is = _common.paired(mine[0], theirs[0]), _common.paired(mine[1], theirs[1])
        bias = max((max(0.0, c["bdmc"]["gap"]) for c in (a, b) if c.get("bdmc")), default=None)   # < 0: noise
        pairs.append(dict(cell=r["cell"], name=r["name"], seed=r["seed"], other=other, check=a, ais=(da, sa),
                          is_=ais_is, bias=bias, resolved=abs(da) - 2 * sa > (bias or 0.0)))
    return pairs


def comparisons(results, checks, out, against):
    """Lines: each cell minus the cell it is compared with (``against``), by AIS and by IS on the
    same images (paired: the mean over the images of the per-image difference, its SE), where
    both were checked at the same stage on the same images (:func:`paired_checks`)."""
    lines = []
    for p in paired_checks(results, checks, out, against):
        (da, sa), (di, si), bias, a = p["ais"], p["is_"], p["bias"], p["check"]
        verdict = ("beyond 2 SE" if abs(da) > 2 * sa else "within 2 SE") + (
            "" if bias is None else (", and beyond 2 SE plus the larger BDMC gap" if p["resolved"]
                                     else f", not beyond 2 SE plus the larger BDMC gap ({bias:.2f})"))
        lines.append(f"- {p['cell']} minus {p['other']} (epoch {a['epochs']}, {a['images']} images): "
                     f"{da:+.2f} ± {sa:.2f} by AIS, {di:+.2f} ± {si:.2f} by IS; by AIS {verdict}.")
    return lines


def ais_seeds(results, checks, out, against):
    """Lines: for each cell checked by AIS against the same cell in two or more seeds, the AIS
    difference of every seed, their mean with the SE over the images (``sqrt(sum SE^2) / n``: the
    images' and the chains' noise, not the seeds'), whether the seeds agree in sign, and in how many
    seeds the difference is resolved (``resolved`` of :func:`paired_checks`)."""
    by = {}
    for p in paired_checks(results, checks, out, against):
        by.setdefault((p["name"], p["other"].rsplit("-seed", 1)[0], p["check"]["stage"]), []).append(p)
    lines = []
    for (name, other, stage), pairs in by.items():
        if len(pairs) < 2:
            continue
        pairs = sorted(pairs, key=lambda p: p["seed"])
        diffs = [p["ais"][0] for p in pairs]
        mean, se = float(np.mean(diffs)), float(np.sqrt(sum(p["ais"][1] ** 2 for p in pairs)) / len(pairs))
        signs = "same sign in every seed" if len({np.sign(d) for d in diffs}) == 1 else "the seeds disagree in sign"
        resolved = sum(p["resolved"] for p in pairs)
        verdict = ("resolved in every seed" if resolved == len(pairs) else
                   "resolved in no seed" if resolved == 0 else f"resolved in {resolved} of {len(pairs)} seeds")
        each = ", ".join(f"{p['ais'][0]:+.2f} ± {p['ais'][1]:.2f} (seed {p['seed']})" for p in pairs)
        lines.append(f"- {name} minus {other} (stage {stage}): {each}; mean {mean:+.2f} ± {se:.2f}; {signs}; "
                     f"{verdict}.")
    return lines


def ais_section(results, checks, out=None, against=None):
    """The report's section on AIS at the last stage checked: AIS and IS on the same images, paired,
    the BDMC gap on simulated images, and each cell against the one it is compared with."""
    lines = ["", "## AIS at the last stage checked", ""]
    rows = [(r, checks[r["cell"]]) for r in results if r["cell"] in checks]
    if not rows:
        return lines + ["Not yet run (`--ais` adds AIS, IS on the same images and BDMC at the last stage each "
                        "cell reached).", ""]
    lines += ["AIS (`npvae.log_likelihood(method=\"ais\")`: chains per image, annealing steps) on the first test "
              "images; IS with k samples on the same images; AIS - IS per image, its mean and SE over the images; "
              "BDMC on images simulated from the model, same chains and steps: the mean gap between the reverse "
              "(upper) and forward (lower) bounds, how far AIS of that length may be from log p(x) on such images.",
              "", "| cell | epoch | images | chains x steps | AIS log p(x) | SE over images | IS (k) | AIS - IS | acceptance | "
              "BDMC gap ± SE (max), images |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r, c in rows:
        a = c["ais"]
        bd = c.get("bdmc")
        lines.append(f"| {r['cell']} | {c['epochs']} | {c['images']} | {c['chains']} x {c['steps']} | "
                     f"{a['log_likelihood']:.2f} | {a['log_likelihood_se']:.2f} | {c['is_log_likelihood']:.2f} "
                     f"({c['k']}) | {c['ais_minus_is']:+.2f} ± {c['ais_minus_is_se']:.2f} | "
                     f"{a['acceptance_mean']:.2f} | "
                     + ("-" if bd is None else f"{bd['gap']:.2f}" + (f" ± {bd['gap_se']:.2f}" if "gap_se" in bd else "")
                        + f" ({bd['gap_max']:.2f}), {bd['n']}") + " |")
    pairs = comparisons(results, checks, out, against or {}) if out is not None else []
    if pairs:
        lines += ["", "Cells against each other on the same images (the AIS estimates are lower bounds in "
                      "expectation, each below log p(x) by up to about its BDMC gap, so a difference is read as "
                      "real only beyond 2 SE plus the larger gap):", ""] + pairs
    seeds = ais_seeds(results, checks, out, against or {}) if out is not None else []
    if seeds:
        lines += ["", "The seeds together, by AIS: each seed's difference (as above), their mean with the SE over the "
                      "images (the images' and the chains' noise only: two seeds give no SE over seeds), whether the "
                      "seeds agree in sign, and in how many seeds the difference is beyond 2 SE plus the larger BDMC "
                      "gap:", ""] + seeds
    return lines + [""]


def train_cells(args):
    """Every cell of ``--cells`` x ``--seeds`` in turn, each under its folder's lock
    (:class:`npvae.runfolder.RunLock`): a cell another process trains is skipped, so the same
    command started on several cores shares the grid among them."""
    deadline = time.time() + (args.hours * 3600 if args.hours is not None else float("inf"))
    data = load_data(args)
    try:
        for seed in args.seeds:
            for name in args.cells:
                folder = Path(args.out) / "cells" / cell_name(name, seed)
                try:
                    lock = RunLock(folder).acquire()
                except RunFolderError as exc:
                    log(f"{cell_name(name, seed)}: skipped, {exc}".split("; wait")[0])
                    continue
                try:
                    run_cell(name, seed, data, args, deadline)
                finally:
                    lock.release()
    except Stop:
        log(f"time budget of {args.hours} h spent: stopped at an epoch's end; run again to continue")
    except KeyboardInterrupt:
        print("\nInterrupted: every finished epoch is in its cell's checkpoint.npz; run the same command "
              "again to continue.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
