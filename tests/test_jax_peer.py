"""Optional: the JAX peer (benchmarks/peers/jax_vae.py) computes npvae's loss, gradients and Adam step.

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
from _helpers import BACKENDS, burda_iwae_case  # noqa: E402


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



@pytest.mark.parametrize("backend", BACKENDS)
def test_tanh_peer_loss_equals_npvaes_engine_iwae_loss_on_the_same_weights(backend):
    jnp = jax_vae.setup().numpy
    model, x, eps, bound = burda_iwae_case(backend)
    params = {k: jnp.asarray(v) for k, v in model.params.items()}
    peer_loss = float(jax_vae.loss_fn(params, jnp.asarray(x), jnp.asarray(eps), "iwae", "tanh"))
    assert peer_loss == pytest.approx(bound.loss, rel=1e-5)
    with pytest.raises(ValueError, match="activation: expected one of"):
        jax_vae.loss_fn(params, jnp.asarray(x), jnp.asarray(eps), "iwae", "gelu")


def test_peers_adam_is_npvaes_on_the_same_gradients():
    jnp = jax_vae.setup().numpy
    model = npvae.VAE(input_dim=20, hidden=(16,), latent_dim=2, activation="tanh", seed=1, backend="numpy")
    rng = np.random.default_rng(4)
    x, eps = rng.random((6, 20)), model.sample_eps(6, 3, rng)
    _, grads = model.loss_and_grads(x, eps, objective="iwae")
    settings = dict(lr=1e-3, beta1=0.99, beta2=0.999, epsilon=5e-6)
    opt, peer_opt = npvae.optim.Adam(**settings), jax_vae.make_optimizer("adam", **settings)
    params = {k: jnp.asarray(v) for k, v in model.params.items()}
    state = peer_opt.init(params)
    for scale in (1.0, -0.5, 2.0):                   # three steps, the bias correction moving
        g = {k: scale * v for k, v in grads.items()}
        opt.step(model.params, g)
        params, state = peer_opt.update(params, {k: jnp.asarray(v) for k, v in g.items()}, state)
    assert int(state["t"]) == 3
    for name, p in model.params.items():
        np.testing.assert_allclose(np.asarray(params[name]), p, rtol=1e-12, atol=1e-15, err_msg=name)


def test_peer_takes_one_tanh_adam_step_of_the_study():
    x = (np.random.default_rng(0).random((20, 784)) < 0.3).astype(np.float32)
    params = jax_vae.build_model(hidden=(200, 200), latent_dim=50, seed=0)
    adam = jax_vae.make_optimizer("adam", beta1=0.99, epsilon=5e-6)
    trained, history = jax_vae.train(params, x, epochs=1, batch_size=20, mc_samples=5, objective="iwae",
                                     optimizer=adam, activation="tanh")
    assert np.isfinite(history[0]["loss"]) and trained["dec.out.W"].dtype == np.float32
    assert adam == jax_vae.Adam(1e-3, 0.99, 0.999, 5e-6)
    # train compiled the step of this optimizer and activation: asking for it again finds it in the cache
    hits = jax_vae.make_step.cache_info().hits
    step = jax_vae.make_step(5, 50, "iwae", jax_vae.Adam(1e-3, 0.99, 0.999, 5e-6), "tanh")
    assert jax_vae.make_step.cache_info().hits == hits + 1
    assert step is not jax_vae.make_step(5, 50, "iwae", adam, "relu")
    assert step is not jax_vae.make_step(5, 50, "iwae", jax_vae.Adam(1e-3, 0.9, 0.999, 5e-6), "tanh")
