"""Dataset measures: the importance-sampled log-likelihood, its chunking, its standard errors,
its memory bound and its CLI."""

import io as stdio
import json
import tracemalloc
from functools import partial

import numpy as np
import pytest

from npvae import cli, stats
from npvae import evaluate as ev
from npvae.evaluate import evaluate_bound, log_likelihood
from npvae.model import VAE

import _helpers  # noqa: E402



small_model = partial(_helpers.small_model, input_dim=7, hidden=(6,), activation="relu", bias_scale=0.1)


def data(n, d=7, seed=0):
    return np.random.default_rng(seed).random((n, d))


class ReplayNoise:
    """Stands in for ``model.sample_eps``: hands out the columns of one fixed (N, k, L) array in order,
    so that any chunking of the samples sees the same noise as a single pass."""

    def __init__(self, eps):
        self.eps, self.row, self.col = eps, 0, 0

    def __call__(self, b, s, rng=None):
        out = self.eps[self.row:self.row + b, self.col:self.col + s]
        self.col += s
        if self.col == self.eps.shape[1]:
            self.row, self.col = self.row + b, 0
        return out


# ---------------------------------------------------------------------------
# The estimate
# ---------------------------------------------------------------------------
def test_log_likelihood_is_the_iwae_bound_with_k_samples():
    model, x = small_model(), data(6)
    r = log_likelihood(model, x, k=50, batch_size=6, max_rows=300, seed=3)   # one chunk: the same eps draw
    eps = model.sample_eps(6, 50, np.random.default_rng(3))
    bound = model.bound(x, eps, "iwae")
    np.testing.assert_allclose(r.per_example, bound.per_example, rtol=1e-13)
    assert r.mean == pytest.approx(bound.per_example.mean(), rel=1e-13)
    assert (r.k, r.n) == (50, 6)


