"""The README's main job, end to end, against the peers' 50-epoch runs with validation.

npvae's contender is exactly the README's first command after installation,
``npvae train --epochs 50 --out DIR`` (float32 on the numba engine: 50 epochs, the test ELBO
after every epoch, checkpoints, the model file and the four figures). The peers run their own
mains (``benchmarks/peers/torch_vae.py`` and ``jax_vae.py``): 50 epochs of the same model,
loss and RMSprop, with the test loss after every epoch, and no figures or checkpoints. Each run
is a fresh process, timed from its start to its exit (interpreter start, imports, reading
MNIST, numba's cache load or XLA's compilation, training, validation and writing), with the
same thread count for every contender (``--threads``: BLAS/OpenMP/MKL threads and npvae's
``--threads``; the peers pin their own). Contenders alternate, in a rotated order per round.

Reported per contender: the median total seconds and range over the rounds, the CPU seconds
of the process, the host's load before each run and the share of the machine others took
meanwhile (a disturbed run is measured again, once), and the final test loss (so that a fast
run that trains worse is visible). The target (issue 14): npvae's total at most 0.5x
PyTorch's.

    python benchmarks/end_to_end.py --rounds 3 --threads 2

Every finished run is stored in ``--state`` (JSON) and read back on a restart, so the script
resumes after an interruption. Writes ``benchmarks/results/end_to_end.md``.
"""

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

import _common  # noqa: F401  (first: this checkout's npvae on sys.path)
from _common import PEERS, REPO, RESULTS, library_versions, machine, numpy_blas
from hostload import DISTURBED, Meter
from speed import thread_env  # the same thread settings as the per-epoch benchmark

from npvae import io

CONTENDERS = ("npvae", "torch", "jax")
PEER = "torch"
TARGET = 0.5
LABELS = {"npvae": "npvae train (float32, numba)", "torch": "PyTorch peer (float32)",
          "jax": "JAX peer (float32, jit)"}


def command(contender, epochs, threads, out_dir):
    """The argv of one run and the file its per-epoch history ends up in."""
    if contender == "npvae":
        npvae_cli = shutil.which("npvae") or os.path.join(os.path.dirname(sys.executable), "npvae")
        return ([npvae_cli, "train", "--epochs", str(epochs), "--out", out_dir, "--threads", str(threads),
                 "--quiet"], os.path.join(out_dir, "history.json"))
    script = str(PEERS / f"{contender}_vae.py")
    out = os.path.join(out_dir, "history.json")
    return [sys.executable, script, "--epochs", str(epochs), "--threads", str(threads), "--out", out], out


def final_val_loss(contender, path):
    with open(path) as f:
        data = json.load(f)
    history = data if contender == "npvae" else data["history"]
    return float(history[-1]["val_loss"]), sum(float(r["seconds"]) for r in history)


