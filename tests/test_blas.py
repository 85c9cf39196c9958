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


def test_jobs_go_to_the_librarys_thread_server_only_with_a_thread_for_each(monkeypatch):
    """run_jobs' bookkeeping, on a stand-in library: OpenBLAS would wait forever for a job
    that has no thread, so more jobs than BLAS threads is an error, not a hang."""
    calls = []
    blas = fake_blas(monkeypatch, threads=3, run=lambda *args: calls.append(args))
    assert _blas.jobs_available()
    records = np.zeros((3, 16), np.int64)
    _blas.run_jobs(1234, records)
    assert calls == [(3, 1234, records.ctypes.data, 16 * 8)]
    with _blas.single_threaded():
        with pytest.raises(RuntimeError, match="3 jobs need BLAS on at least 3 threads, it runs on 1"):
            _blas.run_jobs(1234, records)
    blas["threads"] = 2
    with pytest.raises(RuntimeError, match="at least 3 threads"):
        _blas.run_jobs(1234, records)
    blas["threads"] = 3
    with pytest.raises(ValueError, match="C-contiguous 2-D"):
        _blas.run_jobs(1234, np.zeros((16, 3), np.int64).T)      # not C-contiguous
    assert len(calls) == 1


def test_no_jobs_without_a_thread_server(monkeypatch):
    fake_blas(monkeypatch, threads=2)                    # an OpenBLAS without gotoblas_pthread
    assert not _blas.jobs_available()
    with pytest.raises(RuntimeError, match="no OpenBLAS thread server"):
        _blas.run_jobs(1234, np.zeros((2, 16), np.int64))
    monkeypatch.setattr(_blas, "_found", [])
    assert not _blas.jobs_available()


def test_jobs_run_on_the_real_library_where_it_has_a_thread_server(blas_on_two_threads):
    pytest.importorskip("numba")
    if not _blas.jobs_available():
        pytest.skip("NumPy's BLAS here is not an OpenBLAS with a thread server (gotoblas_pthread)")
    from npvae import kernels as K
    n = 4001
    a, w = np.random.default_rng(0).random((n, 3)).astype(np.float32), np.full(n, 2.0, np.float32)
    out = np.zeros_like(a)
    records = np.zeros((2, K.JOB_FIELDS), np.int64)
    K.job_records(records, K.JOB_SCALE_ROWS, n, 3, 0, 0, 1, (a, w, out), 3)
    _blas.run_jobs(K.row_job_address(), records)
    np.testing.assert_array_equal(out, 2 * a)           # both parts ran
