"""Gradient signal-to-noise ratio of MIWAE(M, K) against M and K, at fixed parameters (issue 26).

MIWAE(M, K) is the mean of M independent K-sample IWAE bounds (``npvae.objectives.MIWAE``:
``mc_samples = M * K`` samples, ``outer = M`` groups of K consecutive ones). Rainforth et al.
(2018, "Tighter variational bounds are not necessarily better", Theorem 1) show that with the
standard (reparameterization) estimator the SNR of the encoder's gradient scales as
``O(sqrt(M / K))`` and the decoder's as ``O(sqrt(M K))``; Tucker et al. (2018) that the doubly
reparameterized estimator (DReG, which applies to MIWAE within each group) makes the encoder's
rise with K instead. The M part holds exactly, for any estimator that is a mean over the M
independent groups: the mean of the gradient does not depend on M and its variance is 1/M of
one group's. The K part is asymptotic (large K, importance weights whose effective sample size
grows with K). This script measures both with :func:`npvae.diagnostics.gradient_snr`, through
:func:`snr_vs_k.measure_snr`, for:

* parameter points (``--points``): ``init``, Burda et al.'s architecture (784-200-200-50, tanh,
  float32; ``--hidden``/``--latent-dim``/``--activation``) at its seed-0 initialization, and
  models kept by other studies (:data:`POINTS`): ``vae-k1``, the VAE trained under Burda et
  al.'s protocol (``burda_table1.py``, its last finished stage), and ``iwae-s5``, IWAE with
  S = 5 after 10 epochs (``grid_ais.py``'s retraining of a ``sample_sizes_burda`` cell);
* estimators: MIWAE's ``standard`` and ``dreg``;
* the grid of ``--M`` x ``--K``, leaving out the cells whose ``B * M * K`` decoder rows a draw
  exceed ``--max-draw-rows``;
* data: the first ``B`` test images (``--batches``; B = 1, one data point, is Rainforth et
  al.'s setting), binarized once as ``burda_table1.py`` binarizes them for its evaluations.

Each cell gives, per network, the median and the whole gradient vector's ("norm") SNR,
bias-corrected as ``gradient_snr`` gives them (with the norm's jackknife interval) and the
:data:`snr_vs_k.QUANTILES` of the corrected per-coordinate SNR. The draws R and the noise floor
are snr_vs_k.py's: R is raised until no network is :func:`snr_vs_k.at_floor` (its median or norm
SNR under ``3 / sqrt(R)``, or more than :data:`snr_vs_k.FLOOR_SHARE` of its coordinates under
it), aiming at the coordinate that share looks at, within ``--max-repeats`` and ``--max-rows``;
a network left at the floor is marked, its values are bounds, and the slopes leave it out. The
log-log slopes are fitted against M at each K (over every M) and against K at each M (over
``K >= --fit-from``), and set beside the theorem's exponents.

    python benchmarks/snr_vs_mk.py --points init vae-k1 iwae-s5
    python benchmarks/snr_vs_mk.py --points init vae-k1 iwae-s5 --K 1 4 16 64 256 1024 --max-draw-rows 1024
    python benchmarks/snr_vs_mk.py --points init vae-k1 iwae-s5 --batches 10 --K 1 4 16 64 256 1024 \
        --max-draw-rows 640 --max-repeats 3000

made the committed results (the grid, then K = 1024 at M = 1, then a minibatch of 10). A run writes
``benchmarks/results/snr_vs_mk.md``, ``.json`` and ``.png`` (``--out``); finished cells are kept in
the JSON and not measured again (resumable), and the report shows every measured cell of ``--M`` x
``--K``, whichever run measured it; ``OUT_notes.md``, where it exists, is appended to the report.
"""

import argparse
import hashlib
import json
import math
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np

import _common  # noqa: F401  (first: this checkout's npvae on sys.path)
from _common import RESULTS, load_mnist, machine
from burda_table1 import EVAL_SEED
from snr_vs_k import (FLOOR_SHARE, PARTS, QUANTILES, add_measure_arguments, at_floor, compute_line, fill, finish,
                      log_axes, measure_snr, median_ess, parse, save_figure, slope)

import npvae
from npvae import io
from npvae import objectives as obj
from npvae.datasets import binarize

