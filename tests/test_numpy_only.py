"""The promise to projects that import npvae as a dependency-free baseline: with NumPy alone,
``import npvae``, a model's loss and gradients, ``fit`` on a few hundred MNIST images,
``log_likelihood`` and ``gradcheck`` all work, on the NumPy reference engine.

.ci/run runs this file in an environment where only NumPy and pytest are installed; here it
also runs in the full environment, with numba and matplotlib blocked in a subprocess.
"""

import os
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_public_api_works_with_numpy_alone(mnist_dir, tmp_path):
    code = textwrap.dedent(f"""
        import sys, warnings
        for name in ("numba", "matplotlib", "scipy", "torch", "hypothesis"):
            sys.modules[name] = None          # importing any of them raises ImportError
        import numpy as np
        import npvae
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = npvae.VAE(input_dim=784, hidden=(32,), latent_dim=2, seed=0)
        assert model.backend == "numpy" and type(model.engine).__name__ == "ReferenceEngine"
        assert [str(w.message) for w in caught if "numba" in str(w.message)], "no notice of the slower engine"

        (x_train, _), (x_test, _) = npvae.load_mnist({str(mnist_dir)!r}, progress=False)
        x = x_train[:300]
        eps = model.sample_eps(8, 3, rng=0)
        loss, grads = model.loss_and_grads(x[:8], eps, objective="iwae")
        assert np.isfinite(loss) and set(grads) == set(model.params)

        history = npvae.fit(model, x, epochs=2, batch_size=50, mc_samples=2, validation_data=x_test[:100],
                            verbose=0)
        assert len(history) == 2 and history[-1]["loss"] < history[0]["loss"]
        model.save({str(tmp_path / "m.npz")!r})
        assert npvae.load({str(tmp_path / "m.npz")!r}).backend == "numpy"

        ll = npvae.log_likelihood(model, x_test[:20], k=50, progress=False)
        assert np.isfinite(ll.mean) and ll.mean <= 0

        small = npvae.VAE(input_dim=6, hidden=(5,), latent_dim=2, activation="tanh", seed=1)
        rng = np.random.default_rng(0)
        errors = npvae.gradcheck.check_model(small, rng.random((3, 6)), small.sample_eps(3, 4, rng), "iwae")
        assert max(errors.values()) < 1e-6, errors
        rows = npvae.gradcheck.check_all()
        assert rows and all(r["passed"] for r in rows), [r for r in rows if not r["passed"]]
        print("numba" in sys.modules and sys.modules["numba"] is not None)
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_")}
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
