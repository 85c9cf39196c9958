"""Gradient signal-to-noise ratio against the number of importance samples K, at fixed parameters.

Rainforth et al. (2018, "Tighter variational bounds are not necessarily better") show that
under the IWAE bound with K samples and the standard (reparameterization) estimator the SNR
of the encoder's gradient falls as ``K^(-1/2)`` while the decoder's rises as ``K^(1/2)``;
Tucker et al. (2018, DReG) that the doubly reparameterized estimator's encoder SNR rises with
K instead. This script measures it with :func:`npvae.diagnostics.gradient_snr` for:

* parameter points: ``init`` (the seed model's initialization), ``elbo`` (the seed model
  trained with the ELBO) and ``iwae`` (trained with the IWAE bound), each loaded from
  ``--models DIR/<point>.npz`` or trained there first (and kept);
* estimators: the IWAE bound with the ``standard``, ``stl`` and ``dreg`` estimators, and the
  K-sample ELBO (analytic KL);
* K in ``--K``; a single data point (Rainforth's setting) and a minibatch (``--batch``);
* summaries over each network's coordinates: the median SNR and the SNR of the whole
  gradient vector, each raw and bias-corrected (``gradient_snr``'s noise floor), with a
  jackknife interval of the latter, and the importance weights' effective sample size.

Every SNR here is at fixed parameters (the point's), with K varied: Rainforth et al.'s setting,
unlike ``sample_sizes.py``, whose cells each measure at their own trained parameters.

The number of gradient draws R is chosen per cell: from ``--repeats`` it is raised (up to
``--max-repeats``) until the noise floor ``3 / sqrt(R)`` is below the smallest SNR reported.
A network of a cell is *at the floor* (:func:`at_floor`, the one rule of the report, applied
to the stored summaries) where its median or norm SNR is under ``3 / sqrt(R)``, or more than
:data:`FLOOR_SHARE` of its coordinates are: the tables mark it, and the log-log slopes against
K, fitted over the largest K values (``--fit-from``) where the asymptotics hold and set beside
the published rates, leave it out.

    python benchmarks/snr_vs_k.py --K 1 3 10 30 100 300 1000 3000 --points init elbo iwae

writes ``benchmarks/results/snr_vs_k.md``, ``.json`` and ``.png`` (``--out``); finished
cells are kept in the JSON and not recomputed (resumable).
"""

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np

import _common  # noqa: F401  (first: this checkout's npvae on sys.path)
from _common import RESULTS, load_mnist, machine

import npvae
from npvae import io
from npvae.diagnostics import FLOOR_SHARE, at_noise_floor, gradient_snr
from npvae.params import NETWORKS

#: (name, objective, kl, estimator) of the gradient estimators compared.
ESTIMATORS = [("iwae-standard", "iwae", "analytic", "standard"), ("iwae-stl", "iwae", "analytic", "stl"),
              ("iwae-dreg", "iwae", "analytic", "dreg"), ("elbo", "elbo", "analytic", "standard")]
#: The two networks, as gradient_snr's summaries name them.
PARTS = tuple(part for part, _ in NETWORKS)
#: Draws a cell takes at least, whatever its row budget (the floor is then 1/sqrt(20) = 0.22).
MIN_REPEATS = 20
#: Published asymptotic slopes of the SNR against K (log-log), where they exist.
PUBLISHED = {("iwae-standard", "encoder"): -0.5, ("iwae-standard", "decoder"): 0.5,
             ("elbo", "encoder"): 0.5, ("elbo", "decoder"): 0.5}


