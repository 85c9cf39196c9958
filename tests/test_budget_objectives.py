"""The sample-budget objectives of Rainforth et al. (2018): MIWAE, CIWAE and PIWAE, on both engines."""

import numpy as np
import pytest

from npvae import gradcheck, objectives
from npvae.objectives import CIWAE, IWAE, MIWAE, PIWAE

from _helpers import BACKENDS, small_model


@pytest.fixture
def rng():
    return np.random.default_rng(26)


def model_and_data(backend, S, B=3, seed=5):
    model = small_model(input_dim=7, hidden=(6, 5), latent_dim=2, seed=seed, backend=backend)
    rng = np.random.default_rng(seed)
    x = rng.random((B, model.input_dim))
    return model, x, model.sample_eps(B, S, rng)


# --------------------------------------------------------------------------
# The bounds on log weights
# --------------------------------------------------------------------------
def test_miwae_is_the_mean_of_each_groups_iwae_bound(rng):
    log_w = rng.normal(size=(4, 6)) * 2
    bound, _ = objectives.miwae_forward(log_w, 3)            # 3 groups of 2 consecutive samples
    groups = np.exp(log_w).reshape(4, 3, 2)
    np.testing.assert_allclose(bound, np.log(groups.mean(axis=2)).mean(axis=1), rtol=1e-13)


def test_miwae_sits_between_the_mc_elbo_and_the_iwae_bound_of_the_same_samples(rng):
    log_w = rng.normal(size=(200, 8)) * 3
    elbo, iwae = log_w.mean(axis=1), objectives.iwae_forward(log_w)[0]
    for M in (2, 4):
        miwae = MIWAE(M).forward(log_w)[0]
        assert np.all(elbo <= miwae + 1e-12) and np.all(miwae <= iwae + 1e-12)


@pytest.mark.parametrize("M,K", [(2, 3), (3, 1), (1, 4)])
def test_miwae_backward_matches_finite_differences(rng, M, K):
    log_w = rng.normal(size=(4, M * K)) * 2
    errors = gradcheck.check_op(objectives.miwae_forward, objectives.miwae_backward, [log_w, M], wrt=[0], rng=rng)
    assert max(errors) < 1e-6


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_ciwae_backward_matches_finite_differences(rng, beta):
    log_w = rng.normal(size=(4, 5)) * 2
    errors = gradcheck.check_op(objectives.ciwae_forward, objectives.ciwae_backward, [log_w, beta], wrt=[0],
                                rng=rng)
    assert max(errors) < 1e-6


def test_miwae_path_weights_are_normalized_within_each_group(rng):
    log_w = rng.normal(size=(3, 6))
    rule = MIWAE(2)
    w = rule.path_weights(rule.forward(log_w)[1])
    np.testing.assert_allclose(w.reshape(3, 2, 3).sum(axis=2), 1.0, rtol=1e-14)
    dlog_w = rule.backward(np.ones(3), rule.forward(log_w)[1])
    np.testing.assert_array_equal(dlog_w, w / 2)                 # dbound / M * w~


def test_ciwae_is_beta_elbo_plus_one_minus_beta_iwae_and_its_ends_are_those(rng):
    log_w = rng.normal(size=(5, 4)) * 2
    elbo, iwae = log_w.mean(axis=1), objectives.iwae_forward(log_w)[0]
    np.testing.assert_allclose(CIWAE(0.25).forward(log_w)[0], 0.25 * elbo + 0.75 * iwae, rtol=1e-14)
    np.testing.assert_allclose(CIWAE(1.0).forward(log_w)[0], elbo, rtol=1e-14)
    np.testing.assert_allclose(CIWAE(0.0).forward(log_w)[0], iwae, rtol=1e-14)


# --------------------------------------------------------------------------
# The special cases on the whole model, both engines
# --------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("estimator", ["standard", "stl", "dreg"])
def test_miwae_with_one_group_is_iwae_bit_for_bit(backend, estimator):
    model, x, eps = model_and_data(backend, S=5)
    want, g_want = model.loss_and_grads(x, eps, "iwae", estimator=estimator, return_bound=True)
    got, g_got = model.loss_and_grads(x, eps, MIWAE(outer=1), estimator=estimator, return_bound=True)
    np.testing.assert_array_equal(got.per_example, want.per_example)
    for name in g_want:
        np.testing.assert_array_equal(g_got[name], g_want[name], err_msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("estimator", ["standard", "stl"])
def test_miwae_with_one_sample_per_group_is_the_mc_elbo(backend, estimator):
    model, x, eps = model_and_data(backend, S=4)
    want, g_want = model.loss_and_grads(x, eps, "elbo", kl="mc", estimator=estimator, return_bound=True)
    got, g_got = model.loss_and_grads(x, eps, MIWAE(outer=4, inner=1), estimator=estimator, return_bound=True)
    np.testing.assert_allclose(got.per_example, want.per_example, rtol=1e-12)
    for name in g_want:
        np.testing.assert_allclose(g_got[name], g_want[name], rtol=1e-12, atol=1e-14, err_msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("estimator", ["standard", "stl", "dreg"])
def test_piwae_trains_the_decoder_on_iwae_and_the_encoder_on_miwae(backend, estimator):
    model, x, eps = model_and_data(backend, S=6)
    bound, g = model.loss_and_grads(x, eps, PIWAE(outer=3), estimator=estimator, return_bound=True)
    iwae, g_iwae = model.loss_and_grads(x, eps, "iwae", estimator=estimator, return_bound=True)
    _, g_miwae = model.loss_and_grads(x, eps, MIWAE(outer=3), estimator=estimator)
    # the IWAE(M * K) bound is reported (to rounding: the numba engine runs PIWAE through its reference)
    np.testing.assert_allclose(bound.per_example, iwae.per_example, rtol=1e-12)
    for name in g:
        want = g_iwae[name] if name.startswith("dec.") else g_miwae[name]
        np.testing.assert_allclose(g[name], want, rtol=1e-11, atol=1e-13, err_msg=name)
    assert not np.allclose(g["enc.mu.b"], g_iwae["enc.mu.b"])                # the encoder is not IWAE's


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rule", [MIWAE(outer=2), MIWAE(outer=3, inner=2), CIWAE(beta=0.4), PIWAE(outer=2)],
                         ids=lambda r: r.label)
def test_budget_objectives_pass_finite_differences_in_float64(backend, rule):
    model, x, eps = model_and_data(backend, S=6)
    errors = gradcheck.check_model(model, x, eps, objective=rule, rng=0)
    assert max(errors.values()) < 1e-6, errors


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rule,estimator", [(MIWAE(2, 2), "stl"), (MIWAE(2, 2), "dreg"), (CIWAE(0.3), "stl"),
                                            (PIWAE(2, 2), "stl"), (PIWAE(2, 2), "dreg")],
                         ids=lambda v: getattr(v, "label", v))
