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

``protocol="burda"`` trains as Burda et al. (2016) did; :mod:`npvae.protocol` gives each
of its choices with the line of their code or the section of their paper it comes from.
"""

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple, Optional

import numpy as np

from . import _validate as check
from . import datasets, io, optim, protocol as protocols, serialization
from . import settings as run_settings
from .evaluate import mean_bound
from .model import build_model
from . import objectives
from .objectives import check_objective
from .serialization import CHECKPOINT_FORMAT  # noqa: F401  (its name before npvae.serialization)
from .settings import NOISE  # noqa: F401  (its name before npvae.settings)

__all__ = ["fit", "History", "TrainingError", "load_checkpoint"]

#: The methods of ``binarize`` (its name before :data:`npvae.datasets.BINARIZE_METHODS`).
BINARIZE = datasets.BINARIZE_METHODS


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


def load_checkpoint(path):
    """Read a training checkpoint, checked part by part (:func:`npvae.serialization.read_checkpoint`).

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
    state = serialization.read_checkpoint(path)
    config, params = state.pop("config"), state.pop("params")
    return dict(state, model=build_model(config, params, repr(str(Path(path)))), history=History(state["history"]),
                settings=run_settings.upgrade_checkpoint_settings(state["settings"]))


def _resume(path, settings, epochs, model, opt, rng):
    """The history of the checkpoint at ``path``, after putting its parameters, optimizer
    state and RNG state into this run's objects; a part that does not fit is a
    ModelFileError naming the file; settings other than this run's (a SettingsClash) or
    more epochs than ``epochs`` a ValueError, raised before anything is changed."""
    def bad(what):
        return io.ModelFileError(f"{str(path)!r}: {what}")

    state, what = serialization.read_checkpoint(path), f"the checkpoint {str(path)!r}"
    run_settings.check_resume(run_settings.upgrade_checkpoint_settings(state["settings"]), settings, what)
    run_settings.check_epochs(state["epoch"], epochs, what)
    mine, theirs = run_settings.architecture(model.config), run_settings.architecture(state["config"])
    if mine != theirs:
        raise bad(f"its parameters are of another model ({theirs}) than this run's ({mine})")
    try:
        opt.load_state_dict(state["optimizer_state"])
    except ValueError as exc:
        raise bad(f"optimizer state: {exc}") from None
    try:
        rng.bit_generator.state = state["rng_state"]
    except (TypeError, ValueError, KeyError) as exc:
        raise bad(f"train.rng_state: not the state of a {type(rng.bit_generator).__name__} ({exc})") from None
    model.params.update(state["params"])
    return History(state["history"])


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


_default = run_settings.default


