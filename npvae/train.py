"""Training: the fit loop, its history, checkpoints and resume.

Randomness comes from numbered streams of one seed, so a run is a function of
its settings and seed alone:

* ``default_rng(seed)``: shuffling, fresh ``eps``, dynamic binarization. Its
  state is saved in each checkpoint, so a resumed run draws the same numbers
  as an uninterrupted one.
* ``default_rng([seed, 1])``: the one ``eps`` array per training example of
  ``noise="fixed"``, drawn once and reused every epoch.
* ``default_rng([seed, 2, epoch])``: validation noise (and binarization) of
  each epoch, independent of training.
"""

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from . import _validate as check
from . import datasets, io, optim
from .evaluate import mean_bound
from .model import available_memory, checked_headers, model_arrays, model_from_arrays
from .objectives import check_objective

__all__ = ["fit", "History", "TrainingError", "load_checkpoint"]

CHECKPOINT_FORMAT = "npvae-checkpoint"
NOISE = ("fresh", "fixed")
BINARIZE = ("none", "threshold", "dynamic")


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss became NaN or inf)."""


class History:
    """Per-epoch records of a training run.

    Each record is a dict with ``epoch`` (1-based), ``loss``, ``recon``, ``kl``
    (training averages over the epoch), ``seconds`` (training time of the
    epoch), and, with validation data, ``val_loss``, ``val_recon``, ``val_kl``.

    ``history["loss"]`` gives a column as an array; ``history[-1]`` a record.
    """

    def __init__(self, records=()):
        self.records = [dict(r) for r in records]

    def append(self, record):
        self.records.append(dict(record))

    def __len__(self):
        return len(self.records)

    def __iter__(self):
        return iter(self.records)

    def __getitem__(self, key):
        if isinstance(key, str):
            if not self.records or key not in self.records[0]:
                raise KeyError(f"history has no column {key!r}; columns: {sorted(self.records[0]) if self.records else []}")
            return np.array([r[key] for r in self.records])
        return self.records[key]

    def __repr__(self):
        last = f", last={self.records[-1]}" if self.records else ""
        return f"History(epochs={len(self.records)}{last})"

    def to_json(self):
        """The records as a JSON list (one object per epoch)."""
        return json.dumps(self.records, indent=1)

    def save(self, path):
        """Write :meth:`to_json` to ``path`` atomically."""
        return io.atomic_write_text(path, self.to_json() + "\n")


def _settings(model, n_train, n_val, batch_size, mc_samples, objective, kl, estimator, noise, binarize, seed, opt):
    """What a resumed run must share with the run that wrote the checkpoint."""
    architecture = {k: v for k, v in model.config.items() if k != "seed"}  # init is overwritten on resume
    return dict(model=architecture, n_train=n_train, n_val=n_val, batch_size=batch_size,
                mc_samples=mc_samples, objective=objective, kl=kl, estimator=estimator, noise=noise, binarize=binarize,
                seed=seed, optimizer=opt.get_config() | {"name": type(opt).__name__.lower()})


def _save_checkpoint(path, model, opt, rng, history, settings):
    """A checkpoint is a model file (:func:`npvae.model.model_arrays`, so :func:`npvae.load`
    reads it) plus ``checkpoint`` (:data:`CHECKPOINT_FORMAT`), ``optim/<key>`` (the optimizer's
    state dict) and ``train`` (JSON: epochs done, RNG state, settings, history)."""
    arrays = model_arrays(model)
    arrays["checkpoint"] = io.to_str_array(CHECKPOINT_FORMAT)
    arrays.update({f"optim/{k}": v for k, v in opt.state_dict().items()})
    arrays["train"] = io.to_json_array({"epoch": len(history), "rng_state": rng.bit_generator.state,
                                        "settings": settings, "history": history.records})
    io.atomic_savez(path, arrays)


#: The members of a checkpoint besides its ``param/`` and ``optim/`` arrays.
_CHECKPOINT_KEYS = ("format", "version", "config", "checkpoint", "train")
#: A cap on the training record's size (a JSON string of its settings and per-epoch
#: history: about 200 bytes an epoch as UTF-32, so this holds over a million epochs).
_MAX_RECORD_BYTES = 1 << 28


def load_checkpoint(path):
    """Read a training checkpoint, checked part by part.

    Returns
    -------
    dict
        ``model`` (a VAE with the saved parameters), ``optimizer_state``,
        ``epoch`` (epochs completed), ``rng_state``, ``settings`` and
        ``history`` (a :class:`History`).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    npvae.ModelFileError
        A ``ValueError`` naming the file and the part: damaged, not a checkpoint, or a part
        (the training record, its epoch, RNG state, settings or history) of the wrong shape.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {str(path)!r}")
    source = repr(str(path))

    def bad(what):
        return io.ModelFileError(f"{source}: {what}")

    # What the file declares is checked before anything big is read (as load_model does):
    # the marker, then the parameters against the stored architecture, then the optimizer
    # state against the parameters and the training record against a cap.
    headers = io.npz_headers(path)
    marker = None
    if "train" in headers and headers.get("checkpoint", (None,))[0] == ():
        try:
            marker = io.from_str_array(io.load_npz(path, max_bytes=1 << 10, keys=["checkpoint"])["checkpoint"])
        except ValueError:
            marker = None
    if marker != CHECKPOINT_FORMAT:
        raise io.ModelFileError(f"{source} is not an npvae training checkpoint")
    checked_headers(path, source, headers)
    for key, (shape, _) in headers.items():
        if not key.startswith("optim/"):
            continue
        state = key[len("optim/"):]
        _, sep, name = state.partition("/")         # "<slot>/<param>" arrays; 0-d scalars otherwise
        expected = headers.get(f"param/{name}", ("no state for an unknown parameter",))[0] if sep else ()
        if shape != expected:
            raise bad(f"optimizer state {state}: declares shape {shape}, expected {expected}")
    shape, dtype = headers["train"]
    if shape != () or dtype.itemsize > _MAX_RECORD_BYTES:
        raise bad(f"train: declares shape {shape} dtype {dtype}, expected one JSON string "
                  f"of at most {_MAX_RECORD_BYTES} bytes")
    arrays = io.load_npz(path, keys=[k for k in headers if k in _CHECKPOINT_KEYS or k.startswith(("param/", "optim/"))])
    model = model_from_arrays(arrays, source)

    try:
        meta = io.from_json_array(arrays["train"])
    except ValueError as exc:
        raise bad(f"the training record is unreadable ({exc})") from None
    if not isinstance(meta, dict):
        raise bad(f"train: expected a JSON object, got {type(meta).__name__}")
    for key, kind in (("epoch", int), ("rng_state", dict), ("settings", dict), ("history", list)):
        value = meta.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise bad(f"train.{key}: expected {'an integer' if kind is int else 'a JSON ' + kind.__name__}, "
                      f"got {value!r:.80}")
    if meta["epoch"] != len(meta["history"]) or not all(
            isinstance(r, dict) and isinstance(r.get("loss"), (int, float)) for r in meta["history"]):
        raise bad(f"train.history: expected {meta['epoch']} per-epoch records with a numeric 'loss'")
    return dict(model=model, epoch=meta["epoch"], rng_state=meta["rng_state"], settings=meta["settings"],
                history=History(meta["history"]),
                optimizer_state={k[len("optim/"):]: v for k, v in arrays.items() if k.startswith("optim/")})


