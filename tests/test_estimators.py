"""Gradient estimators of the encoder: standard reparameterization, STL (Roeder et al. 2017),
DReG (Tucker et al. 2018).

What is checked, and why it is sound:

* **Finite differences.** STL and DReG are not gradients of the bound, but each is the
  exact gradient of a *surrogate*: ``-(1/B) sum_b sum_s c_bs log w_bs(phi)``, where
  ``log q`` inside ``log w`` is evaluated with its parameters frozen (only ``z`` moves with
  ``phi``) and the coefficients ``c`` are frozen at the current point: ``1/S`` for STL on
  the ELBO, ``w~`` for STL on the IWAE bound, ``w~^2`` for DReG. The surrogate is smooth,
  so the encoder gradients are checked against its central differences.
* **Unbiasedness.** With the same ``eps`` for both, the difference ``g_est - g_standard`` of
  one draw is the dropped score term (STL) or DReG's rewrite of it; theory says its mean is
  zero for STL on the ELBO and for DReG on the IWAE bound. Over R paired draws, each
  encoder coordinate's z-score ``mean / (sd / sqrt R)`` is then about N(0, 1): we require
  all |z| < 4.5 (for ~60 coordinates a false alarm has probability ~1e-4; the seeds are
  fixed, so the outcome is deterministic). As an aggregate, Hotelling's T^2 of the mean
  difference in the (at most 2BL-dimensional) span of the differences must stay below
  the 0.9999 chi-square quantile. To show the test has power, the same statistics flag
  STL on the IWAE bound with S > 1, which *is* biased (Tucker et al. 2018, section 3).
* **Variance at the optimum.** The decisive property of STL (Roeder et al. 2017, section
  3): when ``q(z|x)`` equals the exact posterior, ``log p(x, z) - log q(z|x) = log p(x)``
  does not depend on ``z``, so the path gradient is zero for *every* ``eps`` and STL has zero
  variance while the standard estimator keeps the score term's. A Bernoulli decoder has a
  known posterior when the decoder ignores ``z`` (``dec.0.W = 0``): it is the prior
  N(0, I), which the encoder represents exactly with zero output weights and biases. At
  that point STL's (and DReG's) encoder variance is exactly zero; moving ``q`` away by
  ``delta`` makes it grow as ``delta^2`` while the standard estimator's stays put.

The decoder's gradient is the same for all estimators (tests/test_model.py).
"""


import numpy as np
import pytest

from npvae import gradcheck, ops
from npvae.diagnostics import gradient_snr
from npvae.stats import norm_ppf

from _helpers import BACKENDS, small_model  # noqa: E402


def data(B=3, seed=0):
    return np.random.default_rng(seed).random((B, 6))


def encoder_names(model):
    return [n for n in model.params if n.startswith("enc.")]


# ---------------------------------------------------------------------------
# Finite differences of the surrogate
# ---------------------------------------------------------------------------
def log_weights(model, x, eps, mu0=None, log_var0=None):
    """``log w (B, S)``, from the reference ops; log q's parameters frozen at (mu0, log_var0) if given."""
    mu, log_var = model.engine.encode(x)
    z, _ = ops.reparam_forward(mu, log_var, eps)
    logits = model.engine.decode_logits(z)
    nll, _ = ops.bernoulli_nll_forward(logits, x)
    log_pz, _ = ops.log_standard_normal_forward(z)
    log_qz, _ = ops.log_normal_diag_forward(z, mu if mu0 is None else mu0, log_var if log_var0 is None else log_var0)
    return -nll + log_pz - log_qz


def surrogate(model, x, eps, mu0, log_var0, coef):
    """``-(1/B) sum c * log w`` with log q's parameters frozen at (mu0, log_var0)."""
    return -float((coef * log_weights(model, x, eps, mu0, log_var0)).sum()) / x.shape[0]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("objective,kl,estimator", [("elbo", "mc", "stl"), ("iwae", "analytic", "stl"),
                                                    ("iwae", "analytic", "dreg")])
def test_estimator_is_the_gradient_of_its_surrogate(backend, objective, kl, estimator):
    model, x = small_model(backend=backend), data(B=4)
    S = 3
    eps = model.sample_eps(4, S, rng=1)
    mu0, log_var0 = model.engine.encode(x)
    log_w = log_weights(model, x, eps)                                      # (B, S)
    w_tilde = np.exp(log_w - log_w.max(axis=1, keepdims=True))
    w_tilde /= w_tilde.sum(axis=1, keepdims=True)
    coef = {"elbo": np.full((4, S), 1.0 / S), "iwae": w_tilde}[objective]
    if estimator == "dreg":
        coef = w_tilde ** 2
    _, grads = model.loss_and_grads(x, eps, objective=objective, kl=kl, estimator=estimator)
    for name in encoder_names(model):
        err = gradcheck.check_gradient(lambda: surrogate(model, x, eps, mu0, log_var0, coef), model.params[name],
                                       grads[name], h=1e-4)
        assert err < 1e-7, (name, err)


