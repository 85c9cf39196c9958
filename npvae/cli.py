"""Command line: ``npvae train``, ``npvae plot``, ``npvae evaluate``, ``npvae gradcheck`` (also ``python -m npvae``).

A run folder (``--out``) holds ``config.json`` (the settings), ``checkpoint.npz``
(written after every epoch), ``history.json``, ``model.npz`` and ``figures/``.
"""

import argparse
import json
import signal
import sys
from pathlib import Path

import numpy as np

from . import io
from .datasets import DataError, load_mnist
from .evaluate import evaluate_bound, log_likelihood
from .model import VAE, load_model
from .runfolder import RunLock, describe_previous, read_config, read_history, remove_stale_temp_files
from .train import BINARIZE, NOISE, History, TrainingError, fit, load_checkpoint

# Settings of `npvae train` that a resumed run takes from config.json, with their defaults.
TRAIN_DEFAULTS = dict(epochs=50, batch_size=100, mc_samples=1, latent_dim=2, hidden=[256], activation="relu",
                      optimizer="rmsprop", lr=None, objective="elbo", noise="fresh", binarize="none", seed=0,
                      dtype="float32", kl="analytic", estimator="standard")


class CLIError(Exception):
    """A problem to report in one line, with a non-zero exit status."""


def _int_at_least(minimum, what):
    """An argparse type: an integer >= minimum, with a message naming ``what`` was expected."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value
    return parse


_positive = _int_at_least(1, "a positive integer")
_non_negative = _int_at_least(0, "a non-negative integer")


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or not np.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def build_parser():
    parser = argparse.ArgumentParser(prog="npvae", description="A NumPy VAE with an explicit Monte Carlo sample axis.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    t = sub.add_parser("train", help="train on MNIST; writes a run folder",
                       description="Train the MLP VAE on MNIST. Unset options take their defaults "
                                   "(or, with --resume, the run folder's settings).")
    t.add_argument("--epochs", type=_positive, help="total epochs (default 50)")
    t.add_argument("--batch-size", type=_positive, help="examples per step (default 100)")
    t.add_argument("--mc-samples", type=_positive, help="Monte Carlo samples S per example (default 1)")
    t.add_argument("--latent-dim", type=_positive, help="latent size (default 2)")
    t.add_argument("--hidden", type=_positive, nargs="+", help="hidden layer sizes (default 256)")
    t.add_argument("--activation", choices=("relu", "tanh"), help="hidden activation (default relu)")
    t.add_argument("--optimizer", choices=("rmsprop", "adam", "sgd"), help="default rmsprop (Keras settings)")
    t.add_argument("--lr", type=_positive_float, help="learning rate (default: the optimizer's)")
    t.add_argument("--objective", choices=("elbo", "iwae"), help="default elbo")
    t.add_argument("--kl", choices=("analytic", "mc"), help="KL term of the ELBO (default analytic)")
    t.add_argument("--estimator", choices=("standard", "stl", "dreg"),
                   help="encoder gradient estimator (default standard; stl needs --kl mc or iwae, dreg needs iwae)")
    t.add_argument("--noise", choices=NOISE, help="fresh eps every step, or fixed per example (default fresh)")
    t.add_argument("--binarize", choices=BINARIZE, help="targets: none (grayscale), threshold, dynamic")
    t.add_argument("--seed", type=_non_negative, help="seed of init, shuffling and noise (default 0)")
    t.add_argument("--dtype", choices=("float64", "float32"),
                   help="default float32, as the seed's Keras model (float64 for exact work, e.g. gradient checks)")
    t.add_argument("--data", help="folder holding MNIST (default: $NPVAE_DATA, then the user cache)")
    t.add_argument("--out", help="run folder (default runs/<objective>-S<S>-seed<seed>)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    t.add_argument("--no-figures", action="store_true", help="skip drawing the figures at the end")
    t.add_argument("--quiet", action="store_true", help="no progress display")
    t.add_argument("--threads", type=_positive,
                   help="threads of a training step (default: as many as NumPy's BLAS uses)")

    p = sub.add_parser("plot", help="redraw a run folder's figures")
    p.add_argument("run_dir", help="a run folder written by `npvae train`")
    p.add_argument("--data", help="folder holding MNIST")
    p.add_argument("--seed", type=_non_negative, default=0, help="seed of the reconstruction samples")

    e = sub.add_parser("evaluate", help="test-set bound and log-likelihood of a model",
                       description="The test-set bound of a model (--objective, --mc-samples) and, with --k, "
                                   "the importance-sampled log-likelihood log mean_k p(x, z_k) / q(z_k|x) "
                                   "(Burda et al. 2016 use k = 5000).")
    e.add_argument("model", help="a model .npz, a checkpoint, or a run folder")
    e.add_argument("--mc-samples", type=_positive, default=1, help="Monte Carlo samples S (default 1)")
    e.add_argument("--objective", choices=("elbo", "iwae"), default="elbo")
    e.add_argument("--k", type=_positive, help="also estimate the log-likelihood with K importance samples")
    e.add_argument("--limit", type=_positive, help="use only the first N test images")
    e.add_argument("--seed", type=_non_negative, default=0)
    e.add_argument("--batch-size", type=_positive, default=500)
    e.add_argument("--data", help="folder holding MNIST")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--quiet", action="store_true", help="no progress lines on stderr")

    g = sub.add_parser("gradcheck", help="check every gradient against finite differences (float64)",
                       description="Check every op of npvae.ops and npvae.objectives, the whole model for each "
                                   "objective, and the STL and DReG estimators against central finite differences "
                                   "in float64; print a table, exit 1 if any check fails. docs/gradients.md "
                                   "derives what is checked.")
    g.add_argument("--model", help="check the model of this .npz, checkpoint or run folder (as float64; "
                                   "default: a small tanh model)")
    g.add_argument("--seed", type=_non_negative, default=0, help="seed of the small model, data, noise and dout")
    g.add_argument("--coords", type=_positive,
                   help="random coordinates checked per parameter (default: all; 20 with --model)")
    g.add_argument("--tolerance", type=_positive_float, default=1e-6, help="largest relative error that passes")
    g.add_argument("--json", action="store_true", help="print the rows as one JSON object")
    return parser


# ---------------------------------------------------------------------------
class _Terminated(BaseException):
    """SIGTERM, raised in the main thread (batch schedulers send it before they kill)."""


def _raise_terminated(signum, frame):
    raise _Terminated()


def _train(args):
    given = {k: getattr(args, k) for k in TRAIN_DEFAULTS if getattr(args, k) is not None}
    out = Path(args.out) if args.out else None
    if args.resume:
        if out is None:
            raise CLIError("--resume needs --out RUN_DIR (the folder of the run to continue)")
        config_path = out / "config.json"
        if not config_path.exists():
            raise CLIError(f"--resume: no run to continue in {str(out)!r} (config.json not found)")
        stored = read_config(config_path)
        clash = {k: (stored[k], v) for k, v in given.items() if k != "epochs" and stored.get(k) != v}
        if clash:
            raise CLIError("--resume: these options differ from the run's settings: "
                           + ", ".join(f"{k} (run has {a!r}, given {b!r})" for k, (a, b) in clash.items()))
        settings = {**TRAIN_DEFAULTS, **stored, **given}
    else:
        settings = {**TRAIN_DEFAULTS, **given}
        if out is None:
            out = Path("runs") / f"{settings['objective']}-S{settings['mc_samples']}-seed{settings['seed']}"
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out: {str(out)!r} is a file, not a run folder")
    s = settings
    (x_train, _), (x_test, y_test) = load_mnist(args.data, progress=not args.quiet)
    model = VAE(input_dim=x_train.shape[1], hidden=s["hidden"], latent_dim=s["latent_dim"],
                activation=s["activation"], seed=s["seed"], dtype=s["dtype"], threads=args.threads)
    from .optim import get_optimizer
    optimizer = get_optimizer(s["optimizer"], **({} if s["lr"] is None else {"lr": s["lr"]}))
    checkpoint = out / "checkpoint.npz"
    resume_hint = f"npvae train --out {out} --resume"
    with RunLock(out) as lock:
        if not args.resume and checkpoint.exists():
            raise CLIError(f"{str(out)!r} already holds a run; continue it with --resume or choose another --out")
        note = describe_previous(lock)
        if note and not args.quiet:
            print(f"{out}: {note}", file=sys.stderr)
        remove_stale_temp_files(out)
        previous = signal.signal(signal.SIGTERM, _raise_terminated) if _main_thread() else None
        try:
            io.atomic_write_text(out / "config.json", json.dumps(s, indent=1) + "\n")
            history = fit(model, x_train, epochs=s["epochs"], batch_size=s["batch_size"], mc_samples=s["mc_samples"],
                          objective=s["objective"], optimizer=optimizer, validation_data=x_test, noise=s["noise"],
                          binarize=s["binarize"], seed=s["seed"], kl=s["kl"], estimator=s["estimator"],
                          checkpoint=checkpoint, resume=args.resume, verbose=0 if args.quiet else 1)
            history.save(out / "history.json")
            model.save(out / "model.npz")
        except (KeyboardInterrupt, _Terminated) as exc:
            done = _saved_history(checkpoint)
            if len(done):
                try:
                    done.save(out / "history.json")
                except OSError:
                    pass
            why = "Terminated (SIGTERM)" if isinstance(exc, _Terminated) else "Interrupted"
            print(f"\n{why}. {len(done)} epoch(s) are saved in {checkpoint}; continue with:\n  {resume_hint}",
                  file=sys.stderr)
            return 143 if isinstance(exc, _Terminated) else 130
        except OSError as exc:
            done = _saved_history(checkpoint)
            saved = (f"{len(done)} epoch(s) are saved in {checkpoint}, intact" if len(done)
                     else "no epoch was saved yet")
            raise _WriteError(f"{_os_error(exc)}; {saved}. When the disk is fixed, continue with: "
                              f"{resume_hint}") from exc
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
    print(f"Model: {out / 'model.npz'}  history: {out / 'history.json'}")
    if not args.no_figures:
        _figures(model, history, x_test, y_test, out / "figures", seed=0)
    return 0


class _WriteError(Exception):
    """A run that could not finish: a file not written (disk full, read-only, ...), or a result
    that is not a number. One line, exit 1."""


def _main_thread():
    import threading
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
    from .plots import save_all
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
    _, (x_test, y_test) = load_mnist(args.data)
    _check_dims(model, x_test)
    _figures(model, history, x_test, y_test, run / "figures", seed=args.seed)
    return 0


def _check_dims(model, x):
    if model.input_dim != x.shape[1]:
        raise CLIError(f"the model takes {model.input_dim}-dimensional inputs but the data has {x.shape[1]}")


def _evaluate(args):
    model = _load_any(args.model)
    _, (x_test, _) = load_mnist(args.data, progress=not (args.json or args.quiet))
    _check_dims(model, x_test)
    if args.limit is not None:
        x_test = x_test[:args.limit]
    result = evaluate_bound(model, x_test, mc_samples=args.mc_samples, objective=args.objective,
                            batch_size=args.batch_size, rng=args.seed)
    bound_name = "elbo" if args.objective == "elbo" else "iwae_bound"
    report = {"model": str(args.model), "objective": args.objective, "mc_samples": args.mc_samples,
              "n": result["n"], bound_name: -result["loss"], "loss": result["loss"],
              "recon": result["recon"], "kl": result["kl"], "seed": args.seed}
    ll = None
    if args.k is not None:
        # its own noise stream, so that adding --k does not change the bound above
        ll = log_likelihood(model, x_test, k=args.k, seed=[args.seed, 1], progress=not args.quiet)
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
        print(f"test {bound_name} ({args.mc_samples} sample(s), {result['n']} images): {-result['loss']:.4f} nats"
              f"  (loss {result['loss']:.4f} = recon {result['recon']:.4f} + kl {result['kl']:.4f})")
        if ll is not None:
            print(f"test log-likelihood (k={ll.k}, {ll.n} images): {ll.mean:.4f} nats"
                  f"  (Monte Carlo SE {ll.mc_se:.4f}, SE over images {ll.se:.4f}, median ESS {report['ess_median']:.0f})")
    return 0


def _gradcheck(args):
    from .gradcheck import check_all, format_table
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
    args = parser.parse_args(argv)
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
