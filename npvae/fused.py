"""The VAE's training step composed from numba kernels and BLAS, in preallocated workspaces.

:meth:`npvae.VAE._forward` and :meth:`npvae.VAE._backward` (the NumPy ops, top to
bottom) are the specification; this module computes the same loss, bound and
gradients for every combination they support (any number of hidden layers,
relu/tanh, ``objective`` elbo/iwae, ``kl`` analytic/mc, ``estimator``
standard/stl/dreg), equal to ~1e-12 relative in float64 (only the order of float
operations differs), and is what a model with ``backend="numba"`` runs.

What it does differently from the reference, for speed:

* Every dense product is one BLAS call on a contiguous 2-D view, written with
  ``np.matmul(..., out=)`` into a :class:`Workspace` reused from step to step;
  the elementwise passes around the products are fused kernels
  (:mod:`npvae.kernels`): bias + activation, activation backward, the
  reparameterization with its KL, the log weights and their backward. The
  exception is the decoder's first layer, whose input is the latent ``z``
  (``L <= kernels.NARROW_INPUT`` columns): its product, bias and activation are
  one kernel pass, and so are its activation's backward, ``dW``, ``db`` and ``dz``.
* The decoder output -- bias, Bernoulli NLL summed over pixels and
  ``sigmoid(l) - x`` -- is one pass over ``(B, S, D)``, in place over
  the logits (:func:`npvae.kernels.bernoulli_nll_and_grad`). The upstream factor
  ``dnll[b, s]`` of each row is applied on the ``(B * S, H)`` side: to the hidden
  activations for ``dW`` and fused into the activation's backward for ``dh``
  (a row scale commutes with a right product), never in a pass over ``(B, S, D)``.
* The gradient with respect to ``x`` (the encoder's input) is not computed.

Workspaces are cached on the model, keyed by ``(B, S, dtype)`` (a few of them,
least recently used dropped first), so steady-state training allocates nothing
of size ``B * S * D`` or ``B * S * H``; the last, smaller batch of an epoch gets
its own. The forward-only path (:func:`forward`, used for evaluation) works
through the batch in chunks of examples so its workspace stays a few MB
whatever the evaluation batch size.

**Threads.** Every example's bound depends on its own ``S`` samples only, so a
batch splits exactly into groups of examples. With ``T`` threads
(:func:`threads_for`) a step runs ``T`` groups at once, each through the whole
pipeline above in its own workspace, its matrix products on one BLAS thread
(:func:`npvae._blas.single_threaded`) and its kernels without the GIL; the
groups' gradients are then summed. One BLAS call spread over the cores, with
serial passes between the calls, leaves a core to OpenBLAS's idle thread, which
spins (~0.1 s) after each product so that no other thread can use that core;
groups keep each core busy with its own products and passes. They pay for it in
the products' rate (single-threaded BLAS ran these shapes at ~60-90 GFLOPS per
core, threaded at ~110), so they are used only from :data:`MIN_GROUP_ROWS` x 2
rows on (``benchmarks/results/speed.md`` has the measurements). The result equals the
one-group step up to the order of float additions (the sum over groups), and is
the same from run to run for the same ``T``.

Below that size a step runs as one group, its products threaded by BLAS. In
float32 its elementwise passes over rows (the Bernoulli pass, the latent layer's
passes, the output layer's row scale and bias gradient) then go, cut into parts,
to OpenBLAS's own threads, which would otherwise spin idle between the products
(:func:`job_parts`, :class:`_Jobs`, :func:`npvae._blas.run_jobs`); so does the
optimizer's update of the large parameters (:func:`rmsprop_step`). Each part
does the same float operations on its rows as the one-part kernel; only the sums
over rows (bias and latent-weight gradients) add float64 partial sums, so they
can differ in the last bit. The same from run to run.
"""

import os
import threading
from collections import OrderedDict
from contextlib import nullcontext
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np

from . import _blas
from . import kernels as K
from . import objectives as obj

