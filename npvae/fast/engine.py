"""The numba engine: the interface of :class:`npvae.engines.Engine` on the fast path.

:class:`NumbaEngine` owns its workspaces (one per batch shape and thread, the least
recently used dropped first), splits each call into groups of examples on threads
(:mod:`npvae.fast.threads`) and runs each group through :mod:`npvae.fast.step`. Its
results equal :class:`npvae.engines.ReferenceEngine`'s to ~1e-11 relative in float64 (tested)
(only the order of float operations differs; the tests hold them equal). It composes a
reference engine (:attr:`NumbaEngine.reference`) for what it does not speed up, and says
so where it uses it: ``encode``/``decode_logits`` (small, not on the hot path) and any
objective without kernels in :mod:`npvae.fast.bounds`.
"""

from collections import OrderedDict

import numpy as np

from .. import objectives as obj
from ..engines.base import Engine
from ..engines.reference import ReferenceEngine
from . import bounds, dense, jobs, latent, step, threads, updates
from ._jit import JIT

__all__ = ["NumbaEngine", "FORWARD_ROWS", "MAX_WORKSPACES", "FUSED_UPDATES"]

#: Rows ``B * S`` per chunk of the forward-only calls (evaluation): enough for BLAS to run
#: at full rate, small enough that the logits stay a few MB.
FORWARD_ROWS = 4096
#: Workspaces kept per thread in use (training batch, last partial batch, evaluation chunks): when
#: a workspace for thread ``slot`` is made, the least recently used ones of any thread are
#: dropped beyond ``MAX_WORKSPACES * (slot + 1)`` (a dropped one is made again when needed).
MAX_WORKSPACES = 4

_FUSED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _sgd(p, g, slots, scalars):
    # without momentum SGD keeps no state: the kernel's velocity argument is then unused
    updates.sgd_step(p, g, slots[0] if slots else p, *scalars)


def _rmsprop(p, g, slots, scalars):
    jobs.rmsprop_in_parts(p, g, slots[0], *scalars)


def _adam(p, g, slots, scalars):
    jobs.adam_in_parts(p, g, slots[0], slots[1], *scalars)


#: The fused update of each rule an optimizer may publish (:class:`npvae.optim.FusedSpec`):
#: ``update(p, g, slots, scalars)`` with the spec's slot arrays and scalars in its order.
FUSED_UPDATES = {"sgd": _sgd, "rmsprop": _rmsprop, "adam": _adam}


class _AllAtOnce:
    """``update.all`` of :meth:`NumbaEngine.optimizer_update` (see :meth:`npvae.optim.Optimizer.step`):
    every float32 parameter updated in one pass over a table of their addresses
    (:class:`npvae.fast.jobs.UpdateTable`), in parts on BLAS's threads: one call a step instead
    of one per parameter, both cores on the update's memory traffic. The table is kept, with the
    arrays it points into, while the same arrays come back (the next step's); anything not
    C-contiguous float32 leaves the step to the per-parameter update."""

    def __init__(self, optimizer):
        self.optimizer = optimizer
        self._key, self._table, self._arrays = None, None, None

    def __call__(self, params, grads, state):
        spec = self.optimizer.fused_spec()
        names = tuple(params)
        key = (names, tuple(map(id, params.values())), tuple(map(id, map(grads.__getitem__, names))),
               *(tuple(map(id, map(state[slot].__getitem__, names))) for slot in spec.slots))
        if key == self._key:
            self._table.run(spec.scalars)
            return True
        groups = [(p, grads[name], *(state[slot][name] for slot in spec.slots)) for name, p in params.items()]
        if not all(a.dtype == np.float32 and a.flags.c_contiguous for group in groups for a in group):
            return False
        self._table = jobs.UpdateTable(spec.rule, groups)
        self._key, self._arrays = key, groups             # the arrays stay alive with the table
        self._table.run(spec.scalars)
        return True