def _restore(path, state, model, opt, rng):
    """Put a checkpoint's parameters, optimizer state and RNG state into this run's objects,
    after checking that each fits; a part that does not is a ModelFileError naming the file."""
    def bad(what):
        return io.ModelFileError(f"{str(path)!r}: {what}")

    saved = state["model"]
    mine = {k: v for k, v in model.config.items() if k != "seed"}
    theirs = {k: v for k, v in saved.config.items() if k != "seed"}
    if mine != theirs:
        raise bad(f"its parameters are of another model ({theirs}) than this run's ({mine})")
    try:
        opt.load_state_dict(state["optimizer_state"])
    except ValueError as exc:
        raise bad(f"optimizer state: {exc}") from None
    for key, a in opt.state_dict().items():
        slot, sep, name = key.partition("/")
        if not sep:                                   # name, iterations, hyperparameters
            continue
        p = saved.params.get(name)
        if p is None or a.shape != p.shape or a.dtype != p.dtype:
            raise bad(f"optimizer state {key}: expected shape {getattr(p, 'shape', None)} dtype "
                      f"{getattr(p, 'dtype', None)} (the parameter's), got shape {a.shape} dtype {a.dtype}")
    try:
        rng.bit_generator.state = state["rng_state"]
    except (TypeError, ValueError, KeyError) as exc:
        raise bad(f"train.rng_state: not the state of a {type(rng.bit_generator).__name__} ({exc})") from None
    model.params.update(saved.params)