__all__ = ["Workspace", "loss_and_grads", "forward", "log_weights", "threads_for", "groups_for", "job_parts",
           "rmsprop_step", "steps_context", "FORWARD_ROWS", "MAX_WORKSPACES", "MIN_GROUP_ROWS", "MIN_JOB_ROWS",
           "MIN_JOB_ELEMENTS"]

#: Rows ``B * S`` per chunk of the forward-only path (evaluation): enough for BLAS
#: to run at full rate, small enough that the logits stay a few MB.
FORWARD_ROWS = 4096
#: Workspaces kept per model and thread (training batch, last partial batch, evaluation chunks).
MAX_WORKSPACES = 4
#: A step is split over threads only into groups of at least this many rows ``B * S``.
#: On the development machine (2 cores, batch 100) one group with BLAS threading its own
#: products was faster up to S = 10 (by 6% at S = 10, 60% at S = 1), groups faster from
#: S = 25 (by ~10%).
MIN_GROUP_ROWS = 1024

#: A one-group step's row passes are split (:func:`job_parts`) into parts of at least this many rows.
MIN_JOB_ROWS = 100

#: :func:`rmsprop_step` splits parameters into parts of at least this many elements.
MIN_JOB_ELEMENTS = 1 << 15

#: Set to an object with a ``mark(phase)`` method to time the phases of a step
#: (``benchmarks/speed.py`` does); each call ends the phase that started at the last.
PROFILER = None


class Workspace:
    """Preallocated arrays for one ``(B, S, dtype)`` of one model's architecture.

    Forward: ``enc_h[i]`` (B, H_i) hidden activations, ``mu``, ``log_var`` (B, L),
    ``z`` (B, S, L), ``kl`` (B,), ``dec_h[i]`` (B * S, H_i), ``logits`` (B * S, D)
    (overwritten by ``sigmoid(logits) - x``), ``nll``, ``log_w``, ``w_tilde`` (B, S),
    ``bound`` (B,). Backward (``grads=True``): the gradients of each of these, the
    row weights ``row_w`` (B * S,) and ``grads``, one array per parameter.
    ``parts > 1``: the row passes run in that many parts on BLAS's threads
    (``jobs``, see :func:`job_parts`).
    """

    def __init__(self, model, B, S, dtype, grads=True, parts=1):
        D, L, N = model.input_dim, model.latent_dim, B * S
        hidden, dec_sizes = model.hidden, model.hidden[::-1]

        def e(*shape):
            return np.empty(shape, dtype)

        self.key = (B, S, np.dtype(dtype).name, grads, parts)
        self.jobs = _Jobs(parts, D) if parts > 1 else None
        self.enc_h = [e(B, h) for h in hidden]
        self.mu, self.log_var = e(B, L), e(B, L)
        self.z, self.kl = e(B, S, L), e(B)
        self.dec_h = [e(N, h) for h in dec_sizes]
        self.logits = e(N, D)
        self.nll, self.log_w, self.w_tilde, self.bound = e(B, S), e(B, S), e(B, S), e(B)
        self.work = K.bernoulli_workspace(D, dtype)
        self.has_grads = grads
        if grads:
            self.row_w = e(N)
            self.hs = e(N, dec_sizes[-1])
            self.dec_d = [e(N, h) for h in dec_sizes]
            self.dz, self.dz_direct = e(B, S, L), e(B, S, L)
            self.dlog_w, self.dkl = e(B, S), e(B)
            self.dmu, self.dlog_var, self.dmu_q, self.dlog_var_q = e(B, L), e(B, L), e(B, L), e(B, L)
            self.enc_d = [e(B, h) for h in hidden]
            self.enc_tmp = e(B, hidden[-1])
            self.grads = {f"{name}.{kind}": e(*shape)
                          for name, fan_in, fan_out in model._layer_shapes()
                          for kind, shape in (("W", (fan_in, fan_out)), ("b", (fan_out,)))}

    @property
    def nbytes(self):
        """Bytes held by the arrays."""
        total = 0
        for v in vars(self).values():
            for a in (v.values() if isinstance(v, dict) else v if isinstance(v, list)
                      else vars(v).values() if isinstance(v, _Jobs) else [v]):
                total += a.nbytes if isinstance(a, np.ndarray) else 0
        return total


