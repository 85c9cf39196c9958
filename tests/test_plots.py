"""Tests for npvae.plots with a tiny linear fake model (4x4 "digits", D = 16)."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from npvae import plots
from npvae.stats import norm_ppf

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SIDE = 4
D = SIDE * SIDE


class FakeVAE:
    """Linear encoder, sigmoid-of-linear decoder; records the shapes decode was called with."""

    def __init__(self, latent_dim=2, input_dim=D, seed=0):
        rng = np.random.default_rng(seed)
        self.input_dim, self.latent_dim = input_dim, latent_dim
        self.w_enc = rng.normal(size=(input_dim, latent_dim)) / np.sqrt(input_dim)
        self.w_dec = rng.normal(size=(latent_dim, input_dim))
        self.decode_shapes = []

    def encode(self, x):
        mu = x @ self.w_enc  # (B, L)
        return mu, np.full_like(mu, -1.0)

    def decode(self, z):
        z = np.asarray(z)
        self.decode_shapes.append(z.shape)
        return 1.0 / (1.0 + np.exp(-(z @ self.w_dec)))  # (..., D)


def _data(n=60, seed=1):
    rng = np.random.default_rng(seed)
    return rng.uniform(size=(n, D)), np.arange(n) % 10


def _history(n=4, parts=True):
    records = []
    for e in range(1, n + 1):
        rec = {"epoch": e, "loss": 100.0 / e, "val_loss": 105.0 / e}
        if parts:
            rec.update(recon=90.0 / e, kl=10.0, val_recon=94.0 / e, val_kl=11.0)
        records.append(rec)
    return records


def _assert_png(path):
    data = path.read_bytes()
    assert len(data) > len(PNG_SIGNATURE)
    assert data[:8] == PNG_SIGNATURE


def _images(fig):
    return [im for ax in fig.axes for im in ax.images]


# --------------------------------------------------------------------------- without matplotlib


def _run_without_matplotlib(code):
    """Run ``code`` in a fresh interpreter where ``import matplotlib`` fails."""
    prelude = "import sys\nsys.modules['matplotlib'] = None  # makes `import matplotlib` fail\n"
    result = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_import_does_not_import_matplotlib():
    out = subprocess.run(
        [sys.executable, "-c", "import sys, npvae.plots; print('matplotlib' in sys.modules)"],
        capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_plotting_without_matplotlib_raises_import_error_with_install_hint():
    out = _run_without_matplotlib("""
        import npvae.plots as plots
        print(plots.latent_grid(3).shape)  # NumPy only: still works
        try:
            plots.plot_history([{"epoch": 1, "loss": 1.0}])
        except ImportError as exc:
            print("ImportError:", exc)
    """)
    assert "(3, 3, 2)" in out
    assert "ImportError:" in out and "pip install" in out and "npvae[plot]" in out


# --------------------------------------------------------------------------- latent_grid


def test_latent_grid_shape_and_values_follow_keras_layout():
    grid = plots.latent_grid()
    q = norm_ppf(np.linspace(0.05, 0.95, 15))
    assert grid.shape == (15, 15, 2)
    # Keras: for i, yi in enumerate(grid_x): for j, xi in enumerate(grid_y): z = [xi, yi]
    for i in range(15):
        for j in range(15):
            np.testing.assert_array_equal(grid[i, j], [q[j], q[i]])
    assert grid[0, 0, 0] == pytest.approx(-1.6448536269514727, abs=1e-12)


def test_latent_grid_custom_range_and_single_point():
    grid = plots.latent_grid(n=4, lo=0.1, hi=0.9)
    np.testing.assert_array_equal(grid[0, :, 0], norm_ppf(np.linspace(0.1, 0.9, 4)))
    np.testing.assert_array_equal(plots.latent_grid(n=1, lo=0.5, hi=0.5), [[[0.0, 0.0]]])


@pytest.mark.parametrize("kwargs, error", [
    ({"n": 0}, ValueError), ({"n": 2.5}, ValueError), ({"n": True}, ValueError),
    ({"lo": 0.0}, ValueError), ({"hi": 1.0}, ValueError), ({"lo": 0.6, "hi": 0.4}, ValueError),
])
def test_latent_grid_rejects_bad_arguments(kwargs, error):
    with pytest.raises(error):
        plots.latent_grid(**kwargs)


# --------------------------------------------------------------------------- plotting


@pytest.fixture
def mpl():
    return pytest.importorskip("matplotlib")


def test_plot_latent_writes_png_with_scatter_of_encoder_means(mpl, tmp_path):
    model = FakeVAE(latent_dim=2)
    x, y = _data()
    path = tmp_path / "nested" / "dir" / "latent.png"
    fig = plots.plot_latent(model, x, y, path=path, batch_size=7)
    _assert_png(path)
    assert len(fig.axes) == 2  # scatter + colourbar
    offsets = fig.axes[0].collections[0].get_offsets()
    np.testing.assert_allclose(offsets, model.encode(x)[0])
    np.testing.assert_array_equal(fig.axes[0].collections[0].get_array(), y)


def test_plot_latent_uses_first_two_dimensions_and_says_so(mpl):
    model = FakeVAE(latent_dim=3)
    x, y = _data()
    fig = plots.plot_latent(model, x, y)
    np.testing.assert_allclose(fig.axes[0].collections[0].get_offsets(), model.encode(x)[0][:, :2])
    assert "first 2 of 3" in fig.axes[0].get_title()


def test_plot_latent_one_dimensional_plots_mean_against_class(mpl):
    model = FakeVAE(latent_dim=1)
    x, y = _data()
    fig = plots.plot_latent(model, x, y)
    offsets = fig.axes[0].collections[0].get_offsets()
    np.testing.assert_allclose(offsets[:, 0], model.encode(x)[0][:, 0])
    assert np.all(np.abs(offsets[:, 1] - y) < 0.5)


def test_plot_latent_rejects_bad_input(mpl):
    model = FakeVAE()
    x, y = _data()
    with pytest.raises(ValueError, match=r"x: expected shape \(B, 16\)"):
        plots.plot_latent(model, x[:, :5], y)
    with pytest.raises(ValueError, match="y: expected shape"):
        plots.plot_latent(model, x, y[:-1])
    with pytest.raises(ValueError, match="y: expected non-negative integer"):
        plots.plot_latent(model, x, y - 5)
    with pytest.raises(ValueError, match="batch_size"):
        plots.plot_latent(model, x, y, batch_size=0)
    with pytest.raises(TypeError, match="model: expected an object with"):
        plots.plot_latent(object(), x, y)


def test_plot_manifold_decodes_grid_in_one_call_and_tiles_it(mpl, tmp_path):
    model = FakeVAE(latent_dim=2)
    path = tmp_path / "manifold.png"
    fig = plots.plot_manifold(model, path=path, n=5, digit_size=SIDE)
    _assert_png(path)
    assert model.decode_shapes == [(5, 5, 2)]
    images = _images(fig)
    assert len(fig.axes) == 1 and len(images) == 1
    sheet = np.asarray(images[0].get_array())
    assert sheet.shape == (5 * SIDE, 5 * SIDE)
    grid = plots.latent_grid(5)
    for i, j in [(0, 0), (0, 4), (3, 1), (4, 4)]:
        digit = model.decode(grid[i, j]).reshape(SIDE, SIDE)
        np.testing.assert_allclose(sheet[i * SIDE:(i + 1) * SIDE, j * SIDE:(j + 1) * SIDE], digit)


def test_plot_manifold_skipped_with_message_when_latent_dim_is_not_two(mpl, tmp_path):
    path = tmp_path / "manifold.png"
    with pytest.warns(UserWarning, match="needs a 2-D latent space.*latent_dim=3"):
        fig = plots.plot_manifold(FakeVAE(latent_dim=3), path=path, digit_size=SIDE)
    assert fig is None
    assert not path.exists()


def test_plot_manifold_rejects_wrong_digit_size(mpl):
    with pytest.raises(ValueError, match="digit_size"):
        plots.plot_manifold(FakeVAE(), digit_size=28)


def test_plot_reconstructions_writes_input_mean_and_sample_sheet(mpl, tmp_path):
    model = FakeVAE()
    x, _ = _data()
    path = tmp_path / "rec.png"
    fig = plots.plot_reconstructions(model, x[0], mc_samples=25, rng=0, path=path)
    _assert_png(path)
    images = _images(fig)
    assert len(fig.axes) == 3 and len(images) == 3
    np.testing.assert_allclose(np.asarray(images[0].get_array()), x[0].reshape(SIDE, SIDE))
    assert np.asarray(images[2].get_array()).shape == (5 * SIDE, 5 * SIDE)
    assert (1, 25, 2) in model.decode_shapes  # all samples decoded in one call, (1, S, L)


def test_plot_reconstructions_samples_follow_reparameterization(mpl):
    model = FakeVAE()
    x, _ = _data()
    fig = plots.plot_reconstructions(model, x[:1], mc_samples=4, rng=np.random.default_rng(3))
    mu, log_var = model.encode(x[:1])
    eps = np.random.default_rng(3).standard_normal((1, 4, 2))
    expected = model.decode(mu[:, None, :] + np.exp(0.5 * log_var)[:, None, :] * eps)[0]
    sheet = np.asarray(_images(fig)[2].get_array())
    np.testing.assert_allclose(sheet[:SIDE, SIDE:2 * SIDE], expected[1].reshape(SIDE, SIDE))
    np.testing.assert_allclose(sheet[SIDE:, :SIDE], expected[2].reshape(SIDE, SIDE))


def test_plot_reconstructions_is_deterministic_for_a_seed(mpl):
    x, _ = _data()

    def sheet(seed):
        fig = plots.plot_reconstructions(FakeVAE(), x[0], mc_samples=9, rng=seed)
        return np.asarray(_images(fig)[2].get_array())

    np.testing.assert_array_equal(sheet(7), sheet(7))
    assert not np.array_equal(sheet(7), sheet(8))


def test_plot_reconstructions_pads_incomplete_last_row(mpl):
    x, _ = _data()
    fig = plots.plot_reconstructions(FakeVAE(), x[0], mc_samples=7, rng=0)
    sheet = np.ma.filled(np.asarray(_images(fig)[2].get_array(), dtype=float), np.nan)
    assert sheet.shape == (3 * SIDE, 3 * SIDE)  # ceil(sqrt(7)) = 3 columns, 3 rows
    assert np.all(np.isnan(sheet[2 * SIDE:, SIDE:]))  # 2 unused cells
    assert not np.any(np.isnan(sheet[:2 * SIDE]))


@pytest.mark.parametrize("kwargs, error, match", [
    ({"mc_samples": 0}, ValueError, "mc_samples: expected an integer >= 1, got 0"),
    ({"mc_samples": -3}, ValueError, "mc_samples: expected an integer >= 1"),
    ({"mc_samples": 2.5}, ValueError, "mc_samples: expected an integer >= 1, got 2.5"),   # as npvae.VAE says it
])
def test_plot_reconstructions_rejects_bad_sample_count(mpl, kwargs, error, match):
    x, _ = _data()
    with pytest.raises(error, match=match):
        plots.plot_reconstructions(FakeVAE(), x[0], **kwargs)


def test_plot_reconstructions_rejects_more_than_one_input(mpl):
    x, _ = _data()
    with pytest.raises(ValueError, match=r"x_one: expected a single input of shape \(16,\)"):
        plots.plot_reconstructions(FakeVAE(), x[:2])
    with pytest.raises(ValueError, match=r"got shape \(5,\)"):
        plots.plot_reconstructions(FakeVAE(), x[0, :5])


def test_plot_history_with_parts_has_three_panels(mpl, tmp_path):
    path = tmp_path / "history.png"
    fig = plots.plot_history(_history(), path=path)
    _assert_png(path)
    assert len(fig.axes) == 3
    train, val = fig.axes[0].get_lines()
    np.testing.assert_array_equal(train.get_xdata(), [1, 2, 3, 4])
    np.testing.assert_allclose(train.get_ydata(), [100.0, 50.0, 100 / 3, 25.0])
    np.testing.assert_allclose(val.get_ydata(), [105.0, 52.5, 35.0, 26.25])


def test_plot_history_loss_only_and_missing_values(mpl):
    history = [{"epoch": 1, "loss": 3.0}, {"epoch": 2, "loss": 2.0, "val_loss": 2.5}]
    fig = plots.plot_history(history)
    assert len(fig.axes) == 1
    train, val = fig.axes[0].get_lines()
    np.testing.assert_array_equal(val.get_xdata(), [2])


def test_plot_history_accepts_dict_of_lists(mpl):
    fig = plots.plot_history({"loss": [3.0, 2.0, 1.5], "val_loss": [3.1, 2.2, 1.9]})
    np.testing.assert_array_equal(fig.axes[0].get_lines()[0].get_xdata(), [1, 2, 3])


@pytest.mark.parametrize("history, error", [
    ([], ValueError), ([{"epoch": 1}], ValueError), ([1.0, 2.0], TypeError), (3, TypeError),
])
def test_plot_history_rejects_bad_history(mpl, history, error):
    with pytest.raises(error):
        plots.plot_history(history)


def test_save_all_writes_four_pngs_for_2d_latent(mpl, tmp_path):
    x, y = _data()
    out = tmp_path / "figs"
    paths, messages = plots.save_all(FakeVAE(latent_dim=2), _history(), x, y, out, seed=0)
    assert [p.name for p in paths] == ["latent.png", "manifold.png", "reconstructions.png",
                                       "history.png"]
    assert messages == []
    for p in paths:
        assert p.parent == out
        _assert_png(p)


def test_save_all_skips_manifold_for_3d_latent_with_message(mpl, tmp_path, recwarn):
    x, y = _data()
    paths, messages = plots.save_all(FakeVAE(latent_dim=3), _history(parts=False), x, y, tmp_path)
    assert [p.name for p in paths] == ["latent.png", "reconstructions.png", "history.png"]
    assert len(messages) == 1 and "manifold" in messages[0] and "latent_dim=3" in messages[0]
    assert not (tmp_path / "manifold.png").exists()
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]


def test_save_all_without_history_says_so(mpl, tmp_path):
    x, y = _data()
    paths, messages = plots.save_all(FakeVAE(), None, x, y, tmp_path)
    assert "history.png" not in [p.name for p in paths]
    assert any("history" in m for m in messages)

