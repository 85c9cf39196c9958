"""Input checks for the public boundary.

Every message names the argument, what was expected and what came, so that a
caller never meets a broadcast error from deep inside an op.
"""

import numbers

import numpy as np

from .params import Schema

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def float_dtype(dtype, name="dtype"):
    """Return ``np.dtype(dtype)`` if it is float32 or float64, else raise ValueError."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise ValueError(f"{name}: expected float32 or float64, got {dtype!r}") from None
    if dt not in FLOAT_DTYPES:
        raise ValueError(f"{name}: expected float32 or float64, got {dt}")
    return dt


def positive_int(value, name, minimum=1):
    """Return ``int(value)`` if it is an integer >= ``minimum``, else raise ValueError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value}")
    return int(value)


def non_negative_int(value, name):
    """Return ``int(value)`` if it is an integer >= 0, else raise ValueError."""
    return positive_int(value, name, minimum=0)


def optional_positive_int(value, name):
    """None, or ``int(value)`` if it is an integer >= 1; else raise ValueError."""
    return None if value is None else positive_int(value, name)


def choice(value, name, options):
    """Return ``value`` lower-cased if it is one of ``options``, else raise ValueError."""
    if not isinstance(value, str) or value.lower() not in options:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, options))}, got {value!r}")
    return value.lower()


def float_array(a, name, shape, dtype=None, lo=None, hi=None):
    """Check a float array's shape, finiteness and range.

    Parameters
    ----------
    a : array_like
    name : str
        The argument's name, for messages.
    shape : tuple
        Expected shape: integers must match, strings (axis names such as
        ``"B"``) match any size and name the axis in messages, e.g. ``("B", 784)``.
    dtype : dtype, optional
        If given, the array is converted to it (no copy when it already is).
    lo, hi : float, optional
        Inclusive bounds on the values.

    Returns
    -------
    ndarray
    """
    if not isinstance(a, np.ndarray):
        a = np.asarray(a)
    if a.dtype.kind != "f":
        raise ValueError(f"{name}: expected a float array, got dtype {a.dtype}")
    want = "(" + ", ".join(str(s) for s in shape) + ")"
    if a.ndim != len(shape) or any(isinstance(s, int) and s != n for s, n in zip(shape, a.shape)):
        raise ValueError(f"{name}: expected shape {want}, got {a.shape}")
    if 0 in a.shape:
        raise ValueError(f"{name}: expected a non-empty array of shape {want}, got {a.shape}")
    # min and max carry any NaN (it propagates) or inf, so two reductions check finiteness
    # and range with no temporary (np.isfinite(a).all() made a boolean copy of the data:
    # 47 MB for MNIST's training set). The range is checked on the values as given (a
    # float64 -1e-306 would round to a float32 -0.0 and pass), finiteness also after the
    # conversion (a float64 1e300 becomes a float32 inf).
    a_min, a_max = a.min(), a.max()
    if not (np.isfinite(a_min) and np.isfinite(a_max)):
        raise ValueError(f"{name}: expected finite values, got NaN or inf")
    if lo is not None and a_min < lo or hi is not None and a_max > hi:
        raise ValueError(f"{name}: expected values in [{lo}, {hi}], got values in [{a_min}, {a_max}]")
    if dtype is not None and a.dtype != np.dtype(dtype):
        a = a.astype(dtype)
        if not (np.isfinite(a.min()) and np.isfinite(a.max())):
            raise ValueError(f"{name}: expected values finite in {np.dtype(dtype)}, got values in "
                             f"[{a_min}, {a_max}] that overflow it")
    return a


def vae(model, name="model"):
    """Return ``model`` if it is an :class:`npvae.VAE` (an object with a parameter schema and
    an engine), else raise ValueError."""
    if not (isinstance(getattr(model, "schema", None), Schema) and hasattr(model, "engine")
            and isinstance(getattr(model, "params", None), dict)):
        raise ValueError(f"{name}: expected an npvae.VAE, got {type(model).__name__} {model!r:.60}")
    return model


def generator(seed, name="seed"):
    """``seed`` as a ``numpy.random.Generator``: a Generator is used as it is (and advanced);
    None, an integer >= 0 or a sequence of them seeds a new one; anything else raises ValueError."""
    if isinstance(seed, np.random.Generator):
        return seed
    try:
        return np.random.default_rng(seed)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected None, an integer >= 0, a sequence of them or a "
                         f"numpy.random.Generator, got {seed!r:.60}") from None


def step_memory(model, batch, mc_samples, names, advice):
    """Raise ValueError naming ``names`` if a step of ``batch`` x ``mc_samples`` rows of ``model``
    (:meth:`engine.step_bytes`) needs more than 90% of the available memory; before allocating."""
    need = model.engine.step_bytes(batch, mc_samples)
    have = available_memory()
    if have is not None and need > 0.9 * have:
        raise ValueError(f"{names}: a pass of {batch} x {mc_samples} = {batch * mc_samples:,} rows needs about "
                         f"{need / 2**30:.1f} GiB of working memory, more than the {have / 2**30:.1f} GiB "
                         f"available; {advice}")


def available_memory():
    """Bytes of memory available to a new allocation (Linux: ``MemAvailable`` of /proc/meminfo),
    or None where it cannot be read (then no size is refused for want of memory)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
