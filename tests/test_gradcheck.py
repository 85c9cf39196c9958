"""The finite-difference checker: it must agree with known derivatives and catch planted bugs."""

import numpy as np
import pytest

from npvae import gradcheck, ops


def test_relative_error_definition():
    assert gradcheck.relative_error([1.0, 2.0], [1.0, 2.0]) == 0.0
    assert gradcheck.relative_error([0.0], [0.0]) == 0.0
    assert gradcheck.relative_error([1.0, 4.0], [1.1, 4.0]) == pytest.approx(0.1 / 1.1)
    assert gradcheck.relative_error([1e-13], [0.0]) == pytest.approx(0.1)  # tiny floor 1e-12
    with pytest.raises(ValueError, match="shapes differ"):
        gradcheck.relative_error(np.zeros(2), np.zeros(3))


@pytest.mark.parametrize("order", [2, 4])
def test_numerical_gradient_of_known_function(order):
    p = np.array([0.3, -1.2, 2.0])
    numeric = gradcheck.numerical_gradient(lambda: np.sum(np.sin(p) * p ** 2), p, order=order)
    exact = np.cos(p) * p ** 2 + 2 * p * np.sin(p)
    assert gradcheck.relative_error(numeric, exact) < (1e-6 if order == 2 else 1e-9)
    np.testing.assert_array_equal(p, [0.3, -1.2, 2.0])  # restored


def test_unused_coordinate_gives_exact_zero():
    p = np.array([1.0, 5.0])
    numeric = gradcheck.numerical_gradient(lambda: 3.0 * p[0] ** 3 + 1e3, p)
    assert numeric[1] == 0.0


def test_check_op_catches_a_wrong_sum_over_axes():
    def bad_dense_backward(dout, cache):
        dx, dW, db = ops.dense_backward(dout, cache)
        return dx, dW, dout.reshape(-1, dout.shape[-1]).mean(axis=0)  # mean, not sum

    rng = np.random.default_rng(0)
    inputs = [rng.normal(size=(4, 3, 5)), rng.normal(size=(5, 2)), rng.normal(size=2)]
    good = gradcheck.check_op(ops.dense_forward, ops.dense_backward, inputs, rng=1)
    bad = gradcheck.check_op(ops.dense_forward, bad_dense_backward, inputs, rng=1)
    assert max(good) < 1e-6
    assert bad[2] > 0.5 and max(bad[:2]) < 1e-6


def test_check_op_catches_a_missing_factor_in_reparam():
    def bad_reparam_backward(dz, cache):
        sigma, eps = cache
        return dz.sum(axis=1), sigma * (dz * eps).sum(axis=1)  # lost the 1/2

    rng = np.random.default_rng(0)
    inputs = [rng.normal(size=(3, 2)), rng.normal(size=(3, 2)), rng.normal(size=(3, 4, 2))]
    errors = gradcheck.check_op(ops.reparam_forward, bad_reparam_backward, inputs, wrt=[0, 1], rng=2)
    assert errors[0] < 1e-6 and errors[1] > 0.3


def test_subset_checks_only_chosen_coordinates():
    calls = []
    p = np.linspace(-1.0, 1.0, 100)

    def f():
        calls.append(1)
        return np.sum(p ** 2)

    err = gradcheck.check_gradient(f, p, 2 * p, n_coords=7, rng=0)
    assert err < 1e-6
    assert len(calls) == 7 * 4  # four evaluations per coordinate with the fourth-order stencil


def test_requires_float64():
    with pytest.raises(ValueError, match="float64"):
        gradcheck.numerical_gradient(lambda: 0.0, np.zeros(3, dtype=np.float32))
    with pytest.raises(ValueError, match="order: expected 2 or 4"):
        gradcheck.numerical_gradient(lambda: 0.0, np.zeros(3), order=3)


def test_check_model_refuses_float32_model():
    from npvae.model import VAE
    model = VAE(input_dim=4, hidden=(3,), latent_dim=2, dtype=np.float32)
    x = np.full((1, 4), 0.5, dtype=np.float32)
    with pytest.raises(ValueError, match="model.dtype: expected float64"):
        gradcheck.check_model(model, x, model.sample_eps(1, 1, 0))
