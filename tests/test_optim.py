"""Tests for npvae.optim: each optimizer against an independent reference formula,
in-place updates, state round trips, validation and subnormal flushing."""

import io
import math
import os
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

import npvae.optim
from npvae.optim import (
    SGD,
    Adam,
    Optimizer,
    RMSprop,
    get_optimizer,
    optimizer_from_state,
)


# ----------------------------------------------------------------------------------------
# Independent references: plain allocating NumPy, one formula per line, no flushing
# ----------------------------------------------------------------------------------------

def sgd_trajectory(p, grads, lr, momentum=0.0, nesterov=False):
    """Keras 2: v = mu v - lr g; p += v (or p += mu v - lr g)."""
    v = np.zeros_like(p)
    for g in grads:
        v = momentum * v - lr * g
        if nesterov:
            p = p + momentum * v - lr * g
        else:
            p = p + v
        yield p, {"velocity": v}


def rmsprop_trajectory(p, grads, lr, rho, epsilon):
    """Keras 2: v = rho v + (1 - rho) g^2; p -= lr g / (sqrt(v) + eps)."""
    v = np.zeros_like(p)
    for g in grads:
        v = rho * v + (1 - rho) * g**2
        p = p - lr * g / (np.sqrt(v) + epsilon)
        yield p, {"v": v}


def adam_trajectory(p, grads, lr, beta1, beta2, epsilon):
    """Kingma and Ba, Algorithm 1 with the epsilon-hat step size (Keras)."""
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g**2
        lr_t = lr * math.sqrt(1 - beta2**t) / (1 - beta1**t)
        p = p - lr_t * m / (np.sqrt(v) + epsilon)
        yield p, {"m": m, "v": v}


def final(trajectory):
    """Wrap a trajectory into a reference returning (params, state) after the last step."""
    def reference(p, grads, **hyper):
        out = None
        for out in trajectory(p.copy(), grads, **hyper):
            pass
        return out
    return reference


reference_sgd = final(sgd_trajectory)
reference_rmsprop = final(rmsprop_trajectory)
reference_adam = final(adam_trajectory)


def run(opt, p0, grads, key="w"):
    params = {key: p0.copy()}
    for g in grads:
        opt.step(params, {key: g})
    return params[key]


def random_grads(rng, shape, n, dtype=np.float64, scale=1.0):
    return [(scale * rng.standard_normal(shape)).astype(dtype) for _ in range(n)]


def rel_err(a, b):
    return np.max(np.abs(a - b) / np.maximum(np.maximum(np.abs(a), np.abs(b)), 1e-12))


CASES = [
    ("sgd", dict(lr=0.05), reference_sgd),
    ("sgd", dict(lr=0.05, momentum=0.9), reference_sgd),
    ("sgd", dict(lr=0.05, momentum=0.9, nesterov=True), reference_sgd),
    ("rmsprop", dict(lr=1e-3, rho=0.9, epsilon=1e-7), reference_rmsprop),
    ("adam", dict(lr=1e-3, beta1=0.9, beta2=0.999, epsilon=1e-7), reference_adam),
]
CASE_IDS = ["sgd", "sgd-momentum", "sgd-nesterov", "rmsprop", "adam"]


# ----------------------------------------------------------------------------------------
# Update rules
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, hyper, reference", CASES, ids=CASE_IDS)
def test_optimizer_matches_reference_formula_over_several_steps(name, hyper, reference):
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal((4, 3))
    grads = random_grads(rng, p0.shape, 12)

    opt = get_optimizer(name, **hyper)
    got = run(opt, p0, grads)
    want, want_state = reference(p0, grads, **hyper)

    assert rel_err(got, want) < 1e-12
    state = opt.state_dict()
    for slot, value in want_state.items():
        if f"{slot}/w" in state:
            assert rel_err(state[f"{slot}/w"], value) < 1e-12
    assert int(state["iterations"]) == len(grads)


