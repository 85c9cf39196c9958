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
    assert len(calls) == 1 + 7 * 4  # f(p) once, then p +- h and p +- 2h per coordinate


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


# ---------------------------------------------------------------------------
# check_all and format_table
# ---------------------------------------------------------------------------
def tanh_model(seed):
    """check_all's default architecture, with nonzero biases."""
    from npvae.model import VAE
    model = VAE(input_dim=6, hidden=(5, 4), latent_dim=2, activation="tanh", seed=seed, backend="numpy")
    rng = np.random.default_rng(seed + 100)
    for name, p in model.params.items():
        if name.endswith(".b"):
            p[:] = 0.3 * rng.standard_normal(p.shape)
    return model


def failed(rows, check_prefix=""):
    return {(r["check"], r["parameter"]) for r in rows if r["check"].startswith(check_prefix) and not r["passed"]}


def test_check_all_passes_and_covers_every_op_objective_estimator_and_parameter():
    from npvae import objectives
    rows = gradcheck.check_all(seed=0)
    assert all(set(r) == {"check", "parameter", "max_rel_error", "tolerance", "passed", "kinks"} for r in rows)
    # the one planted ReLU input at 0 is the only kink: the smooth ops and the tanh model have none
    assert {(r["check"], r["parameter"]): r["kinks"] for r in rows if r["kinks"]} == {("ops.relu", "a"): 1}
    checks = {r["check"] for r in rows}
    assert {f"ops.{name}" for name in gradcheck.op_pairs(ops)} <= checks
    assert {f"objectives.{name}" for name in gradcheck.op_pairs(objectives)} <= checks
    assert {"ops.dense", "ops.reparam", "ops.logsumexp", "objectives.iwae"} <= checks   # the pairs were found
    names = set(tanh_model(0).params)
    for check in ("model elbo/analytic", "model elbo/mc", "model iwae/analytic"):
        assert {r["parameter"] for r in rows if r["check"] == check} == names
    for check in ("model miwae(outer=2, inner=2)/analytic", "model ciwae(beta=0.3)/analytic",
                  "model piwae(outer=2, inner=2)/analytic"):
        assert {r["parameter"] for r in rows if r["check"] == check} == names
    for estimator in ("stl elbo/mc", "stl iwae/analytic", "dreg iwae/analytic", "stl miwae(outer=2, inner=2)/",
                      "dreg miwae(outer=2, inner=2)/", "stl ciwae(beta=0.3)/", "dreg piwae(outer=2, inner=2)/"):
        assert {r["parameter"] for r in rows if r["check"].startswith(estimator)} == names
    assert {"objectives.miwae", "objectives.ciwae"} <= checks
    assert not failed(rows), failed(rows)
    assert max(r["max_rel_error"] for r in rows) < 1e-6


def test_check_all_reports_a_broken_op_backward_as_failed(monkeypatch):
    def reparam_backward_without_the_half(dz, cache):
        sigma, eps = cache
        return dz.sum(axis=1), sigma * (dz * eps).sum(axis=1)

    monkeypatch.setattr(ops, "reparam_backward", reparam_backward_without_the_half)
    rows = gradcheck.check_all(seed=1, objectives=["elbo/analytic"], estimators=[])
    assert failed(rows, "ops.") == {("ops.reparam", "log_var")}
    # The model composes the same op: every encoder parameter's gradient goes wrong, no decoder one.
    model_failures = failed(rows, "model")
    assert model_failures and all(p.startswith("enc.") for _, p in model_failures)
    assert all(r["passed"] for r in rows if r["check"] == "model elbo/analytic" and r["parameter"].startswith("dec."))


def test_check_all_reports_a_wrong_model_gradient_for_that_parameter_only():
    model = tanh_model(2)
    loss_and_grads = model.loss_and_grads

    def one_gradient_off_by_one_percent(*args, **kwargs):
        loss, grads = loss_and_grads(*args, **kwargs)
        grads = dict(grads, **{"dec.out.b": grads["dec.out.b"] * 1.01})
        return loss, grads

    model.loss_and_grads = one_gradient_off_by_one_percent
    rows = gradcheck.check_all(model=model, include_ops=False, estimators=[])
    from npvae import objectives
    checks = {f"model {objectives.get(o).label}/{kl}" for o, kl in gradcheck.MODEL_CHECKS}
    assert {"model elbo/analytic", "model elbo/mc", "model iwae/analytic", "model miwae(outer=2, inner=2)/analytic",
            "model ciwae(beta=0.3)/analytic", "model piwae(outer=2, inner=2)/analytic"} == checks
    assert failed(rows) == {(c, "dec.out.b") for c in checks}
    wrong = [r["max_rel_error"] for r in rows if not r["passed"]]
    assert all(0.005 < e < 0.02 for e in wrong), wrong