def fit(model, x_train, epochs=_default("epochs"), batch_size=_default("batch_size"),
        mc_samples=_default("mc_samples"), objective=_default("objective"), optimizer=_default("optimizer"),
        validation_data=None, noise=_default("noise"), binarize=_default("binarize"), seed=_default("seed"),
        kl=_default("kl"), estimator=_default("estimator"), checkpoint=None, resume=False, verbose=1, file=None,
        callback=None, protocol=_default("protocol"), lr_schedule=_default("lr_schedule"),
        output_bias=_default("output_bias"), shuffle=_default("shuffle"), outer=_default("outer"),
        beta=_default("beta")):
    """Train ``model`` in place by minibatch gradient descent on ``-bound``.

    The defaults and the checks of the settings are those of :mod:`npvae.settings` (the
    defaults of ``npvae train``, but for the model's dtype, which is the model's).

    Parameters
    ----------
    model : npvae.VAE
    x_train : ndarray, shape (N, input_dim)
        Training data in [0, 1] (converted once to the model's dtype).
    epochs : int, default 50
        Total epochs (a resumed run continues up to this number; it may not be fewer
        than the checkpoint's).
    batch_size : int, default 100
        Examples per step; the last batch of an epoch may be smaller.
    mc_samples : int, default 1
        Monte Carlo samples ``S`` per example.
    objective : {"elbo", "iwae", "miwae", "ciwae", "piwae"}, default "elbo"
        The bound (:mod:`npvae.objectives`); ``miwae`` and ``piwae`` take ``outer``,
        ``ciwae`` takes ``beta``.
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
        Seeds shuffling, noise, binarization and validation noise (numbered streams of
        it, see the module's docstring: an integer, not a Generator).
    kl : {"analytic", "mc"}, default "analytic"
    estimator : {"standard", "stl", "dreg"}, default "standard"
        As in :meth:`npvae.VAE.loss_and_grads`.
    checkpoint : path, optional
        Written atomically at the end of every epoch: parameters, optimizer
        state, RNG state, settings and history (:func:`npvae.serialization.save_checkpoint`).
    resume : bool, default False
        Continue from ``checkpoint`` if it exists; the result is then the same,
        bit for bit, as an uninterrupted run. Its settings must be this run's
        (:func:`npvae.settings.check_resume`), but for ``epochs``.
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
    protocol : {"none", "burda"}, default "none"
        ``"burda"``: Burda et al.'s protocol (:mod:`npvae.protocol`): ``optimizer`` their
        Adam (:func:`npvae.protocol.burda_adam`, second moments started as theirs),
        ``batch_size=20``, ``binarize="dynamic"``, ``shuffle=False``,
        ``lr_schedule="burda"``, ``output_bias="data"`` and, for ``objective="elbo"``,
        ``kl="mc"``. A setting left at its default takes the protocol's value; another
        value is a ValueError. ``epochs`` stays as given (their schedule has 3,280).
    lr_schedule : {"constant", "burda"}, default "constant"
        The learning rate of each epoch: the optimizer's, or Burda et al.'s stages
        (:func:`npvae.protocol.learning_rate`: ``3**i`` epochs at the optimizer's initial
        rate times ``round(10**(1 - i/7), 1) / 10``), set at the start of the epoch (a
        resumed run sets it from the epoch, so it continues bit for bit) and recorded as
        ``lr`` in the epoch's record.
    output_bias : {"zero", "data"}, default "zero"
        ``"data"`` sets the decoder's output bias to the logit of the mean of ``x_train``
        before the first epoch (:func:`npvae.protocol.output_bias`; not on resume).
    shuffle : bool, default True
        Shuffle the training examples every epoch; False takes the batches in order.
    outer : int, default 1
        ``M`` of ``miwae`` and ``piwae`` (Rainforth et al. 2018): the ``mc_samples`` samples
        of an example form ``M`` groups of ``K = mc_samples / M`` (a multiple is required).
        ``outer=1`` is the IWAE bound of all the samples.
    beta : float in [0, 1], default 0.5
        ``ciwae``'s weight of the ELBO: ``beta * ELBO + (1 - beta) * IWAE``.

    Returns
    -------
    History

    Raises
    ------
    TrainingError
        If the loss becomes NaN or inf; the last checkpoint stays as it was.
    ValueError
        For a bad argument (naming it), or a checkpoint to resume of other settings or of
        more epochs than ``epochs``.
    """
    check.vae(model)
    x_train = model.check_data(x_train, "x_train")
    values, optimizer = _checked_settings(optimizer, epochs=epochs, batch_size=batch_size, mc_samples=mc_samples,
                                          objective=objective, kl=kl, estimator=estimator, noise=noise,
                                          binarize=binarize, seed=seed, protocol=protocol, lr_schedule=lr_schedule,
                                          output_bias=output_bias, shuffle=shuffle, outer=outer, beta=beta)
    _check_run_arguments(callback, verbose, checkpoint, resume)
    x_val = _validation_data(model, validation_data)
    opt = _optimizer(optimizer, values)
    model.check_params()
    n = x_train.shape[0]
    check.step_memory(model, min(values["batch_size"], n), values["mc_samples"], "mc_samples, batch_size",
                    "lower mc_samples (--mc-samples) or batch_size (--batch-size)")
    settings = run_settings.checkpoint_settings(model.config, values, opt, n, None if x_val is None else len(x_val))
    rng = np.random.default_rng(values["seed"])
    history, lr0 = History(), opt.lr       # the schedule's base: the rate the run started with
    if resume and Path(checkpoint).exists():
        history = _resume(checkpoint, settings, values["epochs"], model, opt, rng)
    else:
        _start(model, opt, x_train, values)
    run = _Run(model, opt, model.engine.optimizer_update(opt), x_train, x_val, values, rng,
               _fixed_eps(model, n, values), _Progress(values["epochs"], -(-n // values["batch_size"]),
                                                      int(verbose), file), checkpoint, settings, callback,
               objective_of(values))
    if len(history):
        run.progress.message(f"Resuming from {checkpoint} after epoch {len(history)}")
    # the numba engine holds the BLAS setting of these steps for the whole loop
    with model.engine.steps(min(values["batch_size"], n), values["mc_samples"]):
        for epoch in range(len(history) + 1, values["epochs"] + 1):
            if values["lr_schedule"] != "constant":
                opt.lr = protocols.learning_rate(values["lr_schedule"], epoch, lr0)
            record = _train_epoch(run, epoch, history)
            if values["lr_schedule"] != "constant":
                record["lr"] = opt.lr
            _end_epoch(run, record, history)
    return history


def _checked_settings(optimizer, **values):
    """fit's settings, each checked by :mod:`npvae.settings`, with what the protocol sets
    (:func:`npvae.settings.resolve_protocol`: a setting not at its default counts as
    given), the objective's combination checked by
    :func:`npvae.objectives.check_objective`; and the optimizer (a name in lower case, or
    the instance given)."""
    values = {name: run_settings.validate(name, value) for name, value in values.items()}
    given = {name for name, value in values.items() if value != run_settings.default(name)}
    if isinstance(optimizer, str):
        values["optimizer"] = optimizer.strip().lower()
        if values["optimizer"] != run_settings.default("optimizer"):
            given.add("optimizer")
    values = run_settings.resolve_protocol(values, given)
    name = values.pop("optimizer", None)         # an instance stays as given (_optimizer checks it)
    if isinstance(optimizer, str):
        optimizer = name
    values["objective"], values["kl"], values["estimator"] = check_objective(
        values["objective"], values["kl"], values["estimator"])
    objective_of(values).check_samples(values["mc_samples"])
    return values, optimizer


def objective_of(values):
    """The :class:`npvae.objectives.Objective` that settings ``values`` train: the objective
    named, with the parameters it takes among the settings (``outer``, ``beta``)."""
    name = values["objective"]
    takes = objectives.get(name).parameters
    return objectives.make(name, **{p: values[p] for p in takes if p in values})


def _check_run_arguments(callback, verbose, checkpoint, resume):
    if callback is not None and not callable(callback):
        raise ValueError(f"callback: expected a callable (model, record) -> dict or None, got {callback!r}")
    if not isinstance(verbose, (int, np.integer)) or verbose not in (0, 1, 2):
        raise ValueError(f"verbose: expected 0, 1 or 2, got {verbose!r}")
    if checkpoint is not None and not isinstance(checkpoint, (str, os.PathLike)):
        raise TypeError(f"checkpoint: expected a path (str or os.PathLike) or None, got {type(checkpoint).__name__}")
    if resume and checkpoint is None:
        raise ValueError("resume: resuming needs a checkpoint path, got checkpoint=None")


def _validation_data(model, validation_data):
    if isinstance(validation_data, tuple):
        if len(validation_data) not in (1, 2):
            raise ValueError(f"validation_data: expected an array or a tuple (x, labels), got a tuple of "
                             f"{len(validation_data)} items")
        validation_data = validation_data[0]
    return None if validation_data is None else model.check_data(validation_data, "validation_data")


def _optimizer(optimizer, values):
    if values["protocol"] == "burda":
        if isinstance(optimizer, str):
            return protocols.burda_adam(batch_size=values["batch_size"])
        if not protocols.is_burda_adam(optimizer, values["batch_size"]):
            raise ValueError(f"optimizer: protocol='burda' trains with npvae.protocol.burda_adam(lr, batch_size="
                             f"{values['batch_size']}) (any lr), got {optimizer!r}")
        return optimizer
    try:
        return optim.get_optimizer(optimizer)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"optimizer: expected {', '.join(map(repr, run_settings.OPTIMIZERS))} or an "
                        f"npvae.optim.Optimizer, got {optimizer!r}") from None


