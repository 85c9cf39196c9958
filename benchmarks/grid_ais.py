"""The committed sample-size grid under annealed importance sampling (AIS).

For each seed-0 cell of a committed sample-size study (by default
``benchmarks/results/sample_sizes_burda``: 784-200-200-50, tanh, float32, dynamic
binarization, 10 epochs), this

1. retrains the cell exactly as ``sample_sizes.py`` did (its stored settings, the same data,
   seed, batch, binarization and per-epoch curve callback, through ``npvae.fit``) and keeps the
   final model (``model.npz``, float32, compressed);
2. checks the retrained cell against the committed ``result.json``: every epoch's training loss
   and test curve, the test ELBO, the test IWAE bounds (k = S and 50), the test KL and the active
   units, recomputed with the study's own seeds on the same test images (``check.json``);
3. estimates ``log p(x)`` on the first ``--n`` test images (the study's binarization of them) by
   importance sampling with ``k = --k`` (the study's estimator and seed) and by AIS
   (``npvae.log_likelihood(..., method="ais")``), keeping the per-image values (``is.npz``,
   ``ais.npz``), so that the two compare image by image;
4. for the cells of ``--bdmc-cells``, runs BDMC (``npvae.ais.bdmc``) on simulated images at the
   chain lengths of ``--bdmc-steps``: the forward/reverse gap says how tight AIS of that length is.

Every stage writes its file atomically and is skipped when the file exists, so an interrupted run
(Ctrl-C) continues where it stopped; training resumes from its last epoch's checkpoint. Cells run
cheapest first (by S). ``<out>.md`` is the report over the finished cells.

Example (the committed run, on one core)::

    OPENBLAS_NUM_THREADS=1 taskset -c 0 python benchmarks/grid_ais.py --out benchmarks/results/grid_ais
"""

import os
import sys

if __name__ == "__main__":
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import shlex  # noqa: E402
import time  # noqa: E402
import datetime  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

import _common  # noqa: E402,F401  (this checkout's npvae on sys.path)
import sample_sizes  # noqa: E402

import npvae  # noqa: E402
from npvae import io  # noqa: E402
from npvae.ais import bdmc  # noqa: E402
from _common import paired  # noqa: E402
from npvae.evaluate import evaluate_bound, log_likelihood  # noqa: E402
from npvae.serialization import model_arrays  # noqa: E402

#: The study's metrics recomputed from the retrained model, with the study's seeds.
CHECKED = ("test_elbo", "test_iwae_S", "test_iwae_50", "test_kl", "active_units")
#: Seed of the AIS chains (beside the study's ``[seed, 10..16]``).
AIS_SEED = 18
BDMC_SEED = 19


def log(text):
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def _write_json(path, obj):
    io.atomic_write_text(path, json.dumps(obj, indent=1, default=sample_sizes._jsonable) + "\n")


def committed_cells(source, seeds, objectives, samples):
    """``[(name, committed result)]`` of the source study's cells, cheapest (smallest S) first."""
    out = []
    for S in samples:
        for objective in objectives:
            for seed in seeds:
                name = f"{objective}-S{S}-seed{seed}"
                path = Path(source) / "cells" / name / "result.json"
                if not path.exists():
                    raise SystemExit(f"grid_ais.py: {path} does not exist: --source must hold the study's "
                                     f"finished cell {name}")
                out.append((name, json.loads(path.read_text())))
    return out


