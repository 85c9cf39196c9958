"""The VAE's training step composed from numba kernels and BLAS, in a preallocated workspace.

:meth:`npvae.engine.ReferenceEngine.forward` and :meth:`~npvae.engine.ReferenceEngine.backward`
(the NumPy ops, top to bottom) are the specification; :func:`train_step` computes the same loss,
bound and gradients for every combination they support (any number of hidden layers,
relu/tanh, ``objective`` elbo/iwae, ``kl`` analytic/mc, ``estimator`` standard/stl/dreg),
equal to ~1e-11 relative in float64 (only the order of float operations differs; tested).

What it does differently from the reference, for speed:

* Every dense product is one BLAS call on a contiguous 2-D view, written into a
  :class:`Workspace` reused from step to step; the elementwise passes around the products
  are fused kernels (:mod:`npvae.fast.dense`, :mod:`npvae.fast.latent`): bias + activation,
  activation backward, the reparameterization with its KL, the log weights and their
  backward. The dense layers run in layer stacks (:mod:`npvae.fast.layers`), each one
  compiled call where NumPy's BLAS can be called from compiled code (:func:`stack_address`),
  so that no product or pass returns to Python in between. The exception is
  the decoder's first layer, whose input is the latent ``z``
  (``L <= dense.NARROW_INPUT`` columns): its product, bias and activation are one kernel
  pass, and so are its activation's backward, ``dW``, ``db`` and ``dz``.
* The decoder output -- bias, Bernoulli NLL summed over pixels and ``sigmoid(l) - x`` --
  is one pass over ``(B, S, D)``, in place over the logits
  (:func:`npvae.fast.bernoulli.bernoulli_nll_and_grad`). The upstream factor
  ``dnll[b, s]`` of each row is applied on the ``(B * S, H)`` side: to the hidden
  activations for ``dW`` and fused into the activation's backward for ``dh`` (a row scale
  commutes with a right product), never in a pass over ``(B, S, D)``.
* The gradient with respect to ``x`` (the encoder's input) is not computed.
* On binary data (binarized images: every entry 0 or 1, checked each step) the encoder's
  first layer is no product: ``x @ W`` sums the rows of ``W`` where ``x`` is 1, and its
  ``dW = x.T @ da`` adds the rows of ``da`` into the rows of the ones
  (:func:`npvae.fast.dense.binary_product`): a fifth or less of the product's FLOPs on MNIST.

This module is the math of one group of examples on one thread; splitting a batch into
groups and threads is :mod:`npvae.fast.threads`, and the workspaces' life is
:class:`npvae.fast.engine.NumbaEngine`'s.
"""

import operator
import warnings

import numpy as np

from .. import objectives as obj
from . import bernoulli, bounds, dense, gemm, jobs, latent, layers

__all__ = ["Workspace", "layout", "workspace_bytes", "stack_address", "forward_into", "decoder_into", "log_joint_into",
           "decoder_backward_into", "bound", "negligible_weights", "train_step", "step", "Profiler", "NO_PROFILE"]


class _NoProfile:
    """A profiler that records nothing (:data:`NO_PROFILE`): one empty call per phase."""

    __slots__ = ()

    def mark(self, phase):
        """Do nothing."""


#: The profiler a step uses unless it is given one.
NO_PROFILE = _NoProfile()


class Profiler:
    """Time the phases of steps: each :meth:`mark` ends the phase that started at the last.

    Give it to :class:`npvae.fast.engine.NumbaEngine` (``engine.profiler = Profiler()``);
    the group on the calling thread marks it (``benchmarks/speed.py`` reads
    :attr:`seconds`). :meth:`start` begins a step.
    """

    def __init__(self, clock=None):
        import time
        self.clock = clock or time.perf_counter
        self.seconds = {}
        self._last = None

    def start(self):
        """Begin timing (the next :meth:`mark` ends the first phase)."""
        self._last = self.clock()

    def mark(self, phase):
        """Add the time since the last mark (or :meth:`start`) to ``phase``."""
        now = self.clock()
        if self._last is not None:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + (now - self._last)
        self._last = now


