"""The importance-sampled log-likelihood against its number of samples k, beside AIS.

The IWAE bound with k samples, ``E[log (1/k) sum_i w_i]``, rises with k toward log p(x); the
study quotes it at k = 5000 as "the log-likelihood". This script shows how far from converged
that is on a trained model: for each image, ``--k-max`` log weights from the encoder
(``engine.log_weights``), and for each k the mean over disjoint blocks of k of them of
``log (1/k) sum_i w_i`` (the same expectation as one k-sample estimate, with less spread), then
the mean over the images with its SE over them; beside it AIS (``npvae.log_likelihood(method=
"ais")``, a stochastic lower bound too, usually tighter) on the same images.

    python benchmarks/ll_vs_k.py

writes ``benchmarks/results/ll_vs_k.md``, ``.json`` and ``.png`` (``--out``). The model is
Burda et al.'s VAE (k = 1) of ``benchmarks/results/burda_table1`` at the last stage it reached
(``--model``), the test images binarized once with that study's seed. That file is replaced
at the cell's next stage, so the run keeps the model its numbers are of as ``<out>_model.npz``
(its SHA-256 in the ``.json``); ``--model benchmarks/results/ll_vs_k_model.npz`` makes them again.
"""

import _common  # noqa: F401  (first: this checkout's npvae on sys.path)

import argparse
import hashlib
import json
import shlex
import sys
from datetime import datetime
from pathlib import Path

import numpy as np

from _common import REPO, RESULTS, load_mnist, machine

import npvae
from npvae import io
from npvae.datasets import binarize
from npvae.evaluate import log_likelihood

MODEL = RESULTS / "burda_table1" / "cells" / "vae-k1-seed0" / "model.npz"
EVAL_SEED = 123                       # burda_table1's binarization of the test images


def log_weights(model, x, k_max, seed, chunk=200):
    """``(n, k_max)`` float64 log weights of each image, ``k_max`` draws from the encoder."""
    rng = np.random.default_rng(seed)
    out = np.empty((len(x), k_max))
    per = max(1, 20000 // k_max)                     # images per call: ~20,000 rows
    for i in range(0, len(x), per):
        xb = x[i:i + per]
        for j in range(0, k_max, chunk):
            eps = model.sample_eps(len(xb), min(chunk, k_max - j), rng)
            out[i:i + per, j:j + eps.shape[1]] = model.engine.log_weights(xb, eps)
    return out


#: k of the tables: the main run's up to ``--k-max``, the deep run's up to ``--deep-k-max``.
KS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000)


def deep_run(model, x, args):
    """The curve to ``--deep-k-max`` on the first ``--deep-n`` images, once per seed of
    ``--deep-seeds`` (independent log weights), each against one AIS run on those images: how
    far k = 5000 is from k = 10^5, and how much one k-sample estimate moves from seed to seed."""
    ais = log_likelihood(model, x, method="ais", chains=args.ais_chains, steps=args.ais_steps, seed=2,
                         progress=True, file=sys.stderr)
    reference = np.asarray(ais.per_example, dtype=np.float64)
    ks = [k for k in KS if k <= args.deep_k_max]
    per_seed = []
    for seed in args.deep_seeds:
        lw = log_weights(model, x, args.deep_k_max, seed=1000 + seed, chunk=2000)
        per_seed.append(block_estimates(lw, ks, reference))
        print(f"deep run: seed {seed} done", file=sys.stderr, flush=True)
    return {"n": int(len(x)), "k_max": args.deep_k_max, "seeds": list(args.deep_seeds),
            "is": {str(k): [list(e[k]) for e in per_seed] for k in ks},
            "ais": {"mean": ais.mean, "se": ais.se, "mc_se": ais.mc_se, "chains": args.ais_chains,
                    "steps": args.ais_steps}}


