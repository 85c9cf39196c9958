"""The model file and the training checkpoint: pickle-free ``.npz`` files, written atomically.

A **model file** (:func:`save_model`) holds ``format`` (:data:`MODEL_FORMAT`), ``version``
(:data:`MODEL_VERSION`), ``config`` (the model's constructor arguments as JSON),
``npvae_version`` (the package that wrote it; files of older versions lack it) and one
``param/<name>`` array per parameter.

A **checkpoint** (:func:`save_checkpoint`) is a model file plus ``checkpoint``
(:data:`CHECKPOINT_FORMAT`), ``optim/<key>`` (the optimizer's state dict) and ``train``
(JSON: epochs done, RNG state, settings, per-epoch history), so :func:`npvae.load` reads a
checkpoint's model too.

Reading checks what a file declares before anything large is read: the array headers,
then the small metadata under a cap, then the parameters' shapes against the stored
architecture (and a checkpoint's optimizer state against the parameters), and only then
the arrays. This module returns a model's ``config`` and parameters; building the
:class:`npvae.VAE` from them is :mod:`npvae.model`'s (so this module does not import it).
"""

import sys
from importlib import metadata
from pathlib import Path

import numpy as np

from . import io
from .io import ModelFileError
from .params import Schema

__all__ = ["MODEL_FORMAT", "MODEL_VERSION", "CHECKPOINT_FORMAT", "package_version", "model_arrays", "save_model",
           "read_model", "model_parts", "checked_headers", "save_checkpoint", "read_checkpoint"]

#: The ``format`` of a model file. Other files may hold a model and more (a checkpoint does).
MODEL_FORMAT = "npvae-model"
MODEL_VERSION = 1
#: The ``checkpoint`` marker of a training checkpoint.
CHECKPOINT_FORMAT = "npvae-checkpoint"

#: Members of a model file other than ``param/<name>``, all small (``npvae_version`` optional).
_METADATA = ("format", "version", "config", "npvae_version")
#: A cap on the metadata members' size: a config is a few hundred bytes of JSON.
_MAX_METADATA_BYTES = 1 << 20
#: The members of a checkpoint besides its ``param/`` and ``optim/`` arrays.
_CHECKPOINT_KEYS = _METADATA + ("checkpoint", "train")
#: A cap on the training record's size (a JSON string of its settings and per-epoch
#: history: about 200 bytes an epoch as UTF-32, so this holds over a million epochs).
_MAX_RECORD_BYTES = 1 << 28


def package_version():
    """``npvae.__version__``, recorded in the files npvae writes (model files, checkpoints,
    a run folder's ``config.json``). Read from the loaded package (which imports this
    module, so this module cannot import it), else from the installed package's metadata;
    None if neither says."""
    version = getattr(sys.modules.get(__name__.rpartition(".")[0]), "__version__", None)
    if version is None:
        try:
            version = metadata.version("npvae")
        except metadata.PackageNotFoundError:
            pass
    return version


# ----------------------------------------------------------------------------------------
# The model file
# ----------------------------------------------------------------------------------------
def model_arrays(model):
    """The arrays that describe ``model`` (anything with ``config`` and ``params``, e.g. an
    :class:`npvae.VAE`): its metadata and ``param/<name>`` arrays."""
    arrays = {"format": io.to_str_array(MODEL_FORMAT),
              "version": np.array(MODEL_VERSION),
              "config": io.to_json_array(model.config)}
    version = package_version()
    if version is not None:
        arrays["npvae_version"] = io.to_str_array(version)
    arrays.update({f"param/{k}": v for k, v in model.params.items()})
    return arrays


def save_model(model, path):
    """Write ``model`` (architecture and parameters) to a versioned ``.npz``, atomically;
    returns the path."""
    return io.atomic_savez(path, model_arrays(model))


def _param_shapes(config):
    """``{name: shape}`` of the parameters of the VAE that ``config`` describes.

    The parameter schema (:class:`npvae.params.Schema`) of the config's sizes (the model's
    class is not needed to check a file). ValueError unless the sizes are positive integers.
    """
    d, hidden, latent = config["input_dim"], config["hidden"], config["latent_dim"]
    if not isinstance(hidden, list) or not hidden or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in [d, latent, *hidden]):
        raise ValueError(f"input_dim, hidden, latent_dim: expected positive integers (hidden a non-empty list of "
                         f"them), got {d!r}, {hidden!r}, {latent!r}")
    return Schema(d, hidden, latent).shapes()