def train(cell, folder):
    """The cell's model, trained as ``sample_sizes._run_cell`` trains it (or read back)."""
    path = folder / "model.npz"
    x_train, x_test = sample_sizes._load_data(cell)
    if path.exists():
        return npvae.load(path), x_test
    S, seed = cell["mc_samples"], cell["seed"]
    objective, estimator = sample_sizes.OBJECTIVES[cell["objective"]]
    model = npvae.VAE(input_dim=x_train.shape[1], hidden=cell["hidden"], latent_dim=cell["latent_dim"], seed=seed,
                      activation=cell.get("activation", "relu"), dtype=cell.get("dtype", "float64"))
    checkpoint = folder / "checkpoint.npz"
    history = npvae.fit(model, x_train, epochs=cell["epochs"], batch_size=cell["batch_size"], mc_samples=S,
                        objective=objective, estimator=estimator, binarize=cell.get("binarize", "none"), seed=seed,
                        checkpoint=checkpoint, resume=True, verbose=0,
                        callback=sample_sizes._curve(cell, x_test))
    _write_json(folder / "train.json", {"history": list(history), "train_loss": history[-1]["loss"]})
    io.atomic_savez(path, model_arrays(model), compress=True)
    checkpoint.unlink(missing_ok=True)
    return model, x_test


def check(model, x_test, cell, committed, folder):
    """The retrained cell's numbers beside the committed ones (``check.json``)."""
    path = folder / "check.json"
    if path.exists():
        return json.loads(path.read_text())
    S, seed = cell["mc_samples"], cell["seed"]
    elbo = evaluate_bound(model, x_test, mc_samples=10, objective="elbo", seed=[seed, 10])
    iwae_s = evaluate_bound(model, x_test, mc_samples=S, objective="iwae", seed=[seed, 11], batch_size=200)
    iwae_50 = evaluate_bound(model, x_test, mc_samples=50, objective="iwae", seed=[seed, 12], batch_size=200)
    now = {"test_elbo": -elbo["loss"], "test_iwae_S": -iwae_s["loss"], "test_iwae_50": -iwae_50["loss"],
           "test_kl": elbo["kl"], "active_units": sample_sizes.active_units(model, x_test)}
    history = json.loads((folder / "train.json").read_text())["history"]
    keys = ("loss", "curve_iwae_50")
    rows = {k: {"committed": committed[k], "retrained": now[k], "equal": committed[k] == now[k]} for k in CHECKED}
    rows["train_loss"] = {"committed": committed["train_loss"], "retrained": history[-1]["loss"],
                          "equal": committed["train_loss"] == history[-1]["loss"]}
    epochs = [all(h.get(k) == c.get(k) for k in keys) for h, c in zip(history, committed["history"])]
    result = {"metrics": rows, "epochs_equal": epochs, "all_equal": all(r["equal"] for r in rows.values())
              and len(history) == len(committed["history"]) and all(epochs)}
    _write_json(path, result)
    return result


def _per_example(path, res, extra=()):
    arrays = {"per_example": res.per_example, "per_example_se": res.per_example_se, "ess": res.ess}
    for name in extra:
        value = getattr(res, name)
        if value is not None:
            arrays[name] = np.asarray(value)
    io.atomic_savez(path, arrays)


def estimate_is(model, x, cell, args, folder):
    """Importance sampling with ``k = --k``, the study's estimator and seed, on the first ``--n`` images."""
    path = folder / "is.json"
    if path.exists():
        return json.loads(path.read_text())
    t = time.perf_counter()
    res = log_likelihood(model, x, k=args.k, seed=[cell["seed"], 14], progress=True)
    _per_example(folder / "is.npz", res, ("pareto_k",))
    pk = getattr(res, "pareto_k", None)
    out = {"log_likelihood": res.mean, "log_likelihood_se": res.se, "log_likelihood_mc_se": res.mc_se, "k": res.k,
           "n": res.n, "ess_median": float(np.median(res.ess)), "seconds": time.perf_counter() - t,
           "pareto_k_over_0.7": None if pk is None else int(np.sum(np.asarray(pk) > 0.7))}
    _write_json(path, out)
    return out


def estimate_ais(model, x, cell, args, folder):
    """AIS (``--chains``, ``--steps``, ``--leapfrog``) on the first ``--n`` images."""
    path = folder / "ais.json"
    if path.exists():
        return json.loads(path.read_text())
    t = time.perf_counter()
    res = log_likelihood(model, x, method="ais", chains=args.chains, steps=args.steps, leapfrog=args.leapfrog,
                         seed=[cell["seed"], AIS_SEED], progress=True)
    _per_example(folder / "ais.npz", res, ("acceptance", "step_size"))
    out = dict(res.to_dict(), seconds=time.perf_counter() - t)
    _write_json(path, out)
    return out


