"""File helpers: atomic writes, pickle-free ``.npz`` archives, string metadata in arrays.

This module knows nothing about models or training: :mod:`npvae.model` (the model file)
and :mod:`npvae.train` (the checkpoint) decide what goes into a file; this module makes
sure it gets there whole and comes back safely.

* **Atomic writes.** :func:`atomic_savez` and :func:`atomic_write_text` write to a
  temporary file in the destination's directory, flush and ``fsync`` it, then
  ``os.replace`` it onto the destination. A reader (or a crash, or a full disk, or
  Ctrl-C) therefore sees either the complete old file or the complete new one, never a
  half-written checkpoint. The temporary file is removed on any failure.
* **No pickles.** Object arrays are refused when saving, and :func:`load_npz` reads with
  ``allow_pickle=False``, so loading a file cannot execute code. Text metadata (a run's
  configuration, a format version) is stored as 0-d unicode arrays, see
  :func:`to_str_array` and :func:`to_json_array`.
* **Clear errors.** A damaged, truncated or foreign file raises :class:`ModelFileError`
  (a ``ValueError``) naming the path, rather than whatever ``zipfile``, ``zlib`` or
  NumPy's header parser happened to trip over.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import stat
import tempfile
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Dict, Mapping, Union

import numpy as np

__all__ = [
    "ModelFileError",
    "atomic_savez",
    "atomic_write_text",
    "load_npz",
    "to_str_array",
    "from_str_array",
    "to_json_array",
    "from_json_array",
]

PathLike = Union[str, "os.PathLike[str]"]

_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest date a zip entry can hold


class ModelFileError(ValueError):
    """A file exists but is damaged, truncated, or not the npvae file it should be."""


# ----------------------------------------------------------------------------------------
# Atomic writes
# ----------------------------------------------------------------------------------------

def _umask() -> int:
    # /proc lets us read the umask without os.umask's set-and-restore, which would
    # briefly change it for every other thread of the process
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _final_mode(path: Path) -> int:
    """Permissions for the new file: the old file's, else what ``open()`` would give."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        # mkstemp creates files 0600; a checkpoint should be as readable as any file
        # the user creates, so apply the usual default 0666 minus the umask
        return 0o666 & ~_umask()