def trained(point, models, x_train, args):
    """The model of a parameter point: loaded from ``models/<point>.npz`` or made there."""
    path = Path(models) / f"{point}.npz"
    if path.exists():
        return npvae.load(path)
    model = npvae.VAE(seed=0, dtype=args.dtype)
    if point != "init":
        objective, S = ("elbo", 1) if point == "elbo" else ("iwae", args.iwae_samples)
        print(f"training the {point} point: {args.train_epochs} epochs, {objective}, S = {S}", flush=True)
        npvae.fit(model, x_train, epochs=args.train_epochs, mc_samples=S, objective=objective, seed=0,
                  checkpoint=Path(models) / f"{point}-checkpoint.npz", resume=True, verbose=0)
    model.save(path)
    return model


def median_ess(model, x, K, rng, draws=20):
    """Median over the examples of the mean over ``draws`` of the importance weights' ESS
    (``_common.ess``) with K samples, from the engine's log weights."""
    out = np.zeros(len(x))
    for _ in range(draws):
        out += _common.ess(model.engine.log_weights(x, model.sample_eps(len(x), K, rng)), axis=1)
    return float(np.median(out / draws))


def at_floor(cell, part):
    """Whether ``part`` (``"encoder"`` or ``"decoder"``) of a measured cell is at the noise floor:
    its corrected median or norm SNR under ``3 / sqrt(R)``, or more than :data:`FLOOR_SHARE` of
    its coordinates under it. Its SNRs are then bounds, not values: marked, and left out of the
    slopes."""
    s = cell[part]
    return at_noise_floor(cell["floor"], s["share_below_floor"], s["median_snr_corrected"], s["norm_snr_corrected"])


def measure(model, x, K, estimator, args, seed):
    """One cell: SNR summaries at the smallest R that lifts the floor below what it reports."""
    _, objective, kl, est = next(e for e in ESTIMATORS if e[0] == estimator)
    return measure_snr(model, x, K, objective, kl, est, args, seed=[seed, K])


#: The per-coordinate quantiles of the corrected SNR a cell keeps (:func:`measure_snr`); the
#: FLOOR_SHARE one is the coordinate the floor rule's share looks at.
QUANTILES = (0.1, FLOOR_SHARE, 0.5, 0.9)


