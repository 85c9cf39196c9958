"""npvae._blas: reading and setting the thread count of NumPy's OpenBLAS."""

import numpy as np
import pytest

from npvae import _blas

from _helpers import fake_blas


def test_thread_count_is_read_set_and_restored_where_controllable():
    if not _blas.controllable():
        pytest.skip("NumPy's BLAS here is not an OpenBLAS npvae can control")
    assert _blas.library_paths()
    before = _blas.get_threads()
    assert before >= 1
    with _blas.single_threaded():
        assert _blas.current_threads() == 1
        assert _blas.get_threads() == before           # the user's count, which the step's default follows
        with _blas.single_threaded():                  # nested: still 1, restored once at the end
            assert _blas.current_threads() == 1 and _blas.get_threads() == before
        assert _blas.current_threads() == 1
        a = np.ones((64, 64))
        np.testing.assert_array_equal(a @ a, np.full((64, 64), 64.0))  # BLAS still works
    assert _blas.get_threads() == _blas.current_threads() == before


def test_restored_after_an_exception():
    before = _blas.get_threads()
    with pytest.raises(KeyError):
        with _blas.single_threaded():
            raise KeyError("x")
    assert _blas.get_threads() == before


def test_nothing_happens_where_blas_is_not_controllable(monkeypatch):
    monkeypatch.setattr(_blas, "_found", [])
    assert not _blas.controllable() and _blas.get_threads() is None and _blas.library_paths() == []
    assert _blas.current_threads() is None
    with _blas.single_threaded():
        _blas.set_threads(1)                             # no library: no effect, no error


def test_single_threaded_saves_sets_and_restores_the_count_once(monkeypatch):
    """The bookkeeping, on a stand-in library (runs whatever BLAS this machine has)."""
    blas = fake_blas(monkeypatch, threads=4)
    assert _blas.controllable() and _blas.get_threads() == _blas.current_threads() == 4
    with _blas.single_threaded():
        assert blas["threads"] == 1 and _blas.get_threads() == 4
        with _blas.single_threaded():
            assert blas["threads"] == 1 and _blas.get_threads() == 4
        assert blas["threads"] == 1                       # the outer block still holds it
    assert blas["threads"] == 4 and _blas.get_threads() == 4
    with pytest.raises(RuntimeError):
        with _blas.single_threaded():
            raise RuntimeError
    assert blas["threads"] == 4
