"""Tests of npvae.ais (annealed importance sampling, BDMC) and of Engine.log_joint, which it runs on.

AIS is checked against the exact ``log p(x)`` of tiny models, computed by quadrature over a
fine grid of the 1-d or 2-d latent space.
"""

import io
from functools import partial

import numpy as np
import pytest

from _helpers import BACKENDS
from _helpers import small_model as _small_model
from npvae import ais, gradcheck, ops
from npvae.fast import threads as threads_module

small_model = partial(_small_model, input_dim=6, hidden=(5,), latent_dim=2, decoder_scale=3.0, backend="numpy")


def binary_data(n, d=6, seed=0):
    return (np.random.default_rng(seed).random((n, d)) < 0.5).astype(np.float64)


def exact_log_px(model, x, limit=8.0, points=201):
    """``log p(x)`` by a Riemann sum of ``p(x|z) p(z)`` on a grid of ``[-limit, limit]^L`` (L = 1 or 2):
    exact to far below the tests' tolerances for these smooth integrands (the prior's mass
    outside is below 1e-14)."""
    g = np.linspace(-limit, limit, points)
    if model.latent_dim == 1:
        z = g[:, None]
    else:
        z = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    log_cell = model.latent_dim * np.log(g[1] - g[0])
    log_joint = model.engine.log_joint(x, np.ascontiguousarray(np.broadcast_to(z, (x.shape[0],) + z.shape)))
    m = log_joint.max(axis=1)
    return m + np.log(np.exp(log_joint - m[:, None]).sum(axis=1)) + log_cell


# --------------------------------------------------------------------------
# Engine.log_joint
# --------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_log_joint_gradient_matches_finite_differences(backend, activation):
    model = small_model(backend=backend, activation=activation, hidden=(5, 4))
    rng = np.random.default_rng(1)
    x, z = binary_data(3), rng.standard_normal((3, 4, 2))
    dout = rng.standard_normal((3, 4))                   # a random upstream gradient, not ones
    value, dz = model.engine.log_joint(x, z, grad=True)
    assert value.shape == (3, 4) and value.dtype == np.float64 and dz.shape == z.shape

    def f():
        return float((model.engine.log_joint(x, z) * dout).sum())

    assert gradcheck.check_gradient(f, z, dz * dout[:, :, None], h=1e-5) < 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