def run_bdmc(model, args, folder):
    """BDMC on ``--bdmc-n`` simulated images at each of ``--bdmc-steps`` (``bdmc.json``)."""
    path = folder / "bdmc.json"
    done = json.loads(path.read_text()) if path.exists() else []
    for steps in args.bdmc_steps:
        if any(r["steps"] == steps and r["chains"] == args.chains and r["n"] == args.bdmc_n for r in done):
            continue
        t = time.perf_counter()
        res = bdmc(model, args.bdmc_n, chains=args.chains, steps=steps, leapfrog=args.leapfrog,
                   seed=[0, BDMC_SEED], progress=True)
        done.append(dict(res.to_dict(), seconds=time.perf_counter() - t, seed=[0, BDMC_SEED]))
        log(f"bdmc steps={steps}: lower {done[-1]['lower']:.3f}, upper {done[-1]['upper']:.3f}, "
            f"gap {done[-1]['gap']:.3f} (max {done[-1]['gap_max']:.3f})")
        _write_json(path, done)
    return done


def run(args):
    out = Path(args.out)
    cells = committed_cells(args.source, args.seeds, args.objectives, args.samples)
    for i, (name, committed) in enumerate(cells):
        folder = out / "cells" / name
        if (folder / "result.json").exists() and not (name in args.bdmc_cells and not _bdmc_done(folder, args)):
            log(f"[{i + 1}/{len(cells)}] {name}: done")
            continue
        folder.mkdir(parents=True, exist_ok=True)
        cell = dict(committed["settings"], dir=str(folder))
        t0 = time.perf_counter()
        log(f"[{i + 1}/{len(cells)}] {name}: training (or reading the model)")
        model, x_test = train(cell, folder)
        chk = check(model, x_test, cell, committed, folder)
        log(f"{name}: retrained = committed: {chk['all_equal']}"
            + ("" if chk["all_equal"] else f" ({[k for k, r in chk['metrics'].items() if not r['equal']]})"))
        if name in args.bdmc_cells:
            run_bdmc(model, args, folder)
        x = x_test[:args.n]
        is_ = estimate_is(model, x, cell, args, folder)
        log(f"{name}: IS k={args.k}: {is_['log_likelihood']:.3f}")
        ais = estimate_ais(model, x, cell, args, folder)
        log(f"{name}: AIS: {ais['log_likelihood']:.3f}, acceptance {ais['acceptance_mean']:.2f}")
        result = {"cell": name, "mc_samples": committed["mc_samples"], "objective": committed["objective"],
                  "seed": committed["seed"], "n": int(x.shape[0]), "is": is_, "ais": ais, "check": chk,
                  "model_bytes": (folder / "model.npz").stat().st_size, "settings": committed["settings"],
                  "host_seconds": time.perf_counter() - t0}
        _write_json(folder / "result.json", result)
        write_report(args)
    write_report(args)
    return 0


def _bdmc_done(folder, args):
    path = folder / "bdmc.json"
    if not path.exists():
        return False
    have = {(r["steps"], r["chains"], r["n"]) for r in json.loads(path.read_text())}
    return all((s, args.chains, args.bdmc_n) in have for s in args.bdmc_steps)


# ---------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------
def _load(folder, name):
    with np.load(folder / name, allow_pickle=False) as f:
        return f["per_example"]


def finished(out):
    cells = {}
    for p in sorted(Path(out, "cells").glob("*/result.json")):
        r = json.loads(p.read_text())
        r["is_values"], r["ais_values"] = _load(p.parent, "is.npz"), _load(p.parent, "ais.npz")
        cells[r["cell"]] = r
    return cells


def _fmt(v, d=2):
    return "—" if v is None else f"{v:.{d}f}"