#: The workspace's index arrays and their dtype (the rest have the workspace's): the columns
#: of each example's ones and their count, when the data is binary (:func:`npvae.fast.dense.binary_rows`).
INDEX_ARRAYS = {"x_cols": np.int32, "x_counts": np.int32}


def layout(model, B, S, grads=True):
    """The arrays of a :class:`Workspace` for ``(B, S)``: ``{attribute: shape}``, a list of
    shapes for a list of arrays (one per hidden layer), a dict for ``grads`` (the schema's).
    The Bernoulli pass's scratch (:func:`npvae.fast.bernoulli.bernoulli_scratch`) comes beside."""
    D, L, N = model.input_dim, model.latent_dim, B * S
    hidden, dec_sizes = model.hidden, model.hidden[::-1]
    arrays = {"x_cols": (B, D), "x_counts": (B,),
              "enc_h": [(B, h) for h in hidden], "mu": (B, L), "log_var": (B, L), "z": (B, S, L), "kl": (B,),
              "dec_h": [(N, h) for h in dec_sizes], "logits": (N, D),
              "nll": (B, S), "log_w": (B, S), "w_tilde": (B, S), "bound": (B,)}
    if grads:
        arrays.update(row_w=(N,), hs=(N, dec_sizes[-1]), dec_d=[(N, h) for h in dec_sizes],
                      dz=(B, S, L), dz_direct=(B, S, L), dlog_w=(B, S), dkl=(B,),
                      dmu=(B, L), dlog_var=(B, L), dmu_q=(B, L), dlog_var_q=(B, L),
                      enc_d=[(B, h) for h in hidden], enc_tmp=(B, hidden[-1]), grads=model.schema.shapes())
    return arrays


def workspace_bytes(model, B, S, dtype, grads=True):
    """The bytes a :class:`Workspace` of these arguments allocates (its arrays and the Bernoulli
    scratch; not the few ``parts x D`` job records of one run in parts)."""
    total = 0
    for name, shape in layout(model, B, S, grads).items():
        shapes = shape if isinstance(shape, list) else list(shape.values()) if isinstance(shape, dict) else [shape]
        size = np.dtype(INDEX_ARRAYS.get(name, dtype)).itemsize
        total += size * sum(int(np.prod(s)) for s in shapes)
    return total + bernoulli.bernoulli_scratch_bytes(model.input_dim, dtype)