#: The kept models of the trained points, under benchmarks/results/ (``init`` is made, not kept).
POINTS = {"vae-k1": "burda_table1/cells/vae-k1-seed0", "iwae-s5": "grid_ais/cells/iwae-S5-seed0"}
#: MIWAE's estimators measured.
ESTIMATORS = ("standard", "dreg")
#: The theorem's exponents of the SNR (Rainforth et al. 2018, Theorem 1), per (estimator, network)
#: against M and against K; None where no rate is published (DReG's encoder rises with K: Tucker
#: et al. 2018). DReG's decoder gradient is the standard one.
THEORY = {("standard", "encoder"): (0.5, -0.5), ("standard", "decoder"): (0.5, 0.5),
          ("dreg", "encoder"): (0.5, None), ("dreg", "decoder"): (0.5, 0.5)}


def cell_name(M, K):
    """The JSON key of a grid cell, ``"4x16"`` (M x K)."""
    return f"{M}x{K}"


def grid(args, batch):
    """The (M, K) cells a run measures at a batch size: every pair whose ``batch * M * K`` rows fit
    ``--max-draw-rows``, cheapest first (so that an interrupted run has the small grid whole)."""
    return cheapest_first((M, K) for M in args.M for K in args.K if batch * M * K <= args.max_draw_rows)


def cheapest_first(cells):
    return sorted(cells, key=lambda mk: (mk[0] * mk[1], mk[1]))


def shown(by_mk, args):
    """The (M, K) cells of ``--M`` x ``--K`` that a report shows: those measured (by this run or an
    earlier one, whatever its ``--max-draw-rows``), cheapest first."""
    return cheapest_first((M, K) for M in args.M for K in args.K if cell_name(M, K) in by_mk)


def fingerprint(model):
    """SHA-256 of the model's parameters (names, shapes and bytes): a resumed run refuses a point
    whose model has changed since its first cells."""
    h = hashlib.sha256()
    for name, p in model.params.items():
        h.update(f"{name}{p.shape}{p.dtype}".encode())
        h.update(np.ascontiguousarray(p).tobytes())
    return h.hexdigest()


def load_point(point, args):
    """The model of a parameter point and a sentence saying what it is."""
    if point == "init":
        model = npvae.VAE(hidden=tuple(args.hidden), latent_dim=args.latent_dim, activation=args.activation,
                          dtype="float32", seed=0)
        return model, f"{architecture(model)} at its initialization (seed 0)"
    folder = RESULTS / POINTS[point]
    model = npvae.load(folder / "model.npz")
    result = json.loads((folder / "result.json").read_text())
    if point == "vae-k1":
        stage = result["stages"][-1]
        text = (f"{architecture(model)}, the VAE (k = 1) trained under Burda et al.'s protocol for "
                f"{stage['epochs']} epochs (the end of stage {stage['stage']} of 8; Burda et al. train 3,280), "
                f"`{POINTS[point]}/model.npz`, seed 0, test NLL {stage['nll']:.2f} (k = 5000)")
    else:
        s = result["settings"]
        text = (f"{architecture(model)}, IWAE (S = {s['mc_samples']}, standard estimator) trained "
                f"{s['epochs']} epochs (batch {s['batch_size']}, {s['binarize']} binarization; the "
                f"`sample_sizes_burda` cell as `grid_ais` retrained it, see grid_ais.md), "
                f"`{POINTS[point]}/model.npz`, seed {s['seed']}")
    return model, text


def architecture(model):
    """``"784-200-200-50 (tanh, float32)"``."""
    sizes = "-".join(map(str, (model.input_dim, *model.hidden, model.latent_dim)))
    return f"{sizes} ({model.activation}, {model.dtype.name})"


def test_images(args):
    """The test images binarized once with ``burda_table1.py``'s evaluation seed, float32."""
    _, x_test = load_mnist(args.data)
    return binarize(x_test, "dynamic", np.random.default_rng(EVAL_SEED)).astype(np.float32)


def measure(model, x, M, K, estimator, args):
    """One cell: :func:`snr_vs_k.measure_snr` of MIWAE(M, K) with ``estimator``, seeded by the
    batch size, M and K (the estimators of a cell share their draws of eps)."""
    return measure_snr(model, x, M * K, obj.MIWAE(outer=M, inner=K), "analytic", estimator, args,
                       seed=[len(x), M, K], aim_share=True)