class _Progress:
    """Keras-like display: a bar redrawn in place on a terminal, one line per epoch."""

    def __init__(self, epochs, steps, verbose, file):
        self.epochs, self.steps, self.verbose = epochs, steps, verbose
        self.file = file if file is not None else sys.stdout
        self.live = verbose == 1 and getattr(self.file, "isatty", lambda: False)()
        self._last = 0.0

    def step(self, epoch, step, loss):
        now = time.perf_counter()
        if not self.live or (now - self._last < 0.1 and step < self.steps):
            return
        self._last = now
        width = 30
        done = int(width * step / self.steps)
        bar = "=" * max(done - 1, 0) + (">" if done < width else "=") + "." * (width - done)
        self.file.write(f"\rEpoch {epoch}/{self.epochs} [{bar}] {step}/{self.steps}  loss {loss:.4f}")
        self.file.flush()

    def end_epoch(self, record):
        if not self.verbose:
            return
        line = f"Epoch {record['epoch']}/{self.epochs}  loss {record['loss']:.4f}"
        if "val_loss" in record:
            line += f"  val_loss {record['val_loss']:.4f}"
        line += f"  {record['seconds']:.1f} s"
        prefix = "\r\033[K" if self.live else ""
        print(prefix + line, file=self.file, flush=True)

    def message(self, text):
        if self.verbose:
            print(("\r\033[K" if self.live else "") + text, file=self.file, flush=True)


