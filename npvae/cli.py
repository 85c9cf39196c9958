"""Command line: ``npvae train``, ``npvae plot``, ``npvae evaluate``, ``npvae gradcheck`` (also ``python -m npvae``).

A run folder (``--out``) holds ``config.json`` (the settings), ``checkpoint.npz``
(written after every epoch), ``history.json``, ``model.npz`` and ``figures/``.
The options that are run settings (their names, defaults, choices, help) come from
:mod:`npvae.settings`.
"""

import argparse
import contextlib
import inspect
import json
import os
import signal
import sys
import threading
from pathlib import Path
from types import MappingProxyType

import numpy as np

from . import __version__
from . import settings as run_settings
from .datasets import MNIST_FILES, DataError, cache_dir, holds_mnist, load_mnist, locate_mnist
from .evaluate import evaluate_bound, log_likelihood
from .gradcheck import check_all, format_table
from .model import VAE, load_model
from .optim import get_optimizer
from .protocol import burda_adam, train_validation_split
from .plots import save_all
from .runfolder import RunLock, describe_previous, read_config, read_history, remove_stale_temp_files, write_config
from .train import History, TrainingError, fit, load_checkpoint

#: Settings of `npvae train` with their defaults (from :mod:`npvae.settings`).
TRAIN_DEFAULTS = MappingProxyType(run_settings.run_defaults())


class CLIError(Exception):
    """A problem to report in one line, with a non-zero exit status."""


def _text_type(parse, name):
    """An argparse type from a parser of :mod:`npvae.settings` (its ValueError: the message)."""
    def convert(text):
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    convert.__name__ = name
    return convert


_positive = _text_type(run_settings.parse_positive_int, "positive integer")
_non_negative = _text_type(run_settings.parse_non_negative_int, "non-negative integer")
_positive_float = _text_type(run_settings.parse_positive_float, "positive number")


def _add_setting(parser, name, default=None, help=None):
    """The option ``--name`` of the run setting ``name``: its type or choices and its help
    from :mod:`npvae.settings`. ``default`` None: the option is None when not given (so
    that ``npvae train --resume`` can tell what was given)."""
    s = run_settings.SETTINGS[name]
    flag, text = "--" + name.replace("_", "-"), s.help_text(default, help)
    if s.choices is not None:
        parser.add_argument(flag, choices=s.choices, default=default, help=text)
    elif s.parse is None:
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=text)
    else:
        parser.add_argument(flag, type=_text_type(s.parse, name), nargs=s.nargs, default=default, help=text)


def _subparser(sub, name, **kwargs):
    p = sub.add_parser(name, **kwargs)
    p.set_defaults(command_parser=p)      # so that an unknown flag is reported by this parser
    return p


def build_parser():
    parser = argparse.ArgumentParser(prog="npvae", description="A NumPy VAE with an explicit Monte Carlo sample axis.")
    parser.add_argument("--version", action="version", version=f"npvae {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _train_options(_subparser(sub, "train", help="train on MNIST; writes a run folder",
                              description="Train the MLP VAE on MNIST. Unset options take their defaults "
                                          "(or, with --resume, the run folder's settings)."))
    p = _subparser(sub, "plot", help="redraw a run folder's figures")
    p.add_argument("run_dir", help="a run folder written by `npvae train`")
    p.add_argument("--data", help="folder holding MNIST")
    _add_setting(p, "seed", default=0, help="seed of the reconstruction samples")
    _evaluate_options(_subparser(sub, "evaluate", help="test-set bound and log-likelihood of a model",
                                 description="The test-set bound of a model (--objective, --mc-samples) and, "
                                             "with --k, the importance-sampled log-likelihood log mean_k "
                                             "p(x, z_k) / q(z_k|x) (Burda et al. 2016 use k = 5000), or with "
                                             "--method ais, annealed importance sampling (Neal 2001)."))
    _gradcheck_options(_subparser(
        sub, "gradcheck", help="check every gradient against finite differences (float64)",
        description="Check every op of npvae.ops and npvae.objectives, the whole model for each objective, "
                    "and the STL and DReG estimators against central finite differences in float64; print "
                    "a table, exit 1 if any check fails. docs/gradients.md derives what is checked."))
    return parser