class Workspace:
    """Preallocated arrays for one ``(B, S, dtype)`` of one model's architecture.

    Forward: ``enc_h[i]`` (B, H_i) hidden activations, ``mu``, ``log_var`` (B, L),
    ``z`` (B, S, L), ``kl`` (B,), ``dec_h[i]`` (B * S, H_i), ``logits`` (B * S, D)
    (overwritten by ``sigmoid(logits) - x``), ``nll``, ``log_w``, ``w_tilde`` (B, S),
    ``bound`` (B,). Backward (``grads=True``): the gradients of each of these, the
    row weights ``row_w`` (B * S,) and ``grads``, one array per parameter.
    ``passes``: the row passes, :data:`npvae.fast.jobs.SERIAL`, or with ``parts > 1`` a
    :class:`npvae.fast.jobs.Jobs` that runs them in that many parts on BLAS's threads.
    """

    def __init__(self, model, B, S, dtype, grads=True, parts=1, slot=0):
        D = model.input_dim
        self.key = (B, S, np.dtype(dtype).name, grads, parts)
        self.slot = slot                                 # the thread (group) that uses it
        self.passes = jobs.Jobs(parts, D) if parts > 1 else jobs.SERIAL
        for name, shape in layout(model, B, S, grads).items():
            if isinstance(shape, list):              # one array per hidden layer: a tuple for the stacks
                setattr(self, name, tuple(np.empty(s, dtype) for s in shape))
            elif isinstance(shape, dict):
                setattr(self, name, {k: np.empty(s, dtype) for k, s in shape.items()})
            else:
                setattr(self, name, np.empty(shape, INDEX_ARRAYS.get(name, dtype)))
        self.x_binary = False                            # whether x's ones are in x_cols (the last forward)
        # the layer stacks (npvae.fast.layers): getters of the hidden layers' (W, b) tuples (_weights), and
        # the BLAS address they run compiled with (0: as Python), see stack_address
        nh = len(model.hidden)
        self.enc_names = tuple(_Getter([f"enc.{i}.{k}" for i in range(nh)]) for k in "Wb")
        self.dec_names = tuple(_Getter([f"dec.{i}.{k}" for i in range(nh)]) for k in "Wb")
        self.gemm = gemm.address(dtype)
        self.checked_params, self.params_ok = None, False
        self.work = bernoulli.bernoulli_scratch(D, dtype)
        self.has_grads = grads

    def second_pass(self):
        """The arrays of a second decoder backward (PIWAE: the encoder's weighting), made on first
        use: ``{"dz": (B, S, L), "row_w": (B * S,), "grads": the decoder's gradients}``, whose
        ``grads`` are dropped."""
        if getattr(self, "second_dz", None) is None:
            self.second_dz, self.second_row_w = np.empty_like(self.dz), np.empty_like(self.row_w)
            self.second_grads = {k: np.empty_like(v) for k, v in self.grads.items() if k.startswith("dec.")}
        return {"dz": self.second_dz, "row_w": self.second_row_w, "grads": self.second_grads}

    @property
    def nbytes(self):
        """Bytes held by the arrays."""
        total = 0
        for v in vars(self).values():
            for a in (v.values() if isinstance(v, dict) else v if isinstance(v, (list, tuple))
                      else vars(v).values() if isinstance(v, jobs.Jobs) else [v]):
                total += a.nbytes if isinstance(a, np.ndarray) else 0
        return total


def stack_address(model, ws, *arrays):
    """The BLAS address the layer stacks of this call run compiled with
    (:func:`npvae.fast.layers.runner`): ``ws.gemm`` when the model's parameters and ``arrays``
    (the call's data) are all C-contiguous of the model's dtype, else 0 (the stacks then run as
    Python, their products ``np.matmul``, which takes any layout). The parameters are checked
    once per set of arrays (an array's layout and dtype cannot change)."""
    if not ws.gemm:
        return 0
    dtype = model.dtype
    if not all(a.dtype == dtype and a.flags.c_contiguous for a in arrays):
        return 0
    params = model.params
    key = tuple(map(id, params.values()))
    if key != ws.checked_params:
        ws.params_ok = all(a.dtype == dtype and a.flags.c_contiguous for a in params.values())
        ws.checked_params = key
    return ws.gemm if ws.params_ok else 0


def _weights(d, names):
    """``(tuple of the W arrays, tuple of the b arrays)`` of the hidden layers in ``d`` (the
    parameters, or a dict of their gradients); ``names``: the workspace's ``enc_names`` or
    ``dec_names``, a pair of getters of those tuples."""
    return names[0](d), names[1](d)


class _Getter:
    """``d -> tuple(d[k] for k in keys)``, through ``operator.itemgetter`` (which returns the item
    itself for one key); picklable, as a workspace is."""

    __slots__ = ("get", "one")

    def __init__(self, keys):
        self.get, self.one = operator.itemgetter(*keys), len(keys) == 1

    def __call__(self, d):
        v = self.get(d)
        return (v,) if self.one else v


def forward_into(model, ws, x, eps, act, prof=NO_PROFILE, nll_only=False):
    """Encoder, reparameterization + KL, decoder and the Bernoulli pass, into ``ws``.

    ``ops`` order of :meth:`npvae.engine.ReferenceEngine.forward` up to the bound:
    ``ws.mu``, ``ws.log_var``, ``ws.kl``, ``ws.z``, the hidden activations and ``ws.nll``;
    ``ws.logits`` then holds ``sigmoid(logits) - x`` (``nll_only``: nothing of use, the
    forward-only Bernoulli pass). ``prof`` is marked at the end of each phase. Returns the
    layer stacks' BLAS address of this call (:func:`stack_address`), for the backward.
    """
    p = model.params
    addr = stack_address(model, ws, x, eps)
    # binary data (binarized images): the first layer's product sums the weight rows of the ones
    ws.x_binary = dense.binary_rows(x, ws.x_cols, ws.x_counts)
    W, b = _weights(p, ws.enc_names)
    layers.runner(layers.encoder_forward, addr)(
        addr, x, ws.x_binary, ws.x_cols, ws.x_counts, W, b, p["enc.mu.W"], p["enc.mu.b"], p["enc.logvar.W"],
        p["enc.logvar.b"], ws.enc_h, ws.mu, ws.log_var, eps, ws.z, ws.kl, act)
    prof.mark("encoder, reparam + KL")
    decoder_into(model, ws, x, act, prof, nll_only, addr)
    return addr


