"""Threads of the fast path: how many a step uses, how a batch is split among them, and
the pool that runs the groups.

Every example's bound depends on its own ``S`` samples only, so a batch splits exactly
into groups of examples. With ``T`` threads (:func:`threads_for`) a large step runs
``T`` groups at once, each through the whole pipeline of :mod:`npvae.fast.step` in its
own workspace, its matrix products on one BLAS thread
(:func:`npvae.fast.blas.single_threaded`) and its kernels without the GIL; the groups'
gradients are then summed. One BLAS call spread over the cores, with serial passes
between the calls, leaves a core to OpenBLAS's idle thread, which spins (~0.1 s) after
each product so that no other thread can use that core; groups keep each core busy with
its own products and passes. They pay for it in the products' rate (single-threaded
BLAS ran these shapes at ~60-90 GFLOPS per core, threaded at ~110), so they are used
only from :data:`MIN_GROUP_ROWS` x 2 rows on (``benchmarks/results/speed.md`` has the
measurements). The result equals the one-group step up to the order of float additions
(the sum over groups), and is the same from run to run for the same ``T``.

Below that size a step runs as one group, its products threaded by BLAS; in float32 its
row passes then go, in parts, to BLAS's own threads (:func:`job_parts`,
:class:`npvae.fast.jobs.Jobs`). Each part does the same float operations on its rows as
the one-part kernel; only the sums over rows (bias and latent-weight gradients) add
float64 partial sums, so they can differ in the last bit. The same from run to run.
"""

import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import nullcontext

import numpy as np

from . import blas, jobs

__all__ = ["threads_for", "groups_for", "job_parts", "steps_context", "run_groups", "split",
           "MIN_GROUP_ROWS", "MIN_JOB_ROWS"]

#: A step is split over threads only into groups of at least this many rows ``B * S``.
#: On the development machine (2 cores, batch 100) one group with BLAS threading its own
#: products was faster up to S = 10 (by 6% at S = 10, 60% at S = 1), groups faster from
#: S = 25 (by ~10%).
MIN_GROUP_ROWS = 1024

_CPUS = os.cpu_count() or 1      # asked once: threads_for runs on every step (~30 us a call)

#: A one-group step's row passes are split (:func:`job_parts`) into parts of at least this many rows.
MIN_JOB_ROWS = 100


def threads_for(engine):
    """Threads a step of ``engine`` may use (an engine, or a model: anything with ``threads``
    and ``dtype``): its ``threads``, or when that is None, the
    BLAS library's thread count (``OPENBLAS_NUM_THREADS``, ``OMP_NUM_THREADS``, or the
    cores) where npvae can set it (:mod:`npvae.fast.blas`), else 1 (one group, BLAS
    threading its own products)."""
    threads = engine.threads
    if threads is not None:
        return threads
    count = blas.get_threads()
    return 1 if count is None else max(1, min(count, _CPUS))


def groups_for(engine, B, S):
    """Groups (threads) a step of ``B`` examples with ``S`` samples runs in: at most
    :func:`threads_for` and ``B``, with at least :data:`MIN_GROUP_ROWS` rows each."""
    return max(1, min(threads_for(engine), B, (B * S) // MIN_GROUP_ROWS))


def job_parts(engine, B, S):
    """Parts a one-group step's row passes are split into, run at once on BLAS's own
    threads (:class:`npvae.fast.jobs.Jobs`): as many as BLAS runs on now, at most :func:`threads_for`
    and ``B`` and with at least :data:`MIN_JOB_ROWS` rows ``B * S`` each, in float32
    where NumPy's BLAS is an OpenBLAS npvae can give work to
    (:func:`npvae.fast.blas.jobs_available`); else 1 (the passes run on the calling thread).

    Those threads would otherwise spin between the products, waiting for work, on the
    cores the passes could use. On the development machine (2 threads) the Bernoulli
    pass at S = 5 fell from 1.24 to 0.76 ms, and the step from 9.2 to 8.7 ms (S = 10:
    -8%, S = 20: -11%, S = 1: no gain, so not split).
    """
    if engine.dtype != np.float32 or not blas.jobs_available():
        return 1
    parts = min(threads_for(engine), blas.current_threads() or 1, B, (B * S) // MIN_JOB_ROWS)
    return parts if parts > 1 and jobs.row_job_address() is not None else 1


def steps_context(engine, B, S):
    """A context for a loop of steps of ``B`` examples and ``S`` samples (training,
    evaluation): BLAS on one thread throughout when such steps run on several threads
    (:func:`groups_for`), else nothing (BLAS threads its own products).

    Each step sets BLAS to one thread anyway; holding it there between steps also
    keeps BLAS from running a product on all its threads in between, after which
    OpenBLAS's threads spin, waiting for work, for a while (~0.1 s) on the cores that
    the next step's groups need (on the development machine two groups then ran no
    faster than one).
    """
    if groups_for(engine, B, S) > 1:
        return blas.single_threaded()
    return nullcontext()


_pool, _pool_size = None, 0
_pool_lock = threading.Lock()


def _forget_pool_in_child():
    """After ``fork`` the child has none of the pool's threads: start a new pool when needed
    (else a step in the child would wait forever for a thread that does not exist)."""
    global _pool, _pool_size, _pool_lock
    _pool, _pool_size, _pool_lock = None, 0, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_in_child)


def _executor(workers):
    """A process-wide thread pool with at least ``workers`` threads."""
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size < workers:
            old, _pool, _pool_size = _pool, ThreadPoolExecutor(workers, thread_name_prefix="npvae"), workers
            if old is not None:
                old.shutdown(wait=False)
        return _pool


def run_groups(fn, groups):
    """``[fn(slot, *group) for slot, group in enumerate(groups)]``, the groups on threads.

    Slot 0 runs on the calling thread, the others on the pool, all with BLAS on one
    thread. Every group has finished (or failed) before this returns or raises, so
    no thread is still writing into a workspace when the next step starts.
    """
    if len(groups) == 1:
        return [fn(0, *groups[0])]
    with blas.single_threaded():
        pool = _executor(len(groups) - 1)
        futures = [pool.submit(fn, slot, *g) for slot, g in enumerate(groups) if slot > 0]
        try:
            first = fn(0, *groups[0])
        finally:
            wait(futures)
        rest = [f.result() for f in futures]      # raises the first group's error, if any
    return [first] + rest


def split(n, parts):
    """``parts`` contiguous ``(start, stop)`` ranges covering ``range(n)``, sizes within 1."""
    return [(n * i // parts, n * (i + 1) // parts) for i in range(parts)]