def _read_metadata(arrays, source):
    """The stored ``config``, after checking the format, the version and what the
    parameters' layout depends on (the sizes and the dtype; the rest is the VAE's to check)."""
    def bad(why):
        return ModelFileError(f"{source}: {why}")

    try:
        fmt = io.from_str_array(arrays["format"])
        version = int(arrays["version"])
        config = io.from_json_array(arrays["config"])
    except (KeyError, ValueError, TypeError) as exc:
        raise bad(f"not an npvae model file (missing or unreadable metadata: {exc})") from exc
    if fmt != MODEL_FORMAT:
        raise bad(f"expected format {MODEL_FORMAT!r}, got {fmt!r}")
    if version > MODEL_VERSION or version < 1:
        raise bad(f"file format version {version} is not supported by this npvae "
                  f"(it reads versions 1 to {MODEL_VERSION}); upgrade npvae to read it")
    if not isinstance(config, dict):
        raise bad(f"config: expected a JSON object of the model's settings, got {type(config).__name__}")
    try:
        _param_shapes(config)
        if config["dtype"] not in ("float32", "float64"):
            raise ValueError(f"dtype: expected 'float32' or 'float64', got {config['dtype']!r}")
    except KeyError as exc:
        raise bad(f"the stored architecture is not valid: config has no {exc}") from exc
    except ValueError as exc:
        raise bad(f"the stored architecture is not valid: {exc}") from exc
    return config


def _check_param_layout(config, layout, source):
    """Raise ModelFileError naming ``source`` and the parameter unless ``layout``
    (``{"param/<name>": (shape, dtype)}``, other keys ignored) holds exactly the parameters
    of ``config``'s architecture, with their shapes and its dtype."""
    def bad(why):
        return ModelFileError(f"{source}: {why}")

    shapes, dtype = _param_shapes(config), np.dtype(config["dtype"])
    stored = {k[len("param/"):] for k in layout if k.startswith("param/")}
    if stored != set(shapes):
        raise bad(f"the parameters do not match the stored architecture {config}: "
                  f"missing {sorted(set(shapes) - stored)}, unexpected {sorted(stored - set(shapes))}")
    for name, want in shapes.items():
        shape, got = layout[f"param/{name}"]
        if shape != want or got != dtype:
            raise bad(f"param {name!r}: expected shape {want} dtype {dtype} for the stored "
                      f"architecture, got shape {shape} dtype {got}")


def model_parts(arrays, source):
    """``(config, params)`` from :func:`model_arrays`' output (read from ``source``), checked.

    Raises :class:`npvae.io.ModelFileError` naming ``source`` when the format, the version,
    the architecture or the parameters (their names, shapes, dtype, finiteness) are wrong.
    """
    config = _read_metadata(arrays, source)
    _check_param_layout(config, {k: (a.shape, a.dtype) for k, a in arrays.items()}, source)
    params = {}
    for name in _param_shapes(config):
        a = arrays[f"param/{name}"]
        if not np.isfinite(a).all():
            raise ModelFileError(f"{source}: param {name!r} holds NaN or inf")
        params[name] = np.array(a)
    return config, params


def checked_headers(path, source, headers=None):
    """The ``{name: (shape, dtype)}`` headers of the model file (or checkpoint) at ``path``,
    after checking the parameters they declare against the file's stored architecture.

    Headers first, then the small metadata alone (under a cap): a hostile or mismatched
    file allocates nothing big. ``headers``: the file's :func:`npvae.io.npz_headers`, if
    the caller has them already.
    """
    if headers is None:
        headers = io.npz_headers(path)
    metadata = io.load_npz(path, max_bytes=_MAX_METADATA_BYTES, keys=_METADATA)
    _check_param_layout(_read_metadata(metadata, source), headers, source)
    return headers


def _existing(path, what):
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {str(path)!r}")
    return path, repr(str(path))


def read_model(path):
    """``(config, params)`` of the model stored at ``path`` (a model file or a checkpoint),
    checked; a checkpoint's other members stay unread.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ModelFileError
        A ``ValueError`` naming the file: a folder, a damaged file, an unknown format or
        version, or parameters that do not fit the stored architecture (found from the
        arrays' headers, before any parameter is read).
    """
    path, source = _existing(path, "model file")
    if path.is_dir():
        raise ModelFileError(f"{source} is a folder, not a model file (a run folder holds model.npz)")
    headers = checked_headers(path, source)
    keys = [k for k in headers if k in _METADATA or k.startswith("param/")]
    return model_parts(io.load_npz(path, keys=keys), source)