def measure_snr(model, x, mc_samples, objective, kl, estimator, args, seed, aim_share=False):
    """One cell's SNR summaries (:func:`npvae.diagnostics.gradient_snr` with ``mc_samples``
    samples, ``objective`` (a name or an instance), ``kl`` and ``estimator``) at the smallest R
    that lifts the noise floor below what it reports.

    R starts at ``args.repeats`` and is raised (up to ``args.max_repeats`` and ``args.max_rows``
    decoder rows, ``len(x) x mc_samples`` a draw, never under :data:`MIN_REPEATS`) while a network
    is :func:`at_floor`: to ``9 / SNR^2`` (with a margin) for the smallest of its median and norm
    SNR (and, with ``aim_share``, of the corrected SNR of its :data:`FLOOR_SHARE` quantile of
    coordinates, which the share rule looks at), at least twice the last R. Each R is a fresh
    measurement seeded ``[*seed, R]``. Returns the cell: ``repeats``, ``floor``, ``at_floor``,
    ``seconds`` and ``cpu_seconds`` (of the measurements at every R tried) and, per network, the
    summaries and ``quantiles`` (:data:`QUANTILES` of the corrected per-coordinate SNR).
    """
    by_rows = int(args.max_rows // (len(x) * mc_samples))
    limit = max(MIN_REPEATS, min(args.max_repeats, by_rows))
    repeats = max(MIN_REPEATS, min(args.repeats, by_rows))
    t0, c0 = time.perf_counter(), time.process_time()
    while True:
        r = gradient_snr(model, x, mc_samples=mc_samples, objective=objective, kl=kl, estimator=estimator,
                         repeats=repeats, seed=[*seed, repeats])
        quantiles = {part: coordinate_quantiles(r.snr_corrected, prefix) for part, prefix in NETWORKS}
        smallest = min(min(r.summary[p]["norm_snr_corrected"], r.summary[p]["median_snr_corrected"] or math.inf,
                           (quantiles[p][str(FLOOR_SHARE)] or math.inf) if aim_share else math.inf)
                       for p in PARTS)
        enough = not any(at_floor({"floor": r.floor, **r.summary}, p) for p in PARTS)
        if enough or repeats >= limit:
            break
        want = 9.0 / max(smallest, 1e-9) ** 2
        repeats = int(min(limit, max(2 * repeats, math.ceil(want * 1.2))))
    cell = {"repeats": repeats, "floor": r.floor, "at_floor": not enough, "seconds": time.perf_counter() - t0,
            "cpu_seconds": time.process_time() - c0}
    for part in PARTS:
        s = r.summary[part]
        cell[part] = {k: s[k] for k in ("median_snr", "median_snr_corrected", "norm_snr", "norm_snr_corrected",
                                        "norm_snr_ci", "share_below_floor")}
        cell[part]["quantiles"] = quantiles[part]
    return cell


def coordinate_quantiles(snr, prefix):
    """:data:`QUANTILES` of the per-coordinate SNRs ``snr`` (a dict by parameter name) of the
    parameters named ``prefix...``, over the coordinates where it is defined; keyed by ``str(q)``."""
    values = np.concatenate([v.ravel() for name, v in snr.items() if name.startswith(prefix)])
    values = values[~np.isnan(values)]
    return {str(q): float(np.quantile(values, q)) if values.size else math.nan for q in QUANTILES}


def to_measure(cell, args, rows):
    """Whether a stored cell is measured (again): it is absent, or, with ``--redo-floor``, a network
    of it is at the floor and the budget now allows more draws than it had (``rows``: decoder rows a
    draw)."""
    return cell is None or bool(args.redo_floor and any(at_floor(cell, p) for p in PARTS)
                                and cell["repeats"] < min(args.max_repeats, args.max_rows // rows))


def slope(Ks, values):
    """Least-squares slope of log(value) against log(K) (positive finite values only)."""
    pts = [(math.log(k), math.log(v)) for k, v in zip(Ks, values) if v and np.isfinite(v) and v > 0]
    if len(pts) < 2:
        return math.nan
    a = np.array(pts)
    return float(np.polyfit(a[:, 0], a[:, 1], 1)[0])


def compute_line(data, field="seconds"):
    """The one-thread seconds of the kept measurements, summed over the cells (and per setting):
    ``field`` ``"seconds"`` (wall) or ``"cpu_seconds"`` (the process's CPU time, for a machine
    shared with other jobs)."""
    seconds = {}
    for key, by_k in data["cells"].items():
        for cells in by_k.values():
            for c in cells.values():
                if isinstance(c, dict) and field in c:
                    seconds[key] = seconds.get(key, 0.0) + c[field]
    total = sum(seconds.values())
    parts = ", ".join(f"{k} {v / 3600:.2f}" for k, v in sorted(seconds.items()))
    unit = "CPU hours" if field == "cpu_seconds" else "hours of one core"
    return (f"Compute: the kept measurements took {total / 3600:.1f} {unit} ({parts}); a cell "
            "measured again counts its last measurement only, and the trained points' training is not counted.")


def write_report(data, args, command, out):
    lines = ["# Gradient SNR against K at fixed parameters", "",
             f"Command: `{command}`  ", f"Machine: {machine()}; {args.dtype}.  ",
             compute_line(data), "",
             "SNR of the gradient of each network (encoder q, decoder p) over R draws of the noise at fixed "
             "parameters (each section's point, the same for every K): *median* over the coordinates and *norm* "
             "(the SNR of the whole gradient vector, `||mean|| / sqrt(sum var)`), both bias-corrected for the "
             "noise floor `1/sqrt(R)` (`npvae.diagnostics.gradient_snr`); [a, b] the 95% jackknife interval of the "
             "norm SNR. These are not the SNRs of the sample-size grids, each measured at its own cell's trained "
             "parameters. R was raised until `3 / sqrt(R)` was below the smallest SNR of the cell, up to "
             f"{args.max_repeats} draws and {args.max_rows:.0e} decoder rows a cell. *floor* marks a network at the "
             "noise floor: its median or norm SNR under `3 / sqrt(R)` (then shown as `< 3/sqrt(R)`, an upper "
             f"bound), or more than {FLOOR_SHARE:.0%} of its coordinates under it (so that the median and the "
             "norm are not set by coordinates the R draws cannot resolve); such a value is not a measurement to "
             "read a trend from, and the slopes leave it out. ESS: median over the examples of the importance "
             "weights' effective sample size at that K.", ""]
    for point in args.points:
        for batch in args.batches:
            key = f"{point}/B{batch}"
            if key in data["cells"]:
                lines += [f"## At fixed parameters (the {point} point), "
                          f"{'one data point' if batch == 1 else f'a minibatch of {batch}'}", ""]
                lines += snr_table(data["cells"][key], args) + slope_lines(data["cells"][key], args)
    notes = Path(str(out) + "_notes.md")
    if notes.exists():
        lines += [notes.read_text().rstrip(), ""]
    io.atomic_write_text(Path(str(out) + ".md"), "\n".join(lines))
    plot(data, args, out)


def snr_table(by_k, args):
    """The table of one (point, batch): a row per K, median / norm SNR [interval] per estimator."""
    head = ["K", "ESS"] + [f"{e} {p}" for e, *_ in ESTIMATORS for p in ("q", "p")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for K in sorted(args.K):
        cells = by_k.get(str(K))
        if not cells:
            continue
        row = [str(K), f"{cells.get('ess', math.nan):.1f}"]
        for e, *_ in ESTIMATORS:
            c = cells.get(e)
            for part in ("encoder", "decoder"):
                if c is None:
                    row.append("—")
                    continue
                s, limit = c[part], 3 * c["floor"]
                lo, hi = s["norm_snr_ci"]
                med, norm = (f"< {limit:.2g}" if v < limit else f"{v:.3g}"
                             for v in (s["median_snr_corrected"], s["norm_snr_corrected"]))
                floor = any(at_floor(c, p) for p in ("encoder", "decoder"))
                row.append(f"{med} / {norm} [{lo:.2g}, {hi:.2g}]" + (" floor" if at_floor(c, part) else "")
                           + (f" (R={c['repeats']})" if part == "encoder"
                              and (floor or c["repeats"] > args.max_repeats) else ""))
        lines.append("| " + " | ".join(row) + " |")
    return lines + ["", "Cells: median / norm SNR [interval of the norm SNR]; *floor*: that network at the noise "
                    "floor (see above); R, the draws, is given where a network of the cell is at the floor or the "
                    "cell was measured again with more draws than the budget above (`--redo-floor`).", ""]


def slope_lines(by_k, args):
    """The fitted log-log slopes of one (point, batch), beside the published rates."""
    fit = [K for K in sorted(args.K) if K >= args.fit_from and str(K) in by_k]
    lines = [f"Log-log slope of the norm SNR against K at fixed parameters, over K = {', '.join(map(str, fit))}, "
             "leaving out the K where that network is at the noise floor (marked *floor* above: a bound there, "
             "not a value), with the published asymptotic rate in brackets:", ""]
    for e, *_ in ESTIMATORS:
        parts = []
        for part in ("encoder", "decoder"):
            cells = [by_k[str(K)].get(e) for K in fit]
            floor = [bool(c) and at_floor(c, part) for c in cells]
            used = [(K, c[part]["norm_snr_corrected"]) for K, c, f in zip(fit, cells, floor) if c and not f]
            floor_from = [K for K, f in zip(fit, floor) if f]
            pub = PUBLISHED.get((e, part))
            text = (f"{slope([k for k, _ in used], [v for _, v in used]):+.2f} over {len(used)} K"
                    if len(used) >= 2 else "no fit")
            if floor_from:
                text += f", at the floor at K = {', '.join(map(str, floor_from))}"
            parts.append(f"{part} {text}" + (f" [published {pub:+.1f}]" if pub is not None else ""))
        lines.append(f"* {e}: " + "; ".join(parts))
    return lines + [""]


def plot(data, args, out):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    keys = [f"{p}/B{b}" for p in args.points for b in args.batches if f"{p}/B{b}" in data["cells"]]
    if not keys:
        return None
    fig = Figure(figsize=(8.5, 3.2 * len(keys)), dpi=100)
    FigureCanvasAgg(fig)
    for i, key in enumerate(keys):
        for j, part in enumerate(("encoder", "decoder")):
            ax = fig.add_subplot(len(keys), 2, 2 * i + j + 1)
            for e, *_ in ESTIMATORS:
                Ks = sorted(int(K) for K in data["cells"][key] if e in data["cells"][key][K])
                if not Ks:
                    continue
                cells = [data["cells"][key][str(K)][e] for K in Ks]
                v = [c[part]["norm_snr_corrected"] for c in cells]
                ci = np.array([c[part]["norm_snr_ci"] for c in cells], dtype=float)
                line, = ax.plot(Ks, v, "o-", label=e, ms=3)
                ax.fill_between(Ks, ci[:, 0], ci[:, 1], alpha=0.15)
                floor = [(K, max(x, 3 * c["floor"])) for K, x, c in zip(Ks, v, cells) if at_floor(c, part)]
                if floor:        # at the noise floor: a bound, drawn at its value or 3 / sqrt(R) if under
                    ax.plot(*zip(*floor), "v", ms=7, mfc="none", color=line.get_color())
            log_axes(ax, f"{key}: {part}, fixed parameters (▽: at the floor)")
            if i == 0 and j == 0:
                ax.legend(fontsize=7)
    return save_figure(fig, out)


def build_parser():
    p = argparse.ArgumentParser(prog="snr_vs_k.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--K", type=int, nargs="+", default=[1, 3, 10, 30, 100, 300, 1000, 3000],
                   help="importance samples")
    p.add_argument("--points", nargs="+", default=["init", "elbo", "iwae"], choices=("init", "elbo", "iwae"),
                   help="parameter points")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 100], help="examples per gradient")
    p.add_argument("--estimators", nargs="+", default=[e for e, *_ in ESTIMATORS],
                   choices=[e for e, *_ in ESTIMATORS], help="gradient estimators compared")
    p.add_argument("--fit-from", type=int, default=30, help="fit slopes over K >= this")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"), help="the models' dtype")
    p.add_argument("--train-epochs", type=int, default=50, help="epochs of the trained points")
    p.add_argument("--iwae-samples", type=int, default=5, help="S of the IWAE-trained point")
    p.add_argument("--models", default=str(RESULTS / "snr_vs_k_models"),
                   help="where the points' models are kept (not committed)")
    add_measure_arguments(p, max_repeats=2000, max_rows=1e7, threads=None, out=RESULTS / "snr_vs_k")
    return p


def add_measure_arguments(p, max_repeats, max_rows, threads, out):
    """The options of the draws R, the data, the threads and the output that the SNR scripts share,
    with their defaults."""
    p.add_argument("--repeats", type=int, default=100,
                   help="gradient draws to start with (fewer, down to 20, where --max-rows would be spent)")
    p.add_argument("--max-repeats", type=int, default=max_repeats, help="gradient draws a cell may raise R to")
    p.add_argument("--max-rows", type=float, default=max_rows,
                   help="decoder rows (examples x samples x draws) a cell may spend raising R")
    p.add_argument("--data", help="folder holding MNIST (None: $NPVAE_DATA, then the user cache)")
    p.add_argument("--threads", type=int, default=threads, help="threads of the numba engine")
    p.add_argument("--out", default=str(out), help="OUT.md, OUT.json (the cells) and OUT.png")
    p.add_argument("--report-only", action="store_true", help="redraw the report from OUT.json")
    p.add_argument("--redo-floor", action="store_true",
                   help="measure again the cells left at the floor, where a larger --max-repeats/--max-rows "
                        "now allows more draws")


def parse(p, argv, positive):
    """``args``, checked (the integer lists named in ``positive`` at least 1, the draws), the
    command that made them (``--report-only`` left out) and the kept cells of ``OUT.json``."""
    args = p.parse_args(argv)
    for name in positive:
        values = getattr(args, name)
        if min(values) < 1:
            p.error(f"--{name}: expected integers >= 1, got {values}")
    if args.repeats < 2 or args.max_repeats < args.repeats:
        p.error(f"--repeats: expected 2 <= repeats <= max-repeats, got {args.repeats} and {args.max_repeats}")
    command = f"python benchmarks/{p.prog} " + " ".join(shlex.quote(a) for a in (
        sys.argv[1:] if argv is None else argv) if a != "--report-only")
    store = Path(str(args.out) + ".json")
    data = json.loads(store.read_text()) if store.exists() else {"cells": {}}
    data["command"] = command
    return args, command, data


def keep(data, args):
    """Write the cells to ``OUT.json`` (atomically: an interrupted run keeps the last cell)."""
    io.atomic_write_text(Path(str(args.out) + ".json"), json.dumps(data, indent=1) + "\n")


def fill(data, cells, args, rows, label, measure):
    """Measure the estimators (``args.estimators``) of ``cells`` that :func:`to_measure` asks for
    (``rows`` decoder rows a draw) by ``measure(estimator)``; print each one and keep the cells."""
    for e in args.estimators:
        if to_measure(cells.get(e), args, rows):
            c = cells[e] = measure(e)
            print(f"{label} {e}: R={c['repeats']} q {c['encoder']['norm_snr_corrected']:.3g} "
                  f"p {c['decoder']['norm_snr_corrected']:.3g}{' (floor)' if c['at_floor'] else ''} "
                  f"{c['seconds']:.0f} s, {c['cpu_seconds']:.0f} CPU s", flush=True)
            keep(data, args)


def finish(data, args, command, write_report):
    """Keep the cells, write the report (``write_report(data, args, command, out)``); returns 0."""
    keep(data, args)
    write_report(data, args, command, Path(args.out))
    print(f"wrote {args.out}.md")
    return 0


def log_axes(ax, title, ylabel=None):
    """A log-log panel of SNR against K: its title, labels, grid and legend."""
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("K")
    if ylabel:
        ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)


def save_figure(fig, out):
    """Lay out ``fig`` and save it as ``OUT.png``; returns the path."""
    fig.tight_layout()
    path = Path(str(out) + ".png")
    fig.savefig(path)
    return path


def main(argv=None):
    p = build_parser()
    args, command, data = parse(p, argv, ("K", "batches"))
    if not args.report_only:
        x_train, x_test = load_mnist(args.data)
        Path(args.models).mkdir(parents=True, exist_ok=True)
        models = {point: trained(point, args.models, x_train, args) for point in args.points}
        # K outermost: every point's curve grows together, so an interrupted run has slopes for all
        for K in sorted(args.K):
            for point, model in models.items():
                model.threads = args.threads
                for batch in args.batches:
                    key = f"{point}/B{batch}"
                    x = x_test[:batch].astype(model.dtype)
                    cells = data["cells"].setdefault(key, {}).setdefault(str(K), {})
                    if "ess" not in cells:
                        cells["ess"] = median_ess(model, x, K, np.random.default_rng([K, 99]))
                    fill(data, cells, args, batch * K, f"{key} K={K}",
                         lambda e: measure(model, x, K, e, args, seed=batch))
    return finish(data, args, command, write_report)


if __name__ == "__main__":
    sys.exit(main())
