"""The numba engine (npvae.fast) against the NumPy reference engine, on the same weights and inputs.

The reference engine (``ReferenceEngine.forward``/``backward``) is the specification: the fused step must
give the same loss, Bound and gradients (float64 to ~1e-11 relative to each array's scale,
float32 to its precision), for every objective, KL and estimator, any number of hidden layers,
both activations, and shapes with S=1, B=1 and odd sizes.
"""

import os
import subprocess
import sys
import textwrap
import tracemalloc

import numpy as np
import pytest

pytestmark = pytest.mark.numba      # the numba engine's kernels (skipped without numba)

import npvae  # noqa: E402
from npvae import gradcheck, optim  # noqa: E402
from npvae.fast import blas, jobs, threads, updates  # noqa: E402
from npvae.fast import engine as fast_engine  # noqa: E402
from npvae.model import VAE  # noqa: E402

from _helpers import fake_blas, small_model  # noqa: E402

RTOL = {np.float64: 1e-11, np.float32: 2e-5}
COMBOS = [("elbo", "analytic", "standard"), ("elbo", "mc", "standard"), ("elbo", "mc", "stl"),
          ("iwae", "analytic", "standard"), ("iwae", "analytic", "stl"), ("iwae", "analytic", "dreg")]
ARCHS = [dict(hidden=(6, 5), activation="relu"), dict(hidden=(7,), activation="tanh")]
SHAPES = [(1, 1), (1, 3), (4, 1), (5, 3)]  # B, S
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pair(dtype=np.float64, seed=3, input_dim=13, latent_dim=3, **arch):
    """A NumPy-backend and a numba-backend model with the same (nonzero-bias) weights."""
    kwargs = dict(input_dim=input_dim, latent_dim=latent_dim, seed=seed, dtype=dtype, bias_scale=0.1,
                  **(arch or ARCHS[0]))
    return small_model(backend="numpy", **kwargs), small_model(backend="numba", **kwargs)