def run_once(contender, epochs, threads, scratch, threshold):
    """One timed run in a fresh folder: a dict of wall, cpu, others, load, val_loss, train_seconds."""
    out_dir = tempfile.mkdtemp(prefix=f"{contender}-", dir=scratch)
    argv, history = command(contender, epochs, threads, out_dir)
    load = os.getloadavg()[0]
    with Meter(threshold) as m:
        p = subprocess.run(argv, capture_output=True, text=True, env=thread_env(threads), cwd=REPO)
    if p.returncode != 0:
        raise RuntimeError(f"{contender} failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
    val, train_seconds = final_val_loss(contender, history)
    figures = sorted(os.listdir(os.path.join(out_dir, "figures"))) if contender == "npvae" else []
    shutil.rmtree(out_dir, ignore_errors=True)
    return dict(wall=m.wall, cpu=m.cpu, others=m.others, disturbed=m.disturbed, load=load,
                val_loss=val, train_seconds=train_seconds, figures=figures)


def load_state(path):
    if path and os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return {"runs": []}


def save_state(path, state):
    io.atomic_write_text(path, json.dumps(state, indent=1))


def med_range(values):
    v = np.asarray(values, dtype=float)
    return f"{np.median(v):.1f} [{v.min():.1f}-{v.max():.1f}]"


def versions():
    """The libraries each contender runs on (package versions and NumPy's BLAS)."""
    return f"{library_versions()}, NumPy's BLAS: {numpy_blas()}"


def report(state, args, contenders):
    runs = [r for r in state["runs"] if not r["disturbed"] or r.get("kept")]
    by = {c: [r for r in runs if r["contender"] == c] for c in contenders}
    lines = [
        "# The main job end to end: `npvae train --epochs 50` against the peers' 50-epoch runs",
        "",
        f"Command: `python benchmarks/end_to_end.py {' '.join(state['argv'])}`  ",
        f"Started {state['started']}; machine: {state['machine']}.  ",
        f"Libraries: {versions()}.  ",
        f"Threads: {args.threads} for every contender. Rounds: {args.rounds}, contenders alternating in a "
        "rotated order. Each run is a fresh process timed from start to exit: imports, reading MNIST, "
        "numba's cached kernels or XLA's compilation, 50 epochs of training on the 60,000 training images "
        "(batch 100, S = 1, RMSprop lr 1e-3, float32), the test loss (negative ELBO, S = 1, all 10,000 "
        "test images) after every epoch, and writing results. npvae's run also writes checkpoints, the "
        "model file and the four figures; the peers write only their history.",
        "",
        "| contender | total seconds, median [range] | CPU seconds, median | training seconds (sum of epochs), median "
        "| final test loss, median | ratio of medians to PyTorch | runs |",
        "|---|---|---|---|---|---|---|",
    ]
    peer_med = np.median([r["wall"] for r in by[PEER]]) if by.get(PEER) else None
    for c in contenders:
        rs = by[c]
        if not rs:
            lines.append(f"| {LABELS[c]} | - | - | - | - | - | 0 |")
            continue
        med = np.median([r["wall"] for r in rs])
        ratio = f"{med / peer_med:.2f}" if peer_med else "-"
        lines.append(f"| {LABELS[c]} | {med_range([r['wall'] for r in rs])} "
                     f"| {np.median([r['cpu'] for r in rs]):.1f} | {np.median([r['train_seconds'] for r in rs]):.1f} "
                     f"| {np.median([r['val_loss'] for r in rs]):.2f} "
                     f"| {ratio} | {len(rs)} |")
    lines.append("")
    if peer_med and by.get("npvae"):
        ratio = np.median([r["wall"] for r in by["npvae"]]) / peer_med
        verdict = "met" if ratio <= TARGET else f"missed by {ratio / TARGET:.2f}x"
        lines.append(f"Target: npvae's total at most {TARGET}x PyTorch's: ratio {ratio:.2f}, {verdict}.")
        lines.append("")
    lines += ["## Every run", "",
              "| round | contender | total s | CPU s | load (1 min) before | others' share while it ran | "
              "final test loss | kept |", "|---|---|---|---|---|---|---|---|"]
    for r in state["runs"]:
        others = "-" if r["others"] is None else f"{100 * r['others']:.0f}%"
        kept = "yes" if (not r["disturbed"] or r.get("kept")) else "no (disturbed, measured again)"
        lines.append(f"| {r['round']} | {r['contender']} | {r['wall']:.1f} | {r['cpu']:.1f} | {r['load']:.2f} "
                     f"| {others} | {r['val_loss']:.2f} | {kept} |")
    lines += ["", f"A run is disturbed when other processes took more than {100 * args.disturbed:.0f}% of the "
              "machine while it ran; it is measured again once and the second measurement is kept "
              "whatever it shows.", ""]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="rounds of the alternation")
    p.add_argument("--epochs", type=int, default=50, help="epochs of every run")
    p.add_argument("--threads", type=int, default=2, help="threads of every contender")
    p.add_argument("--contenders", nargs="+", choices=CONTENDERS, help="what to time (default: all installed)",
                   default=[c for c in CONTENDERS if c == "npvae" or importlib.util.find_spec(c)])
    p.add_argument("--disturbed", type=float, default=DISTURBED,
                   help="others' share of the machine that marks a run disturbed (measured again once)")
    p.add_argument("--scratch", default=str(REPO / "runs" / "end_to_end"),
                   help="folder for the runs' outputs (deleted after each run)")
    p.add_argument("--state", default=None, help="JSON of finished runs (None: <out>.json)")
    p.add_argument("--out", default=str(RESULTS / "end_to_end.md"), help="the report")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.epochs < 1 or args.threads < 1:
        p.error("--rounds, --epochs and --threads must be positive")
    if PEER not in args.contenders:
        p.error(f"--contenders must include the reference peer {PEER!r}")
    state_path = args.state or os.path.splitext(args.out)[0] + ".json"
    state = load_state(state_path)
    argv_list = list(argv if argv is not None else sys.argv[1:])
    state.setdefault("argv", argv_list)
    state.setdefault("started", time.strftime("%Y-%m-%d %H:%M"))
    state.setdefault("machine", machine())
    os.makedirs(args.scratch, exist_ok=True)

    contenders = list(args.contenders)
    for rnd in range(args.rounds):
        order = contenders[rnd % len(contenders):] + contenders[:rnd % len(contenders)]
        for c in order:
            # a run is kept unless disturbed; a disturbed first run is measured again once, and that kept
            earlier = [r for r in state["runs"] if r["round"] == rnd and r["contender"] == c]
            if any(not r["disturbed"] or r.get("kept") for r in earlier):
                continue
            second = bool(earlier)
            rec = run_once(c, args.epochs, args.threads, args.scratch, args.disturbed)
            rec.update(round=rnd, contender=c, kept=second)
            state["runs"].append(rec)
            save_state(state_path, state)
            others = "-" if rec["others"] is None else f"{100 * rec['others']:.0f}%"
            print(f"round {rnd} {c:6s} {rec['wall']:7.1f} s (cpu {rec['cpu']:.1f}) val {rec['val_loss']:.2f} "
                  f"others {others}{' disturbed' if rec['disturbed'] else ''}", flush=True)
            if rec["disturbed"] and not second:
                rec2 = run_once(c, args.epochs, args.threads, args.scratch, args.disturbed)
                rec2.update(round=rnd, contender=c, kept=True)
                state["runs"].append(rec2)
                save_state(state_path, state)
                print(f"round {rnd} {c:6s} {rec2['wall']:7.1f} s (again)", flush=True)
    text = report(state, args, contenders)
    io.atomic_write_text(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