def test_sgd_without_momentum_is_plain_gradient_step_and_keeps_no_state():
    p0 = np.array([1.0, -2.0, 3.0])
    g = np.array([0.5, 0.25, -1.0])
    opt = SGD(lr=0.1)
    got = run(opt, p0, [g])
    np.testing.assert_array_equal(got, p0 - 0.1 * g)
    assert not any("/" in k for k in opt.state_dict())


def test_sgd_momentum_accumulates_velocity():
    # constant gradient: v_t = -lr g (1 + mu + ... + mu^(t-1))
    lr, mu, g = 0.1, 0.5, np.array([1.0])
    opt = SGD(lr=lr, momentum=mu)
    params = {"w": np.zeros(1)}
    for t in range(1, 6):
        opt.step(params, {"w": g})
        velocity = opt.state_dict()["velocity/w"]
        assert velocity[0] == pytest.approx(-lr * (1 - mu**t) / (1 - mu), rel=1e-14)


def test_rmsprop_epsilon_is_added_outside_the_square_root():
    # with tiny gradients sqrt(v) (~3e-9) is far below epsilon (1e-7) while v (1e-17)
    # is far below epsilon too, so the two placements differ by a factor ~3000
    lr, rho, eps, g = 1e-3, 0.9, 1e-7, np.array([1e-8])
    opt = RMSprop(lr=lr, rho=rho, epsilon=eps)
    params = {"w": np.zeros(1)}
    opt.step(params, {"w": g})

    v = (1 - rho) * g**2
    outside = -lr * g / (np.sqrt(v) + eps)
    inside = -lr * g / np.sqrt(v + eps)
    assert rel_err(params["w"], outside) < 1e-14
    assert abs(params["w"][0]) > 1000 * abs(inside[0])


def test_adam_bias_correction_makes_first_step_about_lr():
    # t = 1: alpha = lr sqrt(1 - b2) / (1 - b1), m = (1 - b1) g, v = (1 - b2) g^2,
    # so the step is lr * g / (|g| + eps / sqrt(1 - b2)) ~= lr * sign(g) for |g| >> eps
    lr = 1e-3
    g = np.array([3.0, -0.02, 0.1])
    opt = Adam(lr=lr)
    params = {"w": np.zeros(3)}
    opt.step(params, {"w": g})
    want = -lr * g / (np.abs(g) + 1e-7 / math.sqrt(1 - 0.999))
    assert rel_err(params["w"], want) < 1e-12
    np.testing.assert_allclose(params["w"], -lr * np.sign(g), rtol=1e-3)


def test_adam_bias_correction_uses_the_step_count():
    # constant g: m_t = (1 - b1^t) g and v_t = (1 - b2^t) g^2, so with the correction
    # every step is ~lr * sign(g); without it the first would be (1-b1)/sqrt(1-b2) ~ 3.2 lr
    lr, g = 1e-3, np.array([2.0, -0.5])
    opt = Adam(lr=lr)
    params = {"w": np.zeros(2)}
    for _ in range(50):
        before = params["w"].copy()
        opt.step(params, {"w": g})
        np.testing.assert_allclose(params["w"] - before, -lr * np.sign(g), rtol=1e-4)


def test_lr_can_change_between_steps():
    rng = np.random.default_rng(2)
    p0 = rng.standard_normal(4)
    g1, g2 = random_grads(rng, 4, 2)
    opt = SGD(lr=0.1, momentum=0.9)
    params = {"w": p0.copy()}
    opt.step(params, {"w": g1})
    opt.lr = 0.01
    opt.step(params, {"w": g2})
    v1 = -0.1 * g1
    v2 = 0.9 * v1 - 0.01 * g2
    assert rel_err(params["w"], p0 + v1 + v2) < 1e-14


@pytest.mark.parametrize("make", [
    lambda: SGD(lr=0.1), lambda: SGD(lr=0.1, momentum=0.9, nesterov=True),
    lambda: RMSprop(), lambda: Adam()], ids=["sgd", "nesterov", "rmsprop", "adam"])
