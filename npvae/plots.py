"""Matplotlib figures of a trained VAE: latent space, manifold, reconstructions, learning curves.

This is the only npvae module that uses matplotlib, and it imports it lazily, inside the
functions that draw, so ``import npvae.plots`` works with NumPy alone; drawing without
matplotlib raises an :class:`ImportError` saying how to install it
(``pip install "npvae[plot]"``).

Figures are built with :class:`matplotlib.figure.Figure` and the Agg canvas directly, never
through ``pyplot``: no global state, no GUI backend, and nothing to close. Each plotting
function returns the :class:`~matplotlib.figure.Figure` and, when ``path`` is given, also
writes it there as a PNG (creating parent folders).

The model is duck-typed; anything with these members works:

- ``model.input_dim`` : int, ``D`` (784 for MNIST),
- ``model.latent_dim`` : int, ``L``,
- ``model.encode(x) -> (mu, log_var)`` with ``x (B, D)`` and ``mu, log_var (B, L)``,
- ``model.decode(z) -> probs`` with ``z (..., L)`` and ``probs (..., D)`` in [0, 1].
"""

import math
import numbers
import warnings
from pathlib import Path

import numpy as np

from . import _validate as check

from npvae.stats import norm_ppf

__all__ = [
    "latent_grid",
    "plot_history",
    "plot_latent",
    "plot_manifold",
    "plot_reconstructions",
    "save_all",
]

_DPI = 120
_DIGIT_CMAP = "gray"  # white strokes on black, as MNIST digits are usually shown


# --------------------------------------------------------------------------- helpers


def _new_figure(**kwargs):
    """A Figure attached to an Agg canvas, without touching pyplot (lazy matplotlib import)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(
            "npvae.plots needs matplotlib, which is not installed; install it with "
            '`pip install "npvae[plot]"` (or `pip install matplotlib`).'
        ) from exc
    fig = Figure(layout="constrained", **kwargs)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path):
    """Write ``fig`` to ``path`` as a PNG, creating parent folders; return the Path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=_DPI)
    return path


def _check_int(name, value, minimum):
    return check.positive_int(value, name, minimum=minimum)


def _check_model(model):
    missing = [a for a in ("input_dim", "latent_dim", "encode", "decode") if not hasattr(model, a)]
    if missing:
        raise TypeError(
            "model: expected an object with input_dim, latent_dim, encode(x) and decode(z), "
            f"got {type(model).__name__} without {', '.join(missing)}"
        )


def _check_images(name, x, input_dim):
    """``x`` as a numeric array of shape (B, input_dim), or an error naming ``name``."""
    x = np.asarray(x)
    if x.dtype.kind not in "biuf":
        raise ValueError(f"{name}: expected a numeric array, got dtype {x.dtype}")
    if x.ndim != 2 or x.shape[1] != input_dim:
        raise ValueError(f"{name}: expected shape (B, {input_dim}), got {x.shape}")
    return x


def _digit_side(input_dim):
    side = math.isqrt(input_dim)
    if side * side != input_dim:
        raise ValueError(
            f"model.input_dim: expected a perfect square to be shown as an image, got {input_dim}"
        )
    return side


def _tile(images, n_rows, n_cols, side, fill=0.0):
    """Tile ``images (N, side*side)`` row by row into an ``(n_rows*side, n_cols*side)`` canvas."""
    n = images.shape[0]
    padded = np.full((n_rows * n_cols, side * side), fill, dtype=np.float64)
    padded[:n] = images
    return (padded.reshape(n_rows, n_cols, side, side)
            .transpose(0, 2, 1, 3)
            .reshape(n_rows * side, n_cols * side))


# --------------------------------------------------------------------------- latent space


