"""The run settings: one definition of each, and everything derived from it.

Each :class:`Setting` says its name, default, validator, help text, what it is about
(``"architecture"``, ``"training"`` or ``"evaluation"``) and whether a resumed run must
match it. From :data:`SETTINGS` come:

* the keyword defaults of :func:`npvae.fit` and the checks of its arguments;
* the options of ``npvae train`` (and those ``npvae evaluate`` shares), built by
  :mod:`npvae.cli`, and their ``--help`` texts;
* ``config.json`` of a run folder (:mod:`npvae.runfolder` writes and checks it);
* the settings a checkpoint stores (:func:`checkpoint_settings`), in the same names;
* one clash check, :func:`check_resume`, for ``config.json`` against the options given to
  ``npvae train --resume`` and for a checkpoint against the run that resumes it.
"""

import math
import numbers
from types import MappingProxyType
from typing import Any, Callable, NamedTuple, Optional, Tuple

import numpy as np

from . import _validate as check
from .datasets import BINARIZE_METHODS
from .evaluate import LOG_LIKELIHOOD_METHODS
from .objectives import ESTIMATORS, KL, OBJECTIVES
from .ops import ACTIVATIONS
from .optim import SGD, Adam, RMSprop
from .protocol import BURDA, LR_SCHEDULES, OUTPUT_BIAS, PROTOCOLS

__all__ = ["Setting", "SettingsClash", "SETTINGS", "NOISE", "OPTIMIZERS", "ARCHITECTURE_SETTINGS", "TRAIN_SETTINGS",
           "EVALUATE_SETTINGS", "EVALUATE_DEFAULTS", "METADATA", "ARCHITECTURE", "TRAINING", "EVALUATION",
           "default", "validate", "run_defaults", "check_config",
           "architecture", "checkpoint_settings", "upgrade_checkpoint_settings", "check_resume", "check_epochs",
           "parse_int", "parse_positive_int", "parse_non_negative_int", "parse_positive_float",
           "PROTOCOL_SETTINGS", "resolve_protocol"]

ARCHITECTURE, TRAINING, EVALUATION = "architecture", "training", "evaluation"

#: ``noise`` of :func:`npvae.fit`: fresh ``eps`` every step, or one fixed ``eps`` per example.
NOISE = ("fresh", "fixed")
#: The optimizers by name, as :func:`npvae.optim.get_optimizer` takes them (the default first).
OPTIMIZERS = tuple(cls.name for cls in (RMSprop, Adam, SGD))
DTYPES = ("float32", "float64")


class SettingsClash(ValueError):
    """A resumed run was given settings other than those of the run it continues."""


# ----------------------------------------------------------------------------------------
# Validators (a value of Python or of JSON -> its canonical value) and parsers (a command
# line's text -> a value). A validator's ValueError names the setting, what was expected
# and what came.
# ----------------------------------------------------------------------------------------
def _int_at_least(minimum):
    def validate_int(value, name):
        return check.positive_int(value, name, minimum=minimum)
    return validate_int


def _one_of(options):
    def validate_choice(value, name):
        return check.choice(value, name, options)
    return validate_choice


def _layer_sizes(value, name):
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"{name}: expected a non-empty list of positive integers, got {value!r}")
    return [check.positive_int(h, name) for h in value]


def _positive_or_none(value, name):
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not (
            math.isfinite(value) and value > 0):
        raise ValueError(f"{name}: expected a positive number or None (the optimizer's default), got {value!r}")
    return float(value)


def _unit_interval(value, name):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}: expected a number in [0, 1], got {value!r}")
    return float(value)


def parse_unit_float(text):
    """Command-line text as a number in [0, 1] (ValueError otherwise)."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"expected a number in [0, 1], got {text}")
    return value


def _boolean(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name}: expected true or false, got {value!r}")
    return bool(value)


def parse_int(minimum, what):
    """A parser of command-line text: an integer >= ``minimum`` (ValueError saying ``what``
    was expected otherwise)."""
    def parse_int(text):
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"expected {what}, got {text!r}") from None
        if value < minimum:
            raise ValueError(f"expected {what}, got {value}")
        return value
    return parse_int


def parse_positive_float(text):
    """Command-line text as a positive finite number (ValueError otherwise)."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or not math.isfinite(value):
        raise ValueError(f"expected a positive number, got {text}")
    return value


parse_positive_int = parse_int(1, "a positive integer")
parse_non_negative_int = parse_int(0, "a non-negative integer")