def write_report(args):
    out = Path(args.out)
    cells = finished(out)
    lines = ["# The sample-size grid under annealed importance sampling", ""]
    lines += [f"Command: `{args.command}`", "",
              f"Date: {datetime.datetime.now():%Y-%m-%d %H:%M}. Machine: {_common.machine(load=True)}.", ""]
    any_cell = next(iter(cells.values()), None)
    lines += [f"Cells: the seed-0 cells of `{args.source_name}` retrained exactly as that study trained them "
              "(its settings and seeds, `npvae.fit`), their final models kept as `cells/<cell>/model.npz` "
              "(float32, compressed). Estimates on the first "
              f"{args.n} test images with the study's fixed binarization: importance sampling from the encoder "
              f"with k = {args.k} (the study's estimator and seed) and AIS from the prior "
              f"(`npvae.log_likelihood(method=\"ais\")`: {args.chains} chains, {args.steps} annealing steps "
              f"(sigmoid schedule), {args.leapfrog} leapfrog steps per HMC transition, step size adapted toward "
              "0.65 acceptance). ± on an estimate is its Monte Carlo SE over samples/chains (it measures no "
              "bias); ± on a difference is the SE over the images of the per-image difference (paired: the "
              "same images for both). Both estimates are stochastic lower bounds of log p(x) in expectation. "
              "AIS's gradient in z: the reference's NumPy ops for the S = 1, 5 and 25 cells, the numba engine's "
              "fused log joint (from commit 32d5797 on) for S = 50 and any cell run later: the same estimator, "
              "the two passes equal up to float32 rounding (`tests/test_ais.py`), so each chain's path differs "
              "from the other pass's in its last bits, not in distribution.", ""]
    names = [name for name, _ in committed_cells(args.source, args.seeds, args.objectives, args.samples)]
    pending = [name for name in names if name not in cells]
    lines += [f"Finished: {len(cells)} of {len(names)} cells"
              + (f"; not yet: {', '.join(pending)} (the same command continues them)." if pending else "."), ""]
    if any_cell is not None:
        lines += [_compute(out, cells), ""]
    lines += _reproduction(cells) + _bdmc_section(out, args) + _estimates(cells, args) + _gains(cells, args)
    io.atomic_write_text(Path(str(out) + ".md"), "\n".join(lines) + "\n")


def _compute(out, cells):
    """Where the finished cells' time went (epochs as ``npvae.fit`` timed them; the estimates)."""
    train = sum(h["seconds"] for name in cells
                for h in json.loads((Path(out, "cells", name, "train.json")).read_text())["history"])
    is_ = sum(r["is"]["seconds"] for r in cells.values())
    ais = sum(r["ais"]["seconds"] for r in cells.values())
    bd = sum(b["seconds"] for p in Path(out, "cells").glob("*/bdmc.json") for b in json.loads(p.read_text()))
    return (f"Compute (one core, on a machine shared with other jobs): training {train / 60:.0f} min, IS "
            f"{is_ / 60:.0f} min, AIS {ais / 60:.0f} min, BDMC {bd / 60:.0f} min for the finished cells.")


def _order(cells):
    return sorted(cells.values(), key=lambda r: (r["mc_samples"], list(sample_sizes.OBJECTIVES).index(r["objective"])))


def _reproduction(cells):
    if not cells:
        return []
    lines = ["## The retrained cells against the committed ones", "",
             "Each cell's training loss and test curve (k = 50, 1,000 images) at every epoch, and its test ELBO, "
             "IWAE bounds (k = S, 50), KL and active units on the 10,000 test images with the study's seeds, "
             "compared with the committed `result.json` (equal: bit for bit, as floats). The committed "
             "log-likelihood (k = 5000 on 10,000 images) was not recomputed (about 5 minutes per cell).", "",
             "| cell | epochs equal | train loss | test ELBO | IWAE k = S | IWAE k = 50 | KL | active units |",
             "|---|---|---|---|---|---|---|---|"]
    for r in _order(cells):
        m = r["check"]["metrics"]

        def cell(k):
            return "equal" if m[k]["equal"] else f"{m[k]['retrained']:.6g} vs {m[k]['committed']:.6g}"
        ep = r["check"]["epochs_equal"]
        lines.append(f"| {r['cell']} | {sum(ep)}/{len(ep)} | {cell('train_loss')} | {cell('test_elbo')} | "
                     f"{cell('test_iwae_S')} | {cell('test_iwae_50')} | {cell('test_kl')} | {cell('active_units')} |")
    return lines + [""]