# ----------------------------------------------------------------------------------------
# The checkpoint
# ----------------------------------------------------------------------------------------
def save_checkpoint(path, model, optimizer_state, rng_state, history, settings):
    """Write a checkpoint atomically: ``model``'s arrays, ``optimizer_state`` (a state dict,
    as :meth:`npvae.optim.Optimizer.state_dict`), and the training record: epochs done
    (``len(history)``), ``rng_state`` (a bit generator's state), ``settings`` (from
    :func:`npvae.settings.checkpoint_settings`) and ``history`` (a list of per-epoch dicts)."""
    arrays = model_arrays(model)
    arrays["checkpoint"] = io.to_str_array(CHECKPOINT_FORMAT)
    arrays.update({f"optim/{k}": v for k, v in optimizer_state.items()})
    arrays["train"] = io.to_json_array({"epoch": len(history), "rng_state": rng_state,
                                        "settings": settings, "history": list(history)})
    return io.atomic_savez(path, arrays)


def _check_optimizer_layout(headers, source):
    """The one check of a checkpoint's optimizer state against its parameters, made on the
    headers (before reading): scalars are 0-d; each ``<slot>/<param>`` array has its
    parameter's shape and dtype; a slot holds every parameter or none."""
    params = {k[len("param/"):]: v for k, v in headers.items() if k.startswith("param/")}
    slots = {}
    for key, (shape, dtype) in headers.items():
        if not key.startswith("optim/"):
            continue
        state = key[len("optim/"):]
        slot, sep, name = state.partition("/")
        if not sep:
            if shape != ():
                raise ModelFileError(f"{source}: optimizer state {state}: declares shape {shape}, expected ()")
            continue
        want = params.get(name)
        if want is None or shape != want[0]:
            expected = want[0] if want else "no state for an unknown parameter"
            raise ModelFileError(f"{source}: optimizer state {state}: declares shape {shape}, expected {expected}")
        if dtype != want[1]:
            raise ModelFileError(f"{source}: optimizer state {state}: declares dtype {dtype}, expected "
                                 f"{want[1]} (its parameter's)")
        slots.setdefault(slot, set()).add(name)
    for slot, names in slots.items():
        if names != set(params):
            raise ModelFileError(f"{source}: optimizer state {slot}: holds no array for the parameters "
                                 f"{sorted(set(params) - names)}")


def _read_marker(path, headers):
    if "train" not in headers or headers.get("checkpoint", (None,))[0] != ():
        return None
    try:
        return io.from_str_array(io.load_npz(path, max_bytes=1 << 10, keys=["checkpoint"])["checkpoint"])
    except ValueError:
        return None


def _training_record(arrays, source):
    def bad(what):
        return ModelFileError(f"{source}: {what}")

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
    return meta


def read_checkpoint(path):
    """Read a training checkpoint, checked part by part.

    Returns
    -------
    dict
        ``config`` and ``params`` (the model's, as :func:`read_model`), ``optimizer_state``
        (a state dict), ``epoch`` (epochs completed), ``rng_state``, ``settings`` (as
        stored: :func:`npvae.settings.upgrade_checkpoint_settings` reads older layouts)
        and ``history`` (a list of per-epoch dicts).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ModelFileError
        A ``ValueError`` naming the file and the part: damaged, not a checkpoint, or a part
        (the parameters, the optimizer state, the training record, its epoch, RNG state,
        settings or history) of the wrong shape.
    """
    path, source = _existing(path, "checkpoint")
    headers = io.npz_headers(path)
    if _read_marker(path, headers) != CHECKPOINT_FORMAT:
        raise ModelFileError(f"{source} is not an npvae training checkpoint")
    checked_headers(path, source, headers)
    _check_optimizer_layout(headers, source)
    shape, dtype = headers["train"]
    if shape != () or dtype.itemsize > _MAX_RECORD_BYTES:
        raise ModelFileError(f"{source}: train: declares shape {shape} dtype {dtype}, expected one JSON string "
                             f"of at most {_MAX_RECORD_BYTES} bytes")
    arrays = io.load_npz(path, keys=[k for k in headers if k in _CHECKPOINT_KEYS or k.startswith(("param/", "optim/"))])
    config, params = model_parts(arrays, source)
    meta = _training_record(arrays, source)
    return dict(config=config, params=params, epoch=meta["epoch"], rng_state=meta["rng_state"],
                settings=meta["settings"], history=meta["history"],
                optimizer_state={k[len("optim/"):]: v for k, v in arrays.items() if k.startswith("optim/")})
