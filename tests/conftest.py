"""Shared pytest fixtures, and the ``numba`` marker's skip where numba is not installed."""

import importlib.util
import os
from pathlib import Path

import pytest

NUMBA = importlib.util.find_spec("numba") is not None


def pytest_collection_modifyitems(config, items):
    """Tests marked ``numba`` need the numba engine: where numba is not installed they are
    skipped, saying so (CI's NumPy-only environment deselects them with ``-m "not numba"``;
    its main environment has numba, where they run)."""
    if NUMBA:
        return
    skip = pytest.mark.skip(reason="needs numba (pip install numba, or npvae's [fast] extra)")
    for item in items:
        if "numba" in item.keywords:
            item.add_marker(skip)

_MNIST_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _find_mnist_dir():
    """Return (folder holding real MNIST or None, candidates looked at).

    NPVAE_DATA first (how CI points at its copy), then the shared data folder beside the repo
    (``<repo>/../shared/data/mnist``, the layout of a developer's machine).
    """
    candidates = []
    env = os.environ.get("NPVAE_DATA")
    if env:
        candidates.append(Path(env).expanduser())
    candidates.append(Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist")
    for folder in candidates:
        if folder.is_file() and folder.suffix == ".npz":
            return folder, candidates
        if (folder / "mnist.npz").is_file() or all(
            (folder / name).is_file() or (folder / (name + ".gz")).is_file()
            for name in _MNIST_NAMES
        ):
            return folder, candidates
    return None, candidates


@pytest.fixture(scope="session")
def mnist_dir():
    """Folder (or mnist.npz) holding the real MNIST files; skips, or fails on CI, without it."""
    folder, candidates = _find_mnist_dir()
    if folder is None:
        message = "real MNIST not found in " + ", ".join(map(str, candidates)) + (
            "; set NPVAE_DATA to a folder with the four IDX files (raw or .gz) or mnist.npz"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return folder


@pytest.fixture
def blas_on_two_threads():
    """NumPy's BLAS on 2 threads (so that OpenBLAS has a thread for a second job), restored
    after; nothing where npvae cannot set BLAS's threads."""
    from npvae.fast import blas
    before = blas.current_threads()
    blas.set_threads(2)
    yield
    if before is not None:
        blas.set_threads(before)