def test_budget_estimators_are_the_gradients_of_their_surrogates(backend, rule, estimator):
    model = small_model(input_dim=6, hidden=(5, 4), latent_dim=2, seed=0, backend=backend)
    rows = gradcheck.check_all(seed=0, model=model, objectives=[], estimators=[(rule, "analytic", estimator)],
                               include_ops=False)
    assert len(rows) == len(model.params)
    assert all(r["passed"] for r in rows), [r for r in rows if not r["passed"]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_miwae_dreg_with_unsquared_path_weights_is_caught(monkeypatch, backend):
    from npvae.fast import bounds
    # w~ once (as STL) instead of w~^2: the encoder fails its surrogate, the decoder does not
    monkeypatch.setattr(MIWAE, "path_weights", lambda self, cache: np.ones(cache[0][0].shape[:1] + (4,)))
    monkeypatch.setattr(bounds.MIWAE, "path_weights", staticmethod(lambda ws: np.ones_like(ws.w_tilde)))
    model = small_model(input_dim=6, hidden=(5, 4), latent_dim=2, seed=0, backend=backend)
    rows = gradcheck.check_all(seed=0, model=model, objectives=[], include_ops=False,
                               estimators=[(MIWAE(2, 2), "analytic", "dreg"), (MIWAE(2, 2), "analytic", "stl")])
    bad = {r["check"] for r in rows if not r["passed"]}
    assert bad == {"dreg miwae(outer=2, inner=2)/analytic (surrogate)"}


# --------------------------------------------------------------------------
# Parameters, the sample layout's check and the rules
# --------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_sample_count_the_groups_do_not_divide_is_refused_naming_mc_samples(backend):
    model, x, eps = model_and_data(backend, S=5)
    for rule in (MIWAE(outer=2), PIWAE(outer=2), MIWAE(outer=5, inner=2)):
        with pytest.raises(ValueError, match=r"mc_samples: .* samples per example \(eps.shape\[1\]\), got 5"):
            model.loss_and_grads(x, eps, rule)
        with pytest.raises(ValueError, match="mc_samples"):
            model.bound(x, eps, rule)


def test_make_builds_parameterized_objectives_and_get_returns_instances_as_they_are():
    rule = objectives.make("miwae", outer=8)
    assert rule == MIWAE(outer=8) and rule.outer == 8 and rule.inner is None and rule != MIWAE(outer=4)
    assert objectives.get(rule) is rule
    assert objectives.make("ciwae", beta=0.5, outer=None).beta == 0.5          # None: not given
    assert objectives.make("iwae") is objectives.get("iwae")
    assert repr(rule) == "objectives.make('miwae', outer=8)" and rule.label == "miwae(outer=8)"
    assert objectives.check_objective(rule, "analytic", "dreg") == (rule, "analytic", "dreg")
    assert objectives.get("miwae") == MIWAE(outer=1) and objectives.get("ciwae") == CIWAE(beta=0.5)


@pytest.mark.parametrize("call,message", [
    (lambda: objectives.make("iwae", outer=8), r"outer: objective 'iwae' takes no parameters"),
    (lambda: objectives.make("ciwae", outer=8), r"outer: objective 'ciwae' takes beta"),
    (lambda: objectives.make("vae"), r"objective: expected one of"),
    (lambda: MIWAE(outer=0), r"outer: expected an integer >= 1, got 0"),
    (lambda: MIWAE(outer=2, inner=1.5), r"inner: expected an integer >= 1"),
    (lambda: CIWAE(beta=1.5), r"beta: expected a number in \[0, 1\], got 1.5"),
    (lambda: CIWAE(beta="half"), r"beta: expected a number in \[0, 1\]"),
])
def test_bad_parameters_are_refused_naming_them(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_which_estimators_apply_to_the_budget_objectives():
    assert MIWAE(2).estimators("analytic") == ("standard", "stl", "dreg")
    assert PIWAE(2).estimators("analytic") == ("standard", "stl", "dreg")
    assert CIWAE(0.5).estimators("analytic") == ("standard", "stl")
    with pytest.raises(ValueError, match=r"'dreg' .* applies to objective='iwae', 'miwae', 'piwae'.*got objective='ciwae'"):
        objectives.check_objective(CIWAE(0.5), "analytic", "dreg")
    assert isinstance(PIWAE(2).encoder_objective, MIWAE) and IWAE().encoder_objective is None