# ---------------------------------------------------------------------------
# Means: paired z-scores of g_est - g_standard
# ---------------------------------------------------------------------------
def paired_differences(objective, kl, estimator, S, R, seed=0):
    """(R, P) encoder gradients ``g_est - g_standard``, one row per draw of eps (the same eps for both)."""
    model, x = small_model(), data()
    rng = np.random.default_rng(seed)
    names = encoder_names(model)
    diffs = np.empty((R, sum(model.params[n].size for n in names)))
    for r in range(R):
        eps = model.sample_eps(x.shape[0], S, rng)
        _, g_std = model.loss_and_grads(x, eps, objective=objective, kl=kl)
        _, g_est = model.loss_and_grads(x, eps, objective=objective, kl=kl, estimator=estimator)
        diffs[r] = np.concatenate([(g_est[n] - g_std[n]).ravel() for n in names])
    return diffs


def z_scores(diffs):
    """Per-coordinate ``mean / (sd / sqrt R)`` over the coordinates that vary."""
    sd = diffs.std(axis=0, ddof=1)
    live = sd > 1e-12 * np.abs(diffs).max()
    return diffs.mean(axis=0)[live] / (sd[live] / np.sqrt(len(diffs)))


def hotelling(diffs):
    """Hotelling's ``T^2 = R m' C^+ m`` in the span of the differences, and that span's dimension.

    The differences are ``J' v`` with ``v`` the (B, 2L) gradients reaching ``mu, log_var``, so
    they span at most ``2 B L`` of the encoder's directions: the coordinates' z-scores are
    strongly correlated and a sum of their squares is not chi-square. ``T^2`` is, about
    ``chi2(dim)`` under a zero mean (R >> dim)."""
    R = len(diffs)
    m = diffs.mean(axis=0)
    lam, u = np.linalg.eigh(np.cov(diffs, rowvar=False))
    keep = lam > 1e-9 * lam.max()
    proj = u[:, keep].T @ m
    return float(R * np.sum(proj ** 2 / lam[keep])), int(keep.sum())


def chi2_quantile(q, dof):
    """Wilson-Hilferty approximation of the chi-square quantile."""
    z = norm_ppf(q)
    return dof * (1 - 2 / (9 * dof) + z * np.sqrt(2 / (9 * dof))) ** 3


def assert_zero_mean(diffs):
    z = z_scores(diffs)
    assert z.size > 30
    assert np.abs(z).max() < 4.5, np.abs(z).max()
    t2, dim = hotelling(diffs)
    assert 0 < dim <= 12
    assert t2 < chi2_quantile(0.9999, dim), (t2, dim)


def test_stl_mean_equals_standard_mean_for_the_elbo():
    assert_zero_mean(paired_differences("elbo", "mc", "stl", S=2, R=1500))


def test_dreg_mean_equals_standard_mean_for_the_iwae_bound():
    assert_zero_mean(paired_differences("iwae", "analytic", "dreg", S=4, R=1500))


def test_the_mean_test_has_power_stl_is_biased_for_iwae():
    # Same statistics, same R: STL on the IWAE bound with S = 4 drops a score term that does
    # not average to zero (it is weighted by w~), and both see it.
    diffs = paired_differences("iwae", "analytic", "stl", S=4, R=1500)
    assert np.abs(z_scores(diffs)).max() > 10
    t2, dim = hotelling(diffs)
    assert t2 > 10 * chi2_quantile(0.9999, dim), (t2, dim)


# ---------------------------------------------------------------------------
# Variance at (and near) the exact posterior
# ---------------------------------------------------------------------------
def posterior_is_prior_model(delta=0.0):
    """Decoder ignores z, so p(z|x) = N(0, I); the encoder outputs N(delta, exp(delta)) for every x."""
    model = small_model(activation="relu")
    model.params["dec.0.W"][:] = 0.0
    for name in ("enc.mu.W", "enc.logvar.W"):
        model.params[name][:] = 0.0
    model.params["enc.mu.b"][:] = delta
    model.params["enc.logvar.b"][:] = delta
    return model


def encoder_variance(model, objective, kl, estimator, S):
    r = gradient_snr(model, data(B=5), mc_samples=S, objective=objective, kl=kl, estimator=estimator,
                     repeats=200, seed=4)
    return sum(float(r.var[n].sum()) for n in encoder_names(model))


@pytest.mark.parametrize("objective,kl,estimator,S", [("elbo", "mc", "stl", 1), ("elbo", "mc", "stl", 4),
                                                      ("iwae", "analytic", "stl", 4),
                                                      ("iwae", "analytic", "dreg", 4)])
def test_path_estimators_have_zero_variance_at_the_exact_posterior(objective, kl, estimator, S):
    model = posterior_is_prior_model()
    standard = encoder_variance(model, objective, kl, "standard", S)
    assert standard > 1e-4
    assert encoder_variance(model, objective, kl, estimator, S) < 1e-25 * max(standard, 1.0)


def test_stl_variance_grows_as_q_leaves_the_posterior_and_stays_below_standard():
    v = {d: encoder_variance(posterior_is_prior_model(d), "elbo", "mc", "stl", 1) for d in (0.05, 0.1)}
    standard = encoder_variance(posterior_is_prior_model(0.1), "elbo", "mc", "standard", 1)
    assert 2.5 < v[0.1] / v[0.05] < 6.0, v        # ~ delta^2
    assert v[0.1] < 0.1 * standard, (v, standard)