def test_step_updates_params_in_place(make):
    rng = np.random.default_rng(3)
    # the model may keep its parameters as views into one flat vector
    flat = rng.standard_normal(12)
    params = {"w": flat[:8].reshape(4, 2), "b": flat[8:]}
    ids = {k: id(v) for k, v in params.items()}
    before = flat.copy()
    grads = {k: rng.standard_normal(v.shape) for k, v in params.items()}

    opt = make()
    for _ in range(3):
        opt.step(params, grads)

    assert {k: id(v) for k, v in params.items()} == ids
    assert np.shares_memory(params["w"], flat) and np.shares_memory(params["b"], flat)
    assert np.all(flat != before)


@pytest.mark.parametrize("name, hyper, reference", CASES, ids=CASE_IDS)
def test_float32_params_keep_float32_state_and_match_float64(name, hyper, reference):
    rng = np.random.default_rng(4)
    p0 = rng.standard_normal((3, 5))
    grads = random_grads(rng, p0.shape, 10)
    opt = get_optimizer(name, **hyper)
    got = run(opt, p0.astype(np.float32), [g.astype(np.float32) for g in grads])

    assert got.dtype == np.float32
    for k, a in opt.state_dict().items():
        if "/" in k:
            assert a.dtype == np.float32, k
    want, _ = reference(p0, grads, **hyper)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_float64_grads_for_float32_params_keep_float32():
    opt = Adam()
    params = {"w": np.ones(3, dtype=np.float32)}
    opt.step(params, {"w": np.full(3, 0.5)})
    assert params["w"].dtype == np.float32
    assert opt.state_dict()["m/w"].dtype == np.float32


@pytest.mark.parametrize("name, hyper, reference", CASES, ids=CASE_IDS)
def test_steps_after_the_first_allocate_no_parameter_sized_arrays(name, hyper, reference):
    # numpy reports its array buffers to tracemalloc; one 120k-element float64 array
    # would be ~1 MB, the per-step Python bookkeeping is a few hundred bytes
    params = {"w": np.ones((300, 400)), "b": np.ones(400)}
    grads = {"w": np.full((300, 400), 0.1), "b": np.full(400, 0.1)}
    opt = get_optimizer(name, **hyper)
    opt.step(params, grads)  # allocates state and scratch
    tracemalloc.start()
    try:
        opt.step(params, grads)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50_000


@pytest.mark.parametrize("name, hyper, lr, steps", [
    ("sgd", {}, 0.1, 300),
    ("sgd", dict(momentum=0.9), 0.02, 300),
    ("sgd", dict(momentum=0.9, nesterov=True), 0.02, 300),
    ("rmsprop", {}, 1e-3, 3000),
    ("adam", {}, 0.01, 2000),
], ids=CASE_IDS)
def test_minimizes_a_quadratic(name, hyper, lr, steps):
    # f(x) = 1/2 sum a_i (x_i - c_i)^2, gradient a * (x - c), minimum at c
    rng = np.random.default_rng(5)
    a = rng.uniform(0.5, 5.0, size=10)
    c = rng.standard_normal(10)
    params = {"x": np.zeros(10)}
    opt = get_optimizer(name, lr=lr, **hyper)
    for _ in range(steps):
        opt.step(params, {"x": a * (params["x"] - c)})
    # RMSprop and Adam end up hovering within about lr of the minimum
    assert np.max(np.abs(params["x"] - c)) < max(10 * lr, 1e-6)


# ----------------------------------------------------------------------------------------
# State dicts
# ----------------------------------------------------------------------------------------

def through_npz(state):
    buf = io.BytesIO()
    np.savez(buf, **state)
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name, hyper, reference", CASES, ids=CASE_IDS)
def test_restored_optimizer_continues_bit_for_bit(name, hyper, reference, dtype):
    rng = np.random.default_rng(6)
    p0 = {"enc/w": rng.standard_normal((5, 3)).astype(dtype),
          "b": rng.standard_normal(3).astype(dtype)}
    grads = [{k: rng.standard_normal(v.shape).astype(dtype) for k, v in p0.items()}
             for _ in range(10)]

    straight = {k: v.copy() for k, v in p0.items()}
    opt = get_optimizer(name, **hyper)
    for g in grads:
        opt.step(straight, g)

    resumed = {k: v.copy() for k, v in p0.items()}
    first = get_optimizer(name, **hyper)
    for g in grads[:4]:
        first.step(resumed, g)
    second = optimizer_from_state(through_npz(first.state_dict()))
    del first
    for g in grads[4:]:
        second.step(resumed, g)

    for k in p0:
        assert np.array_equal(resumed[k], straight[k]), k
    a, b = opt.state_dict(), second.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]) and a[k].dtype == b[k].dtype, k


