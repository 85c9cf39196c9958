"""MNIST: find, download, verify and decode the IDX files; binarize pixels.

`load_mnist` looks for the data in three places, in order:

1. the ``path`` argument (a folder, or a path to Keras' ``mnist.npz``);
2. the ``NPVAE_DATA`` environment variable (same meaning);
3. the user cache, :func:`cache_dir` (``$XDG_CACHE_HOME/npvae`` or ``~/.cache/npvae``).

A folder counts when it holds the four canonical IDX files (each raw or gzipped)::

    train-images-idx3-ubyte   train-labels-idx1-ubyte
    t10k-images-idx3-ubyte    t10k-labels-idx1-ubyte

or, failing that, Keras' ``mnist.npz``. When no place has them, the missing ``.gz`` files are
downloaded into the cache from the mirrors in :data:`MIRRORS`.

Every IDX file is checked against the MD5 of its *uncompressed* bytes (:data:`MNIST_FILES`),
so a gzipped and a raw copy of the same file verify alike; ``mnist.npz`` carries no canonical
checksum, so its keys, shapes and dtypes are checked instead. A ``.gz`` is inflated no further
than the size its IDX header gives, and never beyond the size of the MNIST file of its name, so
a gzip bomb is refused without being inflated.

Anything wrong with the data (a missing, truncated or corrupt file, a bad IDX header, no network)
raises :class:`DataError`, whose message names the file, what was expected and where the
files may be put. Bad *arguments* raise ``TypeError``/``ValueError`` as usual.

Only NumPy and the standard library are imported.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import math
import os
import struct
import sys
import tempfile
import types
import urllib.request
import zipfile
import zlib
from pathlib import Path
from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "BINARIZE_METHODS",
    "DataError",
    "MIRRORS",
    "MNIST_FILES",
    "binarize",
    "cache_dir",
    "holds_mnist",
    "locate_mnist",
    "load_mnist",
    "read_idx",
]


class DataError(RuntimeError):
    """The MNIST data could not be found, downloaded, verified or decoded.

    The message says which file, what was expected of it, and where ``load_mnist`` looks for
    the files (including the ``NPVAE_DATA`` environment variable).
    """


#: MD5 of the uncompressed bytes of each canonical MNIST file (the same digests torchvision
#: and TensorFlow check). Read-only; pass ``checksums=`` to `load_mnist` to use others.
MNIST_FILES: Mapping[str, str] = types.MappingProxyType(
    {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    }
)

#: Uncompressed size of each canonical MNIST file: the most a file of that name may
#: inflate to (decompression stops there; other data in MNIST's layout may be smaller).
_MNIST_SIZES: Mapping[str, int] = types.MappingProxyType(
    {
        "train-images-idx3-ubyte": 47_040_016,
        "train-labels-idx1-ubyte": 60_008,
        "t10k-images-idx3-ubyte": 7_840_016,
        "t10k-labels-idx1-ubyte": 10_008,
    }
)

#: Base URLs tried in turn; each serves ``<name>.gz`` for the four names in `MNIST_FILES`.
#: (yann.lecun.com, the original host, now often refuses automated downloads.)
MIRRORS: Tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)

# (split, images file, labels file)
_SPLITS = (
    ("train", "train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    ("test", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
)
_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dims (n, rows, cols)
_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dim (n,)
_NPZ_NAME = "mnist.npz"
_NPZ_SHAPES = {
    "x_train": (60000, 28, 28),
    "y_train": (60000,),
    "x_test": (10000, 28, 28),
    "y_test": (10000,),
}
_ENV_VAR = "NPVAE_DATA"
_GZIP_MAGIC = b"\x1f\x8b"
_TIMEOUT = 60.0  # seconds without data before a mirror counts as failed
_CHUNK = 1 << 16

# IDX type byte -> dtype; multi-byte types are big-endian on disk.
_IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

# (resolved path, size, mtime_ns) -> MD5 already checked in this process. Decompressing is
# unavoidable on every load, but hashing 47 MB again is not; a rewritten file changes its
# size or mtime, which drops it out of this table.
_VERIFIED: Dict[Tuple[str, int, int], str] = {}


def cache_dir() -> Path:
    """Return the user cache folder where downloads go.

    Returns
    -------
    pathlib.Path
        ``$XDG_CACHE_HOME/npvae`` if ``XDG_CACHE_HOME`` is set to an absolute path, else
        ``~/.cache/npvae``. The folder is not created here.
    """
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    # The XDG spec says a relative value is invalid and must be ignored.
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "npvae"


# --------------------------------------------------------------------------------------------
# IDX decoding


def read_idx(path_or_bytes) -> np.ndarray:
    """Decode an IDX file (the format of the MNIST files) into an array.

    The header is two zero bytes, a type byte (0x08 unsigned byte, 0x09 signed byte,
    0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64), the number of dimensions ``k``, then
    ``k`` big-endian uint32 sizes; the data follows in C order, big-endian. MNIST images have
    magic number 0x00000803 and shape ``(n, 28, 28)``; labels 0x00000801 and shape ``(n,)``.

    Parameters
    ----------
    path_or_bytes : str, os.PathLike, bytes, bytearray or memoryview
        A file to read, or its contents. Gzipped data (recognised by its first two bytes,
        not by the file name) is decompressed first, no further than the size its IDX
        header gives (plus one byte, to tell trailing data).

    Returns
    -------
    numpy.ndarray
        Shape given by the header, native byte order. For ``uint8``/``int8`` data it is a view
        of the bytes (read-only when they are ``bytes``); copy it before writing to it.

    Raises
    ------
    DataError
        If the file cannot be read, is not valid gzip, has a bad magic number, or its size does
        not match the header (truncated or with trailing bytes; a gzip bomb is refused once it
        inflates one byte past the header's size).
    TypeError
        If `path_or_bytes` is none of the types above.
    """
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        source = "IDX data"
        data = _gunzip_if_needed(bytes(path_or_bytes), source)
    elif isinstance(path_or_bytes, (str, os.PathLike)):
        path = Path(path_or_bytes)
        source = str(path)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise DataError(f"{source}: cannot read the file ({exc})") from exc
        data = _gunzip_if_needed(raw, source)
    else:
        raise TypeError(
            "path_or_bytes: expected a path (str or os.PathLike) or bytes-like, "
            f"got {type(path_or_bytes).__name__}"
        )
    return _parse_idx(data, source)


def _gunzip_if_needed(raw: bytes, source: str, max_size: Optional[int] = None) -> bytes:
    """`raw` itself, or the gzip contents it holds, inflated no further than needed.

    Decompression stops one byte past the size the IDX header inside declares (an IDX
    file's length follows from its header), and, when `max_size` is given, a header
    declaring more is refused before any data is inflated: a gzip bomb costs a few
    kilobytes of work, not gigabytes.
    """
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as stream:
            head = stream.read(4)
            size, dims = None, ()
            if len(head) == 4 and head[:2] == b"\0\0" and head[2] in _IDX_DTYPES and head[3]:
                ndim = head[3]
                head += stream.read(4 * ndim)
                if len(head) == 4 + 4 * ndim:
                    dims = struct.unpack(f">{ndim}I", head[4:])
                    size = len(head) + math.prod(dims) * _IDX_DTYPES[head[2]].itemsize
            if size is None:
                # no IDX header to size the data by, which _parse_idx will refuse; for a
                # checksum to report, read what the MNIST file of this name may hold
                if max_size is None:
                    return head
                data = head + stream.read(max_size + 1 - len(head))
                if len(data) > max_size:
                    raise DataError(
                        f"{source}: decompresses to more than {max_size} bytes, the size of "
                        "the MNIST file of this name, and has no valid IDX header; it is "
                        "corrupt or a gzip bomb"
                    )
                return data
            if max_size is not None and size > max_size:
                raise DataError(
                    f"{source}: its IDX header gives shape {dims}, i.e. {size} bytes, more than "
                    f"the {max_size} bytes of the MNIST file of this name"
                )
            data = head + stream.read(size + 1 - len(head))
    except (EOFError, OSError, zlib.error) as exc:
        # EOFError is gzip's word for a file cut short, e.g. by an interrupted copy.
        raise DataError(
            f"{source}: not a complete gzip file ({exc}); it is truncated or corrupt"
        ) from exc
    if len(data) > size:
        raise DataError(
            f"{source}: decompresses to more than the {size} bytes its IDX header gives (shape "
            f"{dims}); the file has trailing bytes or is a gzip bomb"
        )
    return data


def _parse_idx(data: bytes, source: str, magic: Optional[int] = None) -> np.ndarray:
    if len(data) < 4:
        raise DataError(
            f"{source}: {len(data)} bytes is too short for an IDX header (at least 4 bytes); "
            "the file is truncated or empty"
        )
    found = int.from_bytes(data[:4], "big")
    code, ndim = data[2], data[3]
    if data[0] != 0 or data[1] != 0 or code not in _IDX_DTYPES or ndim == 0:
        raise DataError(
            f"{source}: bad IDX magic number 0x{found:08X}; expected 0x0000TTDD with type byte "
            "TT in {08, 09, 0B, 0C, 0D, 0E} and DD >= 1 dimensions (MNIST images: 0x00000803, "
            "labels: 0x00000801). This is not an (uncompressed) IDX file."
        )
    if magic is not None and found != magic:
        raise DataError(f"{source}: IDX magic number is 0x{found:08X}, expected 0x{magic:08X}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(
            f"{source}: the IDX header needs {header} bytes for {ndim} dimensions but the data "
            f"has {len(data)}; the file is truncated"
        )
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = _IDX_DTYPES[code]
    count = math.prod(dims)
    expected = header + count * dtype.itemsize
    if len(data) != expected:
        problem = "is truncated" if len(data) < expected else "has trailing bytes"
        raise DataError(
            f"{source}: the IDX header gives shape {tuple(dims)}, i.e. {expected} bytes, but "
            f"the data has {len(data)} bytes; the file {problem}"
        )
    array = np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="), copy=False)


# --------------------------------------------------------------------------------------------
# Finding the files


class _Place(NamedTuple):
    origin: str  # "path argument", "NPVAE_DATA", "cache"
    location: Optional[Path]  # None when NPVAE_DATA is unset


class _Found(NamedTuple):
    kind: Optional[str]  # "idx", "npz" or None
    files: Dict[str, Path]  # name -> file for "idx"; {"mnist.npz": file} for "npz"
    note: str  # what was found, for messages


def _places(path: Optional[Path]) -> List[_Place]:
    places = []
    if path is not None:
        places.append(_Place("path argument", path))
    env = os.environ.get(_ENV_VAR, "")
    places.append(_Place(_ENV_VAR, Path(env).expanduser() if env else None))
    places.append(_Place("cache", cache_dir()))
    return places


def _look_in(location: Optional[Path]) -> _Found:
    if location is None:
        return _Found(None, {}, "not set")
    if location.is_file():
        if location.suffix == ".npz":
            return _Found("npz", {_NPZ_NAME: location}, f"found {location.name}")
        return _Found(None, {}, "is a file, not a folder or a .npz file")
    if not location.is_dir():
        return _Found(None, {}, "does not exist")
    files, missing = {}, []
    for name in MNIST_FILES:
        # A raw file wins over its .gz: someone decompressed it on purpose, and it loads faster.
        for candidate in (location / name, location / (name + ".gz")):
            if candidate.is_file():
                files[name] = candidate
                break
        else:
            missing.append(name)
    if not missing:
        return _Found("idx", files, "found the four IDX files")
    if (location / _NPZ_NAME).is_file():
        return _Found("npz", {_NPZ_NAME: location / _NPZ_NAME}, f"found {_NPZ_NAME}")
    if len(missing) == len(MNIST_FILES):
        return _Found(None, {}, "holds no MNIST files")
    return _Found(None, files, "missing " + ", ".join(f"{m}[.gz]" for m in missing))


def holds_mnist(location) -> bool:
    """Whether ``location`` (a folder, or an ``.npz`` file) holds MNIST as :func:`load_mnist`
    reads it: the four IDX files (each raw or ``.gz``), or ``mnist.npz``."""
    return _look_in(Path(location).expanduser()).kind is not None


def locate_mnist(path=None) -> Tuple[Optional[Path], str]:
    """Where :func:`load_mnist` would read MNIST from, in its order: ``(location, how)``.

    ``how`` is ``"path argument"``, ``"NPVAE_DATA"`` or ``"cache"``; ``location`` is None when
    no place holds it yet (then :func:`load_mnist` downloads into the user cache, where the
    network allows). A ``path`` that holds no MNIST is passed over, as :func:`load_mnist`
    does: callers that want it refused check :func:`holds_mnist` first.
    """
    for place in _places(None if path is None else Path(path).expanduser()):
        if place.location is not None and _look_in(place.location).kind is not None:
            return place.location, place.origin
    return None, "cache"


def _where(places: Sequence[_Place], notes: Optional[Sequence[str]] = None) -> str:
    """The 'where to put the files' paragraph that ends every DataError from load_mnist."""
    lines = ["load_mnist looks, in this order, in:"]
    for i, place in enumerate(places):
        where = str(place.location) if place.location is not None else "(unset)"
        label = {
            "path argument": "the path argument",
            _ENV_VAR: f"the {_ENV_VAR} environment variable",
            "cache": "the user cache (missing files are downloaded here)",
        }[place.origin]
        note = f": {notes[i]}" if notes is not None else ""
        lines.append(f"  {i + 1}. {where}  [{label}]{note}")
    lines.append(
        "Put the four files "
        + ", ".join(MNIST_FILES)
        + f" (each raw or .gz), or Keras' {_NPZ_NAME}, in one of these folders, or set "
        f"{_ENV_VAR} to a folder that holds them."
    )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Verification and loading


def _md5(data: bytes) -> str:
    # usedforsecurity=False keeps MD5 usable on FIPS-restricted Pythons; this is an integrity
    # check against published digests, not security.
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _read_verified(file: Path, want: str, places: Sequence[_Place], max_size: int) -> bytes:
    """Uncompressed bytes of `file`, checked against the MD5 `want`; a gzipped `file` is
    inflated to at most `max_size` bytes (see `_gunzip_if_needed`)."""
    try:
        with open(file, "rb") as f:
            st = os.fstat(f.fileno())
            raw = f.read()
    except OSError as exc:
        raise DataError(f"{file}: cannot read the file ({exc}).\n{_where(places)}") from exc
    try:
        data = _gunzip_if_needed(raw, str(file), max_size)
    except DataError as exc:
        raise DataError(
            f"{exc} (expected uncompressed MD5 {want}). Delete or replace it.\n{_where(places)}"
        ) from exc
    key = (str(file.resolve()), st.st_size, st.st_mtime_ns)
    if _VERIFIED.get(key) == want:
        return data
    got = _md5(data)
    if got != want:
        raise DataError(
            f"{file}: the MD5 of its uncompressed bytes is {got}, expected {want}. "
            f"{_explain_mismatch(data)} Delete or replace it.\n{_where(places)}"
        )
    _VERIFIED[key] = want
    return data


def _explain_mismatch(data: bytes) -> str:
    # The header knows how long the file should be, so a cut-off copy can be named as such.
    try:
        _parse_idx(data, "")
    except DataError as exc:
        if "truncated" in str(exc):
            return f"It is truncated ({len(data)} bytes uncompressed)."
        return "It is not a valid IDX file."
    return f"It is a well-formed IDX file of {len(data)} bytes, but not the expected one."


def _to_outputs(images: np.ndarray, labels: np.ndarray, source: str, places) -> tuple:
    """uint8 (n, 28, 28) and (n,) -> float32 (n, 784) in [0, 1] and int64 (n,)."""
    if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.ndim != 1:
        raise DataError(
            f"{source}: images have shape {images.shape} and labels {labels.shape}; expected "
            f"(n, 28, 28) and (n,).\n{_where(places)}"
        )
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{source}: {images.shape[0]} images but {labels.shape[0]} labels; expected the "
            f"same number.\n{_where(places)}"
        )
    if images.shape[0] == 0:
        raise DataError(f"{source}: holds no images; expected at least one.\n{_where(places)}")
    if labels.size and labels.max() > 9:
        raise DataError(
            f"{source}: labels go up to {labels.max()}; expected digits 0-9.\n{_where(places)}"
        )
    x = images.reshape(images.shape[0], -1).astype(np.float32)
    np.divide(x, 255, out=x)  # exactly uint8 / 255 rounded to float32
    return x, labels.astype(np.int64)


def _load_idx(files: Mapping[str, Path], checksums, places) -> tuple:
    out = []
    for _, images_name, labels_name in _SPLITS:
        arrays = []
        for name, magic in ((images_name, _IMAGES_MAGIC), (labels_name, _LABELS_MAGIC)):
            file = files[name]
            data = _read_verified(file, checksums[name], places, _MNIST_SIZES[name])
            try:
                arrays.append(_parse_idx(data, str(file), magic))
            except DataError as exc:
                reason = str(exc).rstrip(".")
                raise DataError(f"{reason}. Delete or replace it.\n{_where(places)}") from exc
        source = f"{files[images_name]} and {files[labels_name]}"
        out.append(_to_outputs(arrays[0], arrays[1], source, places))
    return tuple(out)


def _load_npz(file: Path, places) -> tuple:
    try:
        archive = np.load(file, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(
            f"{file}: cannot read it as an .npz archive ({exc}). Expected Keras' {_NPZ_NAME} "
            f"with arrays x_train, y_train, x_test, y_test.\n{_where(places)}"
        ) from exc
    if not hasattr(archive, "files"):  # a plain .npy file
        raise DataError(
            f"{file}: holds a single array, not an .npz archive with x_train, y_train, x_test, "
            f"y_test.\n{_where(places)}"
        )
    arrays = {}
    with archive:
        missing = [key for key in _NPZ_SHAPES if key not in archive.files]
        if missing:
            raise DataError(
                f"{file}: no array {missing[0]!r} (has {sorted(archive.files)}); expected Keras' "
                f"{_NPZ_NAME} with {', '.join(_NPZ_SHAPES)}.\n{_where(places)}"
            )
        for key, shape in _NPZ_SHAPES.items():
            try:
                arrays[key] = archive[key]
            except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
                # ValueError is also what an object (pickled) array gives under
                # allow_pickle=False.
                raise DataError(
                    f"{file}: cannot read array {key!r} ({exc}); expected {shape} uint8."
                    f"\n{_where(places)}"
                ) from exc
            if arrays[key].shape != shape or arrays[key].dtype != np.uint8:
                raise DataError(
                    f"{file}: {key} has shape {arrays[key].shape} and dtype {arrays[key].dtype}; "
                    f"expected shape {shape} and dtype uint8 as in Keras' {_NPZ_NAME}."
                    f"\n{_where(places)}"
                )
    return (
        _to_outputs(arrays["x_train"], arrays["y_train"], f"{file} (train)", places),
        _to_outputs(arrays["x_test"], arrays["y_test"], f"{file} (test)", places),
    )


# --------------------------------------------------------------------------------------------
# Downloading


def _download(name: str, folder: Path, want: str, mirrors, progress, places, notes) -> Path:
    """Fetch ``name.gz`` into `folder`, trying each mirror; only a verified file lands there."""
    target = folder / (name + ".gz")
    errors = []
    for base in mirrors:
        url = base + ("" if base.endswith("/") else "/") + name + ".gz"
        tmp = None
        try:
            # Same folder as the target, so os.replace is an atomic rename: a reader never sees
            # a half-written file, and an interrupted download leaves at most a hidden .part
            # file (removed below) instead of a corrupt cache entry.
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.gz.", suffix=".part")
            with os.fdopen(fd, "wb") as out:
                _fetch(url, out, progress, f"Downloading {url}")
                out.flush()
                os.fsync(out.fileno())
            raw = Path(tmp).read_bytes()
            got = _md5(_gunzip_if_needed(raw, url, _MNIST_SIZES[name]))
            if got != want:
                errors.append(f"{url}: uncompressed MD5 is {got}, expected {want}")
                continue
            os.chmod(tmp, 0o644)  # mkstemp makes 0600; a cache file need not be private
            os.replace(tmp, target)
            st = target.stat()
            _VERIFIED[(str(target.resolve()), st.st_size, st.st_mtime_ns)] = want
            return target
        except (OSError, ValueError, EOFError, http.client.HTTPException, DataError) as exc:
            # URLError and HTTPError are OSErrors; ValueError is an unsupported URL.
            errors.append(f"{url}: {exc}")
        finally:
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)
    raise DataError(
        f"Could not download {name}.gz (expected uncompressed MD5 {want}) into {folder}; "
        "every mirror failed:\n"
        + "\n".join(f"  - {e}" for e in errors)
        + "\nWithout internet access, fetch the files elsewhere from one of these mirrors and "
        f"copy them here.\n{_where(places, notes)}"
    )


def _fetch(url: str, out, progress: bool, label: str) -> None:
    # Looked up on the module at call time so tests can monkeypatch urllib.request.urlopen.
    with urllib.request.urlopen(url, timeout=_TIMEOUT) as response:
        length = response.headers.get("Content-Length") if response.headers else None
        total = int(length) if length and length.isdigit() else None
        done, shown = 0, None
        while True:
            chunk = response.read(_CHUNK)
            if not chunk:
                break
            out.write(chunk)
            done += len(chunk)
            if progress:
                # Redraw only when the visible number changes, not on every 64 KiB chunk.
                step = 100 * done // total if total else done >> 20
                if step != shown:
                    shown = step
                    _show_progress(label, done, total)
        if progress:
            _show_progress(label, done, total)
            sys.stderr.write("\n")
            sys.stderr.flush()
    if total is not None and done != total:
        raise OSError(f"incomplete download: got {done} of {total} bytes")


def _show_progress(label: str, done: int, total: Optional[int]) -> None:
    if total:
        text = f"{label}: {done / 1e6:.1f} / {total / 1e6:.1f} MB ({100 * done // total}%)"
    else:
        text = f"{label}: {done / 1e6:.1f} MB"
    sys.stderr.write("\r" + text)
    sys.stderr.flush()


# --------------------------------------------------------------------------------------------
# Public loader


def load_mnist(
    path=None,
    *,
    download: bool = True,
    progress: bool = True,
    checksums: Optional[Mapping[str, str]] = None,
    mirrors: Optional[Sequence[str]] = None,
):
    """Load MNIST as float32 pixels in [0, 1] and integer labels.

    Looks in `path`, then the folder (or ``.npz`` file) named by the ``NPVAE_DATA``
    environment variable, then :func:`cache_dir`; the first place holding all four IDX files
    (each raw or ``.gz``), or else Keras' ``mnist.npz``, is used. A `path` that does not
    exist is an error (a typo must not quietly give the data of another place); an existing
    folder without the files is passed over. If none does and `download`
    is true, the missing ``.gz`` files are downloaded into the cache.

    Parameters
    ----------
    path : str or os.PathLike, optional
        A folder holding the files, or a path to ``mnist.npz``. ``~`` is expanded.
    download : bool, default True
        Download missing files into :func:`cache_dir` when no place has the data.
    progress : bool, default True
        Show a progress line (bytes and percent) on stderr while downloading.
    checksums : mapping of str to str, optional
        MD5 of the uncompressed bytes of each of the four IDX files, keyed by the names in
        :data:`MNIST_FILES` (the default). For IDX files in the same layout with other
        contents, each no larger than the MNIST file of its name (a gzipped file is never
        inflated beyond that). ``mnist.npz`` is checked by its shapes and dtypes instead.
    mirrors : sequence of str, optional
        Base URLs to download from, tried in turn; default :data:`MIRRORS`. Any URL
        ``urllib`` opens works, ``file://`` included.

    Returns
    -------
    (x_train, y_train), (x_test, y_test)
        ``x_*`` float32 of shape ``(n, 784)``, ``uint8 / 255`` with rows the 28x28 images in
        C order; ``y_*`` int64 of shape ``(n,)``, digits 0-9. n is 60000 and 10000 for MNIST.
        Fresh arrays: the caller may modify them.

    Raises
    ------
    DataError
        If the data is missing and cannot be downloaded, or a file is unreadable, truncated,
        corrupt (wrong MD5), larger than the MNIST file of its name (a gzip bomb), or not a
        valid IDX/npz file. The message names the file, what was expected, and the folders
        searched.
    TypeError, ValueError
        If an argument has the wrong type or value.

    Examples
    --------
    >>> (x_train, y_train), (x_test, y_test) = load_mnist()  # doctest: +SKIP
    >>> x_train.shape, x_train.dtype, y_train[:3]  # doctest: +SKIP
    ((60000, 784), dtype('float32'), array([5, 0, 4]))
    """
    path = _check_path(path)
    for value, argname in ((download, "download"), (progress, "progress")):
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{argname}: expected a bool, got {type(value).__name__} {value!r}")
    checksums = _check_checksums(checksums)
    mirrors = _check_mirrors(mirrors)

    if path is not None and not path.exists():
        # a typo in an explicit path must not quietly give the data of another place
        raise DataError(f"path: {path} does not exist; expected a folder holding the MNIST files or a path to "
                        f"{_NPZ_NAME} (leave it out to look in ${_ENV_VAR} and the user cache)")
    places = _places(path)
    found = [_look_in(place.location) for place in places]
    for here in found:
        if here.kind == "idx":
            return _load_idx(here.files, checksums, places)
        if here.kind == "npz":
            return _load_npz(here.files[_NPZ_NAME], places)

    notes = [here.note for here in found]
    if not download:
        raise DataError("MNIST was not found and download=False.\n" + _where(places, notes))
    cache, in_cache = places[-1].location, found[-1]
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(
            f"Cannot create the cache folder {cache} to download MNIST into ({exc}); set "
            f"XDG_CACHE_HOME to a writable folder.\n{_where(places, notes)}"
        ) from exc
    notes[-1] = "download failed"
    files = dict(in_cache.files)  # keep what a partial earlier attempt already put there
    for name in MNIST_FILES:
        if name not in files:
            files[name] = _download(
                name, cache, checksums[name], mirrors, progress, places, notes
            )
    return _load_idx(files, checksums, places)


def _check_path(path) -> Optional[Path]:
    if path is None:
        return None
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(
            f"path: expected a folder or a path to {_NPZ_NAME} (str or os.PathLike) or None, "
            f"got {type(path).__name__}"
        )
    if isinstance(path, str) and not path:
        raise ValueError("path: expected a folder or a path to mnist.npz, got the empty string")
    path = Path(path).expanduser()
    if path.is_file() and path.suffix != ".npz":
        raise ValueError(
            f"path: expected a folder holding the MNIST files or a path to {_NPZ_NAME}, got the "
            f"file {path} (pass its folder instead)"
        )
    return path


def _check_checksums(checksums) -> Mapping[str, str]:
    if checksums is None:
        return MNIST_FILES
    if not isinstance(checksums, Mapping):
        raise TypeError(
            f"checksums: expected a mapping from file name to MD5 hex digest, got "
            f"{type(checksums).__name__}"
        )
    expected = set(MNIST_FILES)
    if set(checksums) != expected:
        raise ValueError(
            f"checksums: expected to have exactly the keys {sorted(expected)}, got {sorted(checksums)}"
        )
    clean = {}
    for name, digest in checksums.items():
        ok = isinstance(digest, str) and len(digest) == 32
        if ok:
            try:
                int(digest, 16)
            except ValueError:
                ok = False
        if not ok:
            raise ValueError(
                f"checksums[{name!r}]: expected a 32-character MD5 hex digest, got {digest!r}"
            )
        clean[name] = digest.lower()
    return clean


def _check_mirrors(mirrors) -> Tuple[str, ...]:
    if mirrors is None:
        return MIRRORS
    if isinstance(mirrors, (str, bytes)) or not isinstance(mirrors, Sequence):
        raise TypeError(
            f"mirrors: expected a sequence of base URLs (e.g. a list of str), got "
            f"{type(mirrors).__name__} {mirrors!r}"
        )
    if not mirrors or not all(isinstance(m, str) and m for m in mirrors):
        raise ValueError(f"mirrors: expected a non-empty sequence of non-empty str, got {mirrors!r}")
    return tuple(mirrors)


# --------------------------------------------------------------------------------------------
# Binarization

#: The methods of :func:`binarize`: the choices of ``fit(binarize=...)`` and ``npvae train --binarize``.
BINARIZE_METHODS = ("none", "threshold", "dynamic")


def binarize(x, method: str, rng: Optional[np.random.Generator] = None, threshold: float = 0.5):
    """Turn grayscale pixels in [0, 1] into Bernoulli-likelihood targets.

    Parameters
    ----------
    x : numpy.ndarray
        Floating-point pixels in [0, 1], any shape, e.g. ``(B, D)`` from `load_mnist`.
    method : {"none", "threshold", "dynamic"}
        ``"none"`` returns `x` itself: grayscale targets under a Bernoulli likelihood, as in
        the original Keras VAE example. ``"threshold"`` returns ``x > threshold``: a fixed
        binarization. ``"dynamic"`` draws a fresh ``Bernoulli(x)`` sample on every call
        (dynamic binarization, as in Burda et al. 2016, "Importance Weighted Autoencoders"),
        which acts as a regulariser; call it once per epoch or per batch.
    rng : numpy.random.Generator, optional
        Required for ``"dynamic"``; the same seed gives the same sample.
    threshold : float, default 0.5
        Cut-off for ``"threshold"``; a pixel equal to it maps to 0.

    Returns
    -------
    numpy.ndarray
        `x` itself for ``"none"``; otherwise a new array of 0s and 1s with `x`'s shape and
        dtype.

    Raises
    ------
    ValueError
        If `method` is unknown, `x` is not floating point, `threshold` is not finite,
        `rng` is missing for ``"dynamic"``, or `x` leaves [0, 1] for ``"dynamic"``.
    TypeError
        If `rng` is given but is not a ``numpy.random.Generator``.
    """
    if not isinstance(method, str) or method not in BINARIZE_METHODS:
        raise ValueError(f"method: expected one of {', '.join(map(repr, BINARIZE_METHODS))}, got {method!r}")
    if method == "none":
        return x
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(
            f"x: expected floating-point pixels in [0, 1] (e.g. from load_mnist), got dtype "
            f"{x.dtype}"
        )
    if method == "threshold":
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.number)) or (
            not np.isfinite(threshold)
        ):
            raise ValueError(f"threshold: expected a finite number, got {threshold!r}")
        return (x > threshold).astype(x.dtype)
    if rng is None:
        raise ValueError(
            "rng is required for method='dynamic'; pass e.g. np.random.default_rng(seed)"
        )
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"rng: expected a numpy.random.Generator (np.random.default_rng(seed)), got "
            f"{type(rng).__name__}"
        )
    # `not (a and b)` rather than `a or b` so that NaN, which fails every comparison, is caught.
    if x.size and not (x.min() >= 0 and x.max() <= 1):
        raise ValueError(
            f"x: expected values in [0, 1] for method='dynamic' (a Bernoulli probability), got "
            f"values in [{x.min()}, {x.max()}]"
        )
    # u < p with u in [0, 1) gives P(1) = p, with p = 0 never and p = 1 always firing.
    # Uniforms are float64 whatever x's dtype, so that float32 and float64 runs of one
    # seed draw the same pixels.
    return (rng.random(x.shape) < x).astype(x.dtype)
