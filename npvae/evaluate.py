"""Dataset-level measures: the test ELBO and IWAE bound, and the importance-sampled log-likelihood."""

import math
import sys
import time
from typing import NamedTuple

import numpy as np

from . import _validate as check
from . import ais
from . import objectives as obj
from . import stats

__all__ = ["evaluate_bound", "mean_bound", "log_likelihood", "LogLikelihood"]


_UNSET = object()


def _renamed(new_value, old_value, old, new):
    """``new_value``, or the deprecated keyword ``old``'s value (with a DeprecationWarning) when given."""
    if old_value is _UNSET:
        return new_value
    import warnings
    warnings.warn(f"{old}= is deprecated: use {new}= (the name the rest of npvae's API uses)", DeprecationWarning,
                  stacklevel=3)
    return old_value


def evaluate_bound(model, x, mc_samples=1, objective="elbo", batch_size=1000, seed=None, kl="analytic", *,
                   rng=_UNSET):
    """Average a bound over a dataset, drawing fresh ``eps`` for every example.

    Parameters
    ----------
    model : npvae.VAE
    x : ndarray, shape (N, input_dim)
        Data in [0, 1].
    mc_samples : int
        Monte Carlo samples ``S`` per example.
    objective : {"elbo", "iwae"}
    batch_size : int
        Examples per forward pass; memory grows as ``batch_size * S * input_dim``.
    seed : numpy.random.Generator or int or None
        Source of ``eps`` (an int seeds a new Generator; a Generator is used and advanced).
    kl : {"analytic", "mc"}
        As in :meth:`npvae.VAE.loss_and_grads`.
    rng
        Deprecated name of ``seed``.

    Returns
    -------
    dict
        ``loss`` (mean negative bound), ``recon`` (mean ``-log p(x|z)``), ``kl``
        (mean analytic KL) and ``n`` (examples).
    """
    objective, kl, _ = obj.check_objective(objective, kl)
    mc_samples = check.positive_int(mc_samples, "mc_samples")
    batch_size = check.positive_int(batch_size, "batch_size")
    check.vae(model)
    model.check_params()
    x = model.check_data(x)
    check.step_memory(model, min(batch_size, x.shape[0]), mc_samples, "mc_samples, batch_size",
                    "lower mc_samples or batch_size")
    seed = _renamed(seed, rng, "rng", "seed")
    return mean_bound(model, x, mc_samples, objective, batch_size, check.generator(seed), kl)


def mean_bound(model, x, mc_samples, objective, batch_size, rng, kl="analytic"):
    """:func:`evaluate_bound` on trusted inputs (``x`` checked with :meth:`npvae.VAE.check_data`,
    the names with :func:`npvae.objectives.check_objective`, ``rng`` a Generator), through
    the model's engine: what :func:`npvae.fit` runs after every epoch."""
    totals = np.zeros(3)
    n = x.shape[0]
    engine = model.engine
    with engine.steps(min(batch_size, n), mc_samples):
        for start in range(0, n, batch_size):
            xb = x[start:start + batch_size]
            eps = model.sample_eps(xb.shape[0], mc_samples, rng)
            bound = engine.bound(xb, eps, objective, kl)
            totals += xb.shape[0] * np.array([bound.loss, bound.recon, bound.kl])
    loss, recon, kl_mean = totals / n
    return {"loss": float(loss), "recon": float(recon), "kl": float(kl_mean), "n": n}