def _fsync_dir(directory: Path) -> None:
    # makes the rename itself durable on POSIX; not possible (nor needed) on Windows
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _atomic_write(path: PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(f)`` on a temporary file beside ``path``, then rename it onto ``path``."""
    path = Path(os.fspath(path))
    parent = path.parent
    parent.mkdir(parents=True, exist_ok=True)
    # same directory, hence same file system, which is what makes os.replace atomic
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _final_mode(path))
        os.replace(tmp, path)
    except BaseException:
        # BaseException: a Ctrl-C mid-write must not leave a stray temp file either;
        # the with-block has already closed the file
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(parent)
    return path


def _check_arrays(arrays: Mapping[str, Any]) -> Dict[str, np.ndarray]:
    if not isinstance(arrays, Mapping):
        raise ValueError(f"arrays must be a dict of name -> ndarray, got {type(arrays).__name__}")
    checked = {}
    for key, value in arrays.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"arrays keys must be non-empty strings, got {key!r}")
        try:
            a = np.asarray(value)
        except (ValueError, TypeError) as exc:  # e.g. ragged nested lists
            raise ValueError(f"arrays[{key!r}] must be an array, got {type(value).__name__} "
                             f"that NumPy cannot convert ({exc})") from exc
        if a.dtype.hasobject:
            raise ValueError(
                f"arrays[{key!r}] must not be an object array (it could only be read back "
                f"with allow_pickle=True); got dtype {a.dtype} from {type(value).__name__}. "
                "Store text with to_str_array() or to_json_array()")
        checked[key] = a
    return checked


def atomic_savez(path: PathLike, arrays: Mapping[str, np.ndarray], compress: bool = False) -> Path:
    """Write ``arrays`` to an ``.npz`` file atomically.

    The archive has the layout of ``np.savez`` (one ``<key>.npy`` member per array) and
    loads with ``np.load(path, allow_pickle=False)`` or :func:`load_npz`.

    Equal arrays under equal keys give byte-identical files (the zip entries carry a
    fixed timestamp).

    Parameters
    ----------
    path : str or os.PathLike
        Destination, used exactly as given (no ``.npz`` is appended, unlike
        ``np.savez``). Missing parent directories are created. An existing file is
        replaced, keeping its permissions.
    arrays : mapping of str to array_like
        Non-empty string keys (``"/"`` is allowed, e.g. ``"optim/m/enc_w1"``) to
        arrays; array-likes are converted with ``np.asarray``. Object arrays are
        refused.
    compress : bool, default False
        Deflate the members, like ``np.savez_compressed``: smaller files, slower writes.

    Returns
    -------
    pathlib.Path
        The path written.

    Raises
    ------
    ValueError
        If a key is not a non-empty string or a value is (or becomes) an object array;
        nothing is written then.
    OSError
        If writing fails; ``path`` is then left as it was and the temporary file is
        removed.
    """
    checked = _check_arrays(arrays)
    compression = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED

    def write(f: BinaryIO) -> None:
        # the loop inside np.savez, written out so that keys such as "file" cannot
        # collide with its keyword arguments, and pickling is off at the source too
        with zipfile.ZipFile(f, mode="w", compression=compression, allowZip64=True) as zf:
            for key, a in checked.items():
                # a fixed timestamp (np.savez stamps the current time) makes equal
                # arrays give byte-identical files, so checkpoints can be compared by hash
                info = zipfile.ZipInfo(key + ".npy", date_time=_ZIP_EPOCH)
                info.compress_type = compression
                with zf.open(info, mode="w", force_zip64=True) as member:
                    np.lib.format.write_array(member, a, allow_pickle=False)

    return _atomic_write(path, write)


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (for JSON and other small text files).

    Parameters
    ----------
    path : str or os.PathLike
        Destination; missing parent directories are created, an existing file is
        replaced, keeping its permissions.
    text : str
        Written as is: no newline is added and ``"\\n"`` is not translated.
    encoding : str, default "utf-8"

    Returns
    -------
    pathlib.Path
        The path written.

    Raises
    ------
    ValueError
        If ``text`` is not a str.
    OSError
        If writing fails; ``path`` is then left as it was.
    """
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")
    data = text.encode(encoding)
    return _atomic_write(path, lambda f: f.write(data))


# ----------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------

def load_npz(path: PathLike) -> Dict[str, np.ndarray]:
    """Read every array of an ``.npz`` file into memory, without unpickling anything.

    Parameters
    ----------
    path : str or os.PathLike
        The file, e.g. one written by :func:`atomic_savez` or ``np.savez``.

    Returns
    -------
    dict of str to ndarray
        All members, in archive order. The whole file is read into memory (briefly
        holding the raw bytes beside the arrays) and closed before parsing.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist (the message names it).
    ModelFileError
        A ``ValueError``: the file is truncated or damaged, is not an ``.npz`` archive
        (a lone ``.npy``, text, a pickle), or holds object arrays. The original error
        is chained as ``__cause__``.
    """
    path = Path(os.fspath(path))
    # Read the bytes first: an I/O error then surfaces here as the OSError it is, and
    # anything that goes wrong below is about the content (a bad zip offset, for one,
    # raises OSError(EINVAL) from seek, indistinguishable from a disk error otherwise)
    with open(path, "rb") as f:
        data = f.read()
    try:
        loaded = np.load(io.BytesIO(data), allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError(f"it holds a single {type(loaded).__name__}, not an .npz archive")
        with loaded:
            return {key: loaded[key] for key in loaded.files}
    except MemoryError:
        raise
    except Exception as exc:
        # zipfile, zlib, NumPy's header parser (even tokenize) each raise their own
        # types on damaged bytes; the caller only needs to know the file is bad
        raise ModelFileError(
            f"{str(path)!r} is damaged or is not an npvae .npz file "
            f"({type(exc).__name__}: {exc})") from exc


# ----------------------------------------------------------------------------------------
# Text metadata as arrays
# ----------------------------------------------------------------------------------------

def to_str_array(s: str) -> np.ndarray:
    """Pack a string into a 0-d unicode array, storable in an ``.npz`` without pickling.

    Parameters
    ----------
    s : str
        Any text not ending in ``"\\x00"`` (NumPy's fixed-width unicode arrays drop
        trailing NUL characters, so such text would not round-trip).

    Returns
    -------
    ndarray
        Shape ``()``, dtype ``<U{len(s)}``; :func:`from_str_array` gives ``s`` back.
    """
    if not isinstance(s, str):
        raise ValueError(f"s must be a str, got {type(s).__name__}")
    if s.endswith("\x00"):
        raise ValueError("s must not end with a NUL character ('\\x00'): NumPy strips it")
    return np.array(s, dtype=np.str_)


def from_str_array(a: np.ndarray) -> str:
    """Unpack the string held by a 0-d unicode array (see :func:`to_str_array`).

    Parameters
    ----------
    a : ndarray
        Shape ``()`` (or one element), unicode dtype.

    Returns
    -------
    str

    Raises
    ------
    ValueError
        If ``a`` is not a single-element unicode array.
    """
    if not isinstance(a, np.ndarray) or a.dtype.kind != "U" or a.size != 1:
        raise ValueError(
            "a must be a 0-d unicode array (from to_str_array), got "
            f"{type(a).__name__}"
            + (f" of dtype {a.dtype} and shape {a.shape}" if isinstance(a, np.ndarray) else ""))
    return str(a.reshape(()).item())


def to_json_array(obj: Any) -> np.ndarray:
    """Pack JSON-serializable metadata (nested dicts, lists, numbers, strings) into a
    0-d unicode array.

    Keys are sorted, so equal metadata gives identical arrays (and files).

    Parameters
    ----------
    obj : JSON-serializable
        Plain Python values; NumPy scalars and arrays are not accepted (convert with
        ``.item()`` / ``.tolist()``).

    Returns
    -------
    ndarray
        Shape ``()``, unicode dtype; :func:`from_json_array` gives ``obj`` back (with
        tuples as lists, as JSON does).

    Raises
    ------
    ValueError
        If ``obj`` is not JSON-serializable.
    """
    try:
        text = json.dumps(obj, sort_keys=True, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"obj must be JSON-serializable: {exc}") from exc
    return to_str_array(text)


def from_json_array(a: np.ndarray) -> Any:
    """Unpack metadata packed by :func:`to_json_array`.

    Raises
    ------
    ValueError
        If ``a`` is not a single-element unicode array or does not hold valid JSON.
    """
    text = from_str_array(a)
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ValueError(f"a must hold JSON text (from to_json_array): {exc}") from exc
