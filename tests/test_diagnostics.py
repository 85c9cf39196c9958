"""Gradient diagnostics: moments and signal-to-noise ratio over repeated eps draws."""

import numpy as np
import pytest

from npvae.diagnostics import FLOOR_SHARE, GradientSNR, at_noise_floor, gradient_snr

from _helpers import small_model  # noqa: E402


def data(B=4, seed=0):
    return np.random.default_rng(seed).random((B, 6))


def test_moments_are_those_of_the_explicit_gradients():
    model, x = small_model(), data()
    r = gradient_snr(model, x, mc_samples=3, objective="iwae", repeats=7, seed=5)
    rng = np.random.default_rng(5)
    draws = [model.loss_and_grads(x, model.sample_eps(4, 3, rng), objective="iwae")[1] for _ in range(7)]
    for name, p in model.params.items():
        g = np.stack([d[name] for d in draws])
        np.testing.assert_allclose(r.mean[name], g.mean(axis=0), rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(r.var[name], g.var(axis=0, ddof=1), rtol=1e-9, atol=1e-20)
        assert r.mean[name].shape == r.var[name].shape == r.snr[name].shape == p.shape
        np.testing.assert_allclose(r.se(name), np.sqrt(r.var[name] / 7))
    assert isinstance(r, GradientSNR) and r.repeats == 7
    assert r.settings == dict(mc_samples=3, objective="iwae", kl="analytic", estimator="standard", batch=4)


def test_summary_covers_encoder_and_decoder():
    model = small_model()
    r = gradient_snr(model, data(), repeats=10)
    n_enc = sum(p.size for n, p in model.params.items() if n.startswith("enc."))
    n_dec = sum(p.size for n, p in model.params.items() if n.startswith("dec."))
    assert r.summary["encoder"]["n_params"] == n_enc and r.summary["decoder"]["n_params"] == n_dec
    for part in ("encoder", "decoder"):
        s = r.summary[part]
        assert set(s) == {"median_snr", "mean_snr", "norm_snr", "mean_var", "n_params", "n_undefined",
                          "median_snr_corrected", "norm_snr_corrected", "norm_snr_ci", "floor", "share_below_floor"}
        snr = np.concatenate([r.snr[n].ravel() for n in r.snr if n.startswith(part[:3] + ".")])
        assert s["median_snr"] == pytest.approx(np.median(snr[~np.isnan(snr)]))
        assert 0 < s["median_snr"] < np.inf


def test_deterministic_gradient_has_infinite_snr():
    # With dec.0.W = 0 the decoder ignores z: under the analytic-KL ELBO every gradient but
    # dec.0.W's is the same for every eps (zero variance), so its SNR is inf.
    model = small_model()
    model.params["dec.0.W"][:] = 0.0
    r = gradient_snr(model, data(), mc_samples=2, repeats=20)
    for name in model.params:
        if name == "dec.0.W":
            assert (r.var[name] > 0).all()
            assert np.isfinite(r.snr[name]).all()
        else:
            assert (r.var[name] == 0).all(), name
            assert np.isinf(r.snr[name][r.mean[name] != 0]).all(), name
    assert r.summary["encoder"]["median_snr"] == np.inf and r.summary["encoder"]["norm_snr"] == np.inf


def test_coordinate_without_gradient_has_undefined_snr():
    model = small_model()
    x = data()
    x[:, 0] = 0.0           # no input in pixel 0: enc.0.W[0] never gets a gradient
    r = gradient_snr(model, x, repeats=5)
    assert np.isnan(r.snr["enc.0.W"][0]).all()
    assert r.summary["encoder"]["n_undefined"] >= model.params["enc.0.W"].shape[1]
    assert np.isfinite(r.summary["encoder"]["median_snr"])


def test_more_repeats_keep_the_mean_within_its_standard_error():
    model, x = small_model(), data()
    few = gradient_snr(model, x, mc_samples=2, objective="iwae", repeats=50, seed=1)
    many = gradient_snr(model, x, mc_samples=2, objective="iwae", repeats=800, seed=2)
    for name in model.params:
        se = np.sqrt(few.var[name] / few.repeats + many.var[name] / many.repeats)
        z = np.abs(few.mean[name] - many.mean[name])[se > 0] / se[se > 0]
        assert z.max() < 4.5, (name, z.max())
        # the variance does not depend on repeats either (within sampling error of ~20%)
        ratio = few.var[name].sum() / many.var[name].sum()
        assert 0.6 < ratio < 1.6, (name, ratio)


def test_elbo_decoder_snr_grows_as_sqrt_of_samples():
    # The ELBO's gradient with S samples is the mean of S independent one-sample gradients,
    # so its variance is Var/S and every coordinate's SNR is sqrt(S) times larger.
    model, x = small_model(), data()
    one = gradient_snr(model, x, mc_samples=1, repeats=400, seed=1)
    sixteen = gradient_snr(model, x, mc_samples=16, repeats=400, seed=2)
    ratio = sixteen.summary["decoder"]["median_snr"] / one.summary["decoder"]["median_snr"]
    assert 3.0 < ratio < 5.3, ratio


def test_seeded_and_reproducible():
    model, x = small_model(), data()
    a = gradient_snr(model, x, repeats=5, seed=9)
    b = gradient_snr(model, x, repeats=5, seed=np.random.default_rng(9))
    for name in model.params:
        np.testing.assert_array_equal(a.var[name], b.var[name])


@pytest.mark.parametrize("kwargs,match", [
    (dict(mc_samples=0), r"mc_samples: expected an integer >= 1, got 0"),
    (dict(repeats=1), r"repeats: expected an integer >= 2, got 1"),
    (dict(objective="elbo", estimator="dreg"), r"estimator: 'dreg' .* applies to objective='iwae'"),
    (dict(objective="elbo", kl="analytic", estimator="stl"), r"estimator: 'stl' .* use kl='mc'"),
    (dict(objective="vae"), r"objective: expected one of 'elbo', 'iwae'"),
])
def test_bad_arguments_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        gradient_snr(small_model(), data(), **kwargs)


def test_data_of_another_dimension_is_a_clear_error():
    with pytest.raises(ValueError, match=r"x: the model takes 6-dimensional inputs .* the data has 784 columns"):
        gradient_snr(small_model(), np.zeros((2, 784)))


# --------------------------------------------------------------------------
# The instrument on gradients whose SNR is known: N(snr, 1) draws per coordinate
# --------------------------------------------------------------------------
def known_gradients(model, monkeypatch, snr, seed=0):
    """The engine's gradients replaced by independent N(snr[prefix], 1) draws, so that every
    coordinate's true SNR is ``snr`` of its network ("enc." or "dec.")."""
    rng = np.random.default_rng(seed)

    def loss_and_grads(x, eps, *args, **kwargs):
        return None, {n: snr[n[:4]] + rng.standard_normal(p.shape) for n, p in model.params.items()}

    monkeypatch.setattr(model.engine, "loss_and_grads", loss_and_grads)


def wide_model():
    return small_model(input_dim=40, hidden=(30,), latent_dim=4)


def test_zero_snr_sits_at_the_noise_floor_and_the_correction_removes_it(monkeypatch):
    model = wide_model()
    known_gradients(model, monkeypatch, {"enc.": 0.0, "dec.": 0.0})
    r = gradient_snr(model, np.full((2, 40), 0.5), repeats=16)
    for part in ("encoder", "decoder"):
        s = r.summary[part]
        assert s["floor"] == r.floor == 0.25
        assert 0.5 * r.floor < s["median_snr"] < 1.5 * r.floor       # |mean| / std of pure noise
        assert s["median_snr_corrected"] == 0.0                     # E[mean^2] = var / R: removed
        assert s["share_below_floor"] > 0.95                        # not measured, and said so
        assert s["norm_snr"] == pytest.approx(r.floor, rel=0.15)
        assert s["norm_snr_corrected"] < 0.3 * r.floor


@pytest.mark.parametrize("true_snr,repeats", [(2.0, 400), (0.1, 60)])
def test_corrected_snr_and_its_interval_find_a_known_snr(monkeypatch, true_snr, repeats):
    model = wide_model()
    known_gradients(model, monkeypatch, {"enc.": true_snr, "dec.": true_snr}, seed=3)
    r = gradient_snr(model, np.full((2, 40), 0.5), repeats=repeats)
    for part in ("encoder", "decoder"):
        s = r.summary[part]
        raw_norm = np.sqrt(true_snr ** 2 + 1.0 / repeats)          # what the floor adds, on average
        assert s["norm_snr"] == pytest.approx(raw_norm, rel=0.08)
        assert s["norm_snr_corrected"] == pytest.approx(true_snr, rel=0.12)
        lo, hi = s["norm_snr_ci"]
        assert lo < true_snr < hi and hi - lo < true_snr            # covers it, and says something
    if true_snr > 1:
        assert r.summary["decoder"]["median_snr_corrected"] == pytest.approx(true_snr, rel=0.05)
        assert r.summary["decoder"]["share_below_floor"] == 0.0


# --------------------------------------------------------------------------
# A case with the answer in closed form: q is the exact posterior
# --------------------------------------------------------------------------
def exact_posterior_model(backend="numpy"):
    """A decoder that ignores z (dec.0.W = 0) and an encoder that outputs q = N(0, I): then the
    posterior is the prior, q equals it, and every log weight is log p(x) whatever z is."""
    model = small_model(backend=backend)
    for name in ("dec.0.W", "enc.mu.W", "enc.mu.b", "enc.logvar.W", "enc.logvar.b"):
        model.params[name][...] = 0.0
    return model


@pytest.mark.parametrize("K", [1, 4, 16])
def test_standard_iwae_encoder_variance_at_the_exact_posterior_is_one_over_BK(K):
    # The standard estimator keeps the score term: d loss / d mu_b = (1 / (B K)) sum_k eps_bk,
    # so Var[enc.mu.b] = 1 / (B K) and Var[enc.logvar.b] = Var[eps^2 / 2] / (B K) = 1 / (2 B K),
    # each with mean 0 (true SNR 0: the corrected SNR says so).
    model, x = exact_posterior_model(), data(B=3)
    r = gradient_snr(model, x, mc_samples=K, objective="iwae", repeats=3000, seed=K)
    B = x.shape[0]
    np.testing.assert_allclose(r.var["enc.mu.b"], 1.0 / (B * K), rtol=0.1)
    np.testing.assert_allclose(r.var["enc.logvar.b"], 1.0 / (2 * B * K), rtol=0.1)
    assert np.all(np.abs(r.mean["enc.mu.b"]) < 4 * np.sqrt(1.0 / (B * K) / 3000))
    assert np.all(r.snr_corrected["enc.mu.b"] < 3 * r.floor)


@pytest.mark.parametrize("backend", ["numpy", pytest.param("numba", marks=pytest.mark.numba)])
@pytest.mark.parametrize("estimator", ["stl", "dreg"])
def test_stl_and_dreg_have_zero_encoder_variance_at_the_exact_posterior(backend, estimator):
    # They drop the score term, and the path term d(log p(z) - log q(z)) / dz = -z + eps / sigma
    # is exactly 0 here: the encoder's gradient is 0 with no variance (SNR undefined), for any K.
    model, x = exact_posterior_model(backend), data(B=3)
    r = gradient_snr(model, x, mc_samples=5, objective="iwae", estimator=estimator, repeats=20)
    for name in model.params:
        if name.startswith("enc."):
            assert np.all(r.var[name] == 0) and np.all(r.mean[name] == 0), name
    assert r.summary["encoder"]["n_undefined"] == r.summary["encoder"]["n_params"]


def test_repr_summarizes_instead_of_printing_every_coordinate():
    # An MNIST-sized model: 400,000 coordinates in each of mean, var, snr and snr_corrected.
    from npvae.model import VAE
    model = VAE(input_dim=784, hidden=(256,), latent_dim=2, seed=0, backend="numpy")
    r = gradient_snr(model, np.random.default_rng(0).random((5, 784)), mc_samples=2, objective="iwae", repeats=3)
    text = repr(r)
    assert len(text) < 600 and len(text.splitlines()) == 3, text
    assert text.startswith("GradientSNR(repeats=3, floor=0.577, mc_samples=2, objective='iwae'")
    n_enc = r.summary["encoder"]["n_params"]
    assert f"encoder: {n_enc:,} coordinates, median SNR {r.summary['encoder']['median_snr']:.3g}" in text
    assert "decoder: " in text and str(r) == text


def test_the_noise_floor_rule_reads_the_snrs_and_the_share_of_coordinates_under_it():
    floor = 1 / np.sqrt(100)                                  # R = 100: 3 x floor = 0.3
    assert at_noise_floor(floor, 0.0, 0.29)                   # a summary under 3 / sqrt(R)
    assert at_noise_floor(floor, 0.0, 5.0, 0.29)              # any of those read
    assert not at_noise_floor(floor, FLOOR_SHARE, 0.31, 5.0)  # a quarter under it is still read
    assert at_noise_floor(floor, FLOOR_SHARE + 0.01, 5.0)     # more than a quarter: a bound
    assert not at_noise_floor(floor, float("nan"), 0.31)      # no share stored: the SNRs decide
    m = small_model(seed=0)
    x = np.random.default_rng(0).random((4, m.input_dim))
    res = gradient_snr(m, x, mc_samples=2, objective="iwae", repeats=20, seed=0)
    for part in ("encoder", "decoder"):
        s = res.summary[part]
        assert at_noise_floor(s["floor"], s["share_below_floor"], s["median_snr"]) == bool(
            s["median_snr"] < 3 * s["floor"] or s["share_below_floor"] > FLOOR_SHARE)