def plot_latent(model, x, y, path=None, batch_size=1000):
    """Scatter the encoder means of a labelled data set, coloured by class.

    Parameters
    ----------
    model : VAE-like
        See the module docstring; only ``encode`` is called.
    x : array_like, shape (B, D)
        Inputs, e.g. the MNIST test images, ``D = model.input_dim``.
    y : array_like of int, shape (B,)
        Class labels (digits 0-9), non-negative integers.
    path : str or os.PathLike, optional
        Where to write the PNG.
    batch_size : int, default 1000
        Rows encoded per call.

    Returns
    -------
    matplotlib.figure.Figure
        One scatter axes and its colourbar.

    Notes
    -----
    For ``L = 2`` this is the latent plane itself, ``mu[:, 0]`` against ``mu[:, 1]``. For
    ``L > 2`` the first two coordinates are drawn and the title says so. For ``L = 1`` the
    single coordinate is drawn against the class (with a little vertical jitter, from a fixed
    seed, so that the points of one class spread into a band).

    Raises
    ------
    TypeError, ValueError
        If the model lacks the needed members, or ``x``, ``y`` or ``batch_size`` are not as
        described.
    """
    _check_model(model)
    x = _check_images("x", x, model.input_dim)
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"y: expected shape ({x.shape[0]},) to match x, got {y.shape}")
    if y.size and (y.dtype.kind not in "iuf" or np.any(y != np.round(y)) or y.min() < 0):
        raise ValueError(f"y: expected non-negative integer class labels, got an array of dtype {y.dtype} with others")
    y = y.astype(np.int64)
    batch_size = _check_int("batch_size", batch_size, 1)

    mu = np.concatenate(
        [np.asarray(model.encode(x[i:i + batch_size])[0]) for i in range(0, x.shape[0], batch_size)]
        or [np.empty((0, model.latent_dim))]
    )
    latent_dim = mu.shape[1]

    from matplotlib import colormaps
    from matplotlib.colors import BoundaryNorm

    fig = _new_figure(figsize=(6.4, 5.4))
    n_classes = max(10, int(y.max()) + 1 if y.size else 0)
    cmap = colormaps["tab10" if n_classes <= 10 else "tab20"]
    if n_classes > 20:
        cmap = colormaps["viridis"]
    cmap = cmap.resampled(n_classes)
    norm = BoundaryNorm(np.arange(n_classes + 1) - 0.5, n_classes)

    ax = fig.add_subplot()
    if latent_dim >= 2:
        px, py = mu[:, 0], mu[:, 1]
        ax.set_xlabel(r"$z_1$ (encoder mean)")
        ax.set_ylabel(r"$z_2$ (encoder mean)")
        title = f"Latent space: encoder means of {len(y)} inputs"
        if latent_dim > 2:
            title += f"\n(first 2 of {latent_dim} latent dimensions)"
    else:
        jitter = np.random.default_rng(0).uniform(-0.3, 0.3, size=len(y))
        px, py = mu[:, 0], y + jitter
        ax.set_xlabel(r"$z_1$ (encoder mean)")
        ax.set_ylabel("class")
        ax.set_yticks(np.arange(n_classes))
        title = f"1-D latent space: encoder means of {len(y)} inputs by class"
    sc = ax.scatter(px, py, c=y, cmap=cmap, norm=norm, s=4, alpha=0.7, linewidths=0,
                    rasterized=True)
    ax.set_title(title)
    cbar = fig.colorbar(sc, ax=ax, ticks=np.arange(n_classes), pad=0.02)
    cbar.set_label("class")
    cbar.solids.set_alpha(1.0)
    cbar.minorticks_off()
    if path is not None:
        _save(fig, path)
    return fig


# --------------------------------------------------------------------------- manifold


