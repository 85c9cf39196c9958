"""Optional: npvae's hand-written gradients against PyTorch autograd on the same weights and eps,
the PyTorch peer's training loop as the benchmarks use it, and the study's workload (tanh, Adam).

Runs only where torch is installed (``pip install torch==2.13.0``); npvae itself never imports it.
The benchmark scripts are imported by name (``pythonpath = benchmarks`` in setup.cfg; see
tests/test_benchmark_tools.py for why).
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import compare_peer  # noqa: E402
import speed  # noqa: E402
import torch_vae  # noqa: E402

from _helpers import BACKENDS, burda_iwae_case  # noqa: E402


@pytest.mark.parametrize("hidden,S", [((16,), 1), ((16, 8), 4)])
def test_loss_and_gradients_equal_pytorch_autograd(hidden, S):
    x = np.random.default_rng(3).random((6, 20))
    for row in compare_peer.same_weights_check(x, hidden=hidden, mc_samples=S, seed=2):
        assert row["loss_rel_err"] < 1e-13, row
        assert row["grad_max_rel_err"] < 1e-8, row


def test_peer_trains_with_the_optimizer_it_is_given():
    made = []

    def sgd(parameters):
        made.append(torch.optim.SGD(parameters, lr=0.0))
        return made[-1]

    x = (np.random.default_rng(0).random((200, 20)) < 0.3).astype(np.float32)
    model = torch_vae.build_model(input_dim=20, hidden=(8,), seed=0)
    before = [p.detach().clone() for p in model.parameters()]
    torch_vae.train(model, x, epochs=1, batch_size=50, optimizer=sgd)
    assert len(made) == 1 and all(torch.equal(a, b) for a, b in zip(before, model.parameters()))   # lr 0
    default = torch_vae.rmsprop(model.parameters())
    assert isinstance(default, torch.optim.RMSprop) and default.defaults["alpha"] == 0.9


def test_speeds_drift_run_reads_the_peers_running_averages_without_patching_torch():
    rmsprop = torch.optim.RMSprop
    x = (np.random.default_rng(0).random((200, 784)) < 0.2).astype(np.float32)
    records = speed._drift_torch(x, epochs=2, threads=1, seed=0)
    assert len(records) == 2 and all(r["subnormal_state"] >= 0 and r["seconds"] > 0 for r in records)
    assert torch.optim.RMSprop is rmsprop and torch_vae.torch.optim.RMSprop is rmsprop


@pytest.mark.parametrize("backend", BACKENDS)
def test_tanh_peer_loss_equals_npvaes_engine_iwae_loss_on_the_same_weights(backend):
    model, x, eps, bound = burda_iwae_case(backend)
    peer = torch_vae.build_model(hidden=(200, 200), latent_dim=50, activation="tanh")
    compare_peer.copy_weights(model, peer, torch)
    with torch.no_grad():
        peer_loss = peer.loss(torch.from_numpy(x), objective="iwae", eps=torch.from_numpy(eps)).item()
    assert peer_loss == pytest.approx(bound.loss, rel=1e-5)
    relu = torch_vae.build_model(hidden=(200, 200), latent_dim=50)                  # the default is unchanged
    assert relu.activation is torch_vae.F.relu and peer.activation is torch.tanh


def test_peer_takes_one_adam_step_with_the_hyperparameters_given():
    made = []

    def recording(parameters):
        made.append(torch_vae.make_optimizer("adam", lr=2e-3, beta1=0.99, beta2=0.999, epsilon=5e-6)(parameters))
        return made[-1]

    x = (np.random.default_rng(0).random((20, 784)) < 0.3).astype(np.float32)
    model = torch_vae.build_model(hidden=(200, 200), latent_dim=50, activation="tanh", seed=0)
    history = torch_vae.train(model, x, epochs=1, batch_size=20, mc_samples=5, objective="iwae", optimizer=recording)
    assert np.isfinite(history[0]["loss"]) and len(made) == 1 and isinstance(made[0], torch.optim.Adam)
    group = made[0].param_groups[0]
    assert (group["lr"], group["betas"], group["eps"]) == (2e-3, (0.99, 0.999), 5e-6)
    assert all(state["step"] == 1 for state in made[0].state.values())
    with pytest.raises(ValueError, match="optimizer: expected one of"):
        torch_vae.make_optimizer("sgd")