def test_check_all_estimator_rows_catch_a_wrong_sample_weight(monkeypatch):
    # DReG weighted by w~ (as STL) instead of w~^2: its encoder fails its surrogate, its decoder does not.
    from npvae import objectives
    monkeypatch.setattr(objectives.IWAE, "path_weights", lambda self, cache: np.ones_like(cache[0]))
    rows = gradcheck.check_all(seed=0, objectives=[], estimators=["iwae/analytic/dreg", "iwae/analytic/stl"],
                               include_ops=False)
    bad = failed(rows)
    assert bad and all(check == "dreg iwae/analytic (surrogate)" for check, _ in bad)
    assert all(r["passed"] for r in rows if r["check"].startswith("stl"))


def test_check_all_fails_an_op_pair_it_has_no_inputs_for(monkeypatch):
    monkeypatch.setattr(ops, "square_forward", lambda a: (a * a, a), raising=False)
    monkeypatch.setattr(ops, "square_backward", lambda dout, a: 2 * a * dout, raising=False)
    monkeypatch.setattr(ops, "__all__", ops.__all__ + ["square_forward", "square_backward"])
    rows = gradcheck.check_all(objectives=[], estimators=[])
    assert "square" in gradcheck.op_pairs(ops)
    assert failed(rows) == {("ops.square", "(no inputs in gradcheck)")}


def test_check_all_validates_its_arguments():
    from npvae.model import VAE
    with pytest.raises(ValueError, match="model.dtype: expected float64"):
        gradcheck.check_all(model=VAE(input_dim=4, hidden=(3,), latent_dim=2, dtype=np.float32, backend="numpy"))
    with pytest.raises(ValueError, match="objectives: expected entries such as 'elbo/mc'.*got 'elbo'"):
        gradcheck.check_all(objectives=["elbo"], include_ops=False)
    with pytest.raises(ValueError, match="estimators: expected entries such as 'iwae/analytic/dreg'"):
        gradcheck.check_all(objectives=[], estimators=[("iwae", "dreg")], include_ops=False)
    with pytest.raises(ValueError, match="estimator: 'dreg'"):
        gradcheck.check_all(objectives=[], estimators=["elbo/mc/dreg"], include_ops=False)


def test_format_table_aligns_columns_and_counts_failures():
    rows = [
        {"check": "ops.dense", "parameter": "W", "max_rel_error": 3.2e-11, "tolerance": 1e-6, "passed": True},
        {"check": "model iwae/analytic", "parameter": "enc.logvar.W", "max_rel_error": 0.25, "tolerance": 1e-6,
         "passed": False},
        {"check": "ops.new", "parameter": "(no inputs in gradcheck)", "max_rel_error": float("nan"),
         "tolerance": 1e-6, "passed": False},
    ]
    lines = gradcheck.format_table(rows).splitlines()
    assert lines[0].split()[:2] == ["check", "parameter"]
    body = lines[2:-1]
    assert len(body) == 3
    # the parameter column starts at the same offset on every line; numbers are right-aligned
    column = lines[0].index("parameter")
    assert [line[column:].split()[0] for line in body] == ["W", "enc.logvar.W", "(no"]
    assert len({line.index("e-") + 4 for line in body[:2]} | {lines[0].index("max rel error") + 13}) == 1
    assert body[0].endswith("ok") and body[1].endswith("FAIL") and body[2].endswith("FAIL")
    assert "3.20e-11" in body[0] and "2.50e-01" in body[1] and "nan" in body[2]
    assert lines[-1] == "1 of 3 passed, 2 FAILED"


