"""The VAE: its gradients, its bounds on the sample axis, its initialization and its input checks.

These tests hold the NumPy reference path (the specification); test_fused.py holds the
numba backend equal to it.
"""

from functools import partial

import numpy as np
import pytest

from npvae import gradcheck
from npvae.model import VAE

import _helpers  # noqa: E402

TOL = 1e-6


# nonzero biases, so that their gradients are not checked only at a special point
small_model = partial(_helpers.small_model, input_dim=7, hidden=(6, 5), latent_dim=3, activation="relu",
                      backend="numpy", bias_scale=0.1)


def batch(model, B, S, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((B, model.input_dim)), model.sample_eps(B, S, rng)


# ---------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("objective,kl", [("elbo", "analytic"), ("elbo", "mc"), ("iwae", "analytic")])
@pytest.mark.parametrize("S", [1, 3])
@pytest.mark.parametrize("B", [1, 5])
@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_model_gradients_match_finite_differences(objective, kl, S, B, activation):
    model = small_model(activation=activation)
    x, eps = batch(model, B, S, seed=B * 10 + S)
    errors = gradcheck.check_model(model, x, eps, objective=objective, kl=kl)
    assert set(errors) == set(model.params)
    assert max(errors.values()) < TOL, errors


def test_gradcheck_on_random_coordinate_subset():
    # tanh is smooth, so a larger step (less rounding error) is safe here
    model = small_model(activation="tanh")
    x, eps = batch(model, 3, 2)
    errors = gradcheck.check_model(model, x, eps, objective="iwae", n_coords=5, rng=0, h=1e-3)
    assert max(errors.values()) < TOL, errors


def test_gradients_have_params_keys_shapes_and_dtype():
    for dtype in (np.float64, np.float32):
        model = small_model(dtype=dtype)
        x, eps = batch(model, 4, 2)
        loss, grads = model.loss_and_grads(x.astype(dtype), eps.astype(dtype))
        assert isinstance(loss, float)
        assert grads.keys() == model.params.keys()
        for k in grads:
            assert grads[k].shape == model.params[k].shape
            assert grads[k].dtype == dtype, k


# ---------------------------------------------------------------------------
# The bounds on the sample axis
# ---------------------------------------------------------------------------
def keras_vae_loss(model, x, eps1):
    """The classic single-sample loss, written out independently of npvae's ops.

    mean over the batch of  sum_d BCE(x_d, sigmoid(logits_d))  +  KL(q || N(0, I)).
    """
    p = model.params
    relu = lambda a: np.maximum(a, 0)
    h = relu(x @ p["enc.0.W"] + p["enc.0.b"])
    h = relu(h @ p["enc.1.W"] + p["enc.1.b"])
    mu = h @ p["enc.mu.W"] + p["enc.mu.b"]
    log_var = h @ p["enc.logvar.W"] + p["enc.logvar.b"]
    z = mu + np.exp(log_var / 2) * eps1
    h = relu(z @ p["dec.0.W"] + p["dec.0.b"])
    h = relu(h @ p["dec.1.W"] + p["dec.1.b"])
    probs = 1 / (1 + np.exp(-(h @ p["dec.out.W"] + p["dec.out.b"])))
    xent = -(x * np.log(probs) + (1 - x) * np.log(1 - probs)).sum(axis=1)
    kl = -0.5 * (1 + log_var - mu ** 2 - np.exp(log_var)).sum(axis=1)
    return (xent + kl).mean()


def test_single_sample_elbo_equals_classic_vae_loss():
    model = small_model()
    x, eps = batch(model, 5, 1)
    loss, _ = model.loss_and_grads(x, eps)
    assert loss == pytest.approx(keras_vae_loss(model, x, eps[:, 0]), rel=1e-12)


def test_multi_sample_elbo_is_mean_of_single_sample_losses():
    model = small_model()
    x, eps = batch(model, 5, 4)
    loss, grads = model.loss_and_grads(x, eps)
    singles = [model.loss_and_grads(x, eps[:, s:s + 1]) for s in range(4)]
    assert loss == pytest.approx(np.mean([l for l, _ in singles]), rel=1e-12)
    for k in grads:
        np.testing.assert_allclose(grads[k], np.mean([g[k] for _, g in singles], axis=0), rtol=1e-9, atol=1e-14)


def test_elbo_uses_mean_log_likelihood_not_likelihood_of_mean_output():
    model = small_model()
    x, eps = batch(model, 5, 6)
    bound, _ = model.loss_and_grads(x, eps, return_bound=True)
    probs = model.decode(model.encode(x)[0][:, None, :] + np.exp(model.encode(x)[1] / 2)[:, None, :] * eps)
    mean_nll = -(x[:, None] * np.log(probs) + (1 - x[:, None]) * np.log1p(-probs)).sum(-1).mean()
    mean_probs = probs.mean(axis=1)
    nll_of_mean = -(x * np.log(mean_probs) + (1 - x) * np.log1p(-mean_probs)).sum(-1).mean()
    assert bound.recon == pytest.approx(mean_nll, rel=1e-12)
    # Cross-entropy is convex in the probabilities: the two differ, by Jensen's inequality.
    assert nll_of_mean < bound.recon - 1e-6


def test_iwae_with_one_sample_equals_elbo_estimate():
    model = small_model()
    x, eps = batch(model, 5, 1)
    iwae, g_iwae = model.loss_and_grads(x, eps, objective="iwae")
    elbo, g_elbo = model.loss_and_grads(x, eps, objective="elbo", kl="mc")
    assert iwae == pytest.approx(elbo, rel=1e-13)
    for k in g_iwae:
        np.testing.assert_allclose(g_iwae[k], g_elbo[k], rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("S", [2, 5, 20])
def test_iwae_bound_at_least_elbo_estimate(S):
    model = small_model()
    x, eps = batch(model, 8, S, seed=S)
    iwae, _ = model.loss_and_grads(x, eps, objective="iwae", return_bound=True)
    elbo, _ = model.loss_and_grads(x, eps, objective="elbo", kl="mc", return_bound=True)
    assert np.all(iwae.per_example >= elbo.per_example)
    assert iwae.loss < elbo.loss


def test_analytic_and_monte_carlo_kl_elbo_agree_in_expectation():
    model = small_model()
    x, eps = batch(model, 3, 20000, seed=5)
    analytic, _ = model.loss_and_grads(x, eps, kl="analytic", return_bound=True)
    mc, _ = model.loss_and_grads(x, eps, kl="mc", return_bound=True)
    assert mc.loss == pytest.approx(analytic.loss, rel=2e-3)


def test_bound_parts_add_up_for_elbo():
    model = small_model()
    x, eps = batch(model, 5, 3)
    b, _ = model.loss_and_grads(x, eps, return_bound=True)
    assert b.loss == pytest.approx(b.recon + b.kl, rel=1e-12)
    assert b.per_example.shape == (5,)
    assert b.loss == pytest.approx(-b.per_example.mean(), rel=1e-12)


# ---------------------------------------------------------------------------
# Parameters and initialization
# ---------------------------------------------------------------------------
def test_params_keys_and_shapes_of_seed_architecture():
    model = VAE()
    shapes = {k: v.shape for k, v in model.params.items()}
    assert shapes == {
        "enc.0.W": (784, 256), "enc.0.b": (256,),
        "enc.mu.W": (256, 2), "enc.mu.b": (2,), "enc.logvar.W": (256, 2), "enc.logvar.b": (2,),
        "dec.0.W": (2, 256), "dec.0.b": (256,), "dec.out.W": (256, 784), "dec.out.b": (784,),
    }


def test_more_hidden_layers_add_keys_in_mirror_order():
    model = VAE(input_dim=10, hidden=(8, 4), latent_dim=2)
    assert model.params["enc.1.W"].shape == (8, 4)
    assert model.params["dec.0.W"].shape == (2, 4)
    assert model.params["dec.1.W"].shape == (4, 8)
    assert model.params["dec.out.W"].shape == (8, 10)


def test_glorot_uniform_init_is_seeded_and_bounded():
    a, b, c = VAE(seed=0), VAE(seed=0), VAE(seed=1)
    for k, p in a.params.items():
        np.testing.assert_array_equal(p, b.params[k])
        if k.endswith(".b"):
            assert not p.any()
        else:
            limit = np.sqrt(6 / sum(p.shape))
            assert np.abs(p).max() <= limit
            assert np.abs(p).max() > 0.9 * limit  # uses the whole range
            assert abs(p.std() - limit / np.sqrt(3)) < 0.1 * limit
            assert not np.array_equal(p, c.params[k])


def test_float32_model_is_float64_model_rounded():
    m64, m32 = VAE(seed=4), VAE(seed=4, dtype=np.float32)
    for k in m64.params:
        assert m32.params[k].dtype == np.float32
        np.testing.assert_array_equal(m32.params[k], m64.params[k].astype(np.float32))


def test_float32_loss_close_to_float64():
    m64 = small_model()
    m32 = small_model(dtype=np.float32)
    x, eps = batch(m64, 5, 3)
    l64, g64 = m64.loss_and_grads(x, eps)
    l32, g32 = m32.loss_and_grads(x.astype(np.float32), eps.astype(np.float32))
    assert l32 == pytest.approx(l64, rel=1e-5)
    for k in g64:
        np.testing.assert_allclose(g32[k], g64[k], rtol=1e-3, atol=1e-5)


def test_assigned_params_are_used():
    model = small_model()
    x, eps = batch(model, 2, 1)
    before, _ = model.loss_and_grads(x, eps)
    model.params["dec.out.b"] = model.params["dec.out.b"] + 1.0
    after, _ = model.loss_and_grads(x, eps)
    assert after != before


def test_encode_and_decode_shapes():
    model = small_model()
    x, _ = batch(model, 4, 1)
    mu, log_var = model.encode(x)
    assert mu.shape == log_var.shape == (4, 3)
    assert model.decode(np.zeros((4, 3))).shape == (4, 7)
    probs = model.decode(np.zeros((2, 5, 6, 3)))
    assert probs.shape == (2, 5, 6, 7)
    assert np.all((probs > 0) & (probs < 1))
    assert model.decode(np.zeros(3)).shape == (7,)


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------
@pytest.fixture
def good():
    model = small_model()
    x, eps = batch(model, 4, 2)
    return model, x, eps


@pytest.mark.parametrize("make_bad,match", [
    (lambda x, e: (x, e[:, :, :2]), r"eps: expected shape \(4, S, 3\), got \(4, 2, 2\)"),
    (lambda x, e: (x, e[:3]), r"eps: expected shape \(4, S, 3\), got \(3, 2, 3\)"),
    (lambda x, e: (x, e[:, 0]), r"eps: expected shape \(4, S, 3\), got \(4, 3\)"),
    (lambda x, e: (x, e[:, :0]), r"eps: expected a non-empty array"),
    (lambda x, e: (x[:, :5], e), r"x: the model takes 7-dimensional inputs .* has 5 columns"),
    (lambda x, e: (x[0], e), r"x: expected shape \(B, 7\), got \(7,\)"),
    (lambda x, e: (np.where(np.eye(4, 7) > 0, np.nan, x), e), r"x: expected finite values"),
    (lambda x, e: (x, np.where(e > 1, np.inf, e)), r"eps: expected finite values"),
    (lambda x, e: (x * 2, e), r"x: expected values in \[0.0, 1.0\]"),
    (lambda x, e: (x - 0.5, e), r"x: expected values in \[0.0, 1.0\]"),
    (lambda x, e: ((x * 255).astype(np.uint8), e), r"x: expected a float array, got dtype uint8"),
    (lambda x, e: (x, e.astype(int)), r"eps: expected a float array"),
])
def test_bad_inputs_raise_value_error_naming_argument(good, make_bad, match):
    model, x, eps = good
    bx, beps = make_bad(x, eps)
    with pytest.raises(ValueError, match=match):
        model.loss_and_grads(bx, beps)


def test_unknown_objective_and_kl(good):
    model, x, eps = good
    with pytest.raises(ValueError, match=r"objective: expected one of 'elbo', 'iwae', .*got 'vae'"):
        model.loss_and_grads(x, eps, objective="vae")
    with pytest.raises(ValueError, match=r"kl: expected one of"):
        model.loss_and_grads(x, eps, kl="exact")


@pytest.mark.parametrize("kwargs,match", [
    (dict(activation="sigmoidish"), r"activation: expected one of 'relu', 'tanh', got 'sigmoidish'"),
    (dict(dtype=np.int32), r"dtype: expected float32 or float64, got int32"),
    (dict(dtype="float16"), r"dtype: expected float32 or float64, got float16"),
    (dict(latent_dim=0), r"latent_dim: expected an integer >= 1, got 0"),
    (dict(input_dim=2.5), r"input_dim: expected an integer >= 1, got 2.5"),
    (dict(hidden=()), r"hidden: expected at least one"),
    (dict(hidden=(4, -1)), r"hidden: expected an integer >= 1, got -1"),
    (dict(seed=-1), r"seed: expected an integer >= 0, got -1"),
])
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VAE(**kwargs)


def test_bad_assigned_param_is_named(good):
    model, x, eps = good
    model.params["enc.mu.W"] = np.zeros((6, 3))
    with pytest.raises(ValueError, match=r"params\['enc.mu.W'\]: expected shape \(5, 3\) dtype float64, got shape \(6, 3\)"):
        model.loss_and_grads(x, eps)


def test_bad_z_for_decode():
    model = small_model()
    with pytest.raises(ValueError, match=r"z: expected a float array of shape \(\.\.\., 3\)"):
        model.decode(np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"z: expected finite values"):
        model.decode(np.full((1, 3), np.nan))


def test_sample_eps_checks_mc_samples():
    model = small_model()
    with pytest.raises(ValueError, match=r"mc_samples: expected an integer >= 1, got 0"):
        model.sample_eps(3, 0)
    a = model.sample_eps(3, 2, rng=np.random.default_rng(5))
    b = model.sample_eps(3, 2, rng=np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (3, 2, 3)


# ---------------------------------------------------------------------------
# Gradient estimators (the statistical checks live in test_estimators.py)
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("objective,kl,estimator", [("elbo", "mc", "stl"), ("iwae", "analytic", "stl"),
                                                    ("iwae", "analytic", "dreg")])
def test_estimators_change_only_the_encoder_gradient(objective, kl, estimator):
    model = small_model()
    x, eps = batch(model, 5, 4)
    loss_std, g_std = model.loss_and_grads(x, eps, objective=objective, kl=kl)
    loss_est, g_est = model.loss_and_grads(x, eps, objective=objective, kl=kl, estimator=estimator)
    assert loss_est == loss_std
    for k in g_std:
        if k.startswith("dec."):
            np.testing.assert_array_equal(g_est[k], g_std[k])
    assert not np.allclose(g_est["enc.0.W"], g_std["enc.0.W"])


def test_dreg_equals_stl_with_one_sample():
    model = small_model()
    x, eps = batch(model, 5, 1)
    _, g_stl = model.loss_and_grads(x, eps, objective="iwae", estimator="stl")
    _, g_dreg = model.loss_and_grads(x, eps, objective="iwae", estimator="dreg")
    for k in g_stl:
        np.testing.assert_allclose(g_dreg[k], g_stl[k], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("kwargs,match", [
    (dict(objective="elbo", estimator="dreg"), r"estimator: 'dreg' .* applies to objective='iwae'"),
    (dict(objective="elbo", kl="analytic", estimator="stl"), r"estimator: 'stl' .* use kl='mc'"),
    (dict(estimator="reinforce"), r"estimator: expected one of 'standard', 'stl', 'dreg'"),
])
def test_estimator_that_does_not_apply_is_refused(good, kwargs, match):
    model, x, eps = good
    with pytest.raises(ValueError, match=match):
        model.loss_and_grads(x, eps, **kwargs)


def test_input_checks_find_nan_and_inf_anywhere_without_copying_the_data():
    """The finiteness and range checks run on every fit/step input: two reductions, no
    temporary the size of the data (fit's check of MNIST's training set made a 47 MB one)."""
    import tracemalloc

    from npvae import _validate as check
    x = np.random.default_rng(0).random((2000, 784)).astype(np.float32)
    tracemalloc.start()
    assert check.float_array(x, "x", ("N", 784), lo=0.0, hi=1.0) is x
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < x.size // 100, peak
    for bad in (np.nan, np.inf, -np.inf):
        for where in ((0, 0), (1999, 783), (700, 3)):
            y = x.copy()
            y[where] = bad
            with pytest.raises(ValueError, match="x: expected finite values"):
                check.float_array(y, "x", ("N", 784))
    with pytest.raises(ValueError, match=r"x: expected values in \[0.0, 1.0\]"):
        check.float_array(x * 2, "x", ("N", 784), lo=0.0, hi=1.0)