def _bdmc_section(out, args):
    rows = []
    for p in sorted(Path(out, "cells").glob("*/bdmc.json")):
        for r in sorted(json.loads(p.read_text()), key=lambda r: r["steps"]):
            rows.append(f"| {p.parent.name} | {r['steps']} | {r['chains']} | {r['n']} | {r['lower']:.2f} | "
                        f"{r['upper']:.2f} | {r['gap']:.2f} | {r['gap_max']:.2f} | {r['acceptance_forward']:.2f} | "
                        f"{r['seconds']:.0f} |")
    if not rows:
        return []
    return ["## How tight is AIS here: BDMC", "",
            "On images simulated from the model (z from the prior, each pixel drawn), forward AIS gives a "
            "stochastic lower bound of log p(x) and reverse AIS from the exact z an upper bound (Grosse et al. "
            "2015); the gap bounds the forward estimate's error on such images. Real test images may be harder "
            "for the sampler than simulated ones. A finished cell gets rows by the same command restricted to it "
            "(`--samples S --objectives O`) with `--bdmc-cells <cell> --bdmc-steps ...`; the simulated images "
            "and chains are seeded, so a row does not depend on the command that made it.", "",
            "| model | steps | chains | images | lower | upper | gap (mean) | gap (max) | acceptance | seconds |",
            "|---|---|---|---|---|---|---|---|---|---|", *rows, "", *_bdmc_words(out, args)]


def _bdmc_words(out, args):
    """A sentence on the gap at the chain length the AIS estimates used."""
    words = []
    for p in sorted(Path(out, "cells").glob("*/bdmc.json")):
        rows = {r["steps"]: r for r in json.loads(p.read_text()) if r["chains"] == args.chains}
        if args.steps in rows:
            r = rows[args.steps]
            longest = rows[max(rows)]
            words.append(f"- {p.parent.name}: at the {args.steps} steps of the estimates below the gap is "
                         f"{r['gap']:.2f} nats on average (at most {r['gap_max']:.2f})"
                         + ("" if max(rows) == args.steps else
                            f"; the {max(rows)}-step lower bound is {longest['lower'] - r['lower']:+.2f} from "
                            f"the {args.steps}-step one and its gap {longest['gap']:.2f}, so the {args.steps}-step "
                            f"estimate is within about {longest['upper'] - r['lower']:.2f} nats of log p(x) "
                            "on these simulated images") + ".")
    return words + ([""] if words else [])