def latent_grid(n=15, lo=0.05, hi=0.95):
    """The ``(n, n, 2)`` grid of latent points decoded by :func:`plot_manifold`.

    Equal steps in probability under the prior, mapped through the normal quantile
    function, as in the Keras VAE example: with ``q = norm_ppf(linspace(lo, hi, n))``,
    ``grid[i, j] = (q[j], q[i])``, so ``z_1`` grows along a row (left to right) and ``z_2``
    grows down the rows (top to bottom), matching ``figure[i*28:(i+1)*28, j*28:(j+1)*28]``.

    Parameters
    ----------
    n : int, default 15
        Points per axis, ``>= 1``.
    lo, hi : float, default 0.05, 0.95
        Probability range, ``0 < lo <= hi < 1`` (``lo < hi`` when ``n > 1``).

    Returns
    -------
    grid : numpy.ndarray of float64, shape (n, n, 2)
        ``grid[i, j] = (z_1, z_2)`` of the digit in row ``i``, column ``j``.
    """
    n = _check_int("n", n, 1)
    for name, value in (("lo", lo), ("hi", hi)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < 1:
            raise ValueError(f"{name}: expected a probability in (0, 1), got {value!r}")
    if not lo < hi and not (n == 1 and lo == hi):
        raise ValueError(f"lo: expected a value below hi, got lo={lo!r}, hi={hi!r}")
    q = norm_ppf(np.linspace(lo, hi, n))
    grid = np.empty((n, n, 2))
    grid[..., 0] = q[None, :]  # z_1 varies along columns j
    grid[..., 1] = q[:, None]  # z_2 varies along rows i
    return grid


def _manifold_skip_message(model):
    if model.latent_dim != 2:
        return (f"manifold plot skipped: it needs a 2-D latent space, "
                f"the model has latent_dim={model.latent_dim}")
    return None


def plot_manifold(model, path=None, n=15, digit_size=28):
    """Decode a grid of latent points into an ``n x n`` sheet of digits (the learned manifold).

    The grid is :func:`latent_grid` (``n`` prior quantiles between 5% and 95% per axis) and is
    decoded in one call, ``model.decode(z)`` with ``z (n, n, 2)`` giving ``(n, n, D)``.

    Parameters
    ----------
    model : VAE-like
        See the module docstring; ``latent_dim`` must be 2 to draw anything.
    path : str or os.PathLike, optional
        Where to write the PNG.
    n : int, default 15
        Digits per side.
    digit_size : int, default 28
        Side of one digit in pixels; ``digit_size ** 2`` must equal ``model.input_dim``.

    Returns
    -------
    matplotlib.figure.Figure or None
        One axes with one image; ``None`` when ``model.latent_dim != 2``.

    Warns
    -----
    UserWarning
        When ``model.latent_dim != 2``: nothing is drawn or written, and the warning's
        message says why (callers such as the CLI can show it; :func:`save_all` returns it).
    """
    _check_model(model)
    n = _check_int("n", n, 1)
    digit_size = _check_int("digit_size", digit_size, 1)
    message = _manifold_skip_message(model)
    if message is not None:
        warnings.warn(message, UserWarning, stacklevel=2)
        return None
    if digit_size * digit_size != model.input_dim:
        raise ValueError(f"digit_size: expected digit_size**2 == model.input_dim={model.input_dim}, "
                         f"got digit_size={digit_size}")

    grid = latent_grid(n)
    probs = np.asarray(model.decode(grid))  # (n, n, D)
    sheet = _tile(probs.reshape(n * n, -1), n, n, digit_size)

    fig = _new_figure(figsize=(6.6, 6.8))
    ax = fig.add_subplot()
    ax.imshow(sheet, cmap=_DIGIT_CMAP, vmin=0.0, vmax=1.0, interpolation="nearest")
    centres = np.arange(n) * digit_size + (digit_size - 1) / 2
    ticks = np.arange(0, n, math.ceil(n / 8))  # at most 8 labels per axis
    labels = [f"{round(v, 2) + 0.0:.2f}" for v in grid[0, ticks, 0]]  # + 0.0: no "-0.00"
    ax.set_xticks(centres[ticks], labels)
    ax.set_yticks(centres[ticks], labels)
    ax.set_xlabel(r"$z_1$")
    ax.set_ylabel(r"$z_2$")
    ax.set_title(f"Decoded latent grid: {n}$\\times${n} prior quantiles, 5%-95%")
    if path is not None:
        _save(fig, path)
    return fig


# --------------------------------------------------------------------------- reconstructions


def plot_reconstructions(model, x_one, mc_samples=25, rng=None, path=None):
    r"""Show one input beside its decoded mean and ``S`` decoded posterior samples.

    With ``mu, log_var = model.encode(x_one)``, the samples are
    :math:`z_s = \mu + \exp(\tfrac12 \log\sigma^2)\,\epsilon_s`, :math:`\epsilon_s \sim N(0, I)`,
    ``eps (1, S, L)``, decoded in one call to ``(1, S, D)`` and tiled
    ``ceil(sqrt(S))`` per row (5 x 5 for S = 25).

    Parameters
    ----------
    model : VAE-like
        See the module docstring.
    x_one : array_like, shape (D,) or (1, D)
        One input, e.g. one MNIST test digit.
    mc_samples : int, default 25
        Number of posterior samples ``S >= 1``.
    rng : numpy.random.Generator or int or None, optional
        Source of ``eps``; an int is a seed (``numpy.random.default_rng(rng)``), so the same
        seed gives the same figure. ``None`` draws fresh entropy.
    path : str or os.PathLike, optional
        Where to write the PNG.

    Returns
    -------
    matplotlib.figure.Figure
        Three axes, each with one image: the input, ``decode(mu)`` below it, and the sheet of
        samples beside them (unused cells of the last row are left white).
    """
    _check_model(model)
    x_one = np.asarray(x_one)
    if x_one.dtype.kind not in "biuf":
        raise ValueError(f"x_one: expected a numeric array, got dtype {x_one.dtype}")
    if x_one.shape not in ((model.input_dim,), (1, model.input_dim)):
        raise ValueError(f"x_one: expected a single input of shape ({model.input_dim},) or "
                         f"(1, {model.input_dim}), got shape {x_one.shape}")
    x_one = x_one.reshape(1, model.input_dim)
    mc_samples = _check_int("mc_samples", mc_samples, 1)
    side = _digit_side(model.input_dim)
    rng = np.random.default_rng(rng)

    mu, log_var = (np.asarray(a) for a in model.encode(x_one))  # (1, L) each
    eps = rng.standard_normal((1, mc_samples, mu.shape[-1]))  # (1, S, L)
    z = mu[:, None, :] + np.exp(0.5 * log_var)[:, None, :] * eps  # (1, S, L)
    probs = np.asarray(model.decode(z))[0]  # (S, D)
    mean_probs = np.asarray(model.decode(mu))[0]  # (D,)

    n_cols = math.ceil(math.sqrt(mc_samples))
    n_rows = math.ceil(mc_samples / n_cols)
    sheet = _tile(probs, n_rows, n_cols, side, fill=np.nan)

    # Left column: input above decoded mean, each about half the sheet's height.
    left = min(max(1.0, 0.45 * n_rows), 2.5)
    unit = min(1.0, 9.0 / (left + n_cols))  # inches per digit of the sheet; at most ~9.5 in wide
    fig = _new_figure(figsize=(max(4.4, unit * (left + n_cols) + 0.5),
                               unit * max(n_rows, 2 * left) + 1.0))
    gs = fig.add_gridspec(2, 2, width_ratios=[left, n_cols])
    from matplotlib import colormaps

    cmap = colormaps[_DIGIT_CMAP].with_extremes(bad="white")  # unused cells of the sheet
    samples = f"{mc_samples} sample{'s' if mc_samples > 1 else ''}"
    panels = [(gs[0, 0], x_one[0].reshape(side, side), "input"),
              (gs[1, 0], mean_probs.reshape(side, side), r"decoded $\mu$"),
              (gs[:, 1], sheet, f"decoded, {samples}" if n_cols > 2 else samples)]
    fig.suptitle(r"Reconstructions from $z_s = \mu + \sigma\,\epsilon_s$, "
                 r"$\epsilon_s \sim \mathcal{N}(0, I)$")
    for spec, img, title in panels:
        ax = fig.add_subplot(spec)
        ax.imshow(img, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title(title)
        ax.set_axis_off()
    for r in range(1, n_rows):  # thin lines between samples
        ax.axhline(r * side - 0.5, color="white", lw=0.8)
    for c in range(1, n_cols):
        ax.axvline(c * side - 0.5, color="white", lw=0.8)
    if path is not None:
        _save(fig, path)
    return fig


# --------------------------------------------------------------------------- learning curves


def _history_records(history):
    """Normalise ``history`` to a list of dicts (one per epoch)."""
    if hasattr(history, "keys") and all(
            not hasattr(v, "keys") and np.ndim(v) == 1 for v in history.values()):
        # Keras-style {"loss": [...], "val_loss": [...]}
        keys = list(history.keys())
        n = len(history[keys[0]]) if keys else 0
        return [{k: history[k][i] for k in keys} for i in range(n)]
    try:
        records = list(history)
    except TypeError as exc:
        raise TypeError("history: expected a list of per-epoch dicts, "
                        f"got {type(history).__name__}") from exc
    for i, rec in enumerate(records):
        if not hasattr(rec, "keys"):
            raise TypeError(f"history[{i}]: expected a dict, got {type(rec).__name__}")
    return records


def plot_history(history, path=None):
    """Learning curves: loss per epoch on the training and validation sets.

    Parameters
    ----------
    history : list of dict
        One dict per epoch with at least ``"loss"`` and usually ``"epoch"`` (if absent, epochs
        are numbered 1, 2, ...); optionally ``"val_loss"``, ``"recon"``, ``"kl"``,
        ``"val_recon"``, ``"val_kl"``. A Keras-style dict of lists is accepted too.
        Missing or ``None`` values are skipped.
    path : str or os.PathLike, optional
        Where to write the PNG.

    Returns
    -------
    matplotlib.figure.Figure
        One axes for the loss, plus one for the reconstruction term and one for the KL term
        when the history has them.
    """
    records = _history_records(history)
    if not records:
        raise ValueError("history: expected at least one epoch, got an empty history")
    for i, rec in enumerate(records):
        if rec.get("loss") is None:
            raise ValueError(f"history[{i}]: expected a 'loss' value, got keys {sorted(rec)}")

    def column(key):
        return np.array([np.nan if r.get(key) is None else float(r[key]) for r in records])

    epochs = column("epoch")
    if np.all(np.isnan(epochs)):
        epochs = np.arange(1, len(records) + 1, dtype=np.float64)

    panels = [("loss", "loss (negative bound)")]
    if any(r.get(k) is not None for r in records for k in ("recon", "val_recon")):
        panels.append(("recon", "reconstruction term"))
    if any(r.get(k) is not None for r in records for k in ("kl", "val_kl")):
        panels.append(("kl", "KL term"))

    fig = _new_figure(figsize=(4.2 * len(panels), 3.6))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    marker = "o" if len(records) <= 30 else None
    for ax, (key, label) in zip(axes, panels):
        for k, name, style in ((key, "train", "-"), ("val_" + key, "validation", "--")):
            values = column(k)
            ok = np.isfinite(values) & np.isfinite(epochs)
            if ok.any():
                ax.plot(epochs[ok], values[ok], style, marker=marker, ms=3, label=name)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend(frameon=False)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle("Learning curves")
    if path is not None:
        _save(fig, path)
    return fig


# --------------------------------------------------------------------------- all at once


def save_all(model, history, x_test, y_test, out_dir, seed=0):
    """Write every figure for a trained model into ``out_dir``.

    Files: ``latent.png`` (:func:`plot_latent` of the test set), ``manifold.png``
    (:func:`plot_manifold`, only when ``model.latent_dim == 2``), ``reconstructions.png``
    (:func:`plot_reconstructions` of ``x_test[0]`` with 25 samples drawn from ``seed``) and
    ``history.png`` (:func:`plot_history`, only when ``history`` is non-empty).

    Parameters
    ----------
    model : VAE-like
        See the module docstring.
    history : list of dict or None
        Per-epoch records for :func:`plot_history`; ``None`` or empty skips that figure.
    x_test : array_like, shape (B, D)
        Test inputs, ``B >= 1``.
    y_test : array_like of int, shape (B,)
        Test labels.
    out_dir : str or os.PathLike
        Output folder, created if missing.
    seed : int, default 0
        Seed of the reconstruction samples.

    Returns
    -------
    paths : list of pathlib.Path
        The files written, in the order above.
    messages : list of str
        One line per figure skipped and why (e.g. the manifold of a model with
        ``latent_dim != 2``), for the caller to print. No warning is emitted.
    """
    _check_model(model)
    x_test = _check_images("x_test", x_test, model.input_dim)
    if x_test.shape[0] < 1:
        raise ValueError("x_test: expected at least one input, got shape "
                         f"{x_test.shape}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths, messages = [], []

    plot_latent(model, x_test, y_test, path=out_dir / "latent.png")
    paths.append(out_dir / "latent.png")

    skip = _manifold_skip_message(model)
    if skip is None:
        plot_manifold(model, path=out_dir / "manifold.png", digit_size=_digit_side(model.input_dim))
        paths.append(out_dir / "manifold.png")
    else:
        messages.append(skip)

    plot_reconstructions(model, x_test[0], mc_samples=25, rng=seed,
                         path=out_dir / "reconstructions.png")
    paths.append(out_dir / "reconstructions.png")

    if history is not None and len(_history_records(history)) > 0:
        plot_history(history, path=out_dir / "history.png")
        paths.append(out_dir / "history.png")
    else:
        messages.append("history plot skipped: no training history")
    return paths, messages
