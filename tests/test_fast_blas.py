"""blas: reading and setting the thread count of NumPy's OpenBLAS."""

import numpy as np
import pytest

from npvae.fast import blas

from _helpers import fake_blas


def test_thread_count_is_read_set_and_restored_where_controllable():
    if not blas.controllable():
        pytest.skip("NumPy's BLAS here is not an OpenBLAS npvae can control")
    assert blas.library_paths()
    before = blas.get_threads()
    assert before >= 1
    with blas.single_threaded():
        assert blas.current_threads() == 1
        assert blas.get_threads() == before           # the user's count, which the step's default follows
        with blas.single_threaded():                  # nested: still 1, restored once at the end
            assert blas.current_threads() == 1 and blas.get_threads() == before
        assert blas.current_threads() == 1
        a = np.ones((64, 64))
        np.testing.assert_array_equal(a @ a, np.full((64, 64), 64.0))  # BLAS still works
    assert blas.get_threads() == blas.current_threads() == before


def test_restored_after_an_exception(monkeypatch):
    fake = fake_blas(monkeypatch, threads=3)              # any machine: a stand-in library
    with pytest.raises(KeyError):
        with blas.single_threaded():
            assert fake["threads"] == 1
            raise KeyError("x")
    assert fake["threads"] == 3 and blas.current_threads() == 3


def test_nothing_happens_where_blas_is_not_controllable(monkeypatch):
    monkeypatch.setattr(blas, "_found", [])
    assert not blas.controllable() and blas.get_threads() is None and blas.library_paths() == []
    assert blas.current_threads() is None
    with blas.single_threaded():
        blas.set_threads(1)                             # no library: no effect, no error


def test_single_threaded_saves_sets_and_restores_the_count_once(monkeypatch):
    """The bookkeeping, on a stand-in library (runs whatever BLAS this machine has)."""
    fake = fake_blas(monkeypatch, threads=4)
    assert blas.controllable() and blas.get_threads() == blas.current_threads() == 4
    with blas.single_threaded():
        assert fake["threads"] == 1 and blas.get_threads() == 4
        with blas.single_threaded():
            assert fake["threads"] == 1 and blas.get_threads() == 4
        assert fake["threads"] == 1                       # the outer block still holds it
    assert fake["threads"] == 4 and blas.get_threads() == 4
    with pytest.raises(RuntimeError):
        with blas.single_threaded():
            raise RuntimeError
    assert fake["threads"] == 4


def test_jobs_go_to_the_librarys_thread_server_only_with_a_thread_for_each(monkeypatch):
    """run_jobs' bookkeeping, on a stand-in library: OpenBLAS would wait forever for a job
    that has no thread, so more jobs than BLAS threads is an error, not a hang."""
    calls = []
    fake = fake_blas(monkeypatch, threads=3, run=lambda *args: calls.append(args))
    assert blas.jobs_available()
    records = np.zeros((3, 16), np.int64)
    blas.run_jobs(1234, records)
    assert calls == [(3, 1234, records.ctypes.data, 16 * 8)]
    with blas.single_threaded():
        with pytest.raises(RuntimeError, match="3 jobs need BLAS on at least 3 threads, it runs on 1"):
            blas.run_jobs(1234, records)
    fake["threads"] = 2
    with pytest.raises(RuntimeError, match="at least 3 threads"):
        blas.run_jobs(1234, records)
    fake["threads"] = 3
    with pytest.raises(ValueError, match="C-contiguous 2-D"):
        blas.run_jobs(1234, np.zeros((16, 3), np.int64).T)      # not C-contiguous
    assert len(calls) == 1


def test_no_jobs_without_a_thread_server(monkeypatch):
    fake_blas(monkeypatch, threads=2)                    # an OpenBLAS without gotoblas_pthread
    assert not blas.jobs_available()
    with pytest.raises(RuntimeError, match="no OpenBLAS thread server"):
        blas.run_jobs(1234, np.zeros((2, 16), np.int64))
    monkeypatch.setattr(blas, "_found", [])
    assert not blas.jobs_available()


def test_jobs_run_on_the_real_library_where_it_has_a_thread_server(blas_on_two_threads):
    pytest.importorskip("numba")
    if not blas.jobs_available():
        pytest.skip("NumPy's BLAS here is not an OpenBLAS with a thread server (gotoblas_pthread)")
    from npvae.fast import jobs
    n = 4001
    a, w = np.random.default_rng(0).random((n, 3)).astype(np.float32), np.full(n, 2.0, np.float32)
    out = np.zeros_like(a)
    records = np.zeros((2, jobs.JOB_FIELDS), np.int64)
    jobs.job_records(records, jobs.JOB_SCALE_ROWS, n, 3, 0, 0, 1, (a, w, out), 3)
    blas.run_jobs(jobs.row_job_address(), records)
    np.testing.assert_array_equal(out, 2 * a)           # both parts ran


# --------------------------------------------------------------------------
# Matrix products from compiled code (npvae.fast.gemm)
# --------------------------------------------------------------------------
def test_gemm_address_is_none_without_an_openblas_offering_it(monkeypatch):
    fake_blas(monkeypatch, threads=2)                  # a stand-in library: no cblas_?gemm
    assert blas.gemm_address(np.float32) is None and blas.gemm_address(np.float64) is None
    monkeypatch.setattr(blas, "_found", [])
    assert blas.gemm_address(np.float32) is None


@pytest.mark.numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compiled_matmul_is_numpys_product_bit_for_bit(dtype):
    """Every transpose combination and shape (every side at least 2, where NumPy calls gemm itself):
    the compiled call through the address equals ``np.matmul`` bit for bit; an inner size of 0
    gives zeros, an empty result nothing."""
    import numba

    from npvae.fast import gemm
    if not blas.controllable():
        pytest.skip("NumPy's BLAS here is not an OpenBLAS")
    addr = gemm.address(dtype)
    assert addr, "NumPy's OpenBLAS wheel exports cblas_?gemm with 64-bit sizes"
    compiled = numba.njit(lambda addr, a, ta, b, tb, out: gemm.matmul(addr, a, ta, b, tb, out))
    rng = np.random.default_rng(0)
    for m, k, n in [(2, 2, 2), (20, 200, 784), (7, 3, 5), (1000, 50, 200), (3, 0, 4), (0, 5, 3)]:
        for ta in (False, True):
            for tb in (False, True):
                a = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
                b = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
                got, want = np.full((m, n), np.nan, dtype), np.empty((m, n), dtype)
                compiled(addr, a, ta, b, tb, got)
                np.matmul(a.T if ta else a, b.T if tb else b, out=want)
                np.testing.assert_array_equal(got, want, err_msg=f"{(m, k, n, ta, tb)}")