# --------------------------------------------------------------------------
# Importance-sampled marginal log-likelihood
# --------------------------------------------------------------------------
class LogLikelihood(NamedTuple):
    """An importance-sampled estimate of ``log p(x)`` on a dataset, with its diagnostics.

    Printing one shows its scalars and summaries of the per-example arrays (their
    median, extremes, and how many images have an unreliable ``pareto_k``), not the
    arrays themselves; the fields hold them in full.

    Attributes
    ----------
    mean : float
        ``mean_n log p_hat(x_n)`` in nats (higher is better); the number to compare
        models by, as in Burda et al. (2016), table 1.
    se : float
        Standard error over examples, ``std_n(log p_hat(x_n)) / sqrt(N)`` (ddof=1):
        how much ``mean`` would move on another test set of the same size.
    mc_se : float
        Monte Carlo standard error of ``mean`` on *this* dataset,
        ``sqrt(sum_n per_example_se_n^2) / N``: how much it would move with other
        samples ``z``. It is the one to use when two models are compared on the same
        images.
    per_example : ndarray, shape (N,)
        ``log p_hat(x_n) = logsumexp_k log w_nk - log k``.
    per_example_se : ndarray, shape (N,)
        Delta-method standard error of each ``log p_hat(x_n)``,
        ``std_k(w_nk) / (sqrt(k) mean_k(w_nk))``, from the normalized weights.
        It is itself an estimate and is unreliable when the weights are heavy-tailed
        (small ``ess``, large ``pareto_k``): then it measures no bias.
    ess : ndarray, shape (N,)
        Effective sample size ``(sum_k w_nk)^2 / sum_k w_nk^2`` (Kong 1992), between 1
        and ``k`` (:func:`npvae.stats.ess`).
    k : int
        Importance samples per example.
    n : int
        Examples.
    pareto_k : ndarray, shape (N,), or None
        Pareto smoothed importance sampling's shape diagnostic ``k-hat`` of each
        example's ``k`` weights (Vehtari et al. 2024; :func:`npvae.stats.pareto_k`):
        above 0.7 (:data:`npvae.stats.PARETO_K_UNRELIABLE`) the weights' tail is so heavy
        that ``log p_hat`` is unreliable, whatever ``per_example_se`` says; below 0.5
        their variance is finite. NaN where it is not estimated (``k < 21``, or a
        degenerate tail such as equal weights). None for a result made without it.
    """

    mean: float
    se: float
    mc_se: float
    per_example: np.ndarray
    per_example_se: np.ndarray
    ess: np.ndarray
    k: int
    n: int
    pareto_k: np.ndarray = None

    def to_dict(self):
        """The scalar fields as a JSON-ready dict (``log_likelihood``, ``..._se``, ...).

        Besides the estimate, its standard errors, ``k``, ``n`` and the ESS's median and
        minimum: when ``pareto_k`` is known, ``pareto_k_median`` and ``pareto_k_max`` over
        the examples where it is estimated (None where it is nowhere) and
        ``pareto_k_over_0.7``, how many examples have an unreliable estimate.
        """
        d = {"log_likelihood": self.mean, "log_likelihood_se": self.se, "log_likelihood_mc_se": self.mc_se,
             "k": self.k, "n": self.n, "ess_median": float(np.median(self.ess)),
             "ess_min": float(self.ess.min())}
        if self.pareto_k is not None:
            known = self.pareto_k[np.isfinite(self.pareto_k)]
            d.update({"pareto_k_median": float(np.median(known)) if known.size else None,
                      "pareto_k_max": float(known.max()) if known.size else None,
                      "pareto_k_over_0.7": int(np.sum(known > stats.PARETO_K_UNRELIABLE))})
        return d

    def __repr__(self):
        def spread(a):
            a = np.asarray(a, dtype=float)
            a = a[np.isfinite(a)]
            if not a.size:
                return "n/a"
            return f"median {np.median(a):.4g} [min {a.min():.4g}, max {a.max():.4g}]"

        parts = [f"mean={self.mean:.4f}", f"se={self.se:.4f}", f"mc_se={self.mc_se:.4f}", f"n={self.n}",
                 f"k={self.k}", f"per_example: {spread(self.per_example)}", f"ess: {spread(self.ess)}"]
        if self.pareto_k is not None:
            known = np.isfinite(self.pareto_k)
            over = int(np.sum(self.pareto_k[known] > stats.PARETO_K_UNRELIABLE))
            parts.append(f"pareto_k: {spread(self.pareto_k)}, {over} of {int(known.sum())} over "
                         f"{stats.PARETO_K_UNRELIABLE}")
        return f"{type(self).__name__}({', '.join(parts)})"