def test_load_state_dict_restores_hyperparameters_into_an_existing_instance():
    src = SGD(lr=0.3, momentum=0.5, nesterov=True)
    params = {"w": np.ones(2)}
    src.step(params, {"w": np.ones(2)})
    dst = SGD()  # different hyperparameters, no velocity slot
    dst.load_state_dict(src.state_dict())
    assert dst.get_config() == {"lr": 0.3, "momentum": 0.5, "nesterov": True}
    assert dst.iterations == 1
    np.testing.assert_array_equal(dst.state_dict()["velocity/w"], src.state_dict()["velocity/w"])


@pytest.mark.parametrize("name, hyper, reference", CASES, ids=CASE_IDS)
def test_state_dict_holds_only_plain_arrays(name, hyper, reference):
    opt = get_optimizer(name, **hyper)
    opt.step({"w": np.ones(3)}, {"w": np.ones(3)})
    state = opt.state_dict()
    assert all(type(v) is np.ndarray and not v.dtype.hasobject for v in state.values())
    assert state["name"].shape == () and state["name"].dtype.kind == "U"
    assert str(state["name"]) == name
    assert state["iterations"].dtype == np.int64 and int(state["iterations"]) == 1
    for h, value in opt.get_config().items():
        assert state[h].shape == () and state[h].item() == value


def test_state_dict_is_a_copy():
    opt = Adam()
    params = {"w": np.ones(3)}
    opt.step(params, {"w": np.ones(3)})
    state = opt.state_dict()
    state["m/w"][:] = 123.0
    assert np.all(opt.state_dict()["m/w"] != 123.0)


def test_state_of_an_unstepped_optimizer_round_trips():
    opt = optimizer_from_state(through_npz(Adam(lr=0.01).state_dict()))
    assert isinstance(opt, Adam) and opt.lr == 0.01 and opt.iterations == 0
    got = run(opt, np.ones(2), [np.ones(2)])
    np.testing.assert_array_equal(got, run(Adam(lr=0.01), np.ones(2), [np.ones(2)]))


def test_load_state_dict_rejects_another_optimizers_state():
    state = Adam().state_dict()
    with pytest.raises(ValueError, match="'rmsprop'.*'adam'"):
        RMSprop().load_state_dict(state)


@pytest.mark.parametrize("mutate, match", [
    (lambda s: s.pop("lr"), "missing keys.*lr"),
    (lambda s: s.pop("name"), "name"),
    (lambda s: s.update(name=np.array("adagrad")), "adagrad"),
    (lambda s: s.update(name=np.array(3)), "name"),
    (lambda s: s.update(lr=np.array(-1.0)), "lr: expected a number > 0"),
    (lambda s: s.update(iterations=np.array(-1)), "iterations"),
    (lambda s: s.update(iterations=np.array(1.5)), "iterations"),
    (lambda s: s.update({"bogus/w": np.zeros(3)}), "unknown key 'bogus/w'"),
    (lambda s: s.update(extra=np.zeros(3)), "unknown key 'extra'"),
    (lambda s: s.pop("v/w"), "same parameters"),
    (lambda s: s.update({"m/w": np.zeros(4)}), "same shapes"),
    (lambda s: s.update({"m/w": np.zeros(3, dtype=int)}), "floating-point"),
])
def test_bad_state_raises_and_leaves_optimizer_unchanged(mutate, match):
    opt = Adam(lr=0.5)
    params = {"w": np.ones(3)}
    opt.step(params, {"w": np.ones(3)})
    before = opt.state_dict()
    state = opt.state_dict()
    mutate(state)
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(state)
    with pytest.raises(ValueError, match=match):
        optimizer_from_state(state)
    after = opt.state_dict()
    assert after.keys() == before.keys()
    assert all(np.array_equal(after[k], before[k]) for k in before)