def decoder_into(model, ws, x, act, prof=NO_PROFILE, nll_only=False, addr=None):
    """The decoder and the Bernoulli pass from the latent points in ``ws.z`` (B, S, L), into
    ``ws``: the hidden activations, ``ws.nll`` (B, S) and, unless ``nll_only``,
    ``ws.logits`` overwritten by ``sigmoid(logits) - x`` (the second half of
    :func:`forward_into`; :func:`log_joint_into` runs it alone). ``addr``: the stacks' BLAS
    address (:func:`stack_address`, found here when None)."""
    p = model.params
    B, S, L = ws.z.shape
    D = x.shape[1]
    if addr is None:
        addr = stack_address(model, ws, x)
    z2 = ws.z.reshape(B * S, L)
    first = 0
    if L <= dense.NARROW_INPUT:                                      # z @ W + b, act: one pass
        ws.passes.narrow_dense_act_forward(z2, p["dec.0.W"], p["dec.0.b"], act, ws.dec_h[0])
        first = 1
    W, b = _weights(p, ws.dec_names)
    layers.runner(layers.decoder_forward, addr)(addr, z2, first, W, b, ws.dec_h, p["dec.out.W"], ws.logits, act)
    prof.mark("decoder hidden layers and output product")
    logits = ws.logits.reshape(B, S, D)
    # nll (B, S); the logits become g = sigmoid(logits) - x, in place
    if nll_only:
        bernoulli.bernoulli_nll(logits, x, ws.nll, ws.work, bias=p["dec.out.b"])
    else:
        ws.passes.bernoulli_nll_and_grad(logits, x, ws.nll, logits, ws.work, bias=p["dec.out.b"])
    prof.mark("output Bernoulli pass (bias, NLL, sigmoid - x)")


def log_joint_into(model, ws, x, act, grad=True):
    """``log p(x|z)``'s pieces at the latent points in ``ws.z`` (B, S, L), for annealed
    importance sampling: ``ws.nll`` (B, S) is ``-log p(x|z)`` and, with ``grad``, ``ws.dz``
    (B, S, L) is ``-d log p(x|z) / dz`` (the NLL's gradient in ``z``).

    The decoder's forward and the Bernoulli pass (:func:`decoder_into`), then the backward
    from ``sigmoid(logits) - x`` to ``z`` alone: the products ``d @ W.T`` and the
    activations' derivatives, none of the parameters' gradients (a third fewer FLOPs than
    a training step's decoder backward). The reference is
    :meth:`npvae.engines.ReferenceEngine.log_joint`; equal up to the order of float sums.
    """
    addr = stack_address(model, ws, x)
    decoder_into(model, ws, x, act, nll_only=not grad, addr=addr)
    if grad:
        _decoder_backward(model, ws, ws.row_w, False, ws.grads, ws.dz, act, addr, params=False)