class Setting(NamedTuple):
    """One run setting.

    Attributes
    ----------
    name : str
        The keyword of :func:`npvae.fit` (where it takes it), the key of ``config.json``
        and of a checkpoint's settings; the command-line option is ``--name-with-dashes``.
    default : object
        The value when none is given.
    kind : {"architecture", "training", "evaluation"}
        What it is a setting of: the model, the training run, or an evaluation.
    help : str
        The ``--help`` text (the default is appended).
    validate : callable
        ``validate(value, name)`` returns the canonical value (e.g. a list for ``hidden``)
        or raises ValueError naming the setting.
    parse : callable or None
        Text of the command line to a value (ValueError with the reason); None for a
        setting given by ``choices`` or a flag.
    choices : tuple of str or None
        The allowed values, where they are a list of names.
    must_match : bool
        A resumed run must have the value of the run it continues.
    option : bool
        An option of ``npvae train`` (for ``"evaluation"``: of ``npvae evaluate``) and, for
        the others, a key of ``config.json``. False for a setting that comes from the data.
    required : bool
        ``config.json`` must hold it (False for settings added later: older files lack them).
    nargs : str or None
        As argparse's, for a list.
    default_text : str or None
        How ``--help`` shows the default, where its value would not say it.
    """

    name: str
    default: Any
    kind: str
    help: str
    validate: Callable[[Any, str], Any]
    parse: Optional[Callable[[str], Any]] = None
    choices: Optional[Tuple[str, ...]] = None
    must_match: bool = True
    option: bool = True
    required: bool = True
    nargs: Optional[str] = None
    default_text: Optional[str] = None

    def check(self, value):
        """``value`` checked and made canonical; ValueError naming the setting otherwise."""
        return self.validate(value, self.name)

    def help_text(self, value=None, help=None):
        """The ``--help`` text (``help``, if the command has its own), with the default
        (``value``, if the command has its own)."""
        value, help = (self.default if value is None else value), (self.help if help is None else help)
        if self.default_text is not None:
            shown = self.default_text
        elif value is None:
            return help
        elif isinstance(value, bool):
            shown = "--" + ("" if value else "no-") + self.name.replace("_", "-")
        elif isinstance(value, list):
            shown = " ".join(map(str, value))
        else:
            shown = value
        return f"{help} (default {shown})"


def _choice(name, default, kind, help, choices, **kw):
    return Setting(name, default, kind, help, _one_of(choices), choices=choices, **kw)


def _count(name, default, kind, help, minimum=1, **kw):
    what = "a positive integer" if minimum == 1 else "a non-negative integer"
    validate_int = _int_at_least(minimum)
    if default is None:                     # not asked for: e.g. no log-likelihood without --k
        def validate_int(value, name, _validate=validate_int):
            return None if value is None else _validate(value, name)
    return Setting(name, default, kind, help, validate_int, parse_int(minimum, what), **kw)