# ----------------------------------------------------------------------------------------
# Validation at the public boundary
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, cls", [
    ("sgd", SGD), ("SGD", SGD), ("rmsprop", RMSprop), ("RMSProp", RMSprop),
    (" Adam ", Adam), ("ADAM", Adam)])
def test_get_optimizer_accepts_names_case_insensitively(name, cls):
    assert type(get_optimizer(name)) is cls


def test_get_optimizer_passes_an_instance_through():
    opt = Adam(lr=0.1)
    assert get_optimizer(opt) is opt
    with pytest.raises(ValueError, match="lr"):
        get_optimizer(opt, lr=0.2)


def test_get_optimizer_unknown_name_raises_naming_the_argument():
    with pytest.raises(ValueError, match=r"name_or_instance: expected one of .*'adam'.*got 'adamw'"):
        get_optimizer("adamw")
    with pytest.raises(TypeError, match="name_or_instance"):
        get_optimizer(3)


def test_get_optimizer_unknown_hyperparameter_raises():
    with pytest.raises(ValueError, match=r"unknown hyperparameter.*'rho'.*'sgd'"):
        get_optimizer("sgd", rho=0.9)


@pytest.mark.parametrize("name, hyper, match", [
    ("sgd", dict(lr=0.0), "lr: expected a number > 0, got 0.0"),
    ("sgd", dict(lr=-0.1), "lr: expected a number > 0"),
    ("adam", dict(lr=float("nan")), "lr: expected a finite number"),
    ("adam", dict(lr=float("inf")), "lr: expected a finite number"),
    ("adam", dict(lr="0.1"), "lr: expected a real number, got '0.1'"),
    ("adam", dict(lr=True), "lr: expected a real number"),
    ("sgd", dict(momentum=1.0), r"momentum: expected a number in \[0, 1\), got 1.0"),
    ("sgd", dict(momentum=-0.5), "momentum: expected a number in"),
    ("sgd", dict(nesterov="yes"), "nesterov: expected a bool"),
    ("sgd", dict(nesterov=True), "nesterov=True requires momentum > 0"),
    ("rmsprop", dict(rho=1.0), r"rho: expected a number in \[0, 1\)"),
    ("rmsprop", dict(rho=-0.1), "rho: expected a number in"),
    ("rmsprop", dict(epsilon=0.0), "epsilon: expected a number > 0"),
    ("adam", dict(beta1=1.0), "beta1: expected a number in"),
    ("adam", dict(beta2=1.5), "beta2: expected a number in"),
    ("adam", dict(epsilon=-1e-8), "epsilon: expected a number > 0"),
])
def test_bad_hyperparameters_raise_naming_the_argument(name, hyper, match):
    with pytest.raises(ValueError, match=match):
        get_optimizer(name, **hyper)


def test_lr_setter_validates():
    opt = RMSprop()
    with pytest.raises(ValueError, match="lr: expected a number > 0"):
        opt.lr = 0
    assert opt.lr == 1e-3
    opt.lr = np.float32(0.5)
    assert opt.lr == 0.5 and type(opt.lr) is float


W = np.ones(3)