# --------------------------------------------------------------------------
# Slopes
# --------------------------------------------------------------------------
class Fit(NamedTuple):
    """The log-log slopes of one line of the grid (nan under two cells), the norm's standard error
    (:func:`slope_se`), the values of M or K they used and those whose cell is at the floor (left
    out)."""
    norm: float
    median: float
    used: list
    floor: list
    norm_se: float = math.nan


def slope_se(xs, values, highs):
    """Standard error of the least-squares slope of ``log(value)`` against ``log(x)`` from the cells'
    own noise: each ``log(value)`` with the standard deviation ``(high - value) / 1.96 / value``
    (``high``, the upper end of its 95% jackknife interval), the cells independent (their draws are
    seeded apart); the spread of the points about the line is not in it."""
    if len(xs) < 2:
        return math.nan
    x = np.log(np.asarray(xs, dtype=float))
    sd = (np.asarray(highs, dtype=float) - np.asarray(values, dtype=float)) / 1.959964 / np.asarray(values)
    dx = x - x.mean()
    if not np.isfinite(sd).all() or not (dx ** 2).sum():
        return math.nan
    return float(math.sqrt(np.sum(dx ** 2 * sd ** 2)) / np.sum(dx ** 2))


def fit(by_mk, estimator, part, along, fixed, values):
    """The log-log slopes of the corrected norm and median SNR of ``part`` against ``along`` (``"M"``
    or ``"K"``) at ``fixed`` of the other, over ``values`` of ``along``, leaving out the cells at the
    floor; a :class:`Fit`."""
    used, floor = [], []
    for v in values:
        M, K = (v, fixed) if along == "M" else (fixed, v)
        c = by_mk.get(cell_name(M, K), {}).get(estimator)
        if c is None:
            continue
        (floor if at_floor(c, part) else used).append((v, c[part]))
    xs, norms = [v for v, _ in used], [s["norm_snr_corrected"] for _, s in used]
    return Fit(slope(xs, norms), slope(xs, [s["median_snr_corrected"] for _, s in used]), xs,
               [v for v, _ in floor], slope_se(xs, norms, [s["norm_snr_ci"][1] for _, s in used]))


def fits(by_mk, args):
    """Every slope of one (point, batch): ``{(estimator, part): {"M": {K: Fit}, "K": {M: Fit}}}``
    (:func:`fit`), against M over every M, against K over ``K >= --fit-from``."""
    Ks = [K for K in sorted(args.K) if K >= args.fit_from]
    return {(e, part): {"M": {K: fit(by_mk, e, part, "M", K, sorted(args.M)) for K in sorted(args.K)},
                        "K": {M: fit(by_mk, e, part, "K", M, Ks) for M in sorted(args.M)}}
            for e in args.estimators for part in PARTS}


def slope_text(f, unit):
    """A :class:`Fit` as ``"+0.49 ± 0.01 / +0.47 (4)"`` (norm ± its SE / median, cells fitted), with
    the cells at the floor named: ``"-0.45 ± 0.02 / -0.44 (2; floor at K = 64, 256)"``."""
    at = f"floor at {unit} = {', '.join(map(str, f.floor))}" if f.floor else ""
    if len(f.used) < 2:
        return "no fit" + (f": {at}" if at else "")
    return f"{f.norm:+.2f} ± {f.norm_se:.1g} / {f.median:+.2f} ({len(f.used)}{'; ' + at if at else ''})"


def exponent(value, part, estimator):
    if value is None:
        return "rises (Tucker et al.)" if estimator == "dreg" and part == "encoder" else "—"
    return f"{value:+.1f}"


def slope_table(by_mk, args):
    """The slopes of one (point, batch) beside the theorem's exponents."""
    f = fits(by_mk, args)
    cols = [(e, p) for e in args.estimators for p in PARTS]
    lines = ["| fit | " + " | ".join(f"{e} {p}" for e, p in cols) + " |", "|---|" + "---|" * len(cols),
             "| theorem, against M | " + " | ".join(exponent(THEORY[c][0], c[1], c[0]) for c in cols) + " |"]
    lines += [f"| against M at K = {K} | " + " | ".join(slope_text(f[c]["M"][K], "M") for c in cols) + " |"
              for K in sorted(args.K)]
    lines.append("| theorem, against K | " + " | ".join(exponent(THEORY[c][1], c[1], c[0]) for c in cols) + " |")
    lines += [f"| against K at M = {M} | " + " | ".join(slope_text(f[c]["K"][M], "K") for c in cols) + " |"
              for M in sorted(args.M)]
    return lines + ["", f"Slopes of log(SNR), norm ± SE / median: against M over every M of the row's K, against "
                    f"K over K >= {args.fit_from} at the row's M; (n) the cells fitted; cells at the floor left out "
                    "and named. SE: from the cells' jackknife intervals alone (the measurement noise), not from "
                    "the points' spread about the line, which includes the curvature of a rate not yet "
                    "asymptotic.", ""]