def _start(model, opt, x_train, values):
    """What a run does before its first epoch (not on resume): the output bias of
    ``output_bias="data"``, the optimizer state Burda et al. start from."""
    if values["output_bias"] == "data":
        protocols.set_output_bias(model, x_train)
    if values["protocol"] == "burda":
        protocols.start_burda_adam(opt, model.params, values["batch_size"])


def _fixed_eps(model, n, values):
    """The one ``eps`` per training example of ``noise="fixed"`` (its own stream), else None."""
    if values["noise"] != "fixed":
        return None
    return model.sample_eps(n, values["mc_samples"], np.random.default_rng([values["seed"], 1]))


class _Run(NamedTuple):
    """What the epochs of one :func:`fit` share."""
    model: Any
    opt: Any
    update: Any              # the engine's fused optimizer update, or None: NumPy's
    x_train: np.ndarray
    x_val: Optional[np.ndarray]
    values: dict             # the checked settings
    rng: np.random.Generator
    fixed_eps: Optional[np.ndarray]
    progress: _Progress
    checkpoint: Any
    settings: dict           # what the checkpoint records
    callback: Any
    objective: Any           # the objective trained (npvae.objectives.Objective)


def _train_epoch(run, epoch, history):
    """One pass over the shuffled training data; the epoch's record (training means)."""
    v, x, rng, engine = run.values, run.x_train, run.rng, run.model.engine
    n, batch_size, steps = x.shape[0], v["batch_size"], run.progress.steps
    t0 = time.perf_counter()
    totals = np.zeros(3)
    order = rng.permutation(n) if v["shuffle"] else np.arange(n)
    for step in range(steps):
        idx = order[step * batch_size:(step + 1) * batch_size]
        xb = x[idx]
        if v["binarize"] != "none":
            xb = datasets.binarize(xb, v["binarize"], rng=rng)
        eps = run.model.sample_eps(len(idx), v["mc_samples"], rng) if run.fixed_eps is None else run.fixed_eps[idx]
        bound, grads = engine.loss_and_grads(xb, eps, run.objective, v["kl"], v["estimator"])
        if not np.isfinite(bound.loss):
            where = f"the last good checkpoint (epoch {len(history)}) is {str(run.checkpoint)!r}" if (
                run.checkpoint is not None and len(history)) else "no checkpoint was written"
            raise TrainingError(f"the loss became {bound.loss} at epoch {epoch}, step {step + 1}/{steps}; "
                                f"training stopped and {where}. A smaller learning rate may help.")
        run.opt.step(run.model.params, grads, update=run.update)
        totals += len(idx) * np.array([bound.loss, bound.recon, bound.kl])
        run.progress.step(epoch, step + 1, totals[0] / min(n, (step + 1) * batch_size))  # running mean, as Keras
    seconds = time.perf_counter() - t0
    loss, recon, kl_mean = totals / n
    return dict(epoch=epoch, loss=float(loss), recon=float(recon), kl=float(kl_mean), seconds=seconds)


def _end_epoch(run, record, history):
    """Validation, the callback, the history and the checkpoint of a finished epoch."""
    v = run.values
    if run.x_val is not None:
        vrng = np.random.default_rng([v["seed"], 2, record["epoch"]])
        xv = run.x_val if v["binarize"] == "none" else datasets.binarize(run.x_val, v["binarize"], rng=vrng)
        # about 10,000 (example, sample) rows a chunk bounds memory for any S
        val = mean_bound(run.model, xv, v["mc_samples"], run.objective, max(1, 10000 // v["mc_samples"]), vrng,
                         v["kl"])
        record.update(val_loss=val["loss"], val_recon=val["recon"], val_kl=val["kl"])
    if run.callback is not None:
        extra = run.callback(run.model, dict(record))
        if extra is not None and not isinstance(extra, dict):
            raise TypeError(f"callback: expected it to return a dict or None, got {type(extra).__name__}")
        if extra:
            record.update(extra)
    history.append(record)
    if run.checkpoint is not None:
        serialization.save_checkpoint(run.checkpoint, run.model, run.opt.state_dict(), run.rng.bit_generator.state,
                                      history.records, run.settings)
    run.progress.end_epoch(record)