def _decoder_backward(model, ws, w, weighted, g, dz, act, addr, params=True):
    """The decoder's backward stack (:func:`npvae.fast.layers.decoder_backward`) and, for a
    narrow latent layer, its one-pass backward on ``ws.passes``; ``g`` a dict of the decoder's
    gradients (written only with ``params``), ``dz`` (B, S, L) written."""
    p = model.params
    B, S, L = ws.z.shape
    N = B * S
    z2, dz2 = ws.z.reshape(N, L), dz.reshape(N, L)
    narrow = L <= dense.NARROW_INPUT
    W, _ = _weights(p, ws.dec_names)
    gW, gb = _weights(g, ws.dec_names)
    weighted = layers.runner(layers.decoder_backward, addr)(
        addr, ws.logits, ws.hs, p["dec.out.W"], g["dec.out.W"], z2, W, ws.dec_h, ws.dec_d, gW, gb, w, weighted,
        1 if narrow else 0, act, dz2, params)
    if narrow:      # act', dW, db and dz of the latent's layer: one pass (its dW, db unused without params)
        ws.passes.narrow_dense_act_backward(ws.dec_d[0], ws.dec_h[0], act, w, weighted, z2, p["dec.0.W"],
                                            g["dec.0.W"], g["dec.0.b"], dz2)


def decoder_backward_into(model, ws, w, g, dz, act, addr=None):
    """The decoder's backward from ``ws.logits`` (``sigmoid(l) - x``, its rows weighted by ``w``
    (B * S,): the NLL's upstream gradients): its gradients into ``g`` (a dict with the decoder's
    names), ``d nll / d z`` (weighted) into ``dz`` (B, S, L). ``ws.logits`` is left as it was.
    The row weights go in on the ``(B * S, H)`` side: to the last hidden layer's activations for
    the output layer's ``dW`` (``ws.hs``), and with that layer's activation backward."""
    if addr is None:
        addr = stack_address(model, ws)
    kern = ws.passes
    kern.scale_rows_into(ws.dec_h[-1], w, ws.hs)
    kern.weighted_bias_grad(ws.logits, w, g["dec.out.b"])
    _decoder_backward(model, ws, w, True, g, dz, act, addr)


def bound(ws, objective, kl, eps):
    """Per-example bound (B,) as the reference computes it, by the objective's kernels
    (:mod:`npvae.fast.bounds`); fills ``log_w`` (and what the objective keeps) when used."""
    rule = obj.get(objective)
    kernels = bounds.kernels_for(rule)
    if rule.uses_log_weights(kl):
        latent.log_weights(ws.nll, ws.z, ws.log_var, eps, ws.log_w)       # (B, S)
        return kernels.forward(ws)
    return kernels.forward_analytic(ws)


def negligible_weights(dlog_w, dbound):
    """Set to 0, in place, the entries of ``dlog_w`` (B, S) below ``|dbound| * eps**2`` (``eps``
    the dtype's machine epsilon): the samples whose normalized importance weight is under
    ``eps**2`` (5e-32 in float64, 1.4e-14 in float32).

    Such a sample's rows in the decoder's backward are its weight times the rows of the others'
    magnitudes, 14 (float32) or 31 (float64) orders of magnitude under them. Kept, they are
    often subnormal (a weight under the dtype's tiny; at S = 50 in float32, a few percent of
    IWAE's samples), and every product of the backward that meets them runs slowly (x86 takes
    a microcode assist for each; see :func:`npvae.ops.flush_subnormal`). Dropped, each gradient
    changes by at most ``S * eps**2`` of its size, far under one rounding of a float sum (the
    reference's gradient of the logits is already 0 where the weight is under ``tiny``).
    """
    threshold = abs(float(dbound)) * float(np.finfo(dlog_w.dtype).eps) ** 2
    dlog_w[np.abs(dlog_w) < threshold] = 0


