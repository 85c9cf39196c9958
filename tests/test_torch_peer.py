"""Optional: npvae's hand-written gradients against PyTorch autograd on the same weights and eps.

Runs only where torch is installed (``pip install torch==2.13.0``); npvae itself never imports it.
"""

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import compare_peer  # noqa: E402


@pytest.mark.parametrize("hidden,S", [((16,), 1), ((16, 8), 4)])
def test_loss_and_gradients_equal_pytorch_autograd(hidden, S):
    x = np.random.default_rng(3).random((6, 20))
    for row in compare_peer.same_weights_check(x, hidden=hidden, mc_samples=S, seed=2):
        assert row["loss_rel_err"] < 1e-13, row
        assert row["grad_max_rel_err"] < 1e-8, row