def slope_list(fits):
    """Norm slopes in a row, ``"+0.50, +0.49*, ·"`` (``*``: cells at the floor left out, ``·``: no fit)."""
    return ", ".join(f"{f.norm:+.2f}" + ("*" if f.floor else "") if len(f.used) >= 2 else "·" for f in fits)


def summary_table(data, args):
    """Every (point, batch)'s norm-SNR slopes in one table: a row per estimator and network, the
    slopes against M (at each K) and against K (at each M) in order, beside the theorem's."""
    lines = [f"| point | estimator | network | against M, at K = {', '.join(map(str, sorted(args.K)))} | theorem "
             f"| against K (K >= {args.fit_from}), at M = {', '.join(map(str, sorted(args.M)))} | theorem |",
             "|---|---|---|---|---|---|---|"]
    for point in args.points:
        for batch in args.batches:
            key = f"{point}/B{batch}"
            if key not in data["cells"]:
                continue
            f = fits(data["cells"][key], args)
            for e in args.estimators:
                for part in PARTS:
                    m, k = THEORY[(e, part)]
                    lines.append(f"| {key} | {e} | {part} | {slope_list(f[(e, part)]['M'].values())} | "
                                 f"{exponent(m, part, e)} | {slope_list(f[(e, part)]['K'].values())} | "
                                 f"{exponent(k, part, e)} |")
    return lines + ["", "Norm SNR slopes, as in each section's table (B1: one data point); `*`: cells at the floor "
                    "left out of that fit; `·`: no fit (under two cells above the floor).", ""]


# --------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------
def bound(value, limit):
    """A corrected SNR as a table shows it: ``"< 0.3"`` under ``limit = 3 / sqrt(R)``."""
    return f"< {limit:.2g}" if value < limit else f"{value:.3g}"