def fit(model, x_train, epochs=50, batch_size=100, mc_samples=1, objective="elbo", optimizer="rmsprop",
        validation_data=None, noise="fresh", binarize="none", seed=0, kl="analytic", estimator="standard",
        checkpoint=None, resume=False, verbose=1, file=None, callback=None):
    """Train ``model`` in place by minibatch gradient descent on ``-bound``.

    Parameters
    ----------
    model : npvae.VAE
    x_train : ndarray, shape (N, input_dim)
        Training data in [0, 1] (converted once to the model's dtype).
    epochs : int, default 50
        Total epochs (a resumed run continues up to this number).
    batch_size : int, default 100
        Examples per step; the last batch of an epoch may be smaller.
    mc_samples : int, default 1
        Monte Carlo samples ``S`` per example.
    objective : {"elbo", "iwae"}, default "elbo"
    optimizer : str or npvae.optim.Optimizer, default "rmsprop"
        A name (``"sgd"``, ``"rmsprop"``, ``"adam"``, with default settings) or
        an optimizer instance. RMSprop's defaults are Keras' (lr 1e-3, rho 0.9).
    validation_data : ndarray or (ndarray, labels) or None
        Evaluated after every epoch with the same objective and ``S``.
    noise : {"fresh", "fixed"}, default "fresh"
        ``"fresh"`` draws new ``eps`` every step; ``"fixed"`` draws one ``eps``
        per training example before training and reuses it every epoch.
    binarize : {"none", "threshold", "dynamic"}, default "none"
        Targets as given (grayscale), thresholded at 0.5, or a fresh Bernoulli
        draw per batch (see :func:`npvae.datasets.binarize`).
    seed : int, default 0
        Seeds shuffling, noise, binarization and validation noise.
    kl : {"analytic", "mc"}, default "analytic"
    estimator : {"standard", "stl", "dreg"}, default "standard"
        As in :meth:`npvae.VAE.loss_and_grads`.
    checkpoint : path, optional
        Written atomically at the end of every epoch: parameters, optimizer
        state, RNG state and history (``.npz``, no pickle).
    resume : bool, default False
        Continue from ``checkpoint`` if it exists; the result is then the same,
        bit for bit, as an uninterrupted run.
    verbose : {0, 1, 2}, default 1
        0 quiet, 1 a progress bar (on a terminal) and a line per epoch, 2 a line per epoch.
    file : file-like, optional
        Where progress goes (default ``sys.stdout``).
    callback : callable, optional
        Called at the end of every epoch as ``callback(model, record)``, after validation
        and before the checkpoint is written. A dict it returns is merged into the epoch's
        record (so it is kept in the history and the checkpoint: JSON values only), e.g. a
        measure of the model that the study of sample sizes tracks per epoch. Its time is
        not counted in ``seconds``.

    Returns
    -------
    History

    Raises
    ------
    TrainingError
        If the loss becomes NaN or inf; the last checkpoint stays as it was.
    """
    check.vae(model)
    x_train = model.check_data(x_train, "x_train")
    epochs = check.positive_int(epochs, "epochs")
    batch_size = check.positive_int(batch_size, "batch_size")
    mc_samples = check.positive_int(mc_samples, "mc_samples")
    objective, kl, estimator = check_objective(objective, kl, estimator)
    noise = check.choice(noise, "noise", NOISE)
    binarize = check.choice(binarize, "binarize", BINARIZE)
    seed = check.positive_int(seed, "seed", minimum=0)
    if callback is not None and not callable(callback):
        raise ValueError(f"callback: expected a callable (model, record) -> dict or None, got {callback!r}")
    if not isinstance(verbose, (int, np.integer)) or verbose not in (0, 1, 2):
        raise ValueError(f"verbose: expected 0, 1 or 2, got {verbose!r}")
    if checkpoint is not None and not isinstance(checkpoint, (str, os.PathLike)):
        raise TypeError(f"checkpoint: expected a path (str or os.PathLike) or None, got {type(checkpoint).__name__}")
    if isinstance(validation_data, tuple):
        if len(validation_data) not in (1, 2):
            raise ValueError(f"validation_data: expected an array or a tuple (x, labels), got a tuple of "
                             f"{len(validation_data)} items")
        validation_data = validation_data[0]
    x_val = None if validation_data is None else model.check_data(validation_data, "validation_data")
    if resume and checkpoint is None:
        raise ValueError("resume: resuming needs a checkpoint path, got checkpoint=None")
    try:
        opt = optim.get_optimizer(optimizer)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"optimizer: expected 'sgd', 'rmsprop', 'adam' or an npvae.optim.Optimizer, "
                        f"got {optimizer!r}") from None
    model.check_params()

    n = x_train.shape[0]
    _check_memory(model, min(batch_size, n), mc_samples)
    settings = _settings(model, n, None if x_val is None else x_val.shape[0], batch_size, mc_samples,
                         objective, kl, estimator, noise, binarize, seed, opt)
    rng = np.random.default_rng(seed)
    history = History()
    if resume and Path(checkpoint).exists():
        state = load_checkpoint(checkpoint)
        _check_resume(state["settings"], settings, checkpoint)
        _restore(checkpoint, state, model, opt, rng)
        history = state["history"]
    fixed_eps = None
    if noise == "fixed":
        fixed_eps = model.sample_eps(n, mc_samples, np.random.default_rng([seed, 1]))

    steps = -(-n // batch_size)
    progress = _Progress(epochs, steps, int(verbose), file)
    if len(history):
        progress.message(f"Resuming from {checkpoint} after epoch {len(history)}")
    engine = model.engine
    update = engine.optimizer_update(opt)         # the engine's fused update, or None: NumPy's
    # the numba engine holds the BLAS setting of these steps for the whole loop
    with engine.steps(min(batch_size, n), mc_samples):
        for epoch in range(len(history) + 1, epochs + 1):
            t0 = time.perf_counter()
            totals = np.zeros(3)
            order = rng.permutation(n)
            for step in range(steps):
                idx = order[step * batch_size:(step + 1) * batch_size]
                xb = x_train[idx]
                if binarize != "none":
                    xb = datasets.binarize(xb, binarize, rng=rng)
                if fixed_eps is None:
                    eps = model.sample_eps(len(idx), mc_samples, rng)
                else:
                    eps = fixed_eps[idx]
                bound, grads = engine.loss_and_grads(xb, eps, objective, kl, estimator)
                if not np.isfinite(bound.loss):
                    where = f"the last good checkpoint (epoch {len(history)}) is {str(checkpoint)!r}" if (
                        checkpoint is not None and len(history)) else "no checkpoint was written"
                    raise TrainingError(f"the loss became {bound.loss} at epoch {epoch}, step {step + 1}/{steps}; "
                                        f"training stopped and {where}. A smaller learning rate may help.")
                opt.step(model.params, grads, update=update)
                totals += len(idx) * np.array([bound.loss, bound.recon, bound.kl])
                progress.step(epoch, step + 1, totals[0] / min(n, (step + 1) * batch_size))  # running mean, as Keras
            seconds = time.perf_counter() - t0
            loss, recon, kl_mean = totals / n
            record = dict(epoch=epoch, loss=float(loss), recon=float(recon), kl=float(kl_mean), seconds=seconds)
            if x_val is not None:
                vrng = np.random.default_rng([seed, 2, epoch])
                xv = x_val if binarize == "none" else datasets.binarize(x_val, binarize, rng=vrng)
                # about 10,000 (example, sample) rows a chunk bounds memory for any S
                val = mean_bound(model, xv, mc_samples, objective, max(1, 10000 // mc_samples), vrng, kl)
                record.update(val_loss=val["loss"], val_recon=val["recon"], val_kl=val["kl"])
            if callback is not None:
                extra = callback(model, dict(record))
                if extra is not None and not isinstance(extra, dict):
                    raise TypeError(f"callback: expected it to return a dict or None, got {type(extra).__name__}")
                if extra:
                    record.update(extra)
            history.append(record)
            if checkpoint is not None:
                _save_checkpoint(checkpoint, model, opt, rng, history, settings)
            progress.end_epoch(record)
    return history


def _check_memory(model, batch, mc_samples):
    """Refuse, before the first allocation, a step whose working memory exceeds what is available."""
    need = model.engine.step_bytes(batch, mc_samples)
    have = available_memory()
    if have is not None and need > 0.9 * have:
        raise ValueError(f"mc_samples, batch_size: a training step of {batch} x {mc_samples} = {batch * mc_samples:,} "
                         f"rows needs about {need / 2**30:.1f} GiB of working memory, more than the "
                         f"{have / 2**30:.1f} GiB available; lower mc_samples (--mc-samples) or batch_size "
                         "(--batch-size)")


def _check_resume(stored, current, path):
    diffs = [f"{k}: checkpoint has {stored.get(k)!r}, this run has {current[k]!r}"
             for k in current if stored.get(k) != current[k]]
    if diffs:
        raise ValueError(f"resume: the checkpoint {str(path)!r} was written by a run with other settings; "
                         + "; ".join(diffs))