@pytest.mark.parametrize("params, grads, match", [
    ({"w": W}, {}, r"grads: expected the keys of params; missing from grads: \['w'\]"),
    ({"w": W}, {"w": W, "b": np.ones(1)}, r"not in params: \['b'\]"),
    ({"w": W}, {"w": np.ones(4)}, r"grads\['w'\]: expected the shape .* got \(4,\)"),
    ({"w": np.ones(3, dtype=int)}, {"w": W},
     r"params\['w'\]: expected a floating-point ndarray, got ndarray of dtype int"),
    ({"w": [1.0, 2.0]}, {"w": np.ones(2)},
     r"params\['w'\]: expected a floating-point ndarray, got list"),
    ({"w": W}, {"w": [1.0, 2.0, 3.0]}, r"grads\['w'\]: expected a floating-point ndarray"),
    ([W], {"w": W}, "params: expected a dict"),
])
def test_mismatched_grads_raise_naming_the_argument(params, grads, match):
    with pytest.raises(ValueError, match=match):
        Adam().step(params, grads)
    np.testing.assert_array_equal(W, 1.0)  # nothing was updated


def test_read_only_params_raise():
    w = np.ones(3)
    w.flags.writeable = False
    with pytest.raises(ValueError, match=r"params\['w'\]: expected a writable array"):
        SGD().step({"w": w}, {"w": np.ones(3)})


def test_params_must_match_the_state_already_held():
    opt = RMSprop()
    opt.step({"w": np.ones(3)}, {"w": np.ones(3)})
    with pytest.raises(ValueError, match=r"params\['w'\]: expected the optimizer state 'v/w''s"):
        opt.step({"w": np.ones(4)}, {"w": np.ones(4)})
    with pytest.raises(ValueError, match="dtype float64, got shape .* dtype float32"):
        opt.step({"w": np.ones(3, np.float32)}, {"w": np.ones(3, np.float32)})
    with pytest.raises(ValueError, match="params: expected the keys"):
        opt.step({"u": np.ones(3)}, {"u": np.ones(3)})
    assert opt.iterations == 1  # failed steps do not count


def test_repr_and_config():
    assert repr(Adam()) == "Adam(lr=0.001, beta1=0.9, beta2=0.999, epsilon=1e-07)"
    assert RMSprop(lr=0.01).get_config() == {"lr": 0.01, "rho": 0.9, "epsilon": 1e-7}
    assert isinstance(SGD(), Optimizer)


# ----------------------------------------------------------------------------------------
# Subnormal flushing
# ----------------------------------------------------------------------------------------

def is_subnormal(a):
    a = np.abs(np.asarray(a))
    return (a > 0) & (a < np.finfo(a.dtype).tiny)


FLUSH_CASES = [
    # fast decays, so the float64 state passes through the subnormal range
    # (below 2.2e-308) within ~1500 steps
    ("sgd", dict(lr=0.01, momentum=0.5), sgd_trajectory),
    ("rmsprop", dict(lr=1e-3, rho=0.5, epsilon=1e-7), rmsprop_trajectory),
    ("adam", dict(lr=1e-3, beta1=0.5, beta2=0.6, epsilon=1e-7), adam_trajectory),
]


@pytest.mark.parametrize("name, hyper, trajectory", FLUSH_CASES, ids=["sgd", "rmsprop", "adam"])
def test_state_that_would_go_subnormal_is_flushed_to_zero(name, hyper, trajectory):
    # entry 0 always gets a gradient; entries 1 and 2 only for the first few steps,
    # then zero, so their running averages decay geometrically toward 0
    rng = np.random.default_rng(7)
    n = 1500
    grads = []
    for t in range(n):
        g = rng.standard_normal(3)
        if t >= 5:
            g[1:] = 0.0
        grads.append(g)
    p0 = np.array([1.0, -0.5, 2.0])

    opt = get_optimizer(name, **hyper)
    params = {"w": p0.copy()}
    steps_with_subnormal_reference = 0
    for g, (want, ref_state) in zip(grads, trajectory(p0.copy(), grads, **hyper)):
        opt.step(params, {"w": g})
        state = opt.state_dict()
        for slot, ref in ref_state.items():
            got = state[f"{slot}/w"]
            # the optimizer never carries subnormal state ...
            assert not is_subnormal(got).any()
            # ... it holds exact zeros where the plain formula goes subnormal,
            # and the plain formula's values everywhere else
            sub = is_subnormal(ref)
            steps_with_subnormal_reference += sub.any()
            assert np.all(got[sub] == 0.0)
            assert rel_err(got[~sub], ref[~sub]) < 1e-12
        # ... and the parameters match the plain formula to float noise
        assert rel_err(params["w"], want) < 1e-12

    # the plain formula really did go subnormal for a good stretch of steps
    assert steps_with_subnormal_reference > 20
    assert all(np.all(a[1:] == 0.0) for k, a in opt.state_dict().items() if "/" in k)