# ---------------------------------------------------------------------------
# Kinks: told apart from mismatches, never hiding a wrong gradient
# ---------------------------------------------------------------------------
def test_relu_input_at_zero_is_a_kink_with_its_one_sided_slopes():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2, 3, 4))
    a[np.abs(a) < 0.1] = 0.5                         # the other inputs far from 0
    a[1, 2, 0] = 0.0                                 # planted exactly on the kink
    dout = rng.normal(size=a.shape)
    errors = gradcheck.check_op(ops.relu_forward, ops.relu_backward, [a], dout=dout, h=1e-4)
    assert errors[0] < 1e-8                          # not a mismatch
    (kink,) = errors.kinks[0]
    assert kink.index == (1, 2, 0)
    assert kink.left == 0.0                          # relu is flat below 0
    assert kink.right == pytest.approx(dout[1, 2, 0], rel=1e-9)
    assert kink.central == pytest.approx(dout[1, 2, 0] / 2, rel=1e-9)   # what a kink-blind check compared
    assert kink.analytic == 0.0 and kink.side == "left"  # relu_backward takes the subgradient 0 at 0
    assert kink.where == () and kink.h == 1e-4


def test_kink_beside_p_is_matched_on_the_side_it_does_not_cross():
    # An input at 1.5 h: the left stencil (p - 2h) crosses the kink, the right one is clean and is f'(p).
    h = 1e-4
    a = np.array([[1.5 * h, -0.7, 0.9]])
    dout = np.array([[0.8, -1.1, 0.4]])
    errors = gradcheck.check_op(ops.relu_forward, ops.relu_backward, [a], dout=dout, h=h)
    (kink,) = errors.kinks[0]
    assert kink.index == (0, 0) and kink.side == "right"
    assert kink.right == pytest.approx(0.8, rel=1e-9) and abs(kink.left - 0.8) > 0.1
    assert errors[0] < 1e-8


def test_smooth_functions_have_no_kinks():
    p = np.linspace(-3.0, 3.0, 25)
    report = gradcheck.gradient_report(lambda: np.sum(np.tanh(p) * p ** 3), p,
                                       np.tanh(p) * 3 * p ** 2 + (1 - np.tanh(p) ** 2) * p ** 3)
    assert report.kinks == () and report.n_coords == 25 and report.error < 1e-8


def test_a_wrong_gradient_at_a_kink_is_still_caught():
    a = np.array([[0.0, 1.3, -0.4]])
    dout = np.array([[2.0, 1.0, 1.0]])

    def halving_backward(dout, mask):         # the subgradient 1/2 at 0: the central difference's value
        return dout * np.where(a == 0.0, 0.5, mask)

    def scaled_backward(dout, mask):          # 1% off at every active input
        return 1.01 * dout * mask

    half = gradcheck.check_op(ops.relu_forward, halving_backward, [a], dout=dout)
    assert half[0] == pytest.approx(0.5) and half.kinks[0][0].side == ""      # equals neither slope
    scaled = gradcheck.check_op(ops.relu_forward, scaled_backward, [a], dout=dout)
    assert 0.005 < scaled[0] < 0.02                  # the kink passes; the coordinate beside it fails


def test_probe_decides_whether_a_candidate_is_a_kink():
    # |p| at 0 has one-sided slopes -1 and +1. With a probe that sees the sign change it is a kink;
    # with one that sees nothing it is checked as differentiable, and the gradient 1 fails.
    p = np.array([0.0])
    f = lambda: float(np.abs(p).sum())            # noqa: E731
    seen = gradcheck.gradient_report(f, p, np.array([1.0]), probe=lambda: {"sign": p > 0})
    assert seen.error == 0.0 and seen.kinks[0].where == ("sign",) and seen.kinks[0].side == "right"
    blind = gradcheck.gradient_report(f, p, np.array([1.0]), probe=lambda: {})
    assert blind.kinks == () and blind.error == 1.0


def zero_input_relu_model():
    """A ReLU model whose first example is all zeros: with zero biases, every encoder unit of that
    example sits exactly at its kink, and moves up with its bias."""
    from npvae.model import VAE
    model = VAE(input_dim=6, hidden=(5,), latent_dim=2, activation="relu", seed=1, backend="numpy")
    rng = np.random.default_rng(1)
    x = rng.random((3, 6))
    x[0] = 0.0
    return model, x, model.sample_eps(3, 4, rng)