def block_estimates(lw, ks, reference):
    """Per k: ``(mean, se, gap, gap_se)``: the mean over the images of each image's mean over
    disjoint blocks of k of ``log mean exp`` of the block's log weights, its SE over the images,
    and ``reference`` (per image) minus it, with the SE of that paired difference."""
    n, k_max = lw.shape
    out = {}
    for k in ks:
        blocks = lw[:, :k_max // k * k].reshape(n, k_max // k, k)
        m = blocks.max(axis=2, keepdims=True)
        per_block = (m + np.log(np.exp(blocks - m).mean(axis=2, keepdims=True)))[..., 0]
        per_image = per_block.mean(axis=1)
        gap = reference - per_image
        out[k] = (float(per_image.mean()), float(per_image.std(ddof=1) / np.sqrt(n)), float(gap.mean()),
                  float(gap.std(ddof=1) / np.sqrt(n)))
    return out


def plot(data, out):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        print("matplotlib not installed: the figure is skipped", file=sys.stderr)
        return None
    deep = data.get("deep")
    panels = 3 if deep else 2
    fig = Figure(figsize=(5 * panels, 4), dpi=110)
    FigureCanvasAgg(fig)
    ax, gap_ax = fig.add_subplot(1, panels, 1), fig.add_subplot(1, panels, 2)
    if deep:
        deep_ax = fig.add_subplot(1, panels, 3)
        dks = [int(k) for k in deep["is"]]
        for j, seed in enumerate(deep["seeds"]):
            deep_ax.plot(dks, [deep["is"][str(k)][j][0] for k in dks], "o-", ms=3, alpha=0.8, label=f"IS, seed {seed}")
        deep_ax.axhline(deep["ais"]["mean"], color="C3", ls="--", label="AIS")
        deep_ax.set_title(f"the first {deep['n']} images, k to {deep['k_max']:,}", fontsize=10)
        deep_ax.set_ylabel("mean log p(x) estimate, nats")
        deep_ax.set_xscale("log")
        deep_ax.set_xlabel("k (importance samples per image)")
        deep_ax.grid(True, which="both", alpha=0.3)
        deep_ax.legend(fontsize=8)
    ks = [int(k) for k in data["is"]]
    cell = np.array([data["is"][str(k)] for k in ks])             # mean, se, gap, gap_se
    ais = data["ais"]
    ax.plot(ks, cell[:, 0], "o-", label="importance sampling, k samples")
    ax.axhline(ais["mean"], color="C3", ls="--", label=f"AIS ({ais['chains']} chains, {ais['steps']} steps)")
    ax.set_ylabel("mean log p(x) estimate, nats")
    ax.set_title(f"{data['n']} test images", fontsize=10)
    gap_ax.errorbar(ks, cell[:, 2], yerr=2 * cell[:, 3], fmt="o-", capsize=3)
    gap_ax.axhline(0, color="grey", lw=1)
    gap_ax.set_yscale("symlog", linthresh=0.1)
    gap_ax.set_ylabel("AIS minus IS, nats")
    gap_ax.set_title("per image, paired; bars: ±2 SE over the images", fontsize=10)
    for a in (ax, gap_ax):
        a.set_xscale("log")
        a.set_xlabel("k (importance samples per image)")
        a.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(out).with_suffix(".png")
    fig.savefig(path)
    return path


def report(data, figure):
    ks = [int(k) for k in data["is"]]
    ais = data["ais"]
    lines = ["# The importance-sampled log-likelihood against k, beside AIS", "",
             f"Command: `{data['command']}`", "",
             f"Date: {data['date']}. Machine: {data['machine']}.", "",
             f"Model: `{data['model']}` ({data['model_note']}). Images: the first {data['n']} test images, "
             f"binarized once (seed {EVAL_SEED}, as `burda_table1.py`). For each image {data['k_max']} log weights "
             "from the encoder; for each k the mean over disjoint blocks of k of the block's log-mean-exp (an "
             "estimate of the expectation of one k-sample estimate, the IWAE bound with k samples), then the mean over images and "
             "its SE over them. AIS: `npvae.log_likelihood(method=\"ais\")` on the same images, "
             f"{ais['chains']} chains, {ais['steps']} annealing steps. Both are stochastic lower bounds of log p(x) "
             "in expectation.", "",
             "| k | mean log p(x) estimate | SE over images | AIS minus this (paired SE) |", "|---:|---:|---:|---:|"]
    for k in ks:
        mean, se, gap, gap_se = data["is"][str(k)]
        lines.append(f"| {k} | {mean:.2f} | {se:.2f} | {gap:+.2f} ({gap_se:.2f}) |")
    lines += ["", f"AIS: {ais['mean']:.2f} (SE over images {ais['se']:.2f}, Monte Carlo SE {ais['mc_se']:.3f}).", ""]
    k_top, k_prev = ks[-1], ks[-2] if len(ks) > 1 else None
    _, _, gap, gap_se = data["is"][str(k_top)]
    verdict = "within" if abs(gap) <= 2 * gap_se else "beyond"
    lines += [f"At k = {k_top}, AIS minus the importance-sampled estimate is {gap:+.2f} ± {gap_se:.2f} nats on these "
              f"images ({verdict} 2 SE of zero)" + (
                  f"; from k = {k_prev} to {k_top} it still rose by "
                  f"{data['is'][str(k_top)][0] - data['is'][str(k_prev)][0]:.2f} nats" if k_prev else "") +
              ". AIS too is a lower bound in expectation, so this says how far IS is below AIS, not below "
              "log p(x); it is one model, at the parameters of that stage.", ""]
    lines += deep_section(data)
    if figure is not None:
        lines += [f"![log p(x) against k]({figure.name})", ""]
    return "\n".join(lines)


def deep_section(data):
    deep = data.get("deep")
    if not deep:
        return []
    ks = [int(k) for k in deep["is"]]
    seeds = len(deep["seeds"])
    lines = [f"## To k = {deep['k_max']:,} on the first {deep['n']} images, {seeds} seeds", "",
             f"Command: `{deep['command']}` ({deep['date']}).", "",
             f"The same estimates from {deep['k_max']:,} log weights per image, drawn {seeds} times independently "
             "(seeds " + ", ".join(str(s) for s in deep["seeds"]) + "): per k the mean over the seeds of the mean "
             "over images, the spread of that mean over the seeds (max - min: at the largest k one block per "
             "image, so it is the Monte Carlo spread of one k-sample estimate averaged over the images), and "
             f"AIS minus it (one AIS run on these images, {deep['ais']['chains']} chains, {deep['ais']['steps']} "
             "steps; mean over the seeds, and the largest paired SE over the images among them).", "",
             "| k | mean log p(x) estimate | spread over seeds | AIS minus this (paired SE) |", "|---:|---:|---:|---:|"]
    for k in ks:
        rows = np.array(deep["is"][str(k)])
        lines.append(f"| {k:,} | {rows[:, 0].mean():.2f} | {np.ptp(rows[:, 0]):.3f} | {rows[:, 2].mean():+.2f} "
                     f"({rows[:, 3].max():.2f}) |")
    ais = deep["ais"]
    top, mid = np.array(deep["is"][str(ks[-1])]), np.array(deep["is"][str(5000)]) if "5000" in deep["is"] else None
    lines += ["", f"AIS on these images: {ais['mean']:.2f} (SE over images {ais['se']:.2f}, Monte Carlo SE "
                  f"{ais['mc_se']:.3f})."]
    if mid is not None:
        rise = top[:, 0] - mid[:, 0]
        whole = data.get("is", {}).get("5000")
        lines.append(f"On these {deep['n']} images AIS minus the k = 5,000 estimate is {mid[:, 2].mean():+.2f} "
                     f"(paired SE at most {mid[:, 3].max():.2f}" + (
                         "" if whole is None or "n" not in data else
                         f"; on all {data['n']} images above it is {whole[2]:+.2f}, against another AIS run") +
                     f"). From k = 5,000 to {ks[-1]:,} the "
                     f"estimate rises {rise.mean():.2f} nats (per seed {rise.min():.2f} to {rise.max():.2f}); at "
                     f"k = {ks[-1]:,} AIS minus it is {top[:, 2].mean():+.2f} (per seed {top[:, 2].min():+.2f} to "
                     f"{top[:, 2].max():+.2f}).")
    return lines + [""]


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=str(MODEL), help="an npvae model file")
    p.add_argument("--n", type=int, default=500, help="test images (the first n)")
    p.add_argument("--k-max", type=int, default=5000, help="log weights per image")
    p.add_argument("--ais-chains", type=int, default=16)
    p.add_argument("--ais-steps", type=int, default=200)
    p.add_argument("--data", help="folder holding MNIST (default: $NPVAE_DATA, then the user cache)")
    p.add_argument("--out", default=str(RESULTS / "ll_vs_k"), help="OUT.md, OUT.json and OUT.png")
    p.add_argument("--report-only", action="store_true", help="redraw OUT.md and OUT.png from OUT.json")
    p.add_argument("--deep", action="store_true",
                   help="add to OUT.json the curve to --deep-k-max on the first --deep-n images over --deep-seeds "
                        "(the model must be the one OUT.json is of)")
    p.add_argument("--deep-n", type=int, default=50, help="images of the deep run")
    p.add_argument("--deep-k-max", type=int, default=100000, help="log weights per image of the deep run")
    p.add_argument("--deep-seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the deep run's log weights")
    return p


