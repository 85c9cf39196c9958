"""The posterior gap of every committed sample-size grid, from its result files alone (no training).

For each cell, ``log_likelihood - test_elbo``: the importance-sampled log p(x) (k = 5000 on the
full test set; k = 1000 on 500 images in the toy grid) minus the test ELBO (10 samples, analytic
KL, the same images), a mean over the test images. Since ``log p(x) - ELBO = KL(q(z|x) || p(z|x))``
and the IS estimate lies below ``log p(x)`` on average, the gap is a lower bound on the mean KL from
the encoder to the true posterior, up to Monte Carlo error: how far the encoder is from the
posterior of its own decoder, at each cell's own parameters.

    python benchmarks/posterior_gap.py                     # the committed grids -> results/posterior_gap.md
    python benchmarks/posterior_gap.py --grids runs/x --out -   # another grid folder, printed
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

import _common

RESULTS = _common.BENCHMARKS / "results"
GRIDS = ["sample_sizes", "sample_sizes_full", "sample_sizes_binarized", "sample_sizes_burda"]
NEEDED = ("objective", "mc_samples", "seed", "log_likelihood")


def read_grid(folder):
    """The cells of one grid folder: ``{(objective, S): [result dict, ...]}``, seeds in order.

    Reads ``folder/cells/*/result.json``; a cell without ``test_elbo`` is kept (its gap is
    ``None``) so that the table says the grid lacks it rather than dropping the cell.
    """
    folder = Path(folder)
    files = sorted((folder / "cells").glob("*/result.json"))
    if not files:
        raise ValueError(f"grids: expected a folder with cells/*/result.json, got {folder} (none found)")
    groups = {}
    for f in files:
        r = json.loads(f.read_text())
        if r.get("failed"):
            continue
        missing = [k for k in NEEDED if k not in r]
        if missing:
            raise ValueError(f"{f}: expected the fields {', '.join(NEEDED)}, missing {', '.join(missing)}")
        groups.setdefault((r["objective"], int(r["mc_samples"])), []).append(r)
    for cells in groups.values():
        cells.sort(key=lambda r: r["seed"])
    return groups


def gap(cell):
    """``log_likelihood - test_elbo`` of one cell in nats, or None if the cell has no test ELBO."""
    return None if cell.get("test_elbo") is None else cell["log_likelihood"] - cell["test_elbo"]


def grid_rows(groups):
    """One row per (objective, S): objective, S, per-seed gaps, their mean, LL and ELBO means."""
    rows = []
    for (objective, S), cells in sorted(groups.items(), key=lambda t: (t[0][0], t[0][1])):
        gaps = [gap(c) for c in cells]
        have = [g for g in gaps if g is not None]
        elbos = [c["test_elbo"] for c in cells if c.get("test_elbo") is not None]
        rows.append({"objective": objective, "S": S, "seeds": [c["seed"] for c in cells], "gaps": gaps,
                     "mean_gap": statistics.mean(have) if have else None,
                     "mean_ll": statistics.mean(c["log_likelihood"] for c in cells),
                     "mean_elbo": statistics.mean(elbos) if elbos else None})
    return rows


def _num(x):
    return "—" if x is None else f"{x:.2f}"


def grid_table(name, rows):
    """A markdown section for one grid."""
    lines = [f"## {name}", "",
             "| objective | S | seeds | log-likelihood | test ELBO | gap (mean) | gap per seed |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['objective']} | {r['S']} | {len(r['seeds'])} | {_num(r['mean_ll'])} | "
                     f"{_num(r['mean_elbo'])} | {_num(r['mean_gap'])} | {', '.join(_num(g) for g in r['gaps'])} |")
    if any(g is None for r in rows for g in r["gaps"]):
        lines += ["", "— : the cell's result.json has no test ELBO."]
    return lines + [""]


def report(grids):
    """The whole report: a header, then one table per grid folder."""
    lines = ["# Posterior gap: log-likelihood minus test ELBO, per cell", "",
             "Made by `python benchmarks/posterior_gap.py` from the committed `result.json` files alone. "
             "Gap = the cell's importance-sampled log-likelihood minus its test ELBO (10 samples, analytic KL, "
             "the same test images), in nats, mean over the test images; `gap (mean)` is the mean over seeds. "
             "It is a lower bound on the mean KL(q(z|x) || p(z|x)) of the cell's encoder to its own decoder's "
             "posterior (the IS estimate lies below log p(x) on average), measured at each cell's own "
             "parameters, up to Monte Carlo error. Test images and k: k = 5000 on 10,000 images, except "
             "`sample_sizes` (k = 1000 on 500 images, 3 epochs).", ""]
    for folder in grids:
        lines += grid_table(Path(folder).name, grid_rows(read_grid(folder)))
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--grids", nargs="+", default=[str(RESULTS / g) for g in GRIDS],
                   help="grid folders, each holding cells/*/result.json")
    p.add_argument("--out", default=str(RESULTS / "posterior_gap.md"), help="report file, or - to print only")
    args = p.parse_args(argv)
    text = report(args.grids)
    print(text)
    if args.out != "-":
        from npvae import io
        io.atomic_write_text(args.out, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