def test_log_joint_parts_are_the_likelihood_and_the_prior(backend):
    model = small_model(backend=backend)
    rng = np.random.default_rng(2)
    x, z = binary_data(2), rng.standard_normal((2, 3, 2))
    (log_lik, log_prior), (dz_lik, dz_prior) = model.engine.log_joint(x, z, grad=True, parts=True)
    joint, dz = model.engine.log_joint(x, z, grad=True)
    np.testing.assert_allclose(log_lik + log_prior, joint, rtol=1e-14)
    np.testing.assert_allclose(dz_lik + dz_prior, dz, rtol=1e-14)
    np.testing.assert_allclose(dz_prior, -z, rtol=0)
    np.testing.assert_allclose(log_prior, -0.5 * (z * z).sum(-1) - np.log(2 * np.pi), rtol=1e-14)
    probs = 1 / (1 + np.exp(-model.engine.decode_logits(z)))
    np.testing.assert_allclose(log_lik, (x[:, None] * np.log(probs) + (1 - x[:, None]) * np.log1p(-probs)).sum(-1),
                               rtol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_log_joint_minus_log_q_is_the_log_weight(backend):
    model = small_model(backend=backend)
    rng = np.random.default_rng(3)
    x, eps = binary_data(3), rng.standard_normal((3, 5, 2))
    mu, log_var = model.engine.encode(x)
    z = mu[:, None] + np.exp(0.5 * log_var)[:, None] * eps
    log_q, _ = ops.log_normal_diag_forward(z, mu, log_var)
    np.testing.assert_allclose(model.engine.log_joint(x, z) - log_q, model.engine.log_weights(x, eps), rtol=1e-12)


@pytest.mark.numba
@pytest.mark.parametrize("latent_dim, hidden, activation", [(2, (5, 4), "tanh"), (2, (6,), "relu"),
                                                            (10, (7, 5), "tanh"), (10, (6,), "relu")])
@pytest.mark.parametrize("threads", [1, 2])
def test_numba_log_joint_equals_the_references(latent_dim, hidden, activation, threads):
    """The fused log joint (decoder forward, Bernoulli pass, backward to z alone), with a narrow
    latent (one-pass first layer) and a wide one (BLAS), in chunks on one or two threads."""
    from npvae.fast import engine as fast_engine
    model = small_model(backend="numba", latent_dim=latent_dim, hidden=hidden, activation=activation)
    model.threads = threads
    rng = np.random.default_rng(4)
    x, z = binary_data(37), rng.standard_normal((37, 60, latent_dim))
    ref_value, ref_dz = model.engine.reference.log_joint(x, z, grad=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fast_engine, "FORWARD_ROWS", 300)          # several chunks per thread
        mp.setattr(threads_module, "MIN_GROUP_ROWS", 16)      # and both threads used
        value, dz = model.engine.log_joint(x, z, grad=True)
        only_value = model.engine.log_joint(x, z)
        (lik, prior), (dlik, dprior) = model.engine.log_joint(x, z, grad=True, parts=True)
    np.testing.assert_allclose(value, ref_value, rtol=1e-11)
    np.testing.assert_allclose(dz, ref_dz, rtol=1e-9, atol=1e-12 * np.abs(ref_dz).max())
    np.testing.assert_array_equal(only_value, value)
    np.testing.assert_allclose(lik + prior, value, rtol=1e-14)
    np.testing.assert_array_equal(dprior, -z)
    np.testing.assert_allclose(dlik + dprior, dz, rtol=1e-14)


@pytest.mark.numba
def test_numba_log_joint_in_float32_is_the_references_to_float32_rounding():
    model = small_model(backend="numba", latent_dim=10, hidden=(7, 5), activation="tanh", dtype=np.float32)
    rng = np.random.default_rng(5)
    x, z = binary_data(9).astype(np.float32), rng.standard_normal((9, 8, 10)).astype(np.float32)
    value, dz = model.engine.log_joint(x, z, grad=True)
    ref_value, ref_dz = model.engine.reference.log_joint(x, z, grad=True)
    assert dz.dtype == np.float32 and value.dtype == np.float64
    np.testing.assert_allclose(value, ref_value, rtol=2e-6)
    np.testing.assert_allclose(dz, ref_dz, rtol=1e-4, atol=1e-5 * np.abs(ref_dz).max())


# --------------------------------------------------------------------------
# AIS against the exact log p(x)
# --------------------------------------------------------------------------
@pytest.mark.parametrize("latent_dim", [1, 2])
def test_ais_agrees_with_the_exact_log_likelihood_within_its_error(latent_dim):
    model = small_model(latent_dim=latent_dim)
    x = binary_data(6, seed=latent_dim)
    exact = exact_log_px(model, x, points=4001 if latent_dim == 1 else 201)
    result = ais.ais_log_likelihood(model, x, chains=32, steps=1000, leapfrog=3, seed=0, progress=False)
    error = result.per_example - exact
    assert np.all(np.abs(error) < 3 * result.per_example_se + 0.01), (error, result.per_example_se)
    assert np.abs(error).max() < 0.05
    assert abs(result.mean - exact.mean()) < 3 * result.mc_se + 0.005


def test_ais_reports_an_acceptance_rate_near_its_target():
    model = small_model()
    for target in (0.65, 0.9):
        result = ais.ais_log_likelihood(model, binary_data(4), chains=16, steps=300, leapfrog=3,
                                        target_acceptance=target, progress=False)
        assert result.acceptance.shape == (4,) and result.step_size.shape == (4,)
        assert np.all(np.abs(result.acceptance - target) < 0.07), result.acceptance
    assert result.to_dict()["acceptance_mean"] == pytest.approx(result.acceptance.mean())


def test_ais_with_the_same_seed_gives_the_same_numbers():
    model, x = small_model(), binary_data(5)

    def run(seed):
        return ais.ais_log_likelihood(model, x, chains=4, steps=20, leapfrog=2, seed=seed, max_rows=8,
                                      progress=False)

    a, b, c = run(7), run(7), run(8)
    np.testing.assert_array_equal(a.per_example, b.per_example)
    np.testing.assert_array_equal(a.step_size, b.step_size)
    assert not np.array_equal(a.per_example, c.per_example)


def test_ais_never_passes_more_than_max_rows_rows_to_the_engine(monkeypatch):
    model, x = small_model(), binary_data(7)
    rows = []
    log_joint = model.engine.log_joint

    def spy(xb, z, *args, **kwargs):
        rows.append(z.shape[0] * z.shape[1])
        return log_joint(xb, z, *args, **kwargs)

    monkeypatch.setattr(model.engine, "log_joint", spy)
    ais.ais_log_likelihood(model, x, chains=3, steps=5, leapfrog=2, max_rows=7, progress=False)
    assert max(rows) <= 7 and sum(r // 3 for r in rows[:1]) == 2      # 2 images of 3 chains per call


def test_ais_progress_goes_to_the_given_file_and_is_off_when_asked(monkeypatch):
    monkeypatch.setattr(ais._Reporter, "EVERY", 0.0)
    model, x = small_model(), binary_data(3)
    out, quiet = io.StringIO(), io.StringIO()
    ais.ais_log_likelihood(model, x, chains=2, steps=5, leapfrog=1, max_rows=2, file=out)
    ais.ais_log_likelihood(model, x, chains=2, steps=5, leapfrog=1, max_rows=2, file=quiet, progress=False)
    assert "ais: 3/3 examples" in out.getvalue() and quiet.getvalue() == ""


# --------------------------------------------------------------------------
# BDMC
# --------------------------------------------------------------------------
def test_bdmc_gap_closes_as_the_chains_lengthen_and_the_bounds_sandwich_log_px():
    model = small_model(latent_dim=1, input_dim=20, hidden=(6,), decoder_scale=4.0)
    short = ais.bdmc(model, 8, chains=8, steps=10, leapfrog=2, seed=0, progress=False)
    long = ais.bdmc(model, 8, chains=8, steps=300, leapfrog=2, seed=0, progress=False)
    np.testing.assert_array_equal(short.x, long.x)                  # the same simulated data
    assert long.gap.mean() < 0.25 * short.gap.mean() and short.gap.mean() > 0.1
    assert long.gap.mean() < 0.05
    exact = exact_log_px(model, long.x, points=4001)
    se = np.hypot(long.forward.per_example_se, long.upper_se)
    assert np.all(long.lower < exact + 3 * se + 0.01) and np.all(long.upper > exact - 3 * se - 0.01)
    assert long.forward.acceptance.shape == long.reverse_acceptance.shape == (8,)


def test_bdmc_simulates_data_from_the_model():
    model = small_model(latent_dim=2)
    result = ais.bdmc(model, 400, chains=1, steps=1, seed=3, progress=False)
    assert result.x.shape == (400, 6) and result.z.shape == (400, 2)
    assert set(np.unique(result.x)) <= {0.0, 1.0}
    probs = 1 / (1 + np.exp(-model.engine.decode_logits(result.z)))
    # the pixels' mean matches their Bernoulli means within 4 standard errors
    assert np.all(np.abs(result.x.mean(0) - probs.mean(0)) < 4 * np.sqrt(0.25 / 400))


# --------------------------------------------------------------------------
# Schedules and input validation
# --------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ais.SCHEDULES)
def test_schedules_rise_from_zero_to_one(kind):
    betas = ais.schedule(50, kind)
    assert betas.shape == (51,) and betas[0] == 0.0 and betas[-1] == 1.0 and np.all(np.diff(betas) > 0)


def test_a_schedule_given_as_an_array_is_used_as_it_is():
    model, x = small_model(), binary_data(2)
    a = ais.ais_log_likelihood(model, x, chains=2, steps=10, schedule=ais.schedule(10, "linear"), progress=False)
    b = ais.ais_log_likelihood(model, x, chains=2, steps=10, schedule="linear", progress=False)
    np.testing.assert_array_equal(a.per_example, b.per_example)


@pytest.mark.parametrize("kwargs, name", [
    ({"chains": 0}, "chains"), ({"steps": 1.5}, "steps"), ({"leapfrog": -1}, "leapfrog"),
    ({"schedule": "cosine"}, "schedule"), ({"schedule": [0.0, 0.5, 0.9]}, "schedule"),
    ({"schedule": [0.0, 0.7, 0.5, 1.0]}, "schedule"), ({"target_acceptance": 1.0}, "target_acceptance"),
    ({"step_size": 0.0}, "step_size"), ({"max_rows": 2}, "max_rows"), ({"seed": "abc"}, "seed"),
    ({"x": np.full((2, 5), 0.5)}, "x"), ({"x": np.full((2, 6), 2.0)}, "x"), ({"model": "model"}, "model"),
])
def test_bad_inputs_raise_value_error_naming_the_argument(kwargs, name):
    args = {"model": small_model(), "x": binary_data(2), "chains": 4, "steps": 3}
    args.update(kwargs)
    with pytest.raises(ValueError, match=f"^{name}:"):
        ais.ais_log_likelihood(**args, progress=False)


def test_bdmc_refuses_a_bad_n():
    with pytest.raises(ValueError, match="^n:"):
        ais.bdmc(small_model(), 0, progress=False)