def pin_model(model_path, out):
    """Keep the model the numbers are of beside them, as ``<out>_model.npz`` (a staged cell's
    ``model.npz`` is replaced at its next stage's end): ``(note, path shown, sha256)``. Given that
    copy itself, the note of the run that made it is kept (the same file by its digest)."""
    digest = hashlib.sha256(model_path.read_bytes()).hexdigest()
    copy = out.parent / (out.name + "_model.npz")
    note = "a model file"
    result = model_path.parent / "result.json"
    if result.exists():
        r = json.loads(result.read_text())
        last = r["stages"][-1]                     # the staged runner saves model.npz at each stage's end
        note = (f"a copy of {r['cell']}'s model at the end of stage {last['stage']} of Burda's schedule "
                f"(epoch {last['epochs']})")
    elif model_path == copy.resolve() and out.with_suffix(".json").exists():
        before = json.loads(out.with_suffix(".json").read_text())
        if before.get("model_sha256") == digest:
            note = before["model_note"]
    if model_path != copy.resolve():
        with np.load(model_path, allow_pickle=False) as f:
            io.atomic_savez(copy, {k: f[k] for k in f.files}, compress=True)
        digest = hashlib.sha256(copy.read_bytes()).hexdigest()      # of the kept file
    copy = copy.resolve()
    shown = copy.relative_to(REPO) if REPO in copy.parents else copy.name
    return note, shown, digest