_ALL = (
    _count("epochs", 50, TRAINING, "total epochs (a resumed run continues up to this number)", must_match=False),
    _count("batch_size", 100, TRAINING, "examples per step"),
    _count("mc_samples", 1, TRAINING, "Monte Carlo samples S per example"),
    _count("latent_dim", 2, ARCHITECTURE, "latent size"),
    Setting("hidden", [256], ARCHITECTURE, "hidden layer sizes of the encoder (the decoder's reversed)",
            _layer_sizes, parse_positive_int, nargs="+"),
    _choice("activation", "relu", ARCHITECTURE, "hidden activation", tuple(ACTIVATIONS)),
    _choice("optimizer", "rmsprop", TRAINING, "the optimizer (rmsprop with Keras' settings)", OPTIMIZERS),
    Setting("lr", None, TRAINING, "learning rate", _positive_or_none, parse_positive_float,
            default_text="the optimizer's"),
    _choice("objective", "elbo", TRAINING, "the bound trained (and evaluated)", OBJECTIVES),
    _choice("kl", "analytic", TRAINING, "KL term of the ELBO", KL),
    _choice("estimator", "standard", TRAINING,
            "encoder gradient estimator (stl needs --kl mc or iwae, dreg needs iwae)", ESTIMATORS),
    _choice("noise", "fresh", TRAINING, "fresh eps every step, or fixed per example", NOISE),
    _choice("binarize", "none", TRAINING, "targets: none (grayscale), threshold, dynamic", BINARIZE_METHODS),
    _count("seed", 0, TRAINING, "seed of init, shuffling and noise", minimum=0),
    # Burda et al.'s protocol and its parts (npvae.protocol documents each choice); added
    # later, so config.json and checkpoints written before them read with their defaults
    _choice("protocol", "none", TRAINING,
            "burda: Burda et al.'s protocol (Adam as theirs, --batch-size 20, --binarize dynamic, --no-shuffle, "
            "--lr-schedule burda, --output-bias data, --kl mc for elbo); options left unset take its values",
            PROTOCOLS, required=False),
    _choice("lr_schedule", "constant", TRAINING,
            "learning rate by epoch: constant, or burda (3^i epochs at lr * round(10^(1-i/7), 1) / 10, i = 0..7)",
            LR_SCHEDULES, required=False),
    _choice("output_bias", "zero", TRAINING,
            "initial output bias of the decoder: zero, or data (logit of the training mean, clipped to "
            "[0.001, 0.999])", OUTPUT_BIAS, required=False),
    Setting("shuffle", True, TRAINING, "shuffle the training images every epoch (--no-shuffle: in order)",
            _boolean, required=False),
    # the parameters of the sample-budget objectives (npvae.objectives: MIWAE, PIWAE, CIWAE); added
    # later, so config.json and checkpoints written before them read with their defaults
    _count("outer", 1, TRAINING, "M for miwae and piwae: the S samples form M groups of K = S / M "
           "(S a multiple of M)", required=False),
    Setting("beta", 0.5, TRAINING, "ciwae's weight of the ELBO: beta * ELBO + (1 - beta) * IWAE", _unit_interval,
            parse_unit_float, required=False),
    _choice("dtype", "float32", ARCHITECTURE,
            "float32 as the seed's Keras model (float64 for exact work, e.g. gradient checks)", DTYPES),
    Setting("figures", True, TRAINING, "draw the figures at the end (remembered by --resume)", _boolean,
            must_match=False, required=False),
    _count("input_dim", 784, ARCHITECTURE, "data size D (from the data)", option=False),
    _count("k", None, EVALUATION, "also estimate the log-likelihood with K importance samples", must_match=False),
    _count("limit", None, EVALUATION, "use only the first N test images", must_match=False),
    _choice("method", "is", EVALUATION, "log-likelihood estimator: importance sampling with --k samples, or "
            "annealed importance sampling (--chains, --ais-steps)", LOG_LIKELIHOOD_METHODS, must_match=False),
    _count("chains", 16, EVALUATION, "AIS chains per image", must_match=False),
    _count("ais_steps", 200, EVALUATION, "AIS temperatures (one HMC transition each)", must_match=False),
)

#: Every setting by name, in the order of ``npvae train --help`` and ``config.json``.
SETTINGS = MappingProxyType({s.name: s for s in _ALL})
#: The settings of a model's architecture (the keys of :attr:`npvae.VAE.config` but its init seed).
ARCHITECTURE_SETTINGS = tuple(s.name for s in _ALL if s.kind == ARCHITECTURE)
#: The options of ``npvae train``: the keys of ``config.json``.
TRAIN_SETTINGS = tuple(s.name for s in _ALL if s.option and s.kind != EVALUATION)
#: The options of ``npvae evaluate``, and the defaults it has of its own.
EVALUATE_SETTINGS = ("mc_samples", "objective", "k", "method", "chains", "ais_steps", "limit", "seed",
                     "batch_size")
EVALUATE_DEFAULTS = MappingProxyType({"batch_size": 500})


def default(name):
    """The default of setting ``name``."""
    value = SETTINGS[name].default
    return list(value) if isinstance(value, list) else value


def validate(name, value):
    """``value`` of setting ``name``, checked and made canonical (ValueError naming it)."""
    return SETTINGS[name].check(value)


def run_defaults():
    """``{name: default}`` of the options of ``npvae train`` (a fresh dict)."""
    return {name: default(name) for name in TRAIN_SETTINGS}


def check_config(config):
    """The settings of a ``config.json`` object, each checked, missing optional ones filled
    with their defaults; keys in :data:`METADATA` are left out.

    Raises
    ------
    ValueError
        Naming the key: unknown, missing, or a value of the wrong type or out of range.
    """
    unknown = sorted(set(config) - set(TRAIN_SETTINGS) - set(METADATA))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown}; expected the keys {sorted(TRAIN_SETTINGS)}")
    settings = {}
    for name in TRAIN_SETTINGS:
        setting = SETTINGS[name]
        if name not in config:
            if setting.required:
                raise ValueError(f"key {name!r} is missing")
            settings[name] = default(name)
        else:
            settings[name] = setting.check(config[name])
    return settings