#: Default number of decoder rows (example-sample pairs) per forward pass of
#: :func:`log_likelihood`; it bounds the working memory, see there.
LL_MAX_ROWS = 4096


#: The estimators of :func:`log_likelihood`: importance sampling, annealed importance sampling.
LOG_LIKELIHOOD_METHODS = ("is", "ais")


def log_likelihood(model, x, k=5000, batch_size=None, seed=0, max_rows=LL_MAX_ROWS, progress=True, file=None,
                   method="is", chains=16, steps=200, leapfrog=5, *, batch=_UNSET):
    """Importance-sampled (or, with ``method="ais"``, annealed) estimate of the marginal log-likelihood ``log p(x)``.

    With ``method="ais"`` this is :func:`npvae.ais.ais_log_likelihood` with ``chains``,
    ``steps`` and ``leapfrog`` (``k`` and ``batch_size`` are not used; ``max_rows`` bounds the rows
    of one pass as here): annealed importance sampling from the prior to the posterior, which
    does not depend on the encoder and is much closer to ``log p(x)`` where the encoder's
    ``q(z|x)`` misses part of the posterior. What follows describes ``method="is"``.

    For each example, with ``z_1..z_k`` drawn from the encoder ``q(z|x)``,

    ``log p_hat(x) = log (1/k) sum_k w_k``,  ``log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x)``,

    which is the IWAE bound with ``k`` samples (Burda et al. 2016, section 5 and
    appendix; they use ``k = 5000``). It is a stochastic lower bound on ``log p(x)``
    in expectation, and tends to it as ``k`` grows.

    The samples are processed in chunks of at most ``max_rows`` example-sample pairs,
    and the chunks' sums are combined with a running maximum per example (a
    streaming logsumexp), so the result does not overflow or underflow and the memory
    does not grow with ``N``, nor with ``k`` beyond the ``M + 1`` largest log weights kept
    per example of a batch for ``k-hat`` (see below).

    Two diagnostics say whether ``k`` samples are enough for each image, which the
    standard errors cannot (they come from the same weights): the effective sample
    size of the weights, from the running sums of ``w`` and ``w^2``, and the Pareto
    shape ``k-hat`` of their tail (Vehtari et al. 2024, :func:`npvae.stats.pareto_k`),
    fitted to the ``M + 1 = ceil(min(k/5, 3 sqrt(k))) + 1`` largest log weights of each
    image, which are kept across the chunks (213 + 1 at ``k = 5000``). ``k-hat > 0.7``
    marks an image whose estimate is unreliable.

    Memory: besides ``x``, a few float64 arrays of shape ``(N,)``, the largest ``M + 1``
    log weights of the examples of one batch (``batch * (M + 1)`` floats: 219 kB at
    ``k = 5000``) and the ``k-hat`` fit's temporaries (a few MB), the working set
    is that of one decoder pass over ``max_rows`` example-sample pairs, whatever ``k``
    and ``N`` are: at most about ``4 * max_rows * (D + sum(hidden)) * itemsize`` bytes
    (the Bernoulli log-likelihood's temporaries of shape ``(rows, D)`` dominate). For
    the default ``max_rows = 4096``, ``D = 784`` and one hidden layer of 256 that bound
    is 136 MB in float64 (68 MB in float32); the measured peak of NumPy's allocations
    is 113 MB (57 MB). ``k = 5000`` on the 10,000 MNIST test images (``x`` itself is
    63 MB in float64) therefore runs in well under 1 GB; ``tests/test_evaluate.py``
    checks the bound and that it does not grow with ``k``. Time grows as ``N * k``
    decoder rows, computed by the model's engine (``model.engine.log_weights``): with
    the numba engine, the forward-only pass on threads, each thread its own chunk
    of examples with single-threaded BLAS, in the model's dtype (float32 for a
    float32 model). ``benchmarks/results/ll_throughput.md`` has the rows per second
    measured here and the fraction of the matrix products' rate.

    Parameters
    ----------
    model : npvae.VAE
    x : ndarray, shape (N, input_dim)
        Data in [0, 1] (the same kind of targets the model was trained on).
    k : int, default 5000
        Importance samples per example (``k >= 1``).
    batch_size : int, optional
        Examples encoded together (default ``min(N, max(1, max_rows // 32))``).
        The samples of one example batch are drawn in chunks of
        ``max(1, max_rows // batch_size)`` samples. (``batch=`` is its deprecated name.)
    seed : int or numpy.random.Generator or None, default 0
        Source of the noise ``eps`` (drawn in float64, then cast to the model's dtype).
        The same ``seed``, ``batch`` and ``max_rows`` give the same result bit for bit.
    max_rows : int, default 4096
        Example-sample pairs per decoder pass; bounds the memory (see above).
    progress : bool, default True
        Print a progress line to ``file`` every few seconds (only if the evaluation
        runs that long), and a last line when done.
    file : file-like, optional
        Where progress goes (default ``sys.stderr``).
    method : {"is", "ais"}, default "is"
        Importance sampling from the encoder, or annealed importance sampling.
    chains, steps, leapfrog : int
        For ``method="ais"``: chains per image, temperatures, leapfrog steps per HMC
        transition (:func:`npvae.ais.ais_log_likelihood`).

    Returns
    -------
    LogLikelihood or npvae.ais.AISResult
        ``mean``, its standard errors ``se`` (over examples) and ``mc_se`` (Monte
        Carlo), the per-example estimates, their standard errors, effective
        sample sizes ``ess`` and Pareto ``k-hat`` (``pareto_k``; NaN for ``k < 21``).

    Raises
    ------
    ValueError
        If ``model`` is not a VAE, ``k``, ``batch`` or ``max_rows`` is not a positive
        integer, ``seed`` cannot seed a Generator, or ``x`` does not match the model (its
        number of columns is not ``model.input_dim``, or it is not finite data in [0, 1]);
        and, naming ``model``, when a log weight is not finite (parameters so large that
        they overflow the model's dtype): a NaN is never returned as an estimate.
    """
    batch = _renamed(batch_size, batch, "batch", "batch_size")
    if check.choice(method, "method", LOG_LIKELIHOOD_METHODS) == "ais":
        return ais.ais_log_likelihood(model, x, chains=chains, steps=steps, leapfrog=leapfrog, max_rows=max_rows,
                                      seed=seed, progress=progress, file=file)
    k = check.positive_int(k, "k")
    max_rows = check.positive_int(max_rows, "max_rows")
    if batch is not None:
        batch = check.positive_int(batch, "batch_size")
    check.vae(model)
    model.check_params()
    x = model.check_data(x)
    rng = check.generator(seed)
    n = x.shape[0]
    if batch is None:
        batch = max(1, max_rows // 32)
    batch = min(batch, n)
    check.step_memory(model, batch, min(k, max(1, max_rows // batch)), "max_rows",
                    "lower max_rows (or batch_size, or k)")
    report = _Reporter(n, k, progress, file)
    per_example = np.empty(n)
    per_example_se = np.empty(n)
    ess = np.empty(n)
    pareto = np.empty(n)
    with model.engine.steps(batch, max(1, max_rows // batch)):
        for start in range(0, n, batch):
            xb = x[start:start + batch]
            lse, se, ess_b, pareto_b = _log_likelihood_batch(model, xb, k, max(1, max_rows // xb.shape[0]), rng)
            per_example[start:start + batch] = lse
            per_example_se[start:start + batch] = se
            ess[start:start + batch] = ess_b
            pareto[start:start + batch] = pareto_b
            report.update(start + xb.shape[0])
    report.done()
    overflow = ~np.isfinite(per_example)
    if overflow.any():
        raise ValueError(f"model: the log weights of {int(overflow.sum())} of {n} example(s) are not finite "
                         f"(log p_hat = {per_example[overflow][0]}): the model's parameters overflow in "
                         f"{model.dtype.name}; no estimate is returned")
    mean = float(per_example.mean())
    se = float(per_example.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    mc_se = float(math.sqrt(float(np.sum(per_example_se ** 2))) / n)
    return LogLikelihood(mean, se, mc_se, per_example, per_example_se, ess, k, n, pareto)


def _log_likelihood_batch(model, xb, k, chunk, rng):
    """Streaming logsumexp of ``k`` log weights per example of ``xb``, in chunks of samples.

    Returns ``log p_hat (b,)``, its delta-method standard error ``(b,)``, the
    effective sample size ``(b,)`` and Pareto ``k-hat`` ``(b,)``, all float64. The ESS
    comes from the running sums of ``w`` and ``w^2`` (each kept as a log-sum-exp: a
    running maximum and the sums scaled by it); ``k-hat`` from the ``M + 1`` largest log
    weights of each example (:func:`npvae.stats.pareto_tail_length`), kept across chunks,
    so the memory is ``b * (M + 1)`` floats, not ``b * k``.
    """
    b = xb.shape[0]
    m = np.full(b, -np.inf)            # running max of log w
    s1 = np.zeros(b)                   # sum_k exp(log w - m)
    s2 = np.zeros(b)                   # sum_k exp(2 (log w - m))
    tail = stats.pareto_tail_length(k)
    keep = min(tail + 1, k) if tail >= 5 else 0           # k-hat needs M >= 5 (see stats.pareto_k)
    top = np.empty((b, 0))                                 # the largest log weights so far, (b, <= keep)
    for s0 in range(0, k, chunk):
        s = min(chunk, k - s0)
        eps = model.sample_eps(b, s, rng)                                # (b, s, L)
        log_w = model.engine.log_weights(xb, eps)                        # (b, s), float64
        m_new = np.maximum(m, log_w.max(axis=1))
        # rescale the sums kept so far to the new maximum (exp(-inf) = 0 on the first chunk)
        with np.errstate(invalid="ignore"):
            shift = np.where(np.isfinite(m), m - m_new, -np.inf)
        a = np.exp(log_w - m_new[:, None])
        s1 = s1 * np.exp(shift) + a.sum(axis=1)
        s2 = s2 * np.exp(2.0 * shift) + (a * a).sum(axis=1)
        m = m_new
        if keep:
            top = np.concatenate([top, log_w], axis=1)
            if top.shape[1] > keep:
                top = np.partition(top, top.shape[1] - keep, axis=1)[:, -keep:]
    lse = m + np.log(s1) - math.log(k)
    # With p_s = w_s / sum w: var(w) / mean(w)^2 = k sum p^2 - 1 (population), so the
    # delta-method SE of log mean(w) is sqrt((k sum p^2 - 1) / (k - 1)) with the unbiased variance.
    p2 = s2 / (s1 * s1)                                                  # sum_k p_k^2, in [1/k, 1]
    if k > 1:
        se = np.sqrt(np.maximum(k * p2 - 1.0, 0.0) / (k - 1))
    else:
        se = np.full(b, np.nan)
    overflow = (np.isnan(top) | (top == np.inf)).any(axis=1)             # refused by the caller
    pareto = stats.pareto_k(np.where(overflow[:, None], -np.inf, top), n_samples=k)
    pareto[overflow] = np.nan
    return lse, se, 1.0 / p2, pareto


class _Reporter:
    """A progress line on stderr every few seconds, only for evaluations that take that long."""

    EVERY = 5.0

    def __init__(self, n, k, enabled, file):
        self.n, self.k, self.enabled = n, k, bool(enabled)
        self.file = file
        self.t0 = self.last = time.perf_counter()
        self.printed = False

    def _write(self, text):
        print(text, file=self.file if self.file is not None else sys.stderr, flush=True)
        self.printed = True

    def update(self, done):
        now = time.perf_counter()
        if not self.enabled or now - self.last < self.EVERY or done >= self.n:
            return
        self.last = now
        elapsed = now - self.t0
        eta = elapsed * (self.n - done) / done
        self._write(f"log_likelihood: {done}/{self.n} examples (k={self.k}), {elapsed:.0f} s, ETA {eta:.0f} s")

    def done(self):
        if self.enabled and self.printed:
            self._write(f"log_likelihood: {self.n}/{self.n} examples (k={self.k}) in "
                        f"{time.perf_counter() - self.t0:.1f} s")
