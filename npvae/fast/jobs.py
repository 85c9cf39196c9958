"""Row passes as jobs on BLAS's own threads: the job-record layout, the C-callable job
function, and :class:`Jobs`, which splits a one-group float32 step's passes into parts.

While a step runs its products on OpenBLAS's threads, those threads spin between the
products, waiting for work, and no other thread gets their cores. So a one-group float32
step hands its elementwise passes over rows to them: a C-callable function (numba
``cfunc``, :func:`row_job_address`) reads a *job record* -- an int64 array of an
operation code, a range of rows, sizes and the addresses of the arrays -- and runs the
kernel of :mod:`npvae.fast.dense`, :mod:`npvae.fast.bernoulli` or
:mod:`npvae.fast.updates` for those rows (:func:`npvae.fast.blas.run_jobs` starts one job
per thread). Float32 only: the float64 Bernoulli pass uses NumPy ufuncs, which a cfunc
cannot call, and float64 is the precision for checks, not for speed.

The layout of a record is defined here and nowhere else: :func:`job_records` writes
records, :func:`_row_job` reads them, and :class:`Jobs` and :func:`_update_in_parts`
are the only callers. The step itself calls the passes through an object with the
kernels' signatures: :data:`SERIAL` (the kernels themselves, on the calling thread) or
a :class:`Jobs` (the same in parts).
"""

import warnings

import numpy as np

from . import bernoulli, blas, dense, updates
from ._jit import JIT, inline_kernel, kernel, literal_unroll, numba

__all__ = ["JOB_FIELDS", "JOB_BERNOULLI", "JOB_NARROW_FORWARD", "JOB_SCALE_ROWS", "JOB_WEIGHTED_BIAS",
           "JOB_NARROW_BACKWARD", "JOB_RMSPROP", "JOB_ADAM", "JOB_UPDATE_TABLE", "UPDATE_RULES", "job_records",
           "row_job_address", "Jobs", "SERIAL", "rmsprop_in_parts", "adam_in_parts", "UpdateTable", "update_rows",
           "MIN_JOB_ELEMENTS"]

#: int64 fields of a job record: ``[op, r0, r1, n, f, k, flag, address x 9]`` (:func:`job_records`).
JOB_FIELDS = 16
#: Operation codes of a job record; the arrays of each, in record order (``n`` rows,
#: ``f`` columns, ``k`` the samples per example or the latent width; float32 unless noted):
#:
#: * ``JOB_BERNOULLI``: logits (n, f) in place, x (n // k, f), nll (n,), bias (f,), term (f,);
#:   ``flag`` 1 to add the bias; rows ``r0:r1`` whole examples (multiples of ``k``).
#: * ``JOB_NARROW_FORWARD``: z (n, k), W (k, f), b (f,), out (n, f); ``flag`` the activation's code.
#: * ``JOB_SCALE_ROWS``: a (n, f), w (n,), out (n, f).
#: * ``JOB_WEIGHTED_BIAS``: d (n, f), w (n,), db (f,) float64 (this part's sum).
#: * ``JOB_NARROW_BACKWARD``: dout (n, f), out_act (n, f), w (n,), z (n, k), W (k, f),
#:   dz (n, k), dW (k, f) float64, db (f,) float64 (this part's sums);
#:   ``flag`` = act + 16 * weighted.
#: * ``JOB_RMSPROP``: p (n,), g (n,), v (n,) (:func:`npvae.fast.updates.rmsprop_step` on elements ``r0:r1``);
#:   ``lr``, ``rho``, ``eps`` as float64 in fields 13-15.
#: * ``JOB_ADAM``: p (n,), g (n,), m (n,), v (n,) (:func:`npvae.fast.updates.adam_step` on elements ``r0:r1``);
#:   ``alpha``, ``beta1``, ``beta2``, ``eps`` as float64 in fields 12-15.
#: * ``JOB_UPDATE_TABLE``: the optimizer's update of many parameters at once, elements ``r0:r1`` of
#:   their concatenation (:func:`update_rows`); ``f`` parameters listed by the int64 table
#:   ``(f, 5)`` at address 7, ``flag`` the rule (:data:`UPDATE_RULES`), its scalars as float64
#:   in the last fields (Adam's four in 12-15, RMSprop's three in 13-15).
(JOB_BERNOULLI, JOB_NARROW_FORWARD, JOB_SCALE_ROWS, JOB_WEIGHTED_BIAS, JOB_NARROW_BACKWARD, JOB_RMSPROP,
 JOB_ADAM, JOB_UPDATE_TABLE) = range(1, 9)