#: Keys of ``config.json`` besides the settings: what wrote it.
METADATA = ("npvae_version",)


# ----------------------------------------------------------------------------------------
# What a resumed run must share with the run it continues
# ----------------------------------------------------------------------------------------
def architecture(model_config):
    """The architecture settings of a model's :attr:`npvae.VAE.config` (no init seed: a
    resumed run's init is overwritten by the checkpoint)."""
    return {name: model_config[name] for name in ARCHITECTURE_SETTINGS}


def checkpoint_settings(model_config, values, optimizer, n_train, n_val):
    """The settings a checkpoint records, in the names of :data:`SETTINGS`.

    Parameters
    ----------
    model_config : dict
        :attr:`npvae.VAE.config` of the model trained.
    values : dict
        The checked training settings of :func:`npvae.fit` (``optimizer`` aside).
    optimizer : npvae.optim.Optimizer
        Recorded as ``optimizer`` (its name) and ``optimizer_config`` (all its
        hyperparameters, the learning rate included: what ``lr`` resolves to).
    n_train, n_val : int or None
        The sizes of the training and validation data.
    """
    record = architecture(model_config)
    record.update({name: values[name] for name in values
                   if name not in ("optimizer", "lr") and SETTINGS[name].must_match})
    record.update(optimizer=optimizer.name, optimizer_config=optimizer.get_config(), n_train=n_train, n_val=n_val)
    return record


#: The settings :func:`resolve_protocol` sets, by protocol.
PROTOCOL_SETTINGS = MappingProxyType({"none": MappingProxyType({}), "burda": MappingProxyType(dict(BURDA))})


def resolve_protocol(values, given):
    """``values`` (a dict of checked settings, ``protocol`` among them) with what the
    protocol sets filled in: each setting it sets takes its value unless ``given``, the
    names set by the caller, holds it with another value, which is a ValueError naming
    both. ``kl`` is set only for ``objective="elbo"`` (Burda et al.'s VAE: the sampled KL).

    Returns
    -------
    dict
        A new dict.
    """
    values = dict(values)
    for name, value in PROTOCOL_SETTINGS[values.get("protocol", "none")].items():
        if name == "kl" and values.get("objective") != "elbo":
            continue
        if name in given and values.get(name) != value:
            raise ValueError(f"{name}: protocol={values['protocol']!r} sets {name}={value!r}, got {name}="
                             f"{values.get(name)!r}; leave it unset or use protocol='none'")
        values[name] = value
    return values


def upgrade_checkpoint_settings(stored):
    """A checkpoint's settings in the current layout. Checkpoints written before
    :mod:`npvae.settings` existed nest the architecture under ``model`` and hold
    ``optimizer`` as ``{"name": ..., <hyperparameters>}``; those written before a setting
    that a resumed run must match (``protocol``, ``lr_schedule``, ...) lack it and get its
    default, the value they were trained with; the rest is the same."""
    stored = dict(stored)
    if isinstance(stored.get("model"), dict):
        stored.update(stored.pop("model"))
    if isinstance(stored.get("optimizer"), dict):
        config = dict(stored["optimizer"])
        stored["optimizer"] = config.pop("name", None)
        stored["optimizer_config"] = config
    for setting in _ALL:      # settings added later: an older checkpoint was written at their defaults
        if setting.must_match and not setting.required and setting.kind == TRAINING:
            stored.setdefault(setting.name, setting.default)
    return stored


def check_resume(stored, current, what):
    """Raise :class:`SettingsClash` unless ``stored`` (of the run continued, described as
    ``what``) agrees with ``current`` on every key of ``current`` that a resumed run must
    match (``epochs`` and ``figures`` may change)."""
    free = {s.name for s in _ALL if not s.must_match}
    diffs = [f"{k}: it has {stored.get(k)!r}, this run has {v!r}"
             for k, v in current.items() if k not in free and stored.get(k) != v]
    if diffs:
        raise SettingsClash(f"resume: {what} was written with other settings; " + "; ".join(diffs))


def check_epochs(done, epochs, what):
    """Raise ValueError if a run of ``epochs`` epochs would continue ``what``, which has
    ``done`` of them already: it cannot be shortened (and must not seem to be)."""
    if done > epochs:
        raise ValueError(f"epochs: {what} has {done} epochs done, more than the {epochs} asked for; "
                         f"continue it with epochs >= {done} (its finished epochs are kept as they are)")