def _estimates(cells, args):
    if not cells:
        return []
    lines = ["## log p(x) by IS and by AIS, per cell", "",
             "AIS − IS: mean over the images of the per-image difference (how far IS was below AIS; negative: "
             "IS above). ESS: median over images of the IS weights' (of k) and of the AIS chains' (of the "
             "chains). k̂ > 0.7: images whose IS weights' Pareto shape marks the IS estimate unreliable.", "",
             f"| cell | IS, k = {args.k} | AIS | AIS − IS | IS ESS | k̂ > 0.7 | AIS ESS | acceptance | AIS seconds |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in _order(cells):
        i, a = r["is"], r["ais"]
        d, se = paired(r["ais_values"], r["is_values"])
        lines.append(f"| {r['cell']} | {i['log_likelihood']:.2f} ± {i['log_likelihood_mc_se']:.3f} | "
                     f"{a['log_likelihood']:.2f} ± {a['log_likelihood_mc_se']:.3f} | {d:+.2f} ± {se:.2f} | "
                     f"{i['ess_median']:.0f} | {i.get('pareto_k_over_0.7')} | {a['ess_median']:.1f} | "
                     f"{a['acceptance_mean']:.2f} (min {a['acceptance_min']:.2f}) | {a['seconds']:.0f} |")
    return lines + [""]


def _gains(cells, args):
    by = {(r["objective"], r["mc_samples"]): r for r in cells.values()}
    rows, notes = [], []
    for S in sorted({r["mc_samples"] for r in cells.values()}):
        parts = []
        for a, b in (("iwae", "elbo"), ("iwae-dreg", "iwae")):
            if (a, S) in by and (b, S) in by:
                gi = paired(by[(a, S)]["is_values"], by[(b, S)]["is_values"])
                ga = paired(by[(a, S)]["ais_values"], by[(b, S)]["ais_values"])
                parts.append(f"{gi[0]:+.2f} ± {gi[1]:.2f} | {ga[0]:+.2f} ± {ga[1]:.2f}")
                notes.append(_verdict(a, b, S, gi, ga, _bias(args)))
            else:
                parts.append("— | —")
        rows.append(f"| {S} | " + " | ".join(parts) + " |")
    if not rows:
        return []
    return ["## IWAE's gain over the ELBO and DReG's lead, by IS and by AIS", "",
            "Differences of the per-image estimates between two cells of the same S on the same "
            f"{args.n} images; ± is the SE over the images of the paired difference.", "",
            "| S | IWAE − ELBO (IS) | IWAE − ELBO (AIS) | IWAE-DReG − IWAE (IS) | IWAE-DReG − IWAE (AIS) |",
            "|---|---|---|---|---|", *rows, "",
            "Each verdict below calls a difference real when it is beyond 2 SE of zero. Both estimates of a "
            "cell are below log p(x) in expectation, so a difference of two cells' estimates is off by at most "
            "the larger of their two biases (for AIS, BDMC's gap above bounds it on simulated images; for IS, "
            "AIS − IS shows it is larger).", "",
            *[f"- {n}" for n in notes if n], "",
            f"These are differences at each cell's own parameters after {_epochs(cells)} epochs, on the first "
            f"{args.n} test images, for seed 0 only: they say nothing about the seed-to-seed spread (the "
            f"committed study's {_seed_spread(args)}) nor about long training.",
            ""]


def _seed_spread(args):
    """The source study's SD over seeds of its log-likelihood (k = --k, all test images), as words."""
    by = {}
    for p in Path(args.source, "cells").glob("*/result.json"):
        r = json.loads(p.read_text())
        by.setdefault((r["objective"], r["mc_samples"]), []).append(r["log_likelihood"])
    sds = [float(np.std(v, ddof=1)) for v in by.values() if len(v) > 1]
    if not sds:
        return "cells have one seed each"
    counts = sorted({len(v) for v in by.values()})
    return (f"seed SDs of the log-likelihood per cell are {min(sds):.2f}–{max(sds):.2f} nats, over "
            f"{'–'.join(map(str, [counts[0], counts[-1]] if len(counts) > 1 else counts))} seeds")


def _bias(args):
    """The largest BDMC bound on how far the estimates' AIS (``--steps``) is below ``log p(x)``: over
    the checked models, the longest run's upper bound minus the ``--steps`` run's lower bound."""
    worst = None
    for p in Path(args.out, "cells").glob("*/bdmc.json"):
        rows = {r["steps"]: r for r in json.loads(p.read_text()) if r["chains"] == args.chains}
        if args.steps in rows:
            gap = rows[max(rows)]["upper"] - rows[args.steps]["lower"]
            worst = gap if worst is None else max(worst, gap)
    return worst


def _epochs(cells):
    return next(iter(cells.values()))["settings"]["epochs"]


def _verdict(a, b, S, gi, ga, bias=None):
    """One sentence on whether the difference ``a - b`` measured by IS holds under AIS (beyond 2 SE).

    ``bias``: how far below ``log p(x)`` an AIS estimate may be (BDMC), which a difference of two
    estimates may carry beyond its SE."""
    words = _verdict_words(a, b, S, gi, ga)
    if bias is None or abs(ga[0]) <= 2 * ga[1]:
        return words
    if abs(ga[0]) - 2 * ga[1] > bias:
        return words + (f" It is beyond 2 SE plus the {bias:.2f} nats an AIS estimate may be below log p(x) "
                        "(BDMC): it holds under AIS.")
    return words + (f" It is not beyond 2 SE plus the {bias:.2f} nats an AIS estimate may be below log p(x) "
                    "(BDMC): under AIS at this chain length its size and sign are not established.")


def _verdict_words(a, b, S, gi, ga):
    what = {"iwae": "IWAE", "iwae-dreg": "IWAE-DReG", "elbo": "the ELBO"}
    label = f"S = {S}, {what[a]} − {what[b]}"
    both = f"{gi[0]:+.2f} ± {gi[1]:.2f} by IS, {ga[0]:+.2f} ± {ga[1]:.2f} by AIS"
    sig_i, sig_a = abs(gi[0]) > 2 * gi[1], abs(ga[0]) > 2 * ga[1]
    if sig_i and sig_a and np.sign(gi[0]) == np.sign(ga[0]):
        return (f"{label}: {both}; the same sign beyond 2 SE under AIS, {abs(ga[0] - gi[0]):.2f} nats "
                f"{'larger' if abs(ga[0]) > abs(gi[0]) else 'smaller'}.")
    if sig_i and sig_a:
        return f"{label}: {both}; the sign reverses under AIS."
    if sig_i:
        return f"{label}: {both}; under AIS it is within 2 SE of zero: it does not hold at this precision."
    if sig_a:
        return f"{label}: {both}; IS finds no difference beyond 2 SE, AIS does."
    return f"{label}: {both}; neither beyond 2 SE of zero."


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------
def parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--source", default=str(_common.RESULTS / "sample_sizes_burda"),
                   help="the committed study whose cells are retrained")
    p.add_argument("--out", default=os.path.join("runs", "grid_ais"), help="folder of the cells (report: <out>.md)")
    p.add_argument("--samples", type=int, nargs="+", default=[1, 5, 25, 50])
    p.add_argument("--objectives", nargs="+", default=list(sample_sizes.OBJECTIVES),
                   choices=list(sample_sizes.OBJECTIVES))
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--n", type=int, default=500, help="test images for IS and AIS (the first n)")
    p.add_argument("--k", type=int, default=5000, help="importance samples per image")
    p.add_argument("--chains", type=int, default=16, help="AIS chains per image")
    p.add_argument("--steps", type=int, default=200, help="AIS annealing steps")
    p.add_argument("--leapfrog", type=int, default=5, help="leapfrog steps per HMC transition")
    p.add_argument("--bdmc-cells", nargs="*", default=["elbo-S1-seed0"], help="cells whose model BDMC checks")
    p.add_argument("--bdmc-n", type=int, default=20, help="simulated images of BDMC")
    p.add_argument("--bdmc-steps", type=int, nargs="+", default=[50, 200, 1000], help="BDMC's chain lengths")
    p.add_argument("--report-only", action="store_true", help="write the report over the finished cells and stop")
    return p


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser().parse_args(argv)
    # the report names the run's command, also when only the report is rewritten
    args.command = shlex.join(["python", "benchmarks/grid_ais.py", *[a for a in argv if a != "--report-only"]])
    source = Path(args.source).resolve()
    args.source_name = (source.relative_to(_common.REPO).as_posix() if source.is_relative_to(_common.REPO)
                        else source.name)
    for name in ("n", "k", "chains", "steps", "leapfrog", "bdmc_n"):
        if getattr(args, name) < 1:
            raise SystemExit(f"grid_ais.py: --{name.replace('_', '-')}: expected a positive integer, "
                             f"got {getattr(args, name)}")
    if args.report_only:
        write_report(args)
        return 0
    try:
        return run(args)
    except KeyboardInterrupt:
        print("grid_ais.py: interrupted; finished stages are kept, run the same command to continue",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
