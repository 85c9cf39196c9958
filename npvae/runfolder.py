"""The run folder of ``npvae train``: its lock, its strict readers, its housekeeping.

A run folder (``npvae train --out RUN``) holds ``config.json`` (the settings),
``checkpoint.npz`` (written after every epoch), ``history.json``, ``model.npz`` and
``figures/``. Researchers start many trainings at once on shared disks, so:

* :class:`RunLock` -- one training process per folder: an exclusive advisory lock
  (``fcntl.flock`` on ``RUN/.lock``) held for the life of the process, with the holder's
  pid, host and start time written in the file. A second process is refused with
  :class:`RunFolderError` naming the holder. The kernel releases the lock when its holder
  dies (even by SIGKILL); the next process takes it over and says whose it was.
  Readers (``npvae evaluate``, ``npvae plot``) do not lock: every file is written
  atomically (:mod:`npvae.io`), so they never see half a file.
* :func:`write_config` -- ``config.json``: the settings of :mod:`npvae.settings` and the
  version of npvae that wrote them.
* :func:`read_config`, :func:`read_history` -- strict readers: a file cut short, of the
  wrong shape or with a value of the wrong type is one :class:`RunFolderError` naming the
  file and the key, never a traceback from deep inside.
* :func:`remove_stale_temp_files` -- the hidden temporary files of writes that a killed
  process left behind (``.<name>.*.tmp``, up to a few MB each), removed at the start of
  a run.
"""

import json
import os
import socket
import time
from pathlib import Path
from types import MappingProxyType

from . import settings as run_settings
from .io import atomic_write_text
from .serialization import package_version

__all__ = ["RunFolderError", "RunLock", "read_config", "write_config", "read_history", "remove_stale_temp_files",
           "CONFIG_SCHEMA"]


class RunFolderError(ValueError):
    """A run folder cannot be used: in use by another process, or a file in it is damaged."""


# ----------------------------------------------------------------------------------------
# The lock
# ----------------------------------------------------------------------------------------
class RunLock:
    """An exclusive lock on a run folder for the life of a training process.

    Use as a context manager (or :meth:`acquire` / :meth:`release`). Where ``fcntl`` is
    missing (Windows) the lock is a no-op with the same interface.

    Parameters
    ----------
    folder : path
        The run folder (created if missing).

    Attributes
    ----------
    previous : dict or None
        After :meth:`acquire`: what the lock file said about an earlier holder that is no
        longer running (``pid``, ``host``, ``started``), if any: a lock taken over.
    """

    NAME = ".lock"

    def __init__(self, folder):
        self.folder = Path(folder)
        self.path = self.folder / self.NAME
        self.previous = None
        self._fd = None

    def acquire(self):
        """Take the lock, or raise :class:`RunFolderError` naming the process that holds it."""
        try:
            import fcntl
        except ImportError:           # no advisory locks here: run unlocked
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _describe_holder(_read_lock_file(fd))
            os.close(fd)
            raise RunFolderError(f"{self.folder} is in use by {holder}; wait for it to finish, or train "
                                 "into another --out") from None
        self.previous = _read_lock_file(fd) or None
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self):
        """Release the lock (the lock file stays, empty, for the next process)."""
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
        except OSError:
            pass
        os.close(self._fd)          # closing the descriptor releases the flock
        self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _read_lock_file(fd):
    try:
        data = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        record = json.loads(data) if data else {}
        return record if isinstance(record, dict) else {}
    except (OSError, ValueError):
        return {}


def _describe_holder(record):
    if not record:
        return "another process"
    return (f"process {record.get('pid', '?')} on {record.get('host', '?')} "
            f"(started {record.get('started', '?')})")


def describe_previous(lock):
    """One line about a lock taken over from a process that is no longer running, or None."""
    if not lock.previous:
        return None
    return f"took over the lock of {_describe_holder(lock.previous)}, which is no longer running"


# ----------------------------------------------------------------------------------------
# Housekeeping
# ----------------------------------------------------------------------------------------
def remove_stale_temp_files(folder):
    """Remove the temporary files that interrupted atomic writes left in ``folder`` and its
    ``figures/`` (``.<name>.<random>.tmp``, see :mod:`npvae.io`); returns their paths.
    Call it while holding the folder's :class:`RunLock` (no other writer is running)."""
    removed = []
    for d in (Path(folder), Path(folder) / "figures"):
        if not d.is_dir():
            continue
        for p in d.glob(".*.tmp"):
            try:
                p.unlink()
                removed.append(p)
            except OSError:
                pass
    return removed


# ----------------------------------------------------------------------------------------
# Strict readers
# ----------------------------------------------------------------------------------------
#: key -> :class:`npvae.settings.Setting` of ``config.json`` (what ``npvae train`` writes);
#: a key whose setting is ``required`` must be there.
CONFIG_SCHEMA = MappingProxyType({name: run_settings.SETTINGS[name] for name in run_settings.TRAIN_SETTINGS})


def _read_json(path):
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise RunFolderError(f"{path}: not a text file ({exc.reason})") from None
    if not text.strip():
        raise RunFolderError(f"{path}: the file is empty (a run's files are written whole: "
                             "was it truncated by hand or by a full disk?)")
    try:
        return json.loads(text)
    except ValueError as exc:
        raise RunFolderError(f"{path}: not valid JSON ({exc}); the file is damaged or cut short") from None


def read_config(path):
    """The settings in a run folder's ``config.json``, checked key by key
    (:func:`npvae.settings.check_config`); a setting that older files lack (``figures``)
    takes its default, and the metadata (``npvae_version``) is left out.

    Raises
    ------
    RunFolderError
        Naming the file and the key: not a JSON object, a key missing or unknown, a value
        of the wrong type or out of range.
    """
    config = _read_json(path)
    if not isinstance(config, dict):
        raise RunFolderError(f"{path}: expected a JSON object of settings, got a {type(config).__name__}")
    try:
        return run_settings.check_config(config)
    except ValueError as exc:
        raise RunFolderError(f"{path}: {exc}") from None


def write_config(path, settings):
    """Write ``settings`` (the options of ``npvae train``, checked) as ``config.json``,
    atomically, with the version of npvae that wrote it (``npvae_version``)."""
    config = {name: settings[name] for name in run_settings.TRAIN_SETTINGS}
    config["npvae_version"] = package_version()
    return atomic_write_text(path, json.dumps(config, indent=1) + "\n")


def read_history(path):
    """The per-epoch records of a run folder's ``history.json``, checked.

    Raises
    ------
    RunFolderError
        Naming the file: not a JSON list of objects, or an epoch without a numeric ``loss``.
    """
    history = _read_json(path)
    if not isinstance(history, list):
        raise RunFolderError(f"{path}: expected a JSON list of per-epoch records, got a {type(history).__name__}")
    for i, record in enumerate(history):
        if not isinstance(record, dict):
            raise RunFolderError(f"{path}: record {i}: expected an object, got {record!r}")
        for key, value in record.items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise RunFolderError(f"{path}: record {i}: {key}: expected a number, got {value!r}")
        if "loss" not in record:
            raise RunFolderError(f"{path}: record {i}: key 'loss' is missing")
    return history