@pytest.mark.numba
@pytest.mark.parametrize("scale", [1.0, 150.0])
def test_numba_backend_gives_the_numpy_backends_estimate(scale):
    """log_likelihood runs the fused forward pass with the numba backend, the ops without."""
    ref, fast = small_model(decoder_scale=scale), small_model(decoder_scale=scale)
    ref.backend, fast.backend = "numpy", "numba"
    x = data(9)
    a = log_likelihood(ref, x, k=30, batch_size=4, max_rows=50, seed=5, progress=False)
    b = log_likelihood(fast, x, k=30, batch_size=4, max_rows=50, seed=5, progress=False)
    np.testing.assert_allclose(b.per_example, a.per_example, rtol=1e-11)
    np.testing.assert_allclose(b.per_example_se, a.per_example_se, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(b.ess, a.ess, rtol=1e-8)


@pytest.mark.parametrize("scale", [1.0, 150.0])   # 150: log p(x) of -1500..-3700, where exp() underflows
@pytest.mark.parametrize("batch,max_rows", [(1, 1), (2, 7), (5, 13), (5, 1000)])
def test_streaming_logsumexp_over_chunks_equals_one_pass(monkeypatch, scale, batch, max_rows):
    model, x = small_model(decoder_scale=scale), data(5)
    eps = np.random.default_rng(1).standard_normal((5, 40, 2))
    one_pass = model.bound(x, eps, "iwae")
    monkeypatch.setattr(model, "sample_eps", ReplayNoise(eps))
    r = log_likelihood(model, x, k=40, batch_size=batch, max_rows=max_rows)
    assert np.isfinite(r.per_example).all() and np.isfinite(r.per_example_se).all()
    np.testing.assert_allclose(r.per_example, one_pass.per_example, rtol=1e-12)
    if scale > 1:
        assert one_pass.per_example.max() < -1000     # np.exp(-1000) == 0.0: a naive mean of w gives -inf


def test_standard_error_matches_spread_over_seeds():
    # The delta-method SE of one example's estimate against the SD of 200 independent estimates.
    model, x = small_model(), data(1)
    runs = [log_likelihood(model, x, k=100, seed=s, progress=False) for s in range(200)]
    spread = np.std([r.mean for r in runs], ddof=1)
    predicted = np.mean([r.per_example_se[0] for r in runs])
    assert 0.8 < predicted / spread < 1.25, (predicted, spread)
    assert runs[0].mc_se == pytest.approx(runs[0].per_example_se[0])


def test_dataset_standard_errors_are_defined_as_documented():
    model, x = small_model(), data(30)
    r = log_likelihood(model, x, k=20, seed=0)
    assert r.se == pytest.approx(np.std(r.per_example, ddof=1) / np.sqrt(30))
    assert r.mc_se == pytest.approx(np.sqrt(np.sum(r.per_example_se ** 2)) / 30)
    assert ((r.ess >= 1 - 1e-9) & (r.ess <= 20 + 1e-9)).all()
    d = r.to_dict()
    assert d["log_likelihood"] == r.mean and d["k"] == 20 and d["n"] == 30
    json.dumps(d)


@pytest.mark.parametrize("batch,max_rows", [(5, 1000), (2, 7), (3, 100)])
def test_ess_and_pareto_k_are_those_of_all_k_weights_whatever_the_chunks(monkeypatch, batch, max_rows):
    # The streaming evaluation keeps running sums and the M + 1 largest log weights per image;
    # the diagnostics must equal those of the full (N, k) matrix of weights.
    model, x = small_model(decoder_scale=3.0), data(5)
    k = 300                                                  # M = 52
    eps = np.random.default_rng(4).standard_normal((5, k, 2))
    log_w = model.engine.log_weights(x, eps)
    monkeypatch.setattr(model, "sample_eps", ReplayNoise(eps))
    r = log_likelihood(model, x, k=k, batch_size=batch, max_rows=max_rows, progress=False)
    # (chunks of other sizes round the decoder's products differently, hence not bit for bit)
    np.testing.assert_allclose(r.pareto_k, stats.pareto_k(log_w), rtol=1e-9)
    assert np.isfinite(r.pareto_k).all()
    np.testing.assert_allclose(r.ess, stats.ess(log_w), rtol=1e-12)


def test_pareto_k_flags_heavy_tailed_weights_of_a_mismatched_encoder():
    # A decoder 20x sharper than the encoder was made for: a few z carry all the weight (ESS of a few,
    # k-hat far above 0.7 for every image), where the model as made has a few hundred.
    x = data(20)
    good = log_likelihood(small_model(), x, k=2000, seed=0, progress=False)
    bad = log_likelihood(small_model(decoder_scale=20.0), x, k=2000, seed=0, progress=False)
    assert (bad.pareto_k > stats.PARETO_K_UNRELIABLE).all() and good.pareto_k.max() < bad.pareto_k.min()
    assert np.median(good.ess) > 100 and np.median(bad.ess) < 20
    d = bad.to_dict()
    assert d["pareto_k_over_0.7"] == int(np.sum(bad.pareto_k > 0.7)) > 10
    assert d["pareto_k_max"] == bad.pareto_k.max() and d["pareto_k_median"] == np.median(bad.pareto_k)


def test_pareto_k_is_nan_below_21_samples_and_to_dict_stays_json():
    r = log_likelihood(small_model(), data(4), k=20, seed=0, progress=False)
    assert r.pareto_k.shape == (4,) and np.isnan(r.pareto_k).all()
    d = r.to_dict()
    assert d["pareto_k_median"] is None and d["pareto_k_max"] is None and d["pareto_k_over_0.7"] == 0
    json.dumps(d, allow_nan=False)


def test_log_likelihood_prints_summaries_not_arrays():
    n = 10_000
    rng = np.random.default_rng(0)
    r = ev.LogLikelihood(-100.0, 0.3, 0.01, rng.normal(-100, 30, n), rng.random(n), 1 + 99 * rng.random(n),
                         100, n, rng.random(n))
    text = repr(r)
    assert len(text) < 400 and "\n" not in text, text
    assert text.startswith("LogLikelihood(mean=-100.0000, se=0.3000, mc_se=0.0100, n=10000, k=100")
    assert f"{int(np.sum(r.pareto_k > 0.7))} of {n} over 0.7" in text
    assert str(r) == text
    old = ev.LogLikelihood(-1.0, 0.1, 0.1, np.zeros(3), np.zeros(3), np.ones(3), 5, 3)    # made without k-hat
    assert old.pareto_k is None and "pareto_k" not in repr(old) and "pareto_k_max" not in old.to_dict()


def test_one_sample_is_the_log_weight_with_undefined_se():
    model, x = small_model(), data(4)
    r = log_likelihood(model, x, k=1, seed=2)
    eps = model.sample_eps(4, 1, np.random.default_rng(2))
    elbo_mc = model.bound(x, eps, "elbo", "mc")
    np.testing.assert_allclose(r.per_example, elbo_mc.per_example, rtol=1e-13)
    assert np.isnan(r.per_example_se).all() and (r.ess == 1).all()


def test_more_samples_tighten_the_bound_above_the_elbo():
    model, x = small_model(), data(40)
    elbo = -evaluate_bound(model, x, mc_samples=200, seed=0)["loss"]
    ll_small = log_likelihood(model, x, k=2, seed=0).mean
    ll_big = log_likelihood(model, x, k=500, seed=0)
    assert elbo < ll_small < ll_big.mean
    assert ll_big.mean - elbo > 20 * ll_big.mc_se


def test_same_seed_same_numbers_other_seed_other_numbers():
    model, x = small_model(), data(5)
    a = log_likelihood(model, x, k=30, seed=7)
    b = log_likelihood(model, x, k=30, seed=np.random.default_rng(7))
    c = log_likelihood(model, x, k=30, seed=8)
    np.testing.assert_array_equal(a.per_example, b.per_example)
    assert not np.allclose(a.per_example, c.per_example)


def test_float32_model_is_close_to_float64():
    m64 = small_model()
    m32 = VAE(input_dim=7, hidden=(6,), latent_dim=2, seed=3, dtype=np.float32)
    m32.params.update({k: v.astype(np.float32) for k, v in m64.params.items()})
    x = data(8)
    a = log_likelihood(m64, x, k=64, seed=1)
    b = log_likelihood(m32, x.astype(np.float32), k=64, seed=1)
    np.testing.assert_allclose(b.per_example, a.per_example, rtol=1e-4)


def test_working_memory_is_bounded_by_max_rows_not_k():
    # MNIST-sized model; 128 examples at the default max_rows are decoder passes of 4096 rows.
    model = VAE(input_dim=784, hidden=(256,), latent_dim=2, seed=0)
    x = np.random.default_rng(0).random((128, 784))
    peaks = []
    for k in (32, 128):
        tracemalloc.start()
        log_likelihood(model, x, k=k, progress=False)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    stated = 4 * ev.LL_MAX_ROWS * (784 + 256) * 8        # the docstring's bound, 136 MB
    assert max(peaks) < stated, peaks
    assert peaks[1] < 1.15 * peaks[0], peaks        # 4x the samples, the same working set


def test_progress_lines_and_quiet(monkeypatch):
    monkeypatch.setattr(ev._Reporter, "EVERY", 0.0)
    model, x = small_model(), data(6)
    out = stdio.StringIO()
    log_likelihood(model, x, k=10, batch_size=2, seed=0, file=out)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("log_likelihood: 2/6 examples (k=10)") and "ETA" in lines[0]
    assert lines[-1].startswith("log_likelihood: 6/6 examples (k=10) in")
    out = stdio.StringIO()
    log_likelihood(model, x, k=10, batch_size=2, seed=0, file=out, progress=False)
    assert out.getvalue() == ""


@pytest.mark.parametrize("kwargs,match", [
    (dict(k=0), r"k: expected an integer >= 1, got 0"),
    (dict(k=2.5), r"k: expected an integer >= 1, got 2.5"),
    (dict(batch_size=0), r"batch_size: expected an integer >= 1, got 0"),
    (dict(max_rows=-1), r"max_rows: expected an integer >= 1, got -1"),
])
def test_bad_arguments_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        log_likelihood(small_model(), data(3), **kwargs)


def test_data_of_another_dimension_is_a_clear_error():
    model = small_model()
    with pytest.raises(ValueError, match=r"x: the model takes 7-dimensional inputs .* the data has 9 columns"):
        log_likelihood(model, data(3, d=9))
    with pytest.raises(ValueError, match=r"x: the model takes 7-dimensional inputs"):
        evaluate_bound(model, data(3, d=784))
    with pytest.raises(ValueError, match=r"x: expected values in \[0.0, 1.0\]"):
        log_likelihood(model, 2 * data(3))


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------
def test_cli_evaluate_prints_log_likelihood_json(mnist_dir, tmp_path, capsys):
    model = VAE(input_dim=784, hidden=(16,), latent_dim=2, seed=0)
    model.save(tmp_path / "m.npz")
    argv = ["evaluate", str(tmp_path / "m.npz"), "--k", "20", "--limit", "30", "--json", "--data", str(mnist_dir)]
    assert cli.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["k"] == 20 and report["n"] == 30
    assert report["log_likelihood"] > report["elbo"]
    for key in ("log_likelihood_se", "log_likelihood_mc_se", "ess_median", "recon", "kl"):
        assert np.isfinite(report[key]), key
    assert cli.main(argv[:4] + ["--limit", "30", "--data", str(mnist_dir), "--quiet"]) == 0   # --k 20, text
    out = capsys.readouterr().out
    assert "test log-likelihood (k=20, 30 images)" in out and "Monte Carlo SE" in out


def test_cli_evaluate_model_of_another_dimension(mnist_dir, tmp_path, capsys):
    VAE(input_dim=100, hidden=(4,), seed=0).save(tmp_path / "m.npz")
    assert cli.main(["evaluate", str(tmp_path / "m.npz"), "--k", "5", "--data", str(mnist_dir)]) == 2
    err = capsys.readouterr().err
    assert "npvae evaluate: error: the model takes 100-dimensional inputs but the data has 784" in err


def test_cli_evaluate_refuses_k_below_one(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["evaluate", "m.npz", "--k", "0"])
    assert exc.value.code == 2
    assert "argument --k: expected a positive integer, got 0" in capsys.readouterr().err


def test_log_likelihood_method_ais_is_the_ais_module_with_the_same_settings():
    from npvae import ais
    model, x = small_model(), data(3)
    r = log_likelihood(model, x, method="ais", chains=4, steps=20, leapfrog=3, seed=5, progress=False)
    direct = ais.ais_log_likelihood(model, x, chains=4, steps=20, leapfrog=3, seed=5, progress=False)
    np.testing.assert_array_equal(r.per_example, direct.per_example)
    assert r.k == 4 and r.steps == 20
    with pytest.raises(ValueError, match="method: expected one of 'is', 'ais'"):
        log_likelihood(model, x, method="hmc")


def test_old_keyword_names_still_work_and_warn():
    model, x = small_model(), data(4)
    with pytest.warns(DeprecationWarning, match="rng= is deprecated: use seed="):
        old = evaluate_bound(model, x, mc_samples=2, rng=3)
    assert old == evaluate_bound(model, x, mc_samples=2, seed=3)
    with pytest.warns(DeprecationWarning, match="batch= is deprecated: use batch_size="):
        old = log_likelihood(model, x, k=5, batch=2, seed=1, progress=False)
    np.testing.assert_array_equal(old.per_example,
                                  log_likelihood(model, x, k=5, batch_size=2, seed=1, progress=False).per_example)