class _Jobs:
    """Row passes of a float32 step, each split into ``parts`` ranges of rows that run at
    once on the calling thread and BLAS's own threads (:func:`npvae._blas.run_jobs`; the
    job records are described in :mod:`npvae.kernels`, "Row passes as jobs").

    Its methods have the signatures of the kernels they split, so that the step calls
    ``(ws.jobs or K).kernel(...)``. Sums over rows go to float64 partial sums, one per
    part, added together at the end (so a float32 result can differ from the one-part
    kernel's in its last bit). The jobs read the arrays through their addresses, so an
    array that is not C-contiguous float32 (a parameter the user replaced with a
    transposed view, say) sends the pass to the kernel itself, on the calling thread.
    """

    def __init__(self, parts, D):
        self.parts = parts
        self.records = np.zeros((parts, K.JOB_FIELDS), np.int64)
        self.term = np.zeros((parts, D), np.float32)        # the Bernoulli pass's scratch row
        self.partials = {}
        self.address = K.row_job_address()

    def _run(self, op, n, f, k, flag, shared, sums=(), unit=1, per_part=()):
        """Run ``op`` over rows ``0:n`` in parts of whole ``unit`` rows; each part's record lists
        the ``shared`` arrays, then its own row of each ``per_part`` array, then its partials of
        each of ``sums`` (outputs), which are added into ``sums`` at the end. False, with
        nothing done, if a ``shared`` array is not C-contiguous float32."""
        if not all(a.dtype == np.float32 and a.flags.c_contiguous for a in shared):
            return False
        partials = []
        for j, out in enumerate(sums):
            key = (j, out.shape)
            if key not in self.partials:
                self.partials[key] = np.empty((self.parts,) + out.shape)
            partials.append(self.partials[key])
        K.job_records(self.records, op, n, f, k, flag, unit, (*shared, *per_part, *partials), len(shared))
        _blas.run_jobs(self.address, self.records)
        for out, a in zip(sums, partials):
            np.sum(a, axis=0, out=out)
        return True

    def narrow_dense_act_forward(self, z, W, b, act, out):
        if not self._run(K.JOB_NARROW_FORWARD, len(z), W.shape[1], W.shape[0], int(act == K.RELU),
                         [z, W, b, out]):
            K.narrow_dense_act_forward(z, W, b, act, out)
        elif act == K.TANH:
            np.tanh(out, out=out)

    def bernoulli_nll_and_grad(self, logits, x, nll, dlogits, work=None, bias=None):
        B, S, D = logits.shape
        if (dlogits is not logits or logits.dtype != np.float32 or
                not self._run(K.JOB_BERNOULLI, B * S, D, S, int(bias is not None),
                              [logits.reshape(B * S, D), x, nll, self.term[0] if bias is None else bias],
                              unit=S, per_part=[self.term])):
            K.bernoulli_nll_and_grad(logits, x, nll, dlogits, work, bias)

    def scale_rows_into(self, a, w, out):
        if not self._run(K.JOB_SCALE_ROWS, a.shape[0], a.shape[1], 0, 0, [a, w, out]):
            K.scale_rows_into(a, w, out)

    def weighted_bias_grad(self, d, w, db):
        if not self._run(K.JOB_WEIGHTED_BIAS, d.shape[0], d.shape[1], 0, 0, [d, w], sums=[db]):
            K.weighted_bias_grad(d, w, db)

    def narrow_dense_act_backward(self, dout, out_act, act, w, weighted, z, W, dW, db, dz):
        if not self._run(K.JOB_NARROW_BACKWARD, dout.shape[0], dout.shape[1], z.shape[1],
                         act + 16 * bool(weighted), [dout, out_act, w, z, W, dz], sums=[dW, db]):
            K.narrow_dense_act_backward(dout, out_act, act, w, weighted, z, W, dW, db, dz)