def main(argv=None):
    args = build_parser().parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    out = Path(args.out)
    if args.report_only:
        data = json.loads(out.with_suffix(".json").read_text())
        io.atomic_write_text(out.with_suffix(".md"), report(data, plot(data, out)))
        return 0
    model_path = Path(args.model).resolve()
    model = npvae.load(model_path)
    if args.deep:
        data = json.loads(out.with_suffix(".json").read_text())
        digest = hashlib.sha256(model_path.read_bytes()).hexdigest()
        if data.get("model_sha256") != digest:
            raise SystemExit(f"ll_vs_k.py: --deep adds to {out.with_suffix('.json').name}, whose numbers are of "
                             f"another model than {model_path.name}: pass the model it kept "
                             f"(--model {data.get('model')}), or rerun without --deep")
    x = binarize(load_mnist(args.data)[1][:max(args.n, args.deep_n)], "dynamic", np.random.default_rng(EVAL_SEED))
    if args.deep:
        data["deep"] = deep_run(model, x[:args.deep_n].astype(model.dtype), args)
        data["deep"]["command"] = " ".join(["python benchmarks/ll_vs_k.py", *map(shlex.quote, argv)])
        data["deep"]["date"] = f"{datetime.now():%Y-%m-%d %H:%M}"
        io.atomic_write_text(out.with_suffix(".json"), json.dumps(data, indent=1) + "\n")
        io.atomic_write_text(out.with_suffix(".md"), report(data, plot(data, out)))
        return 0
    x = x[:args.n]
    lw = log_weights(model, x.astype(model.dtype), args.k_max, seed=0)
    ks = [k for k in KS if k <= args.k_max]
    ais = log_likelihood(model, x.astype(model.dtype), method="ais", chains=args.ais_chains, steps=args.ais_steps,
                         seed=1, progress=True, file=sys.stderr)
    estimates = block_estimates(lw, ks, np.asarray(ais.per_example, dtype=np.float64))
    note, shown, digest = pin_model(model_path, out)
    data = {"command": " ".join(["python benchmarks/ll_vs_k.py", *map(shlex.quote, argv)]),
            "date": f"{datetime.now():%Y-%m-%d %H:%M}", "machine": machine(load=True), "model": str(shown),
            "model_note": note, "model_sha256": digest, "n": args.n, "k_max": args.k_max,
            "is": {str(k): v for k, v in estimates.items()},
            "ais": {"mean": ais.mean, "se": ais.se, "mc_se": ais.mc_se, "chains": args.ais_chains,
                    "steps": args.ais_steps}}
    io.atomic_write_text(out.with_suffix(".json"), json.dumps(data, indent=1) + "\n")
    io.atomic_write_text(out.with_suffix(".md"), report(data, plot(data, out)))
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