#: The rules :class:`UpdateTable` runs, by the code of a record's ``flag``.
UPDATE_RULES = {"adam": 1, "rmsprop": 2}


@kernel
def job_records(records, op, n, f, k, flag, unit, arrays, shared):
    """Fill ``records`` (int64, ``(parts, JOB_FIELDS)``) with one job per part of rows ``0:n``.

    Part ``j`` covers whole ``unit``-row blocks, ``n // unit * j // parts`` up to the
    next part's start (sizes within one block), and lists the addresses of the
    ``arrays`` in the order of the operation (see :data:`JOB_BERNOULLI`): the first
    ``shared`` as they are, of each later one its row ``j`` (a part's own scratch or
    partial sums). All C-contiguous; they must stay alive until the jobs have run
    (:func:`row_job_address`).
    """
    parts = records.shape[0]
    units = n // unit
    for j in range(parts):
        rec = records[j]
        rec[0], rec[1], rec[2] = op, units * j // parts * unit, units * (j + 1) // parts * unit
        rec[3], rec[4], rec[5], rec[6] = n, f, k, flag
        i = 0
        for a in literal_unroll(arrays):
            rec[7 + i] = a.ctypes.data + (0 if i < shared else j * a.strides[0])
            i += 1


def _row_job(rec_address):
    """Run the job record at ``rec_address`` (see :data:`JOB_FIELDS`)."""
    rec = _carray(_i64_ptr(rec_address), (JOB_FIELDS,))
    op, r0, r1, n, f, k, flag = rec[0], rec[1], rec[2], rec[3], rec[4], rec[5], rec[6]
    if op == JOB_BERNOULLI:
        logits, x, nll = _f32_at(rec[7], (n, f)), _f32_at(rec[8], (n // k, f)), _f32_at(rec[9], (n,))
        bernoulli.bernoulli_f32_rows(logits[r0:r1], x[r0 // k:r1 // k], k, _f32_at(rec[10], (f,)), flag == 1,
                               nll[r0:r1], _f32_at(rec[11], (f,)))
    elif op == JOB_NARROW_FORWARD:
        z, out = _f32_at(rec[7], (n, k)), _f32_at(rec[10], (n, f))
        dense.narrow_forward_rows(z[r0:r1], _f32_at(rec[8], (k, f)), _f32_at(rec[9], (f,)), flag, out[r0:r1])
    elif op == JOB_SCALE_ROWS:
        a, w, out = _f32_at(rec[7], (n, f)), _f32_at(rec[8], (n,)), _f32_at(rec[9], (n, f))
        dense.scale_rows_into(a[r0:r1], w[r0:r1], out[r0:r1])
    elif op == JOB_WEIGHTED_BIAS:
        d, w = _f32_at(rec[7], (n, f)), _f32_at(rec[8], (n,))
        dense.weighted_bias_grad(d[r0:r1], w[r0:r1], _f64_at(rec[9], (f,)))
    elif op == JOB_NARROW_BACKWARD:
        dout, out_act, w = _f32_at(rec[7], (n, f)), _f32_at(rec[8], (n, f)), _f32_at(rec[9], (n,))
        z, dz = _f32_at(rec[10], (n, k)), _f32_at(rec[12], (n, k))
        dense.narrow_dense_act_backward(dout[r0:r1], out_act[r0:r1], flag % 16, w[r0:r1], flag >= 16, z[r0:r1],
                                  _f32_at(rec[11], (k, f)), _f64_at(rec[13], (k, f)), _f64_at(rec[14], (f,)),
                                  dz[r0:r1])
    elif op == JOB_RMSPROP:
        p, g, v = _f32_at(rec[7], (n,)), _f32_at(rec[8], (n,)), _f32_at(rec[9], (n,))
        scalars = _carray(_f64_ptr(rec_address), (JOB_FIELDS,))
        updates.rmsprop_step(p[r0:r1], g[r0:r1], v[r0:r1], scalars[13], scalars[14], scalars[15])
    elif op == JOB_ADAM:
        p, g, m, v = _f32_at(rec[7], (n,)), _f32_at(rec[8], (n,)), _f32_at(rec[9], (n,)), _f32_at(rec[10], (n,))
        scalars = _carray(_f64_ptr(rec_address), (JOB_FIELDS,))
        updates.adam_step(p[r0:r1], g[r0:r1], m[r0:r1], v[r0:r1], scalars[12], scalars[13], scalars[14], scalars[15])
    elif op == JOB_UPDATE_TABLE:
        scalars = _carray(_f64_ptr(rec_address), (JOB_FIELDS,))
        update_rows(_carray(_i64_ptr(rec[7]), (f, 5)), r0, r1, flag, scalars[12], scalars[13], scalars[14],
                    scalars[15])


_row_job_cfunc = None      # the compiled cfunc; False if compiling it failed


def row_job_address():
    """The address of the compiled ``void job(int64 *record)`` (see :data:`JOB_FIELDS`), or
    None where numba is missing or its JIT disabled, or compiling it failed (then with a
    warning, once: the passes run on the calling thread instead). Compiled (or loaded
    from numba's cache) on first call."""
    global _row_job_cfunc
    if not JIT or _row_job_cfunc is False:
        return None
    if _row_job_cfunc is None:
        try:
            _row_job_cfunc = numba.cfunc(_types.void(_types.voidptr), cache=True, error_model="numpy")(_row_job)
        except Exception as exc:  # noqa: BLE001 -- a speed-up only: fall back, say why
            _row_job_cfunc = False
            warnings.warn(f"npvae: the row passes' job function did not compile ({type(exc).__name__}: {exc}); "
                          "the training step's passes run on the calling thread", RuntimeWarning, stacklevel=2)
            return None
    return _row_job_cfunc.address


if JIT:
    from numba import carray as _carray
    from numba.core import types as _types
    from numba.extending import intrinsic as _intrinsic

    def _address_intrinsic(target):
        """An intrinsic turning an address (int64, or a void pointer) into a pointer to ``target``."""
        @_intrinsic
        def as_ptr(typingctx, address):
            def codegen(context, builder, signature, args):
                llty = context.get_value_type(target)
                if isinstance(address, _types.Integer):
                    return builder.inttoptr(args[0], llty.as_pointer())
                return builder.bitcast(args[0], llty.as_pointer())
            return _types.CPointer(target)(address), codegen
        return as_ptr

    _i64_ptr = _address_intrinsic(_types.int64)
    _f32_ptr = _address_intrinsic(_types.float32)
    _f64_ptr = _address_intrinsic(_types.float64)

    @inline_kernel
    def _f32_at(address, shape):
        """The C-contiguous float32 array of ``shape`` at ``address``."""
        return _carray(_f32_ptr(address), shape)

    @inline_kernel
    def _f64_at(address, shape):
        """The C-contiguous float64 array of ``shape`` at ``address``."""
        return _carray(_f64_ptr(address), shape)


# --------------------------------------------------------------------------
# The passes of a step: on the calling thread, or in parts on BLAS's threads
# --------------------------------------------------------------------------
class _Serial:
    """The row passes of a step as the kernels themselves, on the calling thread."""

    narrow_dense_act_forward = staticmethod(dense.narrow_dense_act_forward)
    bernoulli_nll_and_grad = staticmethod(bernoulli.bernoulli_nll_and_grad)
    scale_rows_into = staticmethod(dense.scale_rows_into)
    weighted_bias_grad = staticmethod(dense.weighted_bias_grad)
    narrow_dense_act_backward = staticmethod(dense.narrow_dense_act_backward)


#: The step's row passes, unsplit (what a step runs when it is not given :class:`Jobs`).
SERIAL = _Serial()


class Jobs(_Serial):
    """Row passes of a float32 step, each split into ``parts`` ranges of rows that run at
    once on the calling thread and BLAS's own threads (:func:`npvae.fast.blas.run_jobs`).

    Its methods have the signatures of the kernels they split (those of :data:`SERIAL`).
    Sums over rows go to float64 partial sums, one per part, added together at the end
    (so a float32 result can differ from the one-part kernel's in its last bit). The
    jobs read the arrays through their addresses, so an array that is not C-contiguous
    float32 (a parameter the user replaced with a transposed view, say) sends the pass
    to the kernel itself, on the calling thread.
    """

    def __init__(self, parts, D):
        self.parts = parts
        self.records = np.zeros((parts, JOB_FIELDS), np.int64)
        self.term = np.zeros((parts, D), np.float32)        # the Bernoulli pass's scratch row
        self.partials = {}
        self.address = row_job_address()

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
        job_records(self.records, op, n, f, k, flag, unit, (*shared, *per_part, *partials), len(shared))
        blas.run_jobs(self.address, self.records)
        for out, a in zip(sums, partials):
            np.sum(a, axis=0, out=out)
        return True

    def narrow_dense_act_forward(self, z, W, b, act, out):
        if not self._run(JOB_NARROW_FORWARD, len(z), W.shape[1], W.shape[0], act, [z, W, b, out]):
            dense.narrow_dense_act_forward(z, W, b, act, out)

    def bernoulli_nll_and_grad(self, logits, x, nll, dlogits, work=None, bias=None):
        B, S, D = logits.shape
        if (dlogits is not logits or logits.dtype != np.float32 or
                not self._run(JOB_BERNOULLI, B * S, D, S, int(bias is not None),
                              [logits.reshape(B * S, D), x, nll, self.term[0] if bias is None else bias],
                              unit=S, per_part=[self.term])):
            bernoulli.bernoulli_nll_and_grad(logits, x, nll, dlogits, work, bias)

    def scale_rows_into(self, a, w, out):
        if not self._run(JOB_SCALE_ROWS, a.shape[0], a.shape[1], 0, 0, [a, w, out]):
            dense.scale_rows_into(a, w, out)

    def weighted_bias_grad(self, d, w, db):
        if not self._run(JOB_WEIGHTED_BIAS, d.shape[0], d.shape[1], 0, 0, [d, w], sums=[db]):
            dense.weighted_bias_grad(d, w, db)

    def narrow_dense_act_backward(self, dout, out_act, act, w, weighted, z, W, dW, db, dz):
        if not self._run(JOB_NARROW_BACKWARD, dout.shape[0], dout.shape[1], z.shape[1],
                         act + 16 * bool(weighted), [dout, out_act, w, z, W, dz], sums=[dW, db]):
            dense.narrow_dense_act_backward(dout, out_act, act, w, weighted, z, W, dW, db, dz)


#: :func:`rmsprop_in_parts` and :func:`adam_in_parts` split parameters into parts of at least this many elements.
MIN_JOB_ELEMENTS = 1 << 15


def _update_parts(arrays):
    """Parts an elementwise update of ``arrays`` (the parameter, its gradient and the
    optimizer's slots) runs in on BLAS's threads: as many as BLAS runs threads right now
    (1 while a step runs in groups, :func:`npvae.fast.blas.single_threaded`), with at least
    :data:`MIN_JOB_ELEMENTS` each; 1 (the calling thread) unless all are C-contiguous
    float32, :func:`npvae.fast.blas.jobs_available` and the job function compiled."""
    if not all(a.dtype == np.float32 and a.flags.c_contiguous for a in arrays):
        return 1
    return _parts_for(arrays[0].size)


def _parts_for(size):
    """Parts an elementwise job over ``size`` float32 elements runs in (the rule of
    :func:`_update_parts` and :meth:`UpdateTable.run`): BLAS's current threads, at most one
    per :data:`MIN_JOB_ELEMENTS`; 1 below two of those, or where jobs cannot run."""
    if size < 2 * MIN_JOB_ELEMENTS or not blas.jobs_available():
        return 1
    parts = min(blas.current_threads() or 1, size // MIN_JOB_ELEMENTS)
    return parts if parts > 1 and row_job_address() is not None else 1


def _update_in_parts(op, arrays, scalars, parts):
    """Run the update ``op`` over ``arrays`` in ``parts`` on BLAS's threads, its float64
    ``scalars`` in the last fields of each record (:data:`JOB_FIELDS`)."""
    records = np.empty((parts, JOB_FIELDS), np.int64)
    job_records(records, op, arrays[0].size, 0, 0, 0, 1, tuple(arrays), len(arrays))
    records[:, JOB_FIELDS - len(scalars):] = np.array(scalars, np.float64).view(np.int64)
    blas.run_jobs(row_job_address(), records)


def rmsprop_in_parts(p, g, v, lr, rho, eps):
    """:func:`npvae.fast.updates.rmsprop_step`, in parts on BLAS's threads where it pays.

    A float32 parameter of at least 2 x :data:`MIN_JOB_ELEMENTS` elements is updated in as
    many parts as BLAS runs threads right now (the one-group training step's setting; 1
    while the step runs in groups, :func:`npvae.fast.blas.single_threaded`), at once on the
    calling thread and OpenBLAS's (:func:`npvae.fast.blas.run_jobs`), where
    :func:`npvae.fast.blas.jobs_available`. Elementwise, so the result is the same bit for
    bit as one part.
    """
    parts = _update_parts((p, g, v))
    if parts < 2:
        updates.rmsprop_step(p, g, v, lr, rho, eps)
    else:
        _update_in_parts(JOB_RMSPROP, (p, g, v), (lr, rho, eps), parts)


def adam_in_parts(p, g, m, v, alpha, beta1, beta2, eps):
    """:func:`npvae.fast.updates.adam_step` in parts on BLAS's threads where it pays, as
    :func:`rmsprop_in_parts` (elementwise: the same bit for bit as one part)."""
    parts = _update_parts((p, g, m, v))
    if parts < 2:
        updates.adam_step(p, g, m, v, alpha, beta1, beta2, eps)
    else:
        _update_in_parts(JOB_ADAM, (p, g, m, v), (alpha, beta1, beta2, eps), parts)


# --------------------------------------------------------------------------
# The optimizer's update of every parameter at once
# --------------------------------------------------------------------------
@kernel
def update_rows(table, r0, r1, rule, a, b, c, d):
    """Elements ``r0:r1`` of the concatenated parameters listed in ``table`` (int64, ``(n, 5)``:
    each row a parameter's size and the addresses of its float32 ``p``, ``g`` and first and
    second slot), updated by ``rule`` (:data:`UPDATE_RULES`): Adam's step
    (:func:`npvae.fast.updates.adam_step`, scalars ``alpha, beta1, beta2, eps``) or RMSprop's
    (:func:`npvae.fast.updates.rmsprop_step`, scalars ``lr, rho, eps`` in ``b, c, d``).
    Elementwise: any split of the elements gives the one-part result bit for bit."""
    offset = 0
    for i in range(table.shape[0]):
        size = table[i, 0]
        lo, hi = max(r0 - offset, 0), min(r1 - offset, size)
        if lo < hi:
            p, g, s1 = _f32_at(table[i, 1], (size,)), _f32_at(table[i, 2], (size,)), _f32_at(table[i, 3], (size,))
            if rule == 1:
                updates.adam_step(p[lo:hi], g[lo:hi], s1[lo:hi], _f32_at(table[i, 4], (size,))[lo:hi], a, b, c, d)
            else:
                updates.rmsprop_step(p[lo:hi], g[lo:hi], s1[lo:hi], b, c, d)
        offset += size


class UpdateTable:
    """The update ``rule`` ("adam", "rmsprop") of many parameters at once: ``arrays`` a list of
    ``(p, g, slot, ...)`` per parameter (all C-contiguous float32, the slots in the rule's order),
    listed in a table of their sizes and addresses (int64 ``(n, 5)``), which stays valid while
    the arrays live (the caller keeps them). :meth:`run` makes one step with the rule's
    ``scalars`` (:class:`npvae.optim.FusedSpec`): in parts on BLAS's threads as
    :func:`rmsprop_in_parts` (the parts cut the concatenated elements evenly), else in one call;
    either way one pass, bit for bit the update of each parameter alone."""

    def __init__(self, rule, arrays):
        self.code = UPDATE_RULES[rule]
        self.table = np.zeros((len(arrays), 5), np.int64)
        for i, group in enumerate(arrays):
            self.table[i, 0] = group[0].size
            for j, a in enumerate(group):
                self.table[i, 1 + j] = a.ctypes.data
        self.total = int(self.table[:, 0].sum())
        self._records = {}                        # parts -> the job records (scalars written per run)

    def run(self, scalars):
        values = (0.0,) * (4 - len(scalars)) + tuple(float(v) for v in scalars)
        parts = _parts_for(self.total)
        if parts < 2:
            update_rows(self.table, 0, self.total, self.code, *values)
            return
        records = self._records.get(parts)
        if records is None:
            records = self._records[parts] = np.zeros((parts, JOB_FIELDS), np.int64)
            for j in range(parts):
                records[j, :8] = (JOB_UPDATE_TABLE, self.total * j // parts, self.total * (j + 1) // parts,
                                  self.total, len(self.table), 0, self.code, self.table.ctypes.data)
        records[:, 12:] = np.array(values, np.float64).view(np.int64)
        blas.run_jobs(row_job_address(), records)