def data(model, B, S, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((B, model.input_dim))
    x[:, ::2] = x[:, ::2] > 0.5  # binarized and grayscale pixels
    return x.astype(model.dtype), model.sample_eps(B, S, rng)


def assert_close(got, want, dtype, what=""):
    """``|got - want| <= rtol * max|want|`` (sums with cancellation have no useful elementwise error)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, what
    scale = max(float(np.max(np.abs(want))), 1e-300)
    np.testing.assert_allclose(got, want, rtol=RTOL[dtype], atol=RTOL[dtype] * scale, err_msg=what)


def assert_same_result(ref_out, fast_out, dtype):
    (b_ref, g_ref), (b_fast, g_fast) = ref_out, fast_out
    for field in ("loss", "recon", "kl", "per_example"):
        assert_close(getattr(b_fast, field), getattr(b_ref, field), dtype, field)
    assert isinstance(b_fast.loss, float) and b_fast.per_example.dtype == dtype
    assert list(g_fast) == list(g_ref) or set(g_fast) == set(g_ref)
    for k in g_ref:
        assert g_fast[k].dtype == g_ref[k].dtype == dtype and g_fast[k].shape == g_ref[k].shape, k
        assert_close(g_fast[k], g_ref[k], dtype, k)


# --------------------------------------------------------------------------
# Same results as the NumPy path
# --------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("arch", ARCHS, ids=["relu-2-layers", "tanh-1-layer"])
@pytest.mark.parametrize("objective,kl,estimator", COMBOS)
def test_numba_backend_equals_numpy_backend(dtype, arch, objective, kl, estimator):
    ref, fast = pair(dtype, **arch)
    for B, S in SHAPES:
        x, eps = data(ref, B, S, seed=B * 10 + S)
        args = (x, eps, objective, kl, estimator)
        assert_same_result(ref.loss_and_grads(*args, return_bound=True),
                           fast.loss_and_grads(*args, return_bound=True), dtype)
        loss, _ = fast.loss_and_grads(*args)
        assert isinstance(loss, float)
        assert_close(fast.bound(x, eps, objective, kl).per_example,
                     ref.bound(x, eps, objective, kl).per_example, dtype)


BUDGET_COMBOS = [("miwae-2", "standard"), ("miwae-2", "stl"), ("miwae-2", "dreg"), ("miwae-3x2", "dreg"),
                 ("ciwae", "standard"), ("ciwae", "stl"), ("piwae-2", "standard"), ("piwae-2", "stl"),
                 ("piwae-2", "dreg"), ("piwae-3x2", "dreg")]
BUDGET = {"miwae-2": npvae.objectives.MIWAE(outer=2), "miwae-3x2": npvae.objectives.MIWAE(outer=3, inner=2),
          "ciwae": npvae.objectives.CIWAE(beta=0.3), "piwae-2": npvae.objectives.PIWAE(outer=2),
          "piwae-3x2": npvae.objectives.PIWAE(outer=3, inner=2)}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("arch", ARCHS, ids=["relu-2-layers", "tanh-1-layer"])
@pytest.mark.parametrize("objective,estimator", BUDGET_COMBOS)
def test_numba_backend_equals_numpy_backend_for_the_budget_objectives(dtype, arch, objective, estimator):
    ref, fast = pair(dtype, **arch)
    rule = BUDGET[objective]
    for B, S in [(1, 6), (4, 2), (5, 6)] if rule.params().get("inner") is None else [(1, 6), (5, 6)]:
        x, eps = data(ref, B, S, seed=B * 10 + S)
        args = (x, eps, rule, "analytic", estimator)
        assert_same_result(ref.loss_and_grads(*args, return_bound=True),
                           fast.loss_and_grads(*args, return_bound=True), dtype)
        assert_close(fast.bound(x, eps, rule).per_example, ref.bound(x, eps, rule).per_example, dtype)


def test_the_budget_objectives_have_kernels_and_piwae_the_encoders_beside_its_own():
    from npvae.fast import bounds
    assert isinstance(bounds.kernels_for(BUDGET["miwae-2"]), bounds.MIWAE)
    assert isinstance(bounds.kernels_for(BUDGET["ciwae"]), bounds.CIWAE)
    piwae = bounds.kernels_for(npvae.objectives.PIWAE(outer=3, inner=2))
    assert isinstance(piwae, bounds.IWAE) and isinstance(piwae.encoder, bounds.MIWAE)
    assert piwae.encoder.objective.outer == 3


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_piwae_runs_on_the_fast_path_not_through_the_reference(dtype, monkeypatch):
    ref, fast = pair(dtype, **ARCHS[1])
    x, eps = data(ref, 4, 6, seed=3)

    def refused(*args, **kwargs):
        raise AssertionError("the numba engine ran PIWAE through its reference")
    monkeypatch.setattr(fast.engine.reference, "loss_and_grads", refused)
    monkeypatch.setattr(fast.engine.reference, "bound", refused)
    rule = npvae.objectives.PIWAE(outer=2)
    fast.loss_and_grads(x, eps, rule, "analytic", "dreg")
    fast.bound(x, eps, rule)
    with pytest.raises(ValueError):
        fast.bound(x, eps[:, :5], npvae.objectives.PIWAE(outer=2))     # 5 samples: not M x K


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_group_logsumexp_with_one_group_is_logsumexp_weights_bit_for_bit(dtype):
    from npvae.fast import latent
    log_w = (np.random.default_rng(1).normal(size=(4, 5)) * 30).astype(dtype)
    b1, w1, b2, w2 = np.empty(4, dtype), np.empty((4, 5), dtype), np.empty(4, dtype), np.empty((4, 5), dtype)
    latent.logsumexp_weights(log_w, b1, w1)
    latent.group_logsumexp_weights(log_w, 1, b2, w2)
    np.testing.assert_array_equal(b2, b1)
    np.testing.assert_array_equal(w2, w1)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_wide_latent_takes_the_blas_route_for_the_first_decoder_layer(dtype):
    """A latent wider than dense.NARROW_INPUT: the first decoder layer runs as BLAS + kernels."""
    from npvae.fast import dense
    L = dense.NARROW_INPUT + 1
    for arch in ARCHS:
        ref, fast = pair(dtype, latent_dim=L, **arch)
        for objective, kl, estimator in COMBOS[::2]:
            x, eps = data(ref, 4, 3)
            args = (x, eps, objective, kl, estimator)
            assert_same_result(ref.loss_and_grads(*args, return_bound=True),
                               fast.loss_and_grads(*args, return_bound=True), dtype)


def test_numba_backend_equals_numpy_backend_at_the_seed_model_size():
    ref, fast = pair(np.float64, input_dim=784, latent_dim=2, hidden=(256,), activation="relu")
    x, eps = data(ref, 7, 5)
    for objective, kl, estimator in (("elbo", "analytic", "standard"), ("iwae", "analytic", "dreg")):
        args = (x, eps, objective, kl, estimator)
        assert_same_result(ref.loss_and_grads(*args, return_bound=True),
                           fast.loss_and_grads(*args, return_bound=True), np.float64)


def test_forward_only_path_works_in_chunks_of_examples(monkeypatch):
    monkeypatch.setattr(fast_engine, "FORWARD_ROWS", 6)  # 7 examples x 3 samples -> chunks of 2 examples
    ref, fast = pair(np.float64)
    x, eps = data(ref, 7, 3)
    for objective, kl in (("elbo", "analytic"), ("elbo", "mc"), ("iwae", "analytic"),
                          (npvae.objectives.MIWAE(outer=3), "analytic"), (npvae.objectives.CIWAE(0.3), "analytic")):
        want, got = ref.bound(x, eps, objective, kl), fast.bound(x, eps, objective, kl)
        for field in ("loss", "recon", "kl", "per_example"):
            assert_close(getattr(got, field), getattr(want, field), np.float64, field)
    res = npvae.evaluate_bound(fast, x, mc_samples=3, objective="iwae", batch_size=5, seed=0)
    assert res == pytest.approx(npvae.evaluate_bound(ref, x, mc_samples=3, objective="iwae", batch_size=5, seed=0),
                                rel=1e-12)


@pytest.mark.parametrize("objective,kl", [("elbo", "analytic"), ("elbo", "mc"), ("iwae", "analytic")])
@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_numba_model_gradients_match_finite_differences(objective, kl, activation):
    _, fast = pair(np.float64, hidden=(6, 5), activation=activation)
    for B, S in ((1, 1), (4, 3)):
        x, eps = data(fast, B, S, seed=B + S)
        errors = gradcheck.check_model(fast, x, eps, objective=objective, kl=kl)
        assert set(errors) == set(fast.params)
        assert max(errors.values()) < 1e-6, errors


# --------------------------------------------------------------------------
# Workspaces
# --------------------------------------------------------------------------
def test_workspace_reuse_across_shapes_does_not_corrupt_results():
    ref, fast = pair(np.float64)
    for i, (B, S) in enumerate([(5, 3), (2, 1), (5, 3), (1, 4), (2, 1), (5, 3)]):
        x, eps = data(ref, B, S, seed=i)
        objective = "iwae" if i % 2 else "elbo"
        assert_same_result(ref.loss_and_grads(x, eps, objective, return_bound=True),
                           fast.loss_and_grads(x, eps, objective, return_bound=True), np.float64)
    assert len(fast.engine._workspaces) <= fast_engine.MAX_WORKSPACES * max(1, threads.threads_for(fast))


def test_public_grads_are_copies_and_internal_grads_are_workspace_views():
    _, fast = pair(np.float64)
    x, eps = data(fast, 4, 2)
    x2, eps2 = data(fast, 4, 2, seed=1)
    _, g1 = fast.loss_and_grads(x, eps)
    kept = {k: v.copy() for k, v in g1.items()}
    fast.loss_and_grads(x2, eps2)
    for k in g1:  # the public API's grads survive the next call
        np.testing.assert_array_equal(g1[k], kept[k])
    _, a = fast.engine.loss_and_grads(x, eps, "elbo")
    _, b = fast.engine.loss_and_grads(x2, eps2, "elbo")
    assert all(a[k] is b[k] for k in a)  # zero-copy: fit consumes them before the next step


def test_steady_state_step_allocates_no_large_arrays():
    _, fast = pair(np.float32, input_dim=784, latent_dim=2, hidden=(256,), activation="relu")
    B, S = 20, 10
    x, eps = data(fast, B, S)
    opt = optim.RMSprop()
    for _ in range(2):  # workspaces, optimizer state
        _, g = fast.engine.loss_and_grads(x, eps, "iwae")
        opt.step(fast.params, g, update=fast.engine.optimizer_update(opt))
    tracemalloc.start()
    for _ in range(3):
        _, g = fast.engine.loss_and_grads(x, eps, "iwae")
        opt.step(fast.params, g, update=fast.engine.optimizer_update(opt))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    smallest_large_array = B * S * 256 * 4  # one (B * S, H) float32 array
    assert peak < smallest_large_array / 4, peak


# --------------------------------------------------------------------------
# Threads: a step split into groups of examples
# --------------------------------------------------------------------------
@pytest.mark.parametrize("n_threads", [2, 3])
@pytest.mark.parametrize("objective,kl,estimator", COMBOS)
def test_grouped_step_equals_numpy_path(monkeypatch, n_threads, objective, kl, estimator):
    monkeypatch.setattr(threads, "MIN_GROUP_ROWS", 1)
    ref, fast = pair(np.float64)
    fast.threads = n_threads
    for B, S in ((7, 2), (3, 4), (2, 1)):      # 2 or 3 groups, of unequal sizes
        assert threads.groups_for(fast, B, S) == min(n_threads, B)
        x, eps = data(ref, B, S, seed=B + S)
        args = (x, eps, objective, kl, estimator)
        assert_same_result(ref.loss_and_grads(*args, return_bound=True),
                           fast.loss_and_grads(*args, return_bound=True), np.float64)


def test_grouped_forward_shares_chunks_among_threads(monkeypatch):
    monkeypatch.setattr(threads, "MIN_GROUP_ROWS", 1)
    monkeypatch.setattr(fast_engine, "FORWARD_ROWS", 6)  # 9 examples x 3 samples -> 5 chunks of <= 2
    ref, fast = pair(np.float64)
    fast.threads = 2
    x, eps = data(ref, 9, 3)
    for objective, kl in (("elbo", "analytic"), ("elbo", "mc"), ("iwae", "analytic"),
                          (npvae.objectives.MIWAE(outer=3), "analytic"), (npvae.objectives.CIWAE(0.3), "analytic")):
        want, got = ref.bound(x, eps, objective, kl), fast.bound(x, eps, objective, kl)
        for field in ("loss", "recon", "kl", "per_example"):
            assert_close(getattr(got, field), getattr(want, field), np.float64, field)


def test_group_count_follows_threads_batch_and_minimum_rows(monkeypatch):
    _, fast = pair(np.float64)
    fast.threads = 4
    monkeypatch.setattr(threads, "MIN_GROUP_ROWS", 500)
    assert threads.groups_for(fast, 100, 25) == 4           # 2500 rows: 5 x 500, but 4 threads
    assert threads.groups_for(fast, 100, 9) == 1            # 900 rows < 2 x 500
    assert threads.groups_for(fast, 100, 10) == 2
    assert threads.groups_for(fast, 3, 1000) == 3           # never more groups than examples
    fast.threads = 1
    assert threads.groups_for(fast, 100, 50) == 1
    fast.threads = None                                   # as many as BLAS uses
    count = blas.get_threads()
    assert threads.threads_for(fast) == (1 if count is None else min(count, os.cpu_count()))
    with threads.steps_context(fast, 100, 25):              # BLAS held at 1 thread: still the user's count
        assert threads.threads_for(fast) == (1 if count is None else min(count, os.cpu_count()))


def test_fit_runs_its_steps_in_groups_by_default(monkeypatch):
    """Regression: fit holds BLAS at one thread; the default thread count must not read that 1."""
    fake = fake_blas(monkeypatch, threads=2)                 # a BLAS with 2 threads, on 2 cores
    monkeypatch.setattr(threads, "_CPUS", 2)
    monkeypatch.setattr(threads, "MIN_GROUP_ROWS", 1)
    _, fast = pair(np.float32, input_dim=784, latent_dim=2, hidden=(16,))
    seen, real_step = [], fast_engine.step.train_step

    def recording(model, ws, *args, **kwargs):
        seen.append(ws.slot)
        return real_step(model, ws, *args, **kwargs)

    monkeypatch.setattr(fast_engine.step, "train_step", recording)
    during = []
    monkeypatch.setattr(npvae.optim.RMSprop, "step", lambda self, params, grads, update=None:
                        during.append(fake["threads"]))
    npvae.fit(fast, np.random.default_rng(0).random((8, 784)), epochs=1, batch_size=4, verbose=0)
    assert max(seen) >= 1
    assert set(during) == {1} and fake["threads"] == 2       # held at 1 in fit, restored after


def test_without_a_controllable_blas_the_default_is_one_group(monkeypatch):
    """MKL, Accelerate, BLIS: npvae cannot hold their threads at one, so it leaves them to thread
    the products of a single group; an explicit ``threads`` still splits."""
    monkeypatch.setattr(blas, "_found", [])
    ref, fast = pair(np.float64)
    assert threads.threads_for(fast) == 1 and threads.groups_for(fast, 100, 50) == 1
    sets = []
    monkeypatch.setattr(blas, "set_threads", sets.append)
    x, eps = data(fast, 4, 2)
    assert_same_result(ref.loss_and_grads(x, eps, return_bound=True), fast.loss_and_grads(x, eps, return_bound=True),
                       np.float64)
    assert sets == [] and blas.current_threads() is None     # BLAS left alone
    fast.threads = 2
    assert threads.groups_for(fast, 100, 50) == 2


def test_threads_argument_is_validated_and_not_part_of_config():
    model = VAE(input_dim=5, hidden=(3,), latent_dim=2, threads=2)
    assert model.threads == 2 and "threads" not in model.config
    model.threads = None
    for bad in (0, -1, 1.5, "2", True):
        with pytest.raises(ValueError, match="threads"):
            VAE(input_dim=5, hidden=(3,), latent_dim=2, threads=bad)
        with pytest.raises(ValueError, match="threads"):
            model.threads = bad


def test_grouped_step_waits_for_all_groups_and_restores_blas_threads(monkeypatch):
    monkeypatch.setattr(threads, "MIN_GROUP_ROWS", 1)
    _, fast = pair(np.float64)
    fast.threads = 3
    x, eps = data(fast, 6, 2)
    before = blas.get_threads()
    real_step, finished = fast_engine.step.train_step, []

    def failing(model, ws, *args, **kwargs):
        if ws.slot == 1:
            raise FloatingPointError("group 1 failed")
        out = real_step(model, ws, *args, **kwargs)
        finished.append(ws.slot)
        return out

    monkeypatch.setattr(fast_engine.step, "train_step", failing)
    with pytest.raises(FloatingPointError, match="group 1"):
        fast.loss_and_grads(x, eps)
    assert sorted(finished) == [0, 2]                     # the other groups ran to the end
    assert blas.current_threads() == before


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_grouped_steps_work_in_a_forked_child(monkeypatch):
    """The thread pool does not survive fork; the child must start its own, not wait forever."""
    import multiprocessing
    monkeypatch.setattr(threads, "MIN_GROUP_ROWS", 1)
    ref, fast = pair(np.float64)
    fast.threads = 2
    x, eps = data(fast, 6, 2)
    want, _ = ref.loss_and_grads(x, eps)
    assert fast.loss_and_grads(x, eps)[0] == pytest.approx(want, rel=1e-12)   # the parent's pool exists
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        got = pool.apply_async(_loss_in_child, (fast, x, eps)).get(timeout=60)
    assert got == pytest.approx(want, rel=1e-12)


def _loss_in_child(model, x, eps, groups=True):
    if groups:
        threads.MIN_GROUP_ROWS = 1
    else:
        assert threads.job_parts(model, *eps.shape[:2]) == 2
    return model.loss_and_grads(x, eps)[0]


def test_fit_on_threads_gives_the_one_thread_history(monkeypatch):
    monkeypatch.setattr(threads, "MIN_GROUP_ROWS", 1)
    _, one = pair(np.float64, input_dim=784, latent_dim=2, hidden=(32,))
    _, two = pair(np.float64, input_dim=784, latent_dim=2, hidden=(32,))
    one.threads, two.threads = 1, 2
    x = np.random.default_rng(0).random((50, 784))
    h1 = npvae.fit(one, x, epochs=2, batch_size=20, mc_samples=3, verbose=0, validation_data=x[:10])
    h2 = npvae.fit(two, x, epochs=2, batch_size=20, mc_samples=3, verbose=0, validation_data=x[:10])
    for a, b in zip(h1, h2):
        for key in ("loss", "recon", "kl", "val_loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-10)
    for name in one.params:
        np.testing.assert_allclose(two.params[name], one.params[name], rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------
# Threads: a one-group float32 step's row passes as jobs on BLAS's threads
# --------------------------------------------------------------------------
jobs_here = pytest.mark.skipif(not blas.jobs_available(),
                               reason="NumPy's BLAS here is not an OpenBLAS with a thread server")


def counting_jobs(monkeypatch):
    calls, real = [], blas.run_jobs

    def counting(function, records):
        calls.append(records[:, 0].tolist())
        return real(function, records)

    monkeypatch.setattr(blas, "run_jobs", counting)
    return calls


@jobs_here
@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("objective,kl,estimator", COMBOS)
def test_step_with_jobs_equals_numpy_path_and_the_step_without(monkeypatch, blas_on_two_threads,
                                                                 activation, objective, kl, estimator):
    ref, fast = pair(np.float32, latent_dim=2, hidden=(7,), activation=activation)
    fast.threads = 2
    B, S = 9, 40                                   # 360 rows: one group, 2 parts of 4 and 5 examples
    assert threads.groups_for(fast, B, S) == 1 and threads.job_parts(fast, B, S) == 2
    x, eps = data(ref, B, S)
    args = (x, eps, objective, kl, estimator)
    calls = counting_jobs(monkeypatch)
    got = fast.loss_and_grads(*args, return_bound=True)
    assert sorted({op for call in calls for op in call}) == [1, 2, 3, 4, 5]   # every pass went in parts
    assert_same_result(ref.loss_and_grads(*args, return_bound=True), got, np.float32)
    with monkeypatch.context() as m:
        m.setattr(threads, "job_parts", lambda *a: 1)
        want = fast.loss_and_grads(*args, return_bound=True)
    np.testing.assert_array_equal(got[0].per_example, want[0].per_example)
    for name in want[1]:                           # only the sums over rows add parts: rounding
        if name in ("dec.out.b", "dec.0.W", "dec.0.b"):
            np.testing.assert_allclose(got[1][name], want[1][name], rtol=1e-6, atol=1e-6 * np.abs(want[1][name]).max())
        else:
            np.testing.assert_array_equal(got[1][name], want[1][name], err_msg=name)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("latent_dim,binary", [(2, True), (5, False)], ids=["narrow-binary", "wide-grey"])
@pytest.mark.parametrize("objective,kl,estimator", [("elbo", "analytic", "standard"), ("elbo", "mc", "stl"),
                                                    ("iwae", "analytic", "dreg")])
def test_layer_stacks_compiled_equal_their_python_bodies_bit_for_bit(monkeypatch, dtype, latent_dim, binary,
                                                                      objective, kl, estimator):
    """The step's layer stacks (npvae.fast.layers) run compiled where NumPy's BLAS can be called
    from compiled code, else as Python (np.matmul, the kernels one by one): the same BLAS calls
    and kernels, so the same loss, gradients and AIS log joint bit for bit."""
    from npvae.fast import gemm, layers
    if not gemm.address(dtype):
        pytest.skip("NumPy's BLAS here offers no cblas gemm npvae can call")
    compiled_calls = []
    runner = layers.runner
    monkeypatch.setattr(layers, "runner", lambda fn, addr: compiled_calls.append(bool(addr)) or runner(fn, addr))

    def run():
        model = small_model(backend="numba", input_dim=13, latent_dim=latent_dim, hidden=(6, 5), seed=3,
                            dtype=dtype, bias_scale=0.1)
        model.threads = 1
        x, eps = data(model, 4, 3)
        if binary:
            x = (x > 0.5).astype(dtype)
        bound, grads = model.loss_and_grads(x, eps, objective, kl, estimator, return_bound=True)
        log_lik, dz = model.engine.log_joint(x, eps, grad=True)
        return bound, grads, log_lik, dz

    compiled = run()
    assert compiled_calls and all(compiled_calls)
    compiled_calls.clear()
    monkeypatch.setattr(gemm, "address", lambda dtype: 0)
    python = run()
    assert compiled_calls and not any(compiled_calls)
    assert compiled[0].loss == python[0].loss
    np.testing.assert_array_equal(compiled[0].per_example, python[0].per_example)
    for name in compiled[1]:
        np.testing.assert_array_equal(compiled[1][name], python[1][name], err_msg=name)
    np.testing.assert_array_equal(compiled[2], python[2])
    np.testing.assert_array_equal(compiled[3], python[3])


@jobs_here
def test_step_with_jobs_takes_parameters_that_are_not_c_contiguous(monkeypatch, blas_on_two_threads):
    """The jobs read arrays by address: a transposed or strided parameter must go to the kernel."""
    ref, fast = pair(np.float32, latent_dim=2, hidden=(7,))
    fast.threads = 2
    fast.params["dec.0.W"] = np.asfortranarray(fast.params["dec.0.W"])
    b = np.zeros((fast.input_dim, 2), np.float32)
    b[:, 0] = fast.params["dec.out.b"]
    fast.params["dec.out.b"] = b[:, 0]                                         # a strided view
    assert not fast.params["dec.out.b"].flags.c_contiguous and not fast.params["dec.0.W"].flags.c_contiguous
    x, eps = data(ref, 9, 40)
    calls = counting_jobs(monkeypatch)
    assert_same_result(ref.loss_and_grads(x, eps, return_bound=True),
                       fast.loss_and_grads(x, eps, return_bound=True), np.float32)
    ops = {op for call in calls for op in call}
    assert 3 in ops and 1 not in ops and 2 not in ops            # the row scale still went in parts


@jobs_here
def test_job_parts_follow_dtype_threads_rows_and_the_blas(monkeypatch, blas_on_two_threads):
    _, fast = pair(np.float32, latent_dim=2, hidden=(7,))
    fast.threads = 2
    assert threads.job_parts(fast, 100, 5) == 2
    assert threads.job_parts(fast, 100, 1) == 1                 # 100 rows: below 2 x MIN_JOB_ROWS
    assert threads.job_parts(fast, 1, 500) == 1                 # never more parts than examples
    fast.threads = 1
    assert threads.job_parts(fast, 100, 5) == 1
    fast.threads = 4
    assert threads.job_parts(fast, 100, 5) == 2                 # no more than BLAS's threads
    with blas.single_threaded():
        assert threads.job_parts(fast, 100, 5) == 1
    _, slow = pair(np.float64, latent_dim=2, hidden=(7,))
    slow.threads = 2
    assert threads.job_parts(slow, 100, 5) == 1                 # float64: the reference precision
    monkeypatch.setattr(blas, "jobs_available", lambda: False)
    assert threads.job_parts(fast, 100, 5) == 1


@jobs_here
def test_fit_float32_with_jobs_gives_the_history_without(monkeypatch, blas_on_two_threads):
    histories = []
    for parts in (None, 1):
        _, model = pair(np.float32, input_dim=784, latent_dim=2, hidden=(32,))
        model.threads = 2
        calls = []
        with monkeypatch.context() as m:
            if parts == 1:
                m.setattr(threads, "job_parts", lambda *a: 1)
                m.setattr(jobs, "MIN_JOB_ELEMENTS", 10**9)
            else:
                calls = counting_jobs(m)
                m.setattr(jobs, "MIN_JOB_ELEMENTS", 1000)   # the optimizer's step in parts too
            x = np.random.default_rng(0).random((60, 784)).astype(np.float32)
            histories.append(npvae.fit(model, x, epochs=2, batch_size=30, mc_samples=8, verbose=0))
        assert (parts == 1) == (not calls) and (parts == 1 or [jobs.JOB_UPDATE_TABLE] * 2 in calls)
    for a, b in zip(*histories):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)


def test_a_job_function_that_does_not_compile_leaves_the_passes_on_the_calling_thread(monkeypatch):
    from npvae.fast import jobs
    import numba

    def broken(*args, **kwargs):
        raise RuntimeError("no cfunc here")

    monkeypatch.setattr(jobs, "_row_job_cfunc", None)
    monkeypatch.setattr(numba, "cfunc", broken)
    with pytest.warns(RuntimeWarning, match="no cfunc here"):
        assert jobs.row_job_address() is None
    assert jobs.row_job_address() is None                       # tried once, warned once
    ref, fast = pair(np.float32, latent_dim=2, hidden=(7,))
    fast.threads = 2
    assert threads.job_parts(fast, 9, 40) == 1
    x, eps = data(ref, 9, 40)
    assert_same_result(ref.loss_and_grads(x, eps, return_bound=True),
                       fast.loss_and_grads(x, eps, return_bound=True), np.float32)


@jobs_here
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_steps_with_jobs_work_in_a_forked_child(blas_on_two_threads):
    """OpenBLAS shuts its threads down around fork; the child's jobs must find new ones."""
    import multiprocessing
    _, fast = pair(np.float32, latent_dim=2, hidden=(7,))
    fast.threads = 2
    x, eps = data(fast, 9, 40)
    assert threads.job_parts(fast, 9, 40) == 2
    want = fast.loss_and_grads(x, eps)[0]
    with multiprocessing.get_context("fork").Pool(1) as pool:
        got = pool.apply_async(_loss_in_child, (fast, x, eps, False)).get(timeout=60)
    assert got == want


@jobs_here
def test_rmsprop_step_in_parts_is_bit_identical(monkeypatch, blas_on_two_threads):
    from npvae.fast import jobs
    monkeypatch.setattr(jobs, "MIN_JOB_ELEMENTS", 100)
    calls = counting_jobs(monkeypatch)
    rng = np.random.default_rng(1)
    p, v = rng.standard_normal((31, 17)).astype(np.float32), np.zeros((31, 17), np.float32)
    p2, v2 = p.copy(), v.copy()
    for _ in range(5):
        g = rng.standard_normal(p.shape).astype(np.float32)
        jobs.rmsprop_in_parts(p, g, v, 3e-3, 0.9, 1e-7)
        updates.rmsprop_step(p2, g, v2, 3e-3, 0.9, 1e-7)
        np.testing.assert_array_equal(p, p2)
        np.testing.assert_array_equal(v, v2)
    assert len(calls) == 5 and all(len(c) == 2 for c in calls)
    with blas.single_threaded():                       # BLAS on 1 thread: one part, no jobs
        jobs.rmsprop_in_parts(p, g, v, 3e-3, 0.9, 1e-7)
    assert len(calls) == 5


@jobs_here
def test_adam_step_in_parts_is_bit_identical(monkeypatch, blas_on_two_threads):
    from npvae.fast import jobs
    monkeypatch.setattr(jobs, "MIN_JOB_ELEMENTS", 100)
    calls = counting_jobs(monkeypatch)
    rng = np.random.default_rng(2)
    p = rng.standard_normal((31, 17)).astype(np.float32)
    m, v = np.zeros_like(p), np.zeros_like(p)
    p2, m2, v2 = p.copy(), m.copy(), v.copy()
    for t in range(1, 6):
        g = rng.standard_normal(p.shape).astype(np.float32)
        alpha = 1e-3 * np.sqrt(1 - 0.999 ** t) / (1 - 0.99 ** t)
        jobs.adam_in_parts(p, g, m, v, alpha, 0.99, 0.999, 5e-6)
        updates.adam_step(p2, g, m2, v2, alpha, 0.99, 0.999, 5e-6)
        for a, b in ((p, p2), (m, m2), (v, v2)):
            np.testing.assert_array_equal(a, b)
    assert len(calls) == 5 and all(len(c) == 2 for c in calls)
    with blas.single_threaded():                       # BLAS on 1 thread: one part, no jobs
        jobs.adam_in_parts(p, g, m, v, 1e-3, 0.99, 0.999, 5e-6)
    assert len(calls) == 5


@pytest.mark.parametrize("name", ["adam", "rmsprop"])
@pytest.mark.parametrize("in_parts", [False, True])
def test_the_update_of_all_parameters_at_once_is_each_ones_bit_for_bit(monkeypatch, request, name, in_parts):
    """The numba engine's ``update.all`` (one pass over a table of every parameter, in parts on
    BLAS's threads) against the same optimizer stepping each parameter alone, over steps in which
    the gradient arrays stay (the kept table) and change (a new one)."""
    from npvae.fast import jobs
    if in_parts:
        if not blas.jobs_available():
            pytest.skip("NumPy's BLAS here is not an OpenBLAS with a thread server")
        request.getfixturevalue("blas_on_two_threads")
        monkeypatch.setattr(jobs, "MIN_JOB_ELEMENTS", 64)
    calls = counting_jobs(monkeypatch)
    model = VAE(input_dim=30, hidden=(17, 9), latent_dim=3, dtype=np.float32, backend="numba", seed=0)
    other = VAE(input_dim=30, hidden=(17, 9), latent_dim=3, dtype=np.float32, backend="numba", seed=0)
    one, each = npvae.optim.get_optimizer(name, lr=1e-2), npvae.optim.get_optimizer(name, lr=1e-2)
    update_one, update_each = model.engine.optimizer_update(one), other.engine.optimizer_update(each)
    assert update_one.all is not None
    del update_each.all                               # the per-parameter route
    rng = np.random.default_rng(0)
    grads = {k: rng.standard_normal(p.shape).astype(np.float32) for k, p in model.params.items()}
    for step in range(4):
        if step == 2:                                 # new gradient arrays: a new table
            grads = {k: g.copy() for k, g in grads.items()}
        for g in grads.values():
            g *= np.float32(0.9)
        one.step(model.params, grads, update=update_one)
        each.step(other.params, grads, update=update_each)
        for k in model.params:
            np.testing.assert_array_equal(model.params[k], other.params[k])
        for slot in one._state:
            for k in model.params:
                np.testing.assert_array_equal(one._state[slot][k], each._state[slot][k])
    table_calls = [c for c in calls if c[0] == jobs.JOB_UPDATE_TABLE]
    assert len(table_calls) == (4 if in_parts else 0)


def test_the_update_of_all_parameters_leaves_float64_gradients_to_each_parameter():
    model = VAE(input_dim=8, hidden=(5,), latent_dim=2, dtype=np.float32, backend="numba", seed=0)
    opt = npvae.optim.get_optimizer("adam")
    update = model.engine.optimizer_update(opt)
    grads = {k: np.ones(p.shape) for k, p in model.params.items()}          # float64
    opt.iterations += 1
    assert update.all(model.params, grads, {s: {k: np.zeros_like(p) for k, p in model.params.items()}
                                            for s in ("m", "v")}) is False


# --------------------------------------------------------------------------
# Backend choice
# --------------------------------------------------------------------------
def test_backend_auto_is_numba_and_not_part_of_config(tmp_path):
    model = VAE(input_dim=5, hidden=(3,), latent_dim=2)
    assert model.backend == "numba"
    assert "backend" not in model.config
    model.save(tmp_path / "m.npz")
    assert npvae.load(tmp_path / "m.npz").backend == "numba"
    assert VAE(input_dim=5, hidden=(3,), backend="NumPy").backend == "numpy"


@pytest.mark.parametrize("bad", ["cuda", "", None, 1])
def test_backend_name_is_validated(bad):
    with pytest.raises(ValueError, match="backend"):
        VAE(input_dim=5, hidden=(3,), backend=bad)


def run_python(code):
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_")}
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            env=env, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    return result


def test_without_numba_auto_falls_back_with_one_warning_and_numba_raises():
    result = run_python("""
        import sys, warnings
        sys.modules["numba"] = None  # make `import numba` fail
        import numpy as np
        import npvae
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            a = npvae.VAE(input_dim=5, hidden=(3,))
            b = npvae.VAE(input_dim=5, hidden=(3,))
        assert a.backend == b.backend == "numpy"
        assert len(caught) == 1, [str(w.message) for w in caught]
        assert "pip install numba" in str(caught[0].message)
        try:
            npvae.VAE(input_dim=5, hidden=(3,), backend="numba")
        except ImportError as exc:
            assert "pip install numba" in str(exc), exc
        else:
            raise AssertionError("backend='numba' without numba did not raise")
        x = np.random.default_rng(0).random((2, 5))
        loss, grads = a.loss_and_grads(x, a.sample_eps(2, 3, rng=0))
        print("ok")
    """)
    assert result.stdout.strip() == "ok"


def test_import_npvae_does_not_import_numba_a_model_of_the_numba_engine_does():
    result = run_python("""
        import sys
        import npvae
        print("numba" in sys.modules)
        model = npvae.VAE(input_dim=5, hidden=(3,), backend="numpy")
        print(model.backend, "numba" in sys.modules)
        model = npvae.VAE(input_dim=5, hidden=(3,))
        print(model.backend, "numba" in sys.modules)
    """)
    assert result.stdout.split() == ["False", "numpy", "False", "numba", "True"]


# --------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------
def synthetic(n=240, d=20, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.random((4, d)) > 0.5
    x = centers[rng.integers(0, 4, n)] ^ (rng.random((n, d)) < 0.1)
    return x.astype(np.float64)


@pytest.mark.parametrize("objective,kl,estimator,mc_samples", [("elbo", "analytic", "standard", 1),
                                                               ("iwae", "analytic", "dreg", 3)])
def test_fit_numba_float64_gives_the_numpy_history(objective, kl, estimator, mc_samples):
    x = synthetic()
    histories = []
    for backend in ("numpy", "numba"):
        model = VAE(input_dim=x.shape[1], hidden=(16,), latent_dim=2, seed=1, backend=backend)
        h = npvae.fit(model, x[:200], epochs=3, batch_size=32, mc_samples=mc_samples, objective=objective,
                      kl=kl, estimator=estimator, validation_data=x[200:], verbose=0, seed=4)
        histories.append((h, model))
    (h_ref, m_ref), (h_fast, m_fast) = histories
    for col in ("loss", "recon", "kl", "val_loss", "val_recon", "val_kl"):
        np.testing.assert_allclose(h_fast[col], h_ref[col], rtol=1e-10, err_msg=col)
    for k in m_ref.params:
        np.testing.assert_allclose(m_fast.params[k], m_ref.params[k], rtol=1e-9, atol=1e-12, err_msg=k)


def test_fit_numba_float32_tracks_numpy_float64():
    x = synthetic(seed=1)
    kwargs = dict(epochs=4, batch_size=25, mc_samples=2, verbose=0, seed=2)
    ref = VAE(input_dim=x.shape[1], hidden=(16,), latent_dim=2, seed=1, backend="numpy")
    fast = VAE(input_dim=x.shape[1], hidden=(16,), latent_dim=2, seed=1, dtype=np.float32, backend="numba")
    h_ref = npvae.fit(ref, x, **kwargs)
    h_fast = npvae.fit(fast, x, **kwargs)
    np.testing.assert_allclose(h_fast["loss"], h_ref["loss"], rtol=1e-4)
    for k in ref.params:
        np.testing.assert_allclose(fast.params[k], ref.params[k], rtol=0, atol=1e-3, err_msg=k)


# --------------------------------------------------------------------------
# The optimizers' fused updates
# --------------------------------------------------------------------------
OPTIMIZERS = [("rmsprop", dict(lr=3e-3, rho=0.5)), ("adam", dict(lr=3e-3, beta1=0.8, beta2=0.5)),
              ("sgd", dict(lr=3e-2)), ("sgd", dict(lr=3e-2, momentum=0.7)),
              ("sgd", dict(lr=3e-2, momentum=0.7, nesterov=True))]


@pytest.mark.parametrize("dtype,grad_dtype", [(np.float64, np.float64), (np.float32, np.float32),
                                              (np.float32, np.float64)])
@pytest.mark.parametrize("name,hyper", OPTIMIZERS)
def test_fused_update_is_bit_identical_to_numpy_update(name, hyper, dtype, grad_dtype):
    rng = np.random.default_rng(0)
    shapes = {"W": (7, 5), "b": (5,), "T": (5, 7)}
    params = {k: rng.normal(size=s).astype(dtype) for k, s in shapes.items()}
    params["T"] = np.asfortranarray(params["T"])  # not C-contiguous: the NumPy path for this one
    mine = {k: p.copy(order="K") for k, p in params.items()}
    ref_opt, fused_opt = optim.get_optimizer(name, **hyper), optim.get_optimizer(name, **hyper)
    update = VAE(input_dim=3, hidden=(2,), backend="numba").engine.optimizer_update(fused_opt)
    assert VAE(input_dim=3, hidden=(2,), backend="numpy").engine.optimizer_update(fused_opt) is None
    used = []
    tiny_g = 8.0 * np.sqrt(np.finfo(dtype).tiny)
    for step in range(12):
        grads = {k: (rng.normal(size=s) * 10.0 ** -rng.integers(0, 5)).astype(grad_dtype) for k, s in shapes.items()}
        grads["W"][:, :2] = tiny_g if step == 0 else 0.0  # running averages decay into subnormals
        ref_opt.step(params, grads)
        fused_opt.step(mine, grads, update=lambda p, g, slots: used.append(p.flags.c_contiguous) or update(p, g, slots))
        for k in params:
            np.testing.assert_array_equal(mine[k], params[k], err_msg=k)
            for slot in ref_opt._state:
                np.testing.assert_array_equal(fused_opt._state[slot][k], ref_opt._state[slot][k], err_msg=slot)
    if "v" in fused_opt._state:                            # squares: flushed, not carried subnormal
        assert np.all(fused_opt._state["v"]["W"][:, :2] == 0.0)
    assert fused_opt.iterations == ref_opt.iterations == 12
    assert any(used) and not all(used)                     # both routes were taken: fused and NumPy


def test_fit_passes_the_engines_fused_update(monkeypatch):
    model = VAE(input_dim=784, hidden=(8,), latent_dim=2, dtype=np.float32, backend="numba")
    seen = []
    real = optim.Adam.step

    def spy(self, params, grads, update=None):
        seen.append(update)
        return real(self, params, grads, update=update)

    monkeypatch.setattr(optim.Adam, "step", spy)
    npvae.fit(model, np.random.default_rng(0).random((8, 784)), epochs=1, batch_size=4, optimizer="adam",
              verbose=0)
    assert len(seen) == 2 and all(callable(u) for u in seen)


def test_profiler_times_every_phase_of_a_step_and_costs_nothing_by_default(monkeypatch):
    from npvae.fast.step import NO_PROFILE, Profiler
    _, fast = pair(np.float32, input_dim=784, latent_dim=2, hidden=(16,))
    assert fast.engine.profiler is NO_PROFILE
    ticks = iter(range(10**6))
    prof = fast.engine.profiler = Profiler(clock=lambda: float(next(ticks)))
    x, eps = data(fast, 6, 3)
    prof.start()
    fast.loss_and_grads(x, eps)
    phases = prof.seconds
    assert set(phases) == {"encoder, reparam + KL", "decoder hidden layers and output product",
                           "output Bernoulli pass (bias, NLL, sigmoid - x)", "bound, log weights and their backward",
                           "decoder backward", "latent and encoder backward", "groups: waiting for the others",
                           "groups: summing their gradients"}
    assert all(v == 1.0 for v in phases.values())            # each phase marked once, one tick each


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("hidden,latent,B,S", [((16,), 2, 10, 1), ((8, 6), 5, 7, 9), ((8, 6), 5, 40, 60)])
def test_step_bytes_is_what_a_training_step_allocates(dtype, hidden, latent, B, S):
    """The memory check before training (``step_bytes``) counts the workspaces a step really makes."""
    model = VAE(input_dim=30, hidden=hidden, latent_dim=latent, dtype=dtype, backend="numba", threads=2)
    rng = np.random.default_rng(0)
    model.engine.loss_and_grads(rng.random((B, 30)).astype(dtype), model.sample_eps(B, S, rng), "iwae")
    made = [ws for ws in model.engine._workspaces.values() if ws.has_grads]
    jobs_bytes = sum(a.nbytes for ws in made if ws.passes is not fast_engine.jobs.SERIAL
                     for a in vars(ws.passes).values() if isinstance(a, np.ndarray))
    assert len(made) == threads.groups_for(model.engine, B, S)
    assert model.engine.step_bytes(B, S) == sum(ws.nbytes for ws in made) - jobs_bytes


def test_negligible_importance_weights_are_dropped_and_the_rest_kept():
    """A sample whose normalized weight is under eps**2 (often subnormal: slow products) gets no
    gradient; every other entry stays as it was, bit for bit."""
    from npvae.fast import step as fast_step
    for dtype in (np.float32, np.float64):
        eps2 = float(np.finfo(dtype).eps) ** 2
        dbound = -0.05
        w = np.array([[1.0, 0.5 * eps2, 2.0 * eps2, 1e-40 if dtype == np.float32 else 1e-310]], dtype)
        dlog_w = (w * dtype(dbound)).astype(dtype)
        kept = dlog_w.copy()
        fast_step.negligible_weights(dlog_w, dtype(dbound))
        assert dlog_w[0, 1] == 0 and dlog_w[0, 3] == 0
        np.testing.assert_array_equal(dlog_w[0, [0, 2]], kept[0, [0, 2]])


def test_a_training_step_leaves_no_subnormal_in_its_workspace():
    """IWAE at many samples: samples with weights under the dtype's tiny are common; their rows
    must not reach the decoder's backward products (subnormal rows there slow every product)."""
    model = VAE(input_dim=20, hidden=(16,), latent_dim=3, activation="tanh", dtype=np.float32, backend="numba", seed=0)
    for p in model.params.values():
        p *= 8                                        # confident and spread out: weights from 1 down to ~0
    rng = np.random.default_rng(0)
    x = (rng.random((4, 20)) < 0.5).astype(np.float32)
    eps = (3 * rng.standard_normal((4, 200, 3))).astype(np.float32)
    model.engine.threads = 1
    model.engine.loss_and_grads(x, eps, "iwae")
    ws = model.engine.workspace(4, 200, grads=True, slot=0)
    tiny = np.finfo(np.float32).tiny
    assert np.any(ws.w_tilde < tiny)                  # the case this guards against happened
    for a in [ws.hs, ws.row_w, ws.dz, *ws.dec_d]:
        assert not np.any((a != 0) & (np.abs(a) < tiny))