def test_check_model_reports_a_planted_kink_with_the_true_one_sided_slopes():
    model, x, eps = zero_input_relu_model()
    errors = gradcheck.check_model(model, x, eps, objective="iwae")
    assert max(errors.values()) < 1e-6, errors
    kinks = errors.kinks["enc.0.b"]
    assert [k.index for k in kinks] == [(j,) for j in range(5)]
    assert all(k.where == ("enc.0",) and k.side == "left" for k in kinks)
    # the one-sided slopes are the gradients just below and just above the kink
    b = model.params["enc.0.b"]
    for k in kinks:
        j = k.index[0]
        slopes = []
        for shift in (-1e-9, 1e-9):
            b[j] = shift
            slopes.append(model.loss_and_grads(x, eps, objective="iwae")[1]["enc.0.b"][j])
            b[j] = 0.0
        assert k.left == pytest.approx(slopes[0], rel=1e-6) and k.right == pytest.approx(slopes[1], rel=1e-6)
        assert abs(slopes[1] - slopes[0]) > 1e-3 * abs(slopes[1])        # a real jump
    assert "kinks={'enc.0.b': 5" in repr(errors)


def test_check_model_catches_a_wrong_gradient_at_a_kink():
    model, x, eps = zero_input_relu_model()
    loss_and_grads = model.loss_and_grads

    def right_slope_at_zero(*args, **kwargs):      # a backward that counts the unit at 0 as active
        loss, grads = loss_and_grads(*args, **kwargs)
        b = model.params["enc.0.b"]
        b[0] = 1e-9
        grads["enc.0.b"][0] = loss_and_grads(*args, **kwargs)[1]["enc.0.b"][0] * 1.01   # and 1% off
        b[0] = 0.0
        return loss, grads

    model.loss_and_grads = right_slope_at_zero
    errors = gradcheck.check_model(model, x, eps, objective="iwae")
    kink = errors.kinks["enc.0.b"][0]
    assert kink.side == "" and 0.005 < errors["enc.0.b"] < 0.02
    assert all(errors[n] < 1e-6 for n in errors if n != "enc.0.b")


def test_tanh_model_has_no_kinks_even_at_zero_biases():
    from npvae.model import VAE
    model = VAE(input_dim=6, hidden=(5, 4), latent_dim=2, activation="tanh", seed=0, backend="numpy")
    rng = np.random.default_rng(0)
    errors = gradcheck.check_model(model, rng.random((3, 6)), model.sample_eps(3, 5, rng), objective="iwae")
    assert not any(errors.kinks.values()) and max(errors.values()) < 1e-6


def test_readme_example_passes_and_lists_its_kinks():
    # The README's snippet, literally: zero biases put ReLU inputs exactly at 0 (it reported dec.1.b: 0.21).
    import npvae
    m = npvae.VAE(seed=0)
    r = np.random.default_rng(0)
    m.sample_eps(100, 5, r)
    s = npvae.VAE(input_dim=6, hidden=(5, 4), latent_dim=2)
    errors = npvae.gradcheck.check_model(s, r.random((3, 6)), s.sample_eps(3, 5, r), objective="iwae")
    assert max(errors.values()) < 1e-7, errors
    assert len(errors.kinks["dec.1.b"]) >= 1
    assert all(k.side for ks in errors.kinks.values() for k in ks)
    assert isinstance(errors, dict) and set(errors) == set(s.params)


def test_check_all_counts_kinks_of_a_relu_model_and_the_table_marks_them():
    from npvae.model import VAE
    # zero biases: among 8 x 5 decoder rows, some have every dec.0 unit off, so dec.1's inputs sit at 0
    model = VAE(input_dim=6, hidden=(5, 4), latent_dim=2, activation="relu", seed=0, backend="numpy")
    rows = gradcheck.check_all(seed=0, model=model, objectives=["iwae/analytic"], estimators=["iwae/analytic/dreg"],
                               batch=8, mc_samples=5)
    assert all(r["passed"] for r in rows), failed(rows)
    kink_rows = {(r["check"], r["parameter"]): r["kinks"] for r in rows if r["kinks"]}
    assert kink_rows == {("ops.relu", "a"): 1, ("model iwae/analytic", "dec.1.b"): 5}
    lines = gradcheck.format_table(rows).splitlines()
    column = lines[0].index("kinks") + len("kinks")
    relu_line = next(line for line in lines if line.startswith("ops.relu"))
    assert relu_line[:column].rstrip().endswith("1") and relu_line.endswith("ok")
    assert lines[-2].startswith("kinks: ") and "one-sided slopes" in lines[-2]
    assert lines[-1] == f"{len(rows)} of {len(rows)} passed"
