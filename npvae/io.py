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
* **Sizes checked before reading.** :func:`load_npz` reads every member's ``.npy`` header
  first and refuses, naming the file and the member, one that declares more data than
  its zip entry holds or an entry that inflates beyond the size it records (a zip
  bomb); :func:`npz_headers` gives the declared shapes alone, so a caller can check
  them (against a model's architecture, say) before any array is allocated.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import os
import stat
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import (Any, BinaryIO, Callable, Dict, Iterable, Mapping, NamedTuple, Optional, Tuple,
                    Union)

import numpy as np

__all__ = [
    "ModelFileError",
    "atomic_savez",
    "atomic_write_text",
    "load_npz",
    "npz_headers",
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
    except BaseException as exc:
        # BaseException: a Ctrl-C mid-write must not leave a stray temp file either;
        # the with-block has already closed the file
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.filename in (None, tmp):
            # a failed write (ENOSPC, EIO) names no file, a failed rename the temporary one:
            # name the destination, the file the caller asked for
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise
    _fsync_dir(parent)
    return path


def _check_arrays(arrays: Mapping[str, Any]) -> Dict[str, np.ndarray]:
    if not isinstance(arrays, Mapping):
        raise ValueError(f"arrays: expected a dict of name -> ndarray, got {type(arrays).__name__}")
    checked = {}
    for key, value in arrays.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"arrays: expected non-empty string keys, got {key!r}")
        try:
            a = np.asarray(value)
        except (ValueError, TypeError) as exc:  # e.g. ragged nested lists
            raise ValueError(f"arrays[{key!r}]: expected an array, got {type(value).__name__} "
                             f"that NumPy cannot convert ({exc})") from exc
        if a.dtype.hasobject:
            raise ValueError(
                f"arrays[{key!r}]: expected an array of numbers or text, not objects (it could only be read back "
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
        raise ValueError(f"text: expected a str, got {type(text).__name__}")
    data = text.encode(encoding)
    return _atomic_write(path, lambda f: f.write(data))


# ----------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------

# Deflate cannot expand data more than 1032:1 (a 258-byte match coded in 2 bits; zlib's
# documentation), so an entry recording a larger uncompressed size is lying
_MAX_DEFLATE_RATIO = 1032
_DEFLATE_SLACK = 1024  # block headers and the end of the stream


class _Member(NamedTuple):
    """One ``.npy`` member as its zip entry and its header describe it."""

    info: zipfile.ZipInfo
    shape: Tuple[int, ...]
    dtype: np.dtype
    nbytes: int  # prod(shape) * itemsize: what the header declares


def _damaged(source: str, exc: BaseException) -> ModelFileError:
    # zipfile, zlib, NumPy's header parser (even tokenize) each raise their own types on
    # damaged bytes; the caller only needs to know the file is bad
    return ModelFileError(f"{source} is damaged or is not an npvae .npz file "
                          f"({type(exc).__name__}: {exc})")


def _read_file(path: Path) -> bytes:
    # Read the bytes first: an I/O error then surfaces here as the OSError it is, and
    # anything that goes wrong below is about the content (a bad zip offset, for one,
    # raises OSError(EINVAL) from seek, indistinguishable from a disk error otherwise)
    with open(path, "rb") as f:
        return f.read()


def _open_zip(data: bytes) -> zipfile.ZipFile:
    if data.startswith(np.lib.format.MAGIC_PREFIX):
        raise ValueError("it holds a single ndarray, not an .npz archive")
    return zipfile.ZipFile(io.BytesIO(data))


class _Counted:
    """A zip member's stream that counts and checksums the bytes it delivers."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream, self.count, self.crc = stream, 0, 0

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self.count += len(data)
        self.crc = zlib.crc32(data, self.crc)
        return data


def _read_header(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> Tuple[tuple, bool, np.dtype, int]:
    """``(shape, fortran_order, dtype, header_bytes)`` of a member, reading only its header."""
    with zf.open(info) as stream:
        member = _Counted(stream)
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(member)
        elif version in ((2, 0), (3, 0)):
            # 3.0 has 2.0's layout with a UTF-8 header (for non-Latin-1 field names of a
            # structured dtype); read as 2.0, only such names come out garbled, never the
            # sizes. The arrays themselves are decoded by np.lib.format.read_array.
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(member)
        else:
            raise ValueError(f"member {info.filename!r} has unknown .npy format version {version}")
        return shape, fortran, dtype, member.count


def _members(zf: zipfile.ZipFile, size: int, source: str) -> Dict[str, _Member]:
    """Every member's declared array, after checking the archive could really hold it.

    Reads the headers only (a few hundred bytes a member), so a hostile file is refused
    before anything of the size it claims is allocated or inflated. Raises
    ModelFileError for a size that does not add up; the damage zipfile and NumPy's
    header parser find themselves is left to the caller to wrap.
    """
    def bad(key: str, why: str) -> ModelFileError:
        return ModelFileError(f"{source}: member {key!r} {why}")

    infos = zf.infolist()
    stored = sum(info.compress_size for info in infos)
    if stored > size:
        # members overlapping in the file (the classic zip bomb) or lying about their size
        raise ModelFileError(f"{source}: its zip entries record {stored} compressed bytes but "
                             f"the file has only {size}; it is damaged or a zip bomb")
    members = {}
    for info in infos:
        name = info.filename
        key = name[:-len(".npy")] if name.endswith(".npy") else name
        if info.compress_type == zipfile.ZIP_STORED:
            most = info.compress_size
        elif info.compress_type == zipfile.ZIP_DEFLATED:
            most = info.compress_size * _MAX_DEFLATE_RATIO + _DEFLATE_SLACK
        else:
            # bzip2 and lzma have no useful bound on their expansion (and zipfile inflates
            # them unbounded); NumPy writes stored or deflated members only
            raise bad(key, f"is compressed with zip method {info.compress_type}; only stored "
                           "and deflated members (what np.savez writes) are read")
        if info.file_size > most:
            raise bad(key, f"records {info.file_size} uncompressed bytes, more than its "
                           f"{info.compress_size} stored bytes can hold; it is damaged or a zip bomb")
        shape, _, dtype, header = _read_header(zf, info)
        if dtype.hasobject:
            raise bad(key, f"holds a pickled object array (dtype {dtype}), which is never "
                           "loaded (allow_pickle=False)")
        if any(n < 0 for n in shape):
            raise bad(key, f"declares the impossible shape {shape}")
        nbytes = math.prod(shape) * dtype.itemsize
        payload = info.file_size - header
        if nbytes != payload:
            more = "more than" if nbytes > payload else "not all of"
            raise bad(key, f"declares shape {shape} dtype {dtype}, i.e. {nbytes} bytes, {more} "
                           f"the {payload} bytes its zip entry records after the header")
        members[key] = _Member(info, tuple(shape), dtype, nbytes)
    return members


def _read_member(zf: zipfile.ZipFile, m: _Member, key: str, source: str) -> np.ndarray:
    # Open the entry as if it were one byte longer than recorded: zipfile otherwise cuts
    # a stream that inflates further, and reports it as a bad CRC, so a zip bomb shows
    # itself by delivering that byte. zipfile's CRC check, which would then fire first,
    # is off (CRC None) and made here instead, over the bytes the entry records.
    probe = copy.copy(m.info)
    probe.file_size, probe.CRC = m.info.file_size + 1, None
    with zf.open(probe) as stream:
        member = _Counted(stream)
        array = np.lib.format.read_array(member, allow_pickle=False)
        member.read(1)
    if member.count > m.info.file_size:
        raise ModelFileError(f"{source}: member {key!r} inflates beyond the {m.info.file_size} "
                             "bytes its zip entry records; it is damaged or a zip bomb")
    if member.crc != m.info.CRC:
        raise ModelFileError(f"{source} is damaged or is not an npvae .npz file "
                             f"(member {key!r} fails its CRC-32 check)")
    return array


def npz_headers(path: PathLike) -> Dict[str, Tuple[Tuple[int, ...], np.dtype]]:
    """The shape and dtype of every array of an ``.npz`` file, reading only the headers.

    Lets a caller check what a file declares (against a model's architecture, say)
    before :func:`load_npz` allocates anything. The checks of :func:`load_npz` on the
    members' sizes are made here too.

    Parameters
    ----------
    path : str or os.PathLike
        The file.

    Returns
    -------
    dict of str to (tuple of int, numpy.dtype)
        ``{name: (shape, dtype)}`` in archive order, names as :func:`load_npz` gives
        them.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ModelFileError
        If the file is damaged, not an ``.npz`` archive, holds object arrays, or a
        member declares more (or less) data than its zip entry holds.
    """
    path = Path(os.fspath(path))
    source = repr(str(path))
    data = _read_file(path)
    try:
        with _open_zip(data) as zf:
            members = _members(zf, len(data), source)
    except (ModelFileError, MemoryError):
        raise
    except Exception as exc:
        raise _damaged(source, exc) from exc
    return {key: (m.shape, m.dtype) for key, m in members.items()}


def load_npz(path: PathLike, max_bytes: Optional[int] = None,
             keys: Optional[Iterable[str]] = None) -> Dict[str, np.ndarray]:
    """Read the arrays of an ``.npz`` file into memory, without unpickling anything.

    Every member's ``.npy`` header is read and checked before any array is: a member
    whose header declares more data than its zip entry holds, or whose entry records
    more than its compressed bytes can inflate to, is refused without allocating
    anything; a member that inflates beyond the size its entry records (a zip bomb) is
    refused as soon as it does.

    Parameters
    ----------
    path : str or os.PathLike
        The file, e.g. one written by :func:`atomic_savez` or ``np.savez``.
    max_bytes : int, optional
        Refuse the file, before reading any array, if the arrays read would total more
        than this many bytes. None: no cap beyond the checks above (which bound the
        arrays by about 1000 times the file's size, deflate's largest ratio).
    keys : iterable of str, optional
        Read only these members (e.g. a file's small metadata before its arrays); names
        the file does not hold are left out of the result. None: every member.

    Returns
    -------
    dict of str to ndarray
        The members, in archive order. The whole file is read into memory (briefly
        holding the raw bytes beside the arrays) and closed before parsing.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist (the message names it).
    ModelFileError
        A ``ValueError`` naming the file: it is truncated or damaged, is not an ``.npz``
        archive (a lone ``.npy``, text, a pickle), holds object arrays, a member's size
        does not add up (the message names the member and what it declares), or the
        arrays exceed ``max_bytes``. The original error, if any, is chained as
        ``__cause__``.
    ValueError
        If ``max_bytes`` is not a non-negative int.
    """
    if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int)
                                  or max_bytes < 0):
        raise ValueError(f"max_bytes: expected a non-negative int or None, got {max_bytes!r}")
    wanted = None if keys is None else set(keys)
    path = Path(os.fspath(path))
    source = repr(str(path))
    data = _read_file(path)
    try:
        with _open_zip(data) as zf:
            members = _members(zf, len(data), source)
            if wanted is not None:
                members = {k: m for k, m in members.items() if k in wanted}
            total = 0
            for key, m in members.items():
                total += m.nbytes
                if max_bytes is not None and total > max_bytes:
                    raise ModelFileError(
                        f"{source}: its arrays take more than max_bytes={max_bytes} bytes "
                        f"(member {key!r} declares shape {m.shape} dtype {m.dtype}, "
                        f"{m.nbytes} bytes)")
            return {key: _read_member(zf, m, key, source) for key, m in members.items()}
    except (ModelFileError, MemoryError):
        raise
    except Exception as exc:
        raise _damaged(source, exc) from exc


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
        raise ValueError(f"s: expected a str, got {type(s).__name__}")
    if s.endswith("\x00"):
        raise ValueError("s: expected text that does not end with a NUL character ('\\x00'): NumPy strips it")
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
            "a: expected a 0-d unicode array (from to_str_array), got "
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
        raise ValueError(f"obj: expected JSON-serializable values: {exc}") from exc
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
        raise ValueError(f"a: expected JSON text (from to_json_array): {exc}") from exc
