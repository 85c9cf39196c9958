"""Optional: the JAX peer (benchmarks/peers/jax_vae.py) computes npvae's loss and gradients.

Runs only where jax is installed (a benchmark dependency, never npvae's); it checks that the
speed comparison races the same model: on npvae's weights and the same eps, jax.grad of the
peer's loss equals npvae's hand-written gradients. The peer is imported by name through
``_common`` (``pythonpath = benchmarks`` in setup.cfg; see tests/test_benchmark_tools.py).
"""

import numpy as np
import pytest

pytest.importorskip("jax")

import _common  # noqa: E402,F401  (benchmarks/peers on sys.path)
import jax_vae  # noqa: E402

import npvae  # noqa: E402


@pytest.mark.parametrize("objective,hidden,S", [("elbo", (16,), 1), ("iwae", (16, 8), 4), ("elbo", (8,), 3)])
def test_peer_loss_and_gradients_equal_npvae_on_the_same_weights(objective, hidden, S):
    jax = jax_vae.setup()
    model = npvae.VAE(input_dim=20, hidden=hidden, latent_dim=2, seed=1, backend="numpy")
    rng = np.random.default_rng(4)
    for name, p in model.params.items():
        if name.endswith(".b"):
            p[:] = 0.2 * rng.standard_normal(p.shape)
    x = rng.random((6, 20))
    eps = model.sample_eps(6, S, rng)
    loss, grads = model.loss_and_grads(x, eps, objective=objective)
    params = {k: jax.numpy.asarray(v) for k, v in model.params.items()}
    peer_loss, peer_grads = jax.value_and_grad(jax_vae.loss_fn)(params, jax.numpy.asarray(x),
                                                                jax.numpy.asarray(eps), objective)
    assert float(peer_loss) == pytest.approx(loss, rel=1e-12)
    for name, g in grads.items():
        np.testing.assert_allclose(np.asarray(peer_grads[name]), g, rtol=1e-8, atol=1e-12, err_msg=name)


def test_peer_trains_with_its_compiled_rmsprop_step():
    x = (np.random.default_rng(0).random((300, 20)) < 0.3).astype(np.float32)
    params = jax_vae.build_model(input_dim=20, hidden=(16,), latent_dim=2, seed=0)
    _, history = jax_vae.train(params, x, epochs=3, batch_size=50, mc_samples=2, seed=0)
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert history[-1]["loss"] < history[0]["loss"] and all(np.isfinite(r["loss"]) for r in history)