def workspace(model, B, S, grads=True, slot=0, parts=1):
    """The model's cached :class:`Workspace` for ``(B, S, model.dtype)``, made on first use.

    ``slot`` numbers the thread (group) that uses it: each has its own. ``parts``: see
    :class:`Workspace`.
    """
    cache = model.__dict__.setdefault("_workspaces", OrderedDict())
    key = (B, S, model.dtype.name, grads, slot, parts)
    ws = cache.get(key)
    if ws is None:
        ws = cache[key] = Workspace(model, B, S, model.dtype, grads, parts)
        while len(cache) > MAX_WORKSPACES * (slot + 1):
            cache.popitem(last=False)
    else:
        cache.move_to_end(key)
    return ws


def _forward_into(model, ws, x, eps, act, prof=None):
    """Encoder, reparameterization + KL, decoder and the Bernoulli pass, into ``ws``.

    ``prof``: :data:`PROFILER` (or None), marked at the end of each phase."""
    p, nh = model.params, len(model.hidden)
    B, S, L = eps.shape
    D = x.shape[1]
    h = x
    for i in range(nh):
        out = ws.enc_h[i]                                            # (B, H_i)
        np.matmul(h, p[f"enc.{i}.W"], out=out)
        K.bias_act_forward(out, p[f"enc.{i}.b"], act, out)
        h = out
    np.matmul(h, p["enc.mu.W"], out=ws.mu)                           # (B, L)
    np.add(ws.mu, p["enc.mu.b"], out=ws.mu)
    np.matmul(h, p["enc.logvar.W"], out=ws.log_var)
    np.add(ws.log_var, p["enc.logvar.b"], out=ws.log_var)
    if prof is not None:
        prof.mark("encoder GEMMs + bias/act")
    K.reparam_kl_forward(ws.mu, ws.log_var, eps, ws.z, ws.kl)       # (B, S, L), (B,)
    if prof is not None:
        prof.mark("reparam + KL")
    h = ws.z.reshape(B * S, L)
    for i in range(nh):
        out = ws.dec_h[i]                                            # (B * S, H_i)
        if i == 0 and L <= K.NARROW_INPUT:                           # z @ W + b, act: one pass
            (ws.jobs or K).narrow_dense_act_forward(h, p["dec.0.W"], p["dec.0.b"], act, out)
        else:
            np.matmul(h, p[f"dec.{i}.W"], out=out)
            K.bias_act_forward(out, p[f"dec.{i}.b"], act, out)
        h = out
    if prof is not None:
        prof.mark("decoder hidden layers")
    np.matmul(h, p["dec.out.W"], out=ws.logits)                      # (B * S, D), bias added below
    if prof is not None:
        prof.mark("output layer GEMM")
    logits = ws.logits.reshape(B, S, D)
    # nll (B, S); the logits become g = sigmoid(logits) - x, in place
    (ws.jobs or K).bernoulli_nll_and_grad(logits, x, ws.nll, logits, ws.work, bias=p["dec.out.b"])
    if prof is not None:
        prof.mark("output Bernoulli pass (bias, NLL, sigmoid - x)")


def _dense_backward(da, h_in, p, g, name, d_in):
    """``ops.dense_backward`` into the workspace: ``g[name.W] = h_in.T @ da``,
    ``g[name.b] = da.sum(0)`` and, unless ``d_in`` is None, ``d_in = da @ W.T``."""
    np.matmul(h_in.T, da, out=g[f"{name}.W"])
    K.bias_grad(da, g[f"{name}.b"])
    if d_in is not None:
        np.matmul(da, p[f"{name}.W"].T, out=d_in)


def _bound(ws, objective, kl, eps):
    """Per-example bound (B,) as the reference computes it; fills ``log_w``/``w_tilde`` when used."""
    if objective == "iwae" or kl == "mc":
        K.log_weights(ws.nll, ws.z, ws.log_var, eps, ws.log_w)       # (B, S)
    if objective == "iwae":
        K.logsumexp_weights(ws.log_w, ws.bound, ws.w_tilde)
        return ws.bound.copy()
    if kl == "mc":
        return ws.log_w.mean(axis=1)
    return (-ws.nll).mean(axis=1) - ws.kl