def test_float32_state_is_flushed_before_it_would_go_subnormal():
    # one kick then zero gradients: v = (1 - rho) g^2 rho^t falls below float32's
    # tiny (1.2e-38) after about 100 steps with rho = 0.5
    opt = RMSprop(rho=0.5)
    params = {"w": np.ones(4, dtype=np.float32)}
    opt.step(params, {"w": np.array([1e-3, 1.0, 10.0, -1e-3], dtype=np.float32)})
    zero = {"w": np.zeros(4, dtype=np.float32)}
    v_ref = opt.state_dict()["v/w"].astype(np.float32)
    saw_subnormal_reference = False
    for _ in range(200):
        opt.step(params, zero)
        v_ref = np.float32(0.5) * v_ref  # the unflushed recurrence, in float32
        saw_subnormal_reference |= is_subnormal(v_ref).any()
        v = opt.state_dict()["v/w"]
        assert v.dtype == np.float32 and not is_subnormal(v).any()
    assert saw_subnormal_reference
    assert np.all(opt.state_dict()["v/w"] == 0.0)


def test_flushing_keeps_normal_values_exact():
    # values at and just above tiny are left alone; only |s| < tiny is zeroed
    tiny = np.finfo(np.float64).tiny
    opt = SGD(lr=1.0, momentum=0.5)
    params = {"w": np.zeros(4)}
    opt.step(params, {"w": np.zeros(4)})
    state = opt.state_dict()
    state["velocity/w"] = np.array([4 * tiny, 2 * tiny, -2 * tiny, tiny])
    opt.load_state_dict(state)
    opt.step(params, {"w": np.zeros(4)})
    # halved: 2 tiny and tiny and -tiny stay, tiny/2 is subnormal and is flushed
    np.testing.assert_array_equal(
        opt.state_dict()["velocity/w"], [2 * tiny, tiny, -tiny, 0.0])


@pytest.mark.skipif(sys.version_info < (3, 10), reason="needs sys.stdlib_module_names")
def test_module_imports_with_only_numpy_and_the_standard_library():
    # load the file on its own, in a fresh interpreter, so the package __init__ (and
    # whatever it may import) does not count
    path = os.path.abspath(npvae.optim.__file__)
    code = (
        "import importlib.util, sys\n"
        "before = set(sys.modules)\n"
        f"spec = importlib.util.spec_from_file_location('npvae_optim_alone', {path!r})\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "top = {m.partition('.')[0] for m in set(sys.modules) - before}\n"
        "print(sorted(top - set(sys.stdlib_module_names) - {'numpy'}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("name", ["sgd", "rmsprop", "adam"])
def test_a_repeated_step_skips_no_check_that_could_fail(name):
    """step checks its arguments once per set of arrays (the same arrays again: checked then);
    a new array, a changed shape or a parameter made read-only is checked again."""
    from npvae.optim import get_optimizer
    opt = get_optimizer(name)
    params = {"w": np.ones((3, 2)), "b": np.zeros(2)}
    grads = {"w": np.full((3, 2), 0.1), "b": np.full(2, 0.1)}
    opt.step(params, grads)
    opt.step(params, grads)
    with pytest.raises(ValueError, match=r"grads\['b'\]: expected the shape"):
        opt.step(params, {"w": grads["w"], "b": np.zeros(3)})
    params["b"].flags.writeable = False
    with pytest.raises(ValueError, match=r"params\['b'\]: expected a writable array"):
        opt.step(params, grads)
    params["b"].flags.writeable = True
    grads["w"].shape = (2, 3)
    with pytest.raises(ValueError, match=r"grads\['w'\]: expected the shape"):
        opt.step(params, grads)
