"""The package as a dependency: `import npvae` needs only NumPy, and stays light."""

import subprocess
import sys
import textwrap


def run_python(code):
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_import_does_not_load_numba_or_matplotlib():
    out = run_python("""
        import sys, npvae
        print(sorted(m for m in ("numba", "matplotlib", "scipy", "torch") if m in sys.modules))
    """)
    assert out.strip() == "[]"


def test_trains_and_saves_with_numpy_alone(tmp_path):
    out = run_python(f"""
        import sys, warnings
        for name in ("numba", "matplotlib", "scipy", "torch"):
            sys.modules[name] = None      # importing any of them now raises ImportError
        warnings.simplefilter("ignore")  # the one "numba is not installed" notice, if any
        import numpy as np, npvae
        rng = np.random.default_rng(0)
        x = rng.random((64, 10))
        model = npvae.VAE(input_dim=10, hidden=(8,), latent_dim=2)
        history = npvae.fit(model, x, epochs=2, batch_size=16, mc_samples=3, verbose=0)
        model.save({str(tmp_path / 'm.npz')!r})
        loaded = npvae.load({str(tmp_path / 'm.npz')!r})
        print(len(history), history["loss"][-1] < history["loss"][0], loaded.config == model.config)
    """)
    assert out.split() == ["2", "True", "True"]


def test_public_api_is_listed():
    import npvae
    for name in ("VAE", "fit", "load", "load_mnist", "gradcheck", "History"):
        assert name in npvae.__all__ and hasattr(npvae, name)