def train_step(model, ws, x, eps, objective, kl, estimator, batch, prof=NO_PROFILE):
    """Forward and backward of the examples ``x`` (a group of a batch of ``batch``) in the
    workspace ``ws`` (made for ``x``'s ``B``, ``S`` and the model's dtype, with gradients),
    its row passes through ``ws.passes``.

    The same loss and gradients as :meth:`npvae.engine.ReferenceEngine.backward` (see the
    module docstring for what is fused and what stays BLAS).

    Returns ``(bound, nll_sum, kl_sum, grads)``: the per-example bound (a fresh array),
    the float64 sums of the NLL over (examples, samples) and of the analytic KL over
    examples, and the gradients of the *whole batch's* loss (``-mean`` of the bound
    over ``batch`` examples) with respect to the parameters, through these examples.
    """
    B, S, _ = eps.shape
    act = dense.ACT_CODES[model.activation]
    g = ws.grads

    rule, est = obj.get(objective), obj.ESTIMATOR_RULES[estimator]
    kernels = bounds.kernels_for(rule)
    # ---- forward ---------------------------------------------------------------
    addr = forward_into(model, ws, x, eps, act, prof)
    log_weights = rule.uses_log_weights(kl)
    per_example = bound(ws, rule, kl, eps)                            # (B,)
    sums = float(ws.nll.sum(dtype=np.float64)), float(ws.kl.sum(dtype=np.float64))

    # ---- backward: the bound's gradients on the sample axis --------------------
    dbound = model.dtype.type(-1.0 / batch)                          # d loss / d bound
    enc_kernels = getattr(kernels, "encoder", None)                  # PIWAE: the encoder's own bound
    if log_weights:
        kernels.backward(ws, dbound)                                 # dlog_w (B, S)
        negligible_weights(ws.dlog_w, dbound)
        np.negative(ws.dlog_w, out=ws.row_w.reshape(B, S))           # dnll = -dlog_px
        if enc_kernels is not None:
            # the decoder's weighting kept in row_w; the encoder's bound and weights from here on
            # (its forward overwrites w_tilde with its own, which DReG's path weights then read)
            enc_kernels.forward(ws)
            enc_kernels.backward(ws, dbound)
            negligible_weights(ws.dlog_w, dbound)
        # direct gradients of log p(z) - log q(z|x) (z held fixed)
        latent.log_weights_backward(ws.dlog_w, ws.z, eps, ws.log_var, ws.dz_direct, ws.dmu_q, ws.dlog_var_q)
        ws.dkl.fill(0.0)
    else:
        kernels.backward_analytic(ws, dbound)                        # row_w = dnll, dkl

    prof.mark("bound, log weights and their backward")
    # ---- decoder backward ---------------------------------------------------------
    if enc_kernels is None or not log_weights:
        decoder_backward_into(model, ws, ws.row_w, g, ws.dz, act, addr)
    else:
        # once with the decoder's weights for its gradients (dz dropped), once with the
        # encoder's for the path to z (the decoder's gradients of that pass dropped)
        extra = ws.second_pass()
        decoder_backward_into(model, ws, ws.row_w, g, extra["dz"], act, addr)
        np.negative(ws.dlog_w, out=extra["row_w"].reshape(B, S))
        decoder_backward_into(model, ws, extra["row_w"], extra["grads"], ws.dz, act, addr)
    if log_weights and enc_kernels is not None:
        kernels = enc_kernels                                        # the encoder's from here on
    prof.mark("decoder backward")
    # ---- latent (estimators, reparameterization, KL) and the encoder --------------
    p = model.params
    W, _ = _weights(p, ws.enc_names)
    gW, gb = _weights(g, ws.enc_names)
    layers.runner(layers.latent_encoder_backward, addr)(
        addr, ws.dz, ws.dz_direct, log_weights, kernels.path_weights(ws) if est.reweights_path else ws.w_tilde,
        est.reweights_path, eps, ws.mu, ws.log_var, ws.dkl, ws.dmu, ws.dlog_var, ws.dmu_q, ws.dlog_var_q,
        log_weights and not est.drops_score, x, ws.x_binary, ws.x_cols, ws.x_counts, W, ws.enc_h, ws.enc_d, gW, gb,
        p["enc.mu.W"], p["enc.logvar.W"], g["enc.mu.W"], g["enc.mu.b"], g["enc.logvar.W"], g["enc.logvar.b"],
        ws.enc_tmp, act)
    prof.mark("latent and encoder backward")
    return per_example, sums[0], sums[1], g


def step(*args, **kwargs):
    """Deprecated: :func:`train_step` (``step.step`` named the module and the function alike)."""
    warnings.warn("npvae.fast.step.step is deprecated: use npvae.fast.step.train_step", DeprecationWarning, stacklevel=2)
    return train_step(*args, **kwargs)