class NumbaEngine(Engine):
    """Fused numba kernels around BLAS products, on threads, in preallocated workspaces.

    Parameters
    ----------
    model : npvae.VAE
    threads : int or None
        Threads of a call (:func:`npvae.fast.threads.threads_for`); None: as many as
        NumPy's OpenBLAS uses.

    Attributes
    ----------
    reference : npvae.engines.ReferenceEngine
        The reference engine of the same model, which this engine runs for ``encode``,
        ``decode_logits`` and objectives without fast kernels.
    profiler : object with ``mark(phase)``
        Marked at the end of each phase of a training step by the group on the calling
        thread; :data:`npvae.fast.step.NO_PROFILE` (the default) does nothing. Set a
        :class:`npvae.fast.step.Profiler` to time the phases.
    """

    name = "numba"

    def __init__(self, model, threads=None):
        super().__init__(model, threads)
        self.reference = ReferenceEngine(model)
        self.profiler = step.NO_PROFILE
        self._workspaces = OrderedDict()

    def encode(self, x):
        """The reference's :meth:`~npvae.engines.ReferenceEngine.encode` (one small pass)."""
        return self.reference.encode(x)

    def decode_logits(self, z):
        """The reference's :meth:`~npvae.engines.ReferenceEngine.decode_logits`."""
        return self.reference.decode_logits(z)

    def log_joint(self, x, z, grad=False, parts=False):
        """As :meth:`npvae.engines.Engine.log_joint`, fused: the decoder's forward, the Bernoulli
        pass and, with ``grad``, the backward to ``z`` alone (no parameter gradients;
        :func:`npvae.fast.step.log_joint_into`), in chunks of whole examples on threads, as
        :meth:`bound`. Equal to the reference's up to the order of float sums (tested);
        ``log p(z)`` is summed in float64 here (the reference sums in the model's dtype)."""
        x, z = np.ascontiguousarray(x), np.ascontiguousarray(z)
        B, S, L = z.shape
        log_lik = np.empty((B, S))
        dz_lik = np.empty(z.shape, self.model.dtype) if grad else None
        act = dense.ACT_CODES[self.model.activation]

        def chunk(ws, b0, b1):
            ws.z[...] = z[b0:b1]
            step.log_joint_into(self.model, ws, x[b0:b1], act, grad)
            np.negative(ws.nll, out=log_lik[b0:b1])
            if grad:
                np.negative(ws.dz, out=dz_lik[b0:b1])

        self._chunks(B, S, chunk, grads=grad)
        z64 = z.astype(np.float64)
        log_prior = -0.5 * np.einsum("bsl,bsl->bs", z64, z64) - 0.5 * L * np.log(2.0 * np.pi)
        value = (log_lik, log_prior) if parts else log_lik + log_prior
        if not grad:
            return value
        dz_prior = -z
        return value, ((dz_lik, dz_prior) if parts else dz_lik + dz_prior)

    # ------------------------------------------------------------------
    def workspace(self, B, S, grads=True, slot=0, parts=1):
        """The :class:`npvae.fast.step.Workspace` for ``(B, S)`` of the model's dtype and
        thread ``slot``, made on first use. ``parts``: see :class:`~npvae.fast.step.Workspace`."""
        key = (B, S, self.model.dtype.name, grads, slot, parts)
        ws = self._workspaces.get(key)
        if ws is None:
            ws = self._workspaces[key] = step.Workspace(self.model, B, S, self.model.dtype, grads, parts, slot)
            while len(self._workspaces) > MAX_WORKSPACES * (slot + 1):
                self._workspaces.popitem(last=False)
        else:
            self._workspaces.move_to_end(key)
        return ws

    # ------------------------------------------------------------------
    def loss_and_grads(self, x, eps, objective, kl="analytic", estimator="standard"):
        """As :meth:`npvae.engines.Engine.loss_and_grads`.

        The grads are **arrays of this engine's workspace for this (B, S), which the next
        call with the same shapes overwrites**: consume them (an optimizer step) or copy
        them first. For the same reason one engine must not run two calls at once from
        threads of its own (it runs its groups on threads itself).
        """
        if bounds.kernels_for(obj.get(objective)) is None:
            return self.reference.loss_and_grads(x, eps, objective, kl, estimator)
        model = self.model
        x, eps = np.ascontiguousarray(x), np.ascontiguousarray(eps)
        B, S, _ = eps.shape
        groups = threads.split(B, threads.groups_for(self, B, S))
        parts = threads.job_parts(self, B, S) if len(groups) == 1 else 1

        def run(slot, b0, b1):
            ws = self.workspace(b1 - b0, S, grads=True, slot=slot, parts=parts)
            prof = self.profiler if slot == 0 else step.NO_PROFILE
            return step.train_step(model, ws, x[b0:b1], eps[b0:b1], objective, kl, estimator, B, prof)

        results = threads.run_groups(run, groups)
        self.profiler.mark("groups: waiting for the others")
        g = results[0][3]
        for part in results[1:]:                  # sum the groups' gradients into group 0's
            for name, a in g.items():
                np.add(a, part[3][name], out=a)
        bound = results[0][0] if len(results) == 1 else np.concatenate([r[0] for r in results])
        result = obj.Bound(float(-bound.mean()), bound, sum(r[1] for r in results) / (B * S),
                           sum(r[2] for r in results) / B)
        self.profiler.mark("groups: summing their gradients")
        return result, g

    def bound(self, x, eps, objective, kl="analytic"):
        """As :meth:`npvae.engines.Engine.bound`, in chunks of whole examples, at most
        :data:`FORWARD_ROWS` rows each (or one example, when ``S`` is larger), on threads
        (exact: each example's bound depends on its own samples only)."""
        if bounds.kernels_for(obj.get(objective)) is None:
            return self.reference.bound(x, eps, objective, kl)
        B, S, _ = eps.shape
        dtype = self.model.dtype
        per_example, nll, kl_exact = np.empty(B, dtype), np.empty((B, S), dtype), np.empty(B, dtype)

        def keep(ws, b0, b1, e):
            per_example[b0:b1] = step.bound(ws, objective, kl, e)
            nll[b0:b1] = ws.nll
            kl_exact[b0:b1] = ws.kl

        self._forward_chunks(x, eps, keep)
        return obj.Bound(float(-per_example.mean()), per_example, float(nll.mean()), float(kl_exact.mean()))

    def log_weights(self, x, eps):
        """As :meth:`npvae.engines.Engine.log_weights`: the forward-only pass in chunks
        on threads, then :func:`npvae.fast.latent.log_weights` (float64 sums)."""
        out = np.empty(eps.shape[:2])

        def keep(ws, b0, b1, e):
            latent.log_weights(ws.nll, ws.z, ws.log_var, e, ws.log_w)
            out[b0:b1] = ws.log_w

        self._forward_chunks(x, eps, keep)
        return out

    def _forward_chunks(self, x, eps, keep):
        """The forward pass over chunks (:meth:`_chunks`); ``keep(ws, b0, b1, eps[b0:b1])``
        takes each chunk's results from its workspace."""
        model = self.model
        x, eps = np.ascontiguousarray(x), np.ascontiguousarray(eps)
        act = dense.ACT_CODES[model.activation]

        def chunk(ws, b0, b1):
            e = eps[b0:b1]
            step.forward_into(model, ws, x[b0:b1], e, act, nll_only=True)
            keep(ws, b0, b1, e)

        self._chunks(*eps.shape[:2], chunk)

    def _chunks(self, B, S, fn, grads=False):
        """``fn(ws, b0, b1)`` over chunks of examples ``b0:b1`` of at most :data:`FORWARD_ROWS`
        rows ``B * S`` (or one example, when ``S`` is larger), each in a workspace of its shape
        (``grads``: with the backward's arrays), shared among :func:`npvae.fast.threads.groups_for`
        threads (every thread gets a chunk when there are enough rows, however few examples).
        Different chunks write different rows: no locking."""
        n_threads = threads.groups_for(self, B, S)
        size = max(1, min(-(-B // n_threads), FORWARD_ROWS // S))
        starts = list(range(0, B, size))

        def run(slot, i0, i1):  # chunks starts[i0:i1]
            for b0 in starts[i0:i1]:
                b1 = min(B, b0 + size)
                fn(self.workspace(b1 - b0, S, grads=grads, slot=slot), b0, b1)

        threads.run_groups(run, threads.split(len(starts), min(n_threads, len(starts))))

    # ------------------------------------------------------------------
    def step_bytes(self, batch, mc_samples):
        """The bytes of the workspaces a training step of ``batch`` examples needs (its groups'
        workspaces together), from the workspace's own layout (:func:`npvae.fast.step.workspace_bytes`)."""
        groups = threads.split(batch, threads.groups_for(self, batch, mc_samples))
        return sum(step.workspace_bytes(self.model, b1 - b0, mc_samples, self.model.dtype) for b0, b1 in groups)

    def steps(self, batch, mc_samples):
        """BLAS on one thread for the whole loop when its calls run on several threads
        (:func:`npvae.fast.threads.steps_context`), else nothing."""
        return threads.steps_context(self, batch, mc_samples)

    def optimizer_update(self, optimizer):
        """The fused update of ``optimizer`` for :meth:`npvae.optim.Optimizer.step`'s ``update=``,
        from the rule it publishes (:attr:`~npvae.optim.Optimizer.fused_rule`, and each step's
        :meth:`~npvae.optim.Optimizer.fused_spec`): one kernel pass per
        parameter (:data:`FUSED_UPDATES`), bit for bit the NumPy update. None for an
        optimizer whose rule has no kernel here (it keeps its own update)."""
        if optimizer.fused_rule not in FUSED_UPDATES:
            return None

        def update(p, g, slots):
            if not (p.dtype in _FUSED_DTYPES and g.dtype in (p.dtype, np.float64) and p.flags.c_contiguous
                    and g.flags.c_contiguous and all(s.flags.c_contiguous for s in slots.values())):
                return False
            spec = optimizer.fused_spec()                 # this step's scalars (Adam's step size moves)
            FUSED_UPDATES[spec.rule](p, g, tuple(slots[name] for name in spec.slots), spec.scalars)
            return True

        if optimizer.fused_rule in jobs.UPDATE_RULES and JIT:
            update.all = _AllAtOnce(optimizer)
        return update