def _contiguous(x, eps):
    return np.ascontiguousarray(x), np.ascontiguousarray(eps)


def threads_for(model):
    """Threads a step of ``model`` may use: ``model.threads``, or when that is None, the
    BLAS library's thread count (``OPENBLAS_NUM_THREADS``, ``OMP_NUM_THREADS``, or the
    cores) where npvae can set it (:mod:`npvae._blas`), else 1 (one group, BLAS
    threading its own products)."""
    threads = getattr(model, "threads", None)
    if threads is not None:
        return threads
    blas = _blas.get_threads()
    return 1 if blas is None else max(1, min(blas, os.cpu_count() or 1))


def groups_for(model, B, S):
    """Groups (threads) a step of ``B`` examples with ``S`` samples runs in: at most
    :func:`threads_for` and ``B``, with at least :data:`MIN_GROUP_ROWS` rows each."""
    return max(1, min(threads_for(model), B, (B * S) // MIN_GROUP_ROWS))


def job_parts(model, B, S):
    """Parts a one-group step's row passes are split into, run at once on BLAS's own
    threads (:class:`_Jobs`): as many as BLAS runs on now, at most :func:`threads_for`
    and ``B`` and with at least :data:`MIN_JOB_ROWS` rows ``B * S`` each, in float32
    where NumPy's BLAS is an OpenBLAS npvae can give work to
    (:func:`npvae._blas.jobs_available`); else 1 (the passes run on the calling thread).

    Those threads would otherwise spin between the products, waiting for work, on the
    cores the passes could use. On the development machine (2 threads) the Bernoulli
    pass at S = 5 fell from 1.24 to 0.76 ms, and the step from 9.2 to 8.7 ms (S = 10:
    -8%, S = 20: -11%, S = 1: no gain, so not split).
    """
    if model.dtype != np.float32 or not _blas.jobs_available():
        return 1
    parts = min(threads_for(model), _blas.current_threads() or 1, B, (B * S) // MIN_JOB_ROWS)
    return parts if parts > 1 and K.row_job_address() is not None else 1


def rmsprop_step(p, g, v, lr, rho, eps):
    """:func:`npvae.kernels.rmsprop_step`, in parts on BLAS's threads where it pays.

    A float32 parameter of at least :data:`MIN_JOB_ELEMENTS` elements is updated in as
    many parts as BLAS runs threads right now (the one-group training step's setting;
    1 while the step runs in groups, :func:`npvae._blas.single_threaded`), at once on
    the calling thread and OpenBLAS's (:func:`npvae._blas.run_jobs`), where
    :func:`npvae._blas.jobs_available`. Elementwise, so the result is the same bit for
    bit. :class:`npvae.optim.RMSprop` calls this once a model has loaded this module.
    """
    parts = 1
    if (p.dtype == g.dtype == v.dtype == np.float32 and p.size >= 2 * MIN_JOB_ELEMENTS and _blas.jobs_available()
            and p.flags.c_contiguous and g.flags.c_contiguous and v.flags.c_contiguous):
        parts = min(_blas.current_threads() or 1, p.size // MIN_JOB_ELEMENTS)
    if parts < 2 or K.row_job_address() is None:
        K.rmsprop_step(p, g, v, lr, rho, eps)
        return
    records = np.empty((parts, K.JOB_FIELDS), np.int64)
    K.job_records(records, K.JOB_RMSPROP, p.size, 0, 0, 0, 1, (p, g, v), 3)
    records[:, 13:] = np.array([lr, rho, eps]).view(np.int64)
    _blas.run_jobs(K.row_job_address(), records)


def steps_context(model, B, S):
    """A context for a loop of steps of ``B`` examples and ``S`` samples (training,
    evaluation): BLAS on one thread throughout when such steps run on several threads
    (:func:`groups_for`), else nothing (BLAS threads its own products).

    Each step sets BLAS to one thread anyway; holding it there between steps also
    keeps BLAS from running a product on all its threads in between, after which
    OpenBLAS's threads spin, waiting for work, for a while (~0.1 s) on the cores that
    the next step's groups need (on the development machine two groups then ran no
    faster than one).
    """
    if groups_for(model, B, S) > 1:
        return _blas.single_threaded()
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


def _run_groups(fn, groups):
    """``[fn(slot, *group) for slot, group in enumerate(groups)]``, the groups on threads.

    Slot 0 runs on the calling thread, the others on the pool, all with BLAS on one
    thread. Every group has finished (or failed) before this returns or raises, so
    no thread is still writing into a workspace when the next step starts.
    """
    if len(groups) == 1:
        return [fn(0, *groups[0])]
    with _blas.single_threaded():
        pool = _executor(len(groups) - 1)
        futures = [pool.submit(fn, slot, *g) for slot, g in enumerate(groups) if slot > 0]
        try:
            first = fn(0, *groups[0])
        finally:
            wait(futures)
        rest = [f.result() for f in futures]      # raises the first group's error, if any
    return [first] + rest


def _split(n, parts):
    """``parts`` contiguous ``(start, stop)`` ranges covering ``range(n)``, sizes within 1."""
    return [(n * i // parts, n * (i + 1) // parts) for i in range(parts)]


def forward(model, x, eps, objective, kl="analytic"):
    """The :class:`npvae.objectives.Bound` of ``VAE._forward``, without gradients.

    Works through the batch in chunks of at most :data:`FORWARD_ROWS` rows ``B * S``
    (each example's bound depends on its own samples only, so this is exact), the
    chunks shared among :func:`threads_for` threads.

    Parameters
    ----------
    model : npvae.VAE
    x : ndarray, shape (B, D)
    eps : ndarray, shape (B, S, L)
    objective, kl : str
        Already validated.

    Returns
    -------
    Bound
    """
    x, eps = _contiguous(x, eps)
    B, S, _ = eps.shape
    dtype = model.dtype
    bound, nll, kl_exact = np.empty(B, dtype), np.empty((B, S), dtype), np.empty(B, dtype)

    def keep(ws, b0, b1, e):
        bound[b0:b1] = _bound(ws, objective, kl, e)
        nll[b0:b1] = ws.nll
        kl_exact[b0:b1] = ws.kl

    _forward_chunks(model, x, eps, keep)
    return obj.Bound(float(-bound.mean()), bound, float(nll.mean()), float(kl_exact.mean()))


def log_weights(model, x, eps):
    """Log importance weights ``log p(x|z) + log p(z) - log q(z|x)``, shape (B, S), float64.

    The forward pass of :func:`forward` (chunks of examples, shared among threads),
    then :func:`npvae.kernels.log_weights`; for :func:`npvae.log_likelihood`.
    ``x`` (B, D) and ``eps`` (B, S, L) of the model's dtype, already validated.
    """
    x, eps = _contiguous(x, eps)
    out = np.empty(eps.shape[:2])

    def keep(ws, b0, b1, e):
        K.log_weights(ws.nll, ws.z, ws.log_var, e, ws.log_w)
        out[b0:b1] = ws.log_w

    _forward_chunks(model, x, eps, keep)
    return out


def _forward_chunks(model, x, eps, keep):
    """The forward pass over chunks of at most :data:`FORWARD_ROWS` rows, the chunks shared
    among :func:`groups_for` threads; ``keep(ws, b0, b1, eps[b0:b1])`` takes each chunk's
    results from its workspace (different chunks write different rows: no locking)."""
    B, S, _ = eps.shape
    act = K.ACT_CODES[model.activation]
    chunk = max(1, min(B, FORWARD_ROWS // S))
    starts = list(range(0, B, chunk))
    threads = min(groups_for(model, B, S), len(starts))

    def run(slot, i0, i1):  # chunks starts[i0:i1]
        for b0 in starts[i0:i1]:
            b1 = min(B, b0 + chunk)
            ws = workspace(model, b1 - b0, S, grads=False, slot=slot)
            e = eps[b0:b1]
            _forward_into(model, ws, x[b0:b1], e, act)
            keep(ws, b0, b1, e)

    _run_groups(run, _split(len(starts), threads))


def loss_and_grads(model, x, eps, objective, kl="analytic", estimator="standard", return_bound=False):
    """``VAE._loss_and_grads`` from kernels and BLAS: the same loss (or Bound) and gradients.

    Parameters
    ----------
    model : npvae.VAE
    x : ndarray, shape (B, D)
    eps : ndarray, shape (B, S, L)
        Of the model's dtype (trusted: validate at the public boundary).
    objective, kl, estimator : str
        Already validated (:func:`npvae.objectives.check_objective`).
    return_bound : bool

    Returns
    -------
    loss : float or Bound
        ``Bound.per_example`` is a fresh array.
    grads : dict of str to ndarray
        **Views into the model's workspace for this (B, S, dtype): the next call with
        the same shapes overwrites them.** Consume them (e.g. an optimizer step) or
        copy them before the next call; :meth:`npvae.VAE.loss_and_grads` returns
        copies, while :func:`npvae.fit` uses them as they are. For the same reason
        one model must not run two steps at once (from threads of its own: the step
        runs its groups on threads itself, see the module docstring).
    """
    x, eps = _contiguous(x, eps)
    B, S, _ = eps.shape
    groups = _split(B, groups_for(model, B, S))
    jobs = job_parts(model, B, S) if len(groups) == 1 else 1
    parts = _run_groups(lambda slot, b0, b1: _step(model, slot, x[b0:b1], eps[b0:b1], objective, kl,
                                                   estimator, B, jobs), groups)
    g = parts[0][3]
    for part in parts[1:]:                      # sum the groups' gradients into group 0's
        for name, a in g.items():
            np.add(a, part[3][name], out=a)
    bound = parts[0][0] if len(parts) == 1 else np.concatenate([part[0] for part in parts])
    result = obj.Bound(float(-bound.mean()), bound, sum(part[1] for part in parts) / (B * S),
                       sum(part[2] for part in parts) / B)
    return (result if return_bound else result.loss), g


def _step(model, slot, x, eps, objective, kl, estimator, batch, parts=1):
    """Forward and backward of the examples ``x`` (a group of a batch of ``batch``) in
    the workspace of ``slot``, its row passes in ``parts`` jobs on BLAS's threads
    (:func:`job_parts`).

    Returns ``(bound, nll_sum, kl_sum, grads)``: the per-example bound (a fresh array),
    the float64 sums of the NLL over (examples, samples) and of the analytic KL over
    examples, and the gradients of the *whole batch's* loss (``-mean`` of the bound
    over ``batch`` examples) with respect to the parameters, through these examples.
    """
    p, nh = model.params, len(model.hidden)
    B, S, L = eps.shape
    N = B * S
    act = K.ACT_CODES[model.activation]
    ws = workspace(model, B, S, grads=True, slot=slot, parts=parts)
    g = ws.grads
    prof = PROFILER if slot == 0 else None

    # ---- forward ---------------------------------------------------------------
    _forward_into(model, ws, x, eps, act, prof)
    log_weights = objective == "iwae" or kl == "mc"
    bound = _bound(ws, objective, kl, eps)                            # (B,)
    sums = float(ws.nll.sum(dtype=np.float64)), float(ws.kl.sum(dtype=np.float64))

    # ---- backward: the bound's gradients on the sample axis --------------------
    dbound = model.dtype.type(-1.0 / batch)                          # d loss / d bound
    if log_weights:
        if objective == "iwae":
            np.multiply(ws.w_tilde, dbound, out=ws.dlog_w)           # dbound * w~
        else:
            ws.dlog_w.fill(dbound / S)
        np.negative(ws.dlog_w, out=ws.row_w.reshape(B, S))           # dnll = -dlog_px
        # direct gradients of log p(z) - log q(z|x) (z held fixed)
        K.log_weights_backward(ws.dlog_w, ws.z, eps, ws.log_var, ws.dz_direct, ws.dmu_q, ws.dlog_var_q)
        ws.dkl.fill(0.0)
    else:
        ws.row_w.fill(-(dbound / S))
        ws.dkl.fill(-dbound)

    if prof is not None:
        prof.mark("bound, log weights and their backward")
    # ---- decoder backward ---------------------------------------------------------
    w = ws.row_w
    grad_logits = ws.logits                                           # sigmoid(l) - x, (B * S, D)
    h_last, kern = ws.dec_h[-1], ws.jobs or K
    kern.scale_rows_into(h_last, w, ws.hs)
    np.matmul(ws.hs.T, grad_logits, out=g["dec.out.W"])               # (dnll * h).T @ g
    kern.weighted_bias_grad(grad_logits, w, g["dec.out.b"])
    np.matmul(grad_logits, p["dec.out.W"].T, out=ws.dec_d[-1])       # g @ W.T, unscaled
    if prof is not None:
        prof.mark("output layer backward: dW, db, dh (GEMMs, row weights)")
    z2 = ws.z.reshape(N, L)
    weighted = True                          # dnll still to apply (with the last layer's act')
    for i in reversed(range(nh)):
        dout = ws.dec_d[i]                                            # (B * S, H_i), before act'
        if i == 0 and L <= K.NARROW_INPUT:   # act', dW, db and dz of the latent's layer: one pass
            kern.narrow_dense_act_backward(dout, ws.dec_h[0], act, w, weighted, z2, p["dec.0.W"],
                                           g["dec.0.W"], g["dec.0.b"], ws.dz.reshape(N, L))
            break
        if weighted:
            K.act_backward_rows(dout, ws.dec_h[i], act, w, dout)      # dnll * (g @ W.T) * act'
            weighted = False
        else:
            K.act_backward(dout, ws.dec_h[i], act, dout)
        _dense_backward(dout, ws.dec_h[i - 1] if i > 0 else z2, p, g, f"dec.{i}",
                        ws.dec_d[i - 1] if i > 0 else ws.dz.reshape(N, L))

    if prof is not None:
        prof.mark("decoder hidden layers backward")
    # ---- latent: estimators, reparameterization and KL ---------------------------
    dz = ws.dz
    if log_weights:
        np.add(dz, ws.dz_direct, out=dz)
    if estimator == "dreg":
        np.multiply(dz, ws.w_tilde[:, :, None], out=dz)              # w~ -> w~^2 on the path
    K.reparam_kl_backward(dz, eps, ws.mu, ws.log_var, ws.dkl, ws.dmu, ws.dlog_var)
    if log_weights and estimator == "standard":                      # STL/DReG drop the score term
        np.add(ws.dmu, ws.dmu_q, out=ws.dmu)
        np.add(ws.dlog_var, ws.dlog_var_q, out=ws.dlog_var)

    if prof is not None:
        prof.mark("reparam + KL backward")
    # ---- encoder backward ---------------------------------------------------------
    h_last, dh = ws.enc_h[-1], ws.enc_d[-1]
    _dense_backward(ws.dmu, h_last, p, g, "enc.mu", dh)
    _dense_backward(ws.dlog_var, h_last, p, g, "enc.logvar", ws.enc_tmp)
    np.add(dh, ws.enc_tmp, out=dh)
    for i in reversed(range(nh)):
        da = ws.enc_d[i]                                              # (B, H_i)
        K.act_backward(da, ws.enc_h[i], act, da)
        _dense_backward(da, ws.enc_h[i - 1] if i > 0 else x, p, g, f"enc.{i}",
                        ws.enc_d[i - 1] if i > 0 else None)           # no dx for the data
    if prof is not None:
        prof.mark("encoder backward GEMMs + act/bias grads")
    return bound, sums[0], sums[1], g