def _train_options(t):
    for name in run_settings.TRAIN_SETTINGS:
        _add_setting(t, name)
    t.add_argument("--data", help="folder holding MNIST (default: $NPVAE_DATA, then the user cache)")
    t.add_argument("--out", help="run folder (default runs/<objective>-S<S>-seed<seed>)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    t.add_argument("--quiet", action="store_true", help="no progress display")
    t.add_argument("--threads", type=_positive,
                   help="threads of a training step (default: as many as NumPy's BLAS uses)")


def _evaluate_options(e):
    e.add_argument("model", help="a model .npz, a checkpoint, or a run folder")
    helps = {"seed": "seed of the noise (and of the log-likelihood's, drawn apart)",
             "objective": "the bound", "batch_size": "examples per pass"}
    for name in run_settings.EVALUATE_SETTINGS:
        value = run_settings.EVALUATE_DEFAULTS.get(name, run_settings.default(name))
        _add_setting(e, name, default=value, help=helps.get(name))
    e.add_argument("--data", help="folder holding MNIST")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def _gradcheck_options(g):
    g.add_argument("--model", help="check the model of this .npz, checkpoint or run folder (as float64; "
                                   "default: a small tanh model)")
    _add_setting(g, "seed", default=0, help="seed of the small model, data, noise and dout")
    g.add_argument("--coords", type=_positive,
                   help="random coordinates checked per parameter (default: all; 20 with --model)")
    g.add_argument("--tolerance", type=_positive_float, default=1e-6, help="largest relative error that passes")
    g.add_argument("--json", action="store_true", help="print the rows as one JSON object")


# ---------------------------------------------------------------------------
class _Terminated(BaseException):
    """SIGTERM, raised in the main thread (batch schedulers send it before they kill)."""


def _raise_terminated(signum, frame):
    raise _Terminated()


@contextlib.contextmanager
def _sigterm_raises():
    """SIGTERM raises :class:`_Terminated` in the main thread while the block runs."""
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if _main_thread() else None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _train(args):
    out, s = _train_settings(args)
    (x_train, _), (x_test, y_test) = _mnist(args.data, args.quiet)
    x_val = x_test
    if s["protocol"] == "burda":      # their split: the last 400 training images validate (npvae.protocol)
        x_train, x_val = train_validation_split(x_train)
    model = VAE(input_dim=x_train.shape[1], hidden=s["hidden"], latent_dim=s["latent_dim"],
                activation=s["activation"], seed=s["seed"], dtype=s["dtype"], threads=args.threads)
    lr = {} if s["lr"] is None else {"lr": s["lr"]}
    optimizer = burda_adam(batch_size=s["batch_size"], **lr) if s["protocol"] == "burda" else get_optimizer(
        s["optimizer"], **lr)
    checkpoint = out / "checkpoint.npz"
    with RunLock(out) as lock:
        _prepare_run_folder(out, lock, args, s["epochs"])
        try:
            with _sigterm_raises():
                history = _fit(model, x_train, x_val, s, optimizer, out, args)
        except (KeyboardInterrupt, _Terminated) as exc:
            return _stopped(exc, out, checkpoint)
        except OSError as exc:
            raise _write_error(exc, out, checkpoint) from exc
    print(f"Model: {out / 'model.npz'}  history: {out / 'history.json'}")
    if s["figures"]:
        _figures(model, history, x_test, y_test, out / "figures", seed=0)
    return 0


#: The parameters of :func:`npvae.fit`.
_FIT_ARGUMENTS = frozenset(inspect.signature(fit).parameters)


def _fit(model, x_train, x_val, s, optimizer, out, args):
    """config.json, the training, history.json and model.npz of a run."""
    write_config(out / "config.json", s)
    # every run setting that fit takes, by its name (a new setting needs no line here)
    settings = {name: s[name] for name in run_settings.TRAIN_SETTINGS if name in _FIT_ARGUMENTS and name != "optimizer"}
    history = fit(model, x_train, optimizer=optimizer, validation_data=x_val, checkpoint=out / "checkpoint.npz",
                  resume=args.resume, verbose=0 if args.quiet else 1, **settings)
    history.save(out / "history.json")
    model.save(out / "model.npz")
    return history


def _train_settings(args):
    """The run folder and the settings of ``npvae train``: the options given over the
    defaults, or, with ``--resume``, over the run's ``config.json`` (a run setting given
    that differs from the run's is refused)."""
    given = {k: getattr(args, k) for k in run_settings.TRAIN_SETTINGS if getattr(args, k) is not None}
    out = Path(args.out) if args.out else None
    if args.resume:
        if out is None:
            raise CLIError("--resume needs --out RUN_DIR (the folder of the run to continue)")
        config_path = out / "config.json"
        if not config_path.exists():
            raise CLIError(f"--resume: no run to continue in {str(out)!r} (config.json not found)")
        stored = read_config(config_path)
        run_settings.check_resume(stored, given, f"the run in {str(out)!r}")
        settings = {**stored, **given}
    else:
        try:
            settings = run_settings.resolve_protocol({**run_settings.run_defaults(), **given}, set(given))
        except ValueError as exc:
            raise CLIError(f"--{str(exc).replace('_', '-')}") from None
        if out is None:
            out = Path("runs") / f"{settings['objective']}-S{settings['mc_samples']}-seed{settings['seed']}"
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out: {str(out)!r} is a file, not a run folder")
    return out, settings


def _prepare_run_folder(out, lock, args, epochs):
    """Under the run folder's lock: refuse a run over another, a resume without a
    checkpoint, or one that would shorten the run; say so when there is nothing to train;
    remove the temporary files of killed writes."""
    checkpoint = out / "checkpoint.npz"
    if not args.resume and checkpoint.exists():
        raise CLIError(f"{str(out)!r} already holds a run; continue it with --resume or choose another --out")
    if args.resume:
        if not checkpoint.exists():
            raise CLIError(f"--resume: {str(out)!r} holds no checkpoint.npz: the run stopped before its first "
                           "epoch ended, so there is nothing to continue; start it again without --resume")
        done = load_checkpoint(checkpoint)["epoch"]
        run_settings.check_epochs(done, epochs, f"the run in {str(out)!r}")
        if done == epochs and not args.quiet:
            print(f"{out}: the run is complete ({done} of {epochs} epochs); nothing to train", file=sys.stderr)
    note = describe_previous(lock)
    if note and not args.quiet:
        print(f"{out}: {note}", file=sys.stderr)
    remove_stale_temp_files(out)


def _stopped(exc, out, checkpoint):
    """Report a run stopped by Ctrl-C or SIGTERM (what is saved, how to go on); the exit status."""
    done = _saved_history(checkpoint)
    if len(done):
        try:
            done.save(out / "history.json")
        except OSError:
            pass
    why = "Terminated (SIGTERM)" if isinstance(exc, _Terminated) else "Interrupted"
    if len(done):
        print(f"\n{why}. {len(done)} epoch(s) are saved in {checkpoint}; continue with:\n"
              f"  npvae train --out {out} --resume", file=sys.stderr)
    else:
        print(f"\n{why} before the first epoch ended: no epoch is saved, so there is nothing to resume. "
              f"Start the run again with the same options (without --resume).", file=sys.stderr)
    return 143 if isinstance(exc, _Terminated) else 130


def _write_error(exc, out, checkpoint):
    done = _saved_history(checkpoint)
    if len(done):
        return _WriteError(f"{_os_error(exc)}; {len(done)} epoch(s) are saved in {checkpoint}, intact. When the "
                           f"disk is fixed, continue with: npvae train --out {out} --resume")
    return _WriteError(f"{_os_error(exc)}; no epoch was saved yet. When the disk is fixed, start the run again")


def _mnist(data, quiet):
    """MNIST as :func:`npvae.load_mnist` finds it, saying where (unless ``quiet``); a ``--data``
    folder that holds no MNIST is refused (load_mnist would pass over it)."""
    place = _mnist_place(data)
    loaded = load_mnist(data, progress=not quiet)
    if not quiet:
        print(f"Data: MNIST from {place}", file=sys.stderr)
    return loaded


#: How load_mnist found the data, as the CLI says it.
_FOUND_BY = {"path argument": "--data", "NPVAE_DATA": "$NPVAE_DATA", "cache": "the user cache"}


def _mnist_place(data):
    """Where :func:`npvae.load_mnist` reads MNIST from (:func:`npvae.datasets.locate_mnist`); a
    ``--data`` folder that holds no MNIST is refused (load_mnist would pass over it)."""
    if data is not None:
        path = Path(data).expanduser()
        if path.is_dir() and not holds_mnist(path):
            raise CLIError(f"--data: {path} holds no MNIST (expected the files {', '.join(MNIST_FILES)}, each raw "
                           "or .gz, or mnist.npz); leave --data out to use $NPVAE_DATA or the user cache")
    location, how = locate_mnist(data)
    return f"{location if location is not None else cache_dir()} ({_FOUND_BY[how]})"


class _WriteError(Exception):
    """A run that could not finish: a file not written (disk full, read-only, ...), or a result
    that is not a number. One line, exit 1."""


def _main_thread():
    return threading.current_thread() is threading.main_thread()


def _saved_history(checkpoint):
    """The history in ``checkpoint``, or an empty one if there is none or it cannot be read."""
    try:
        return load_checkpoint(checkpoint)["history"] if checkpoint.exists() else History()
    except (OSError, ValueError):
        return History()


def _os_error(exc):
    """An OSError in one line: the path (the destination, not a temporary file) and the cause."""
    name = exc.filename
    if name is not None:
        p = Path(str(name))
        if p.name.startswith(".") and p.name.endswith(".tmp") and p.name.count(".") >= 3:
            p = p.with_name(p.name[1:].rsplit(".", 2)[0])        # .checkpoint.npz.abc123.tmp -> checkpoint.npz
        return f"cannot write {p}: {exc.strerror or exc}"
    return f"{exc.strerror or exc}"


def _figures(model, history, x_test, y_test, folder, seed):
    try:
        paths, messages = save_all(model, list(history), x_test, y_test, folder, seed=seed)
    except ImportError as exc:
        print(f"Figures skipped: {exc}", file=sys.stderr)
        return
    except OSError as exc:
        raise _WriteError(f"{_os_error(exc)} (the figures; the run's other files are complete: redraw them "
                          f"with npvae plot {folder.parent})") from exc
    for m in messages:
        print(m)
    print("Figures: " + ", ".join(str(p) for p in paths))


def _load_any(path):
    """A model from a .npz model file, a checkpoint, or a run folder."""
    path = Path(path)
    if path.is_dir():
        for name in ("model.npz", "checkpoint.npz"):
            if (path / name).exists():
                return load_model(path / name)
        raise CLIError(f"{str(path)!r} holds neither model.npz nor checkpoint.npz")
    return load_model(path)


def _plot(args):
    run = Path(args.run_dir)
    model = _load_any(run)
    history = []
    if (run / "history.json").exists():
        history = read_history(run / "history.json")
    _, (x_test, y_test) = _mnist(args.data, quiet=False)
    _check_dims(model, x_test)
    _figures(model, history, x_test, y_test, run / "figures", seed=args.seed)
    return 0


def _check_dims(model, x):
    if model.input_dim != x.shape[1]:
        raise CLIError(f"the model takes {model.input_dim}-dimensional inputs but the data has {x.shape[1]}")


def _evaluate(args):
    model = _load_any(args.model)
    _, (x_test, _) = _mnist(args.data, quiet=args.json or args.quiet)
    _check_dims(model, x_test)
    if args.limit is not None:
        x_test = x_test[:args.limit]
    result = evaluate_bound(model, x_test, mc_samples=args.mc_samples, objective=args.objective,
                            batch_size=args.batch_size, rng=args.seed)
    bound_name = "elbo" if args.objective == "elbo" else "iwae_bound"
    # recon and kl are the ELBO's terms (on the same samples) whatever the objective
    report = {"model": str(args.model), "objective": args.objective, "mc_samples": args.mc_samples,
              "n": result["n"], bound_name: -result["loss"], "loss": result["loss"],
              "recon": result["recon"], "kl": result["kl"], "seed": args.seed}
    if args.objective != "elbo":
        report["elbo"] = -(result["recon"] + result["kl"])
    ll = None
    if args.k is not None or args.method == "ais":
        # its own noise stream, so that adding --k does not change the bound above
        ll = log_likelihood(model, x_test, k=args.k or 1, seed=[args.seed, 1], progress=not args.quiet,
                            method=args.method, chains=args.chains, steps=args.ais_steps)
        report.update(ll.to_dict())
    bad = sorted(k for k, v in report.items() if isinstance(v, float) and not np.isfinite(v)
                 and k not in ("log_likelihood_se",))      # the SE over images is NaN for one image
    if bad:
        raise _WriteError(f"{args.model}: the model's {', '.join(bad)} on these images are not finite "
                          f"({', '.join(f'{k}={report[k]}' for k in bad)}): its parameters overflow in "
                          f"{model.dtype.name}; no result is reported")
    if args.json:
        print(json.dumps(report))
    else:
        _print_evaluation(report, bound_name, ll)
    return 0


def _print_evaluation(report, bound_name, ll):
    r = report
    print(f"test {bound_name} ({r['mc_samples']} sample(s), {r['n']} images): {r[bound_name]:.4f} nats", end="")
    if bound_name == "elbo":
        print(f"  (loss {r['loss']:.4f} = recon {r['recon']:.4f} + kl {r['kl']:.4f})")
    else:    # the IWAE bound is a log-mean of weights: no sum of a reconstruction and a KL term
        print(f"\n  the ELBO of the same samples, for comparison: {r['elbo']:.4f} nats"
              f"  (recon {r['recon']:.4f} + kl {r['kl']:.4f} = {-r['elbo']:.4f})")
    if ll is not None and r.get("method") == "ais":
        print(f"test log-likelihood (AIS: {r['chains']} chains x {r['steps']} steps, {ll.n} images): "
              f"{ll.mean:.4f} nats  (Monte Carlo SE over chains {ll.mc_se:.4f}, SE over images {ll.se:.4f}, "
              f"mean acceptance {r['acceptance_mean']:.2f})")
    elif ll is not None:
        print(f"test log-likelihood (k={ll.k}, {ll.n} images): {ll.mean:.4f} nats"
              f"  (Monte Carlo SE {ll.mc_se:.4f}, SE over images {ll.se:.4f}, median ESS {r['ess_median']:.0f})")


def _gradcheck(args):
    model, coords = None, args.coords
    if args.model is not None:
        loaded = _load_any(args.model)
        model = VAE(**dict(loaded.config, dtype="float64"), backend="numpy")
        for name, p in loaded.params.items():
            model.params[name] = p.astype(np.float64)
        coords = 20 if coords is None else coords
    rows = check_all(seed=args.seed, model=model, tolerance=args.tolerance, n_coords=coords)
    passed = all(r["passed"] for r in rows)
    if args.json:          # strict JSON: an error that could not be computed (NaN) is null
        clean = [{k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in r.items()}
                 for r in rows]
        print(json.dumps({"passed": passed, "rows": clean}, allow_nan=False))
    else:
        what = f"the model in {args.model} (float64 copy)" if args.model else "a small float64 model"
        print(f"Gradients of npvae's ops and of {what} against central differences (float64):\n")
        print(format_table(rows))
    return 0 if passed else 1


def main(argv=None):
    """Entry point; returns the exit status."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:            # reported by the subcommand's parser, with its usage
        args.command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    command = {"train": _train, "plot": _plot, "evaluate": _evaluate, "gradcheck": _gradcheck}[args.command]
    try:
        return command(args)
    except (_WriteError, TrainingError) as exc:
        print(f"npvae {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except (CLIError, DataError, ValueError, FileNotFoundError) as exc:
        print(f"npvae {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"npvae {args.command}: error: {_os_error(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nInterrupted.", file=sys.stderr)
        return 130
