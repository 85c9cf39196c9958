"""The bounds on the sample axis and their backward passes."""

import numpy as np
import pytest

from npvae import gradcheck, objectives


@pytest.fixture
def rng():
    return np.random.default_rng(99)


@pytest.mark.parametrize("S", [1, 3])
def test_elbo_backward_matches_finite_differences(rng, S):
    log_px, kl = rng.normal(size=(4, S)), rng.normal(size=4)
    errors = gradcheck.check_op(objectives.elbo_forward, objectives.elbo_backward, [log_px, kl], rng=rng)
    assert max(errors) < 1e-6


@pytest.mark.parametrize("S", [1, 3])
def test_iwae_backward_matches_finite_differences(rng, S):
    log_w = rng.normal(size=(4, S)) * 2  # moderate spread: see test_ops' logsumexp check
    errors = gradcheck.check_op(objectives.iwae_forward, objectives.iwae_backward, [log_w], rng=rng)
    assert max(errors) < 1e-6


def test_iwae_backward_gives_normalized_importance_weights(rng):
    log_w = rng.normal(size=(3, 6))
    _, cache = objectives.iwae_forward(log_w)
    dlog_w = objectives.iwae_backward(np.ones(3), cache)
    w = np.exp(log_w)
    np.testing.assert_allclose(dlog_w, w / w.sum(1, keepdims=True), rtol=1e-13)


def test_iwae_bound_is_log_mean_weight(rng):
    log_w = rng.normal(size=(2, 5))
    bound, _ = objectives.iwae_forward(log_w)
    np.testing.assert_allclose(bound, np.log(np.exp(log_w).mean(1)), rtol=1e-13)


def test_iwae_bound_at_least_mean_log_weight(rng):
    log_w = rng.normal(size=(100, 7)) * 3
    iwae, _ = objectives.iwae_forward(log_w)
    elbo, _ = objectives.elbo_forward(log_w, np.zeros(100))
    assert np.all(iwae >= elbo - 1e-12)


def test_iwae_with_one_sample_is_the_log_weight(rng):
    log_w = rng.normal(size=(4, 1))
    bound, _ = objectives.iwae_forward(log_w)
    np.testing.assert_array_equal(bound, log_w[:, 0])