def cell_table(by_mk, ess, estimator, args):
    """One estimator's cells of one (point, batch): a row per (M, K) measured."""
    qs = " / ".join(f"{q:.0%}" for q in QUANTILES)
    head = ["M", "K", "ESS", "R"] + [f"{p} {h}" for p in ("q", "p") for h in ("norm [95%]", "median", qs, "< floor")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for M, K in shown(by_mk, args):
        c = by_mk[cell_name(M, K)].get(estimator)
        if c is None:
            continue
        limit = 3 * c["floor"]
        row = [str(M), str(K), f"{ess.get(str(K), math.nan):.1f}", str(c["repeats"])]
        for part in PARTS:
            s = c[part]
            lo, hi = s["norm_snr_ci"]
            row += [f"{bound(s['norm_snr_corrected'], limit)} [{lo:.2g}, {hi:.2g}]"
                    + (" **floor**" if at_floor(c, part) else ""),
                    bound(s["median_snr_corrected"], limit),
                    " / ".join(bound(s["quantiles"][str(q)], limit) for q in QUANTILES),
                    f"{s['share_below_floor']:.0%}"]
        lines.append("| " + " | ".join(row) + " |")
    return lines + [""]


def write_report(data, args, command, out):
    lines = ["# Gradient SNR of MIWAE(M, K) against M and K at fixed parameters", "",
             f"Command: `{command}`  ", f"Machine: {machine()}; float32, one thread.  ",
             compute_line(data, "cpu_seconds"), "",
             "MIWAE(M, K), the mean of M independent K-sample IWAE bounds, with the standard estimator and with "
             "DReG (`npvae.objectives.MIWAE`, `estimator=\"dreg\"`). Rainforth et al. (2018, Theorem 1): with the "
             "standard estimator the encoder's gradient SNR is O(sqrt(M / K)), the decoder's O(sqrt(M K)); Tucker et "
             "al. (2018): DReG's encoder SNR rises with K. The M exponent +1/2 holds exactly for both estimators "
             "(a mean over M independent groups: the mean gradient does not change with M, its variance is 1/M of "
             "one group's), so the M slopes check the implementation and the measurement; the K exponents are "
             "asymptotic in K.", "",
             "Every SNR here is at fixed parameters (each section's point, the same for every cell), over R draws "
             "of the noise: *norm*, the SNR of the network's whole gradient vector (`||mean|| / sqrt(sum var)`) "
             "with its 95% jackknife interval, *median* and the quantiles over its coordinates, all bias-corrected "
             "for the noise floor (`npvae.diagnostics.gradient_snr`). R was raised, aiming `3 / sqrt(R)` below "
             "the smallest of the median, the norm and the corrected SNR of the network's lower "
             f"{FLOOR_SHARE:.0%} of coordinates, until neither network was at the noise floor by snr_vs_k.py's "
             "rule (imported) or the run's budget of draws was spent (the budget of this command: "
             f"{args.max_repeats} draws and {args.max_rows:.0e} decoder rows a cell; runs with other budgets, and "
             "the cells that reached a budget, are named in the notes; each cell's R is in its table). **floor** "
             "marks a network at the noise floor: corrected median or norm under `3 / sqrt(R)`, or more than "
             f"{FLOOR_SHARE:.0%} of its coordinates' measured (uncorrected) SNRs under it (*< floor*, the share); "
             "the quantile columns are corrected, so a corrected quantile can be under `3 / sqrt(R)` (`< x`) in a "
             "network the share does not flag. A flagged network's values are bounds, and `< x` is a value under `x = 3 / sqrt(R)`, an upper "
             "bound. The slopes leave such cells out. ESS: median over the examples of the mean effective sample "
             "size of K importance weights (one group). DReG's decoder gradient is the standard estimator's, and "
             "the two estimators of a cell share their draws: their decoder columns agree where R does.", ""]
    lines += ["## The slopes beside the theorem", ""] + summary_table(data, args)
    for point in args.points:
        info = data["points"].get(point)
        for batch in args.batches:
            key = f"{point}/B{batch}"
            if key not in data["cells"]:
                continue
            what = "one data point (test image 0)" if batch == 1 else f"a minibatch of the first {batch} test images"
            lines += [f"## At fixed parameters (the {point} point), {what}", "",
                      f"The point: {info['description']}. Data binarized once (`burda_table1.py`'s seed {EVAL_SEED}).",
                      ""]
            missing = [cell_name(M, K) for M in args.M for K in args.K if cell_name(M, K) not in data["cells"][key]]
            if missing:
                lines += [f"Not measured: M x K = {', '.join(missing)} (their decoder rows a draw, {batch} x M x K, "
                          "over the run's `--max-draw-rows`).", ""]
            lines += ["Slopes:", ""] + slope_table(data["cells"][key], args)
            for e in args.estimators:
                lines += [f"### {e}", ""] + cell_table(data["cells"][key], data["ess"].get(key, {}), e, args)
    notes = Path(str(out) + "_notes.md")
    if notes.exists():
        lines += [notes.read_text().rstrip(), ""]
    io.atomic_write_text(Path(str(out) + ".md"), "\n".join(lines))
    plot(data, args, out)


def plot(data, args, out):
    """SNR against K, a line per M (the colour), a row per (point, estimator), the encoder and the
    decoder side by side: the smallest batch solid, a larger one (a minibatch) thin and dotted; cells
    at the floor as open triangles; the theorem's K slope as a dashed guide through the smallest
    batch's M = 1 line."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    rows = [(p, e) for p in args.points for e in args.estimators
            if any(f"{p}/B{b}" in data["cells"] for b in args.batches)]
    if not rows:
        return None
    fig = Figure(figsize=(9, 3.3 * len(rows)), dpi=100)
    FigureCanvasAgg(fig)
    colours = {M: f"C{i}" for i, M in enumerate(sorted(args.M))}
    for i, (point, e) in enumerate(rows):
        keys = [(b, f"{point}/B{b}") for b in sorted(args.batches) if f"{point}/B{b}" in data["cells"]]
        for j, part in enumerate(PARTS):
            ax = fig.add_subplot(len(rows), 2, 2 * i + j + 1)
            for n, (batch, key) in enumerate(keys):
                for M in sorted(args.M):
                    cells = [(K, data["cells"][key].get(cell_name(M, K), {}).get(e)) for K in sorted(args.K)]
                    cells = [(K, c) for K, c in cells if c]
                    if not cells:
                        continue
                    Ks = [K for K, _ in cells]
                    v = [max(c[part]["norm_snr_corrected"], 3 * c["floor"]) if at_floor(c, part)
                         else c[part]["norm_snr_corrected"] for _, c in cells]
                    ax.plot(Ks, v, "o-" if n == 0 else "o:", ms=3 if n == 0 else 2, lw=1.5 if n == 0 else 1,
                            color=colours[M], label=f"M = {M}" if n == 0 else None)
                    floor = [(K, x) for (K, c), x in zip(cells, v) if at_floor(c, part)]
                    if floor:        # a bound: drawn at its value, or at 3 / sqrt(R) where under it
                        ax.plot(*zip(*floor), "v", ms=8, mfc="none", color=colours[M])
                    exp = THEORY[(e, part)][1]
                    if n == 0 and M == min(args.M) and exp is not None:
                        anchor = next(((K, x) for (K, c), x in zip(cells, v)
                                       if K >= args.fit_from and not at_floor(c, part)), None)
                        if anchor:
                            k = np.array([anchor[0], max(args.K)], dtype=float)
                            ax.plot(k, anchor[1] * (k / anchor[0]) ** exp, "--", color="gray", lw=1,
                                    label=f"K^{exp:+.1f} (theorem)")
            dotted = ", ".join(f"B = {b}" for b, _ in keys[1:])
            title = f"{point}, {e}: {part} (B = {keys[0][0]}{'; dotted: ' + dotted if dotted else ''}; ▽: floor)"
            log_axes(ax, title, "norm SNR, fixed parameters")
            ax.legend(fontsize=7)
    return save_figure(fig, out)


# --------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------
def build_parser():
    p = argparse.ArgumentParser(prog="snr_vs_mk.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--M", type=int, nargs="+", default=[1, 4, 16, 64], help="IWAE bounds averaged (outer)")
    p.add_argument("--K", type=int, nargs="+", default=[1, 4, 16, 64, 256], help="importance samples a bound")
    p.add_argument("--points", nargs="+", default=["init", "vae-k1", "iwae-s5"], choices=("init", *POINTS),
                   help="parameter points")
    p.add_argument("--batches", type=int, nargs="+", default=[1], help="examples per gradient (the first test images)")
    p.add_argument("--estimators", nargs="+", default=list(ESTIMATORS), choices=ESTIMATORS,
                   help="MIWAE's gradient estimators")
    p.add_argument("--max-draw-rows", type=int, default=4096,
                   help="leave out the cells with more decoder rows a draw (examples x M x K)")
    p.add_argument("--fit-from", type=int, default=4, help="fit the slopes against K over K >= this")
    p.add_argument("--hidden", type=int, nargs="+", default=[200, 200], help="the init point's hidden layers")
    p.add_argument("--latent-dim", type=int, default=50, help="the init point's latent size")
    p.add_argument("--activation", default="tanh", help="the init point's activation")
    add_measure_arguments(p, max_repeats=50000, max_rows=2e7, threads=1, out=RESULTS / "snr_vs_mk")
    return p


def main(argv=None):
    p = build_parser()
    args, command, data = parse(p, argv, ("M", "K", "batches"))
    store = Path(str(args.out) + ".json")
    for part in ("ess", "points"):
        data.setdefault(part, {})
    if not args.report_only:
        x_test = test_images(args)
        models = {}
        for point in args.points:
            model, description = load_point(point, args)
            model.threads = args.threads
            digest = fingerprint(model)
            known = data["points"].setdefault(point, {"description": description, "sha256": digest})
            if known["sha256"] != digest:
                p.error(f"--points: the {point} point's model is not the one {store}'s cells were measured at "
                        f"(its parameters' SHA-256 changed); measure it into a new --out")
            models[point] = model
        # the cells outermost, cheapest first: every point's grid grows together
        for batch in args.batches:
            x = x_test[:batch]
            for M, K in grid(args, batch):
                for point, model in models.items():
                    key = f"{point}/B{batch}"
                    ess = data["ess"].setdefault(key, {})
                    if str(K) not in ess:
                        ess[str(K)] = median_ess(model, x, K, np.random.default_rng([K, 99]))
                    cells = data["cells"].setdefault(key, {}).setdefault(cell_name(M, K), {})
                    fill(data, cells, args, batch * M * K, f"{key} M={M} K={K}",
                         lambda e: measure(model, x, M, K, e, args))
    return finish(data, args, command, write_report)


if __name__ == "__main__":
    sys.exit(main())
