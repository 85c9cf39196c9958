"""fit: reproducibility, fixed vs fresh noise, checkpoints, resume bit for bit, failures."""

import io as stdio
import json
from functools import partial

import numpy as np
import pytest

import npvae
from npvae import optim
from npvae.train import load_checkpoint

import _helpers  # noqa: E402


def make_data(n=230, d=12, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.random((3, d))
    x = np.clip(centers[rng.integers(0, 3, n)] + 0.1 * rng.standard_normal((n, d)), 0, 1)
    return x[: n - 30], x[n - 30:]


small_model = partial(_helpers.small_model, input_dim=12, hidden=(8,), activation="relu", seed=0, bias_scale=0)


def run(epochs=3, seed=0, **kw):
    x, xv = make_data()
    model = small_model()
    kw.setdefault("batch_size", 64)
    history = npvae.fit(model, x, epochs=epochs, validation_data=xv, seed=seed, verbose=0, **kw)
    return model, history


def strip_seconds(history):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


def assert_same_params(a, b):
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k], err_msg=k)


def test_history_records_and_loss_decreases():
    _, history = run(epochs=6, mc_samples=2)
    assert len(history) == 6
    assert [r["epoch"] for r in history] == [1, 2, 3, 4, 5, 6]
    for key in ("loss", "recon", "kl", "val_loss", "val_recon", "val_kl", "seconds"):
        assert np.all(np.isfinite(history[key])), key
    assert history["loss"][-1] < history["loss"][0]
    assert history["val_loss"][-1] < history["val_loss"][0]
    np.testing.assert_allclose(history["loss"], history["recon"] + history["kl"], rtol=1e-12)


def test_final_partial_batch_is_a_step():
    x, _ = make_data()  # 200 examples, batch 64 -> 4 steps (64, 64, 64, 8)
    opt = optim.RMSprop()
    npvae.fit(small_model(), x, epochs=2, batch_size=64, optimizer=opt, verbose=0)
    assert opt.iterations == 8


def test_same_seed_same_numbers_other_seed_other_numbers():
    a, ha = run(seed=5)
    b, hb = run(seed=5)
    c, hc = run(seed=6)
    assert strip_seconds(ha) == strip_seconds(hb)
    assert_same_params(a, b)
    assert ha["loss"][-1] != hc["loss"][-1]


def test_iwae_objective_trains():
    _, history = run(epochs=4, mc_samples=5, objective="iwae")
    assert history["loss"][-1] < history["loss"][0]


def wrap_steps(model, monkeypatch, around):
    """Replace ``model.engine.loss_and_grads`` (what fit calls once a step) by
    ``around(n, step, x, eps)``: ``n`` counts the calls from 1, ``step()`` runs the real one."""
    original, calls = model.engine.loss_and_grads, [0]

    def wrapped(x, eps, *args, **kwargs):
        calls[0] += 1
        return around(calls[0], lambda: original(x, eps, *args, **kwargs), x, eps)

    monkeypatch.setattr(model.engine, "loss_and_grads", wrapped)


def spy_batches(model, monkeypatch):
    seen = []

    def spy(n, step, x, eps):
        seen.append((x.copy(), eps.copy()))
        return step()

    wrap_steps(model, monkeypatch, spy)
    return seen


@pytest.mark.parametrize("noise", ["fixed", "fresh"])
def test_fixed_noise_reuses_one_eps_per_example(noise, monkeypatch):
    x, _ = make_data()
    model = small_model()
    seen = spy_batches(model, monkeypatch)
    npvae.fit(model, x, epochs=2, batch_size=50, mc_samples=3, noise=noise, verbose=0)
    eps_by_row = [{}, {}]
    for i, (xb, eps) in enumerate(seen):
        epoch = i // 4
        for row, e in zip(xb, eps):
            eps_by_row[epoch][row.tobytes()] = e
    assert len(eps_by_row[0]) == len(eps_by_row[1]) == 200
    same = [np.array_equal(eps_by_row[0][k], eps_by_row[1][k]) for k in eps_by_row[0]]
    assert all(same) if noise == "fixed" else not any(same)
    # shuffled either way: the first batches of the two epochs differ
    assert not np.array_equal(seen[0][0], seen[4][0])


def test_dynamic_binarization_gives_binary_targets(monkeypatch):
    x, _ = make_data()
    model = small_model()
    seen = spy_batches(model, monkeypatch)
    npvae.fit(model, x, epochs=1, batch_size=100, binarize="dynamic", verbose=0)
    assert all(set(np.unique(xb)) <= {0.0, 1.0} for xb, _ in seen)


def test_checkpoint_resume_is_bit_for_bit(tmp_path):
    x, xv = make_data()
    straight = small_model()
    h_straight = npvae.fit(straight, x, epochs=4, batch_size=64, mc_samples=2, validation_data=xv, verbose=0)

    ck = tmp_path / "run" / "checkpoint.npz"
    first = small_model()
    npvae.fit(first, x, epochs=2, batch_size=64, mc_samples=2, validation_data=xv, verbose=0, checkpoint=ck)
    assert load_checkpoint(ck)["epoch"] == 2
    resumed = small_model(seed=99)  # its own init is overwritten by the checkpoint
    h_resumed = npvae.fit(resumed, x, epochs=4, batch_size=64, mc_samples=2, validation_data=xv, verbose=0,
                          checkpoint=ck, resume=True)
    assert strip_seconds(h_resumed) == strip_seconds(h_straight)
    assert_same_params(resumed, straight)


def test_interrupted_run_resumes_to_uninterrupted_numbers(tmp_path, monkeypatch):
    x, _ = make_data()
    straight = small_model()
    npvae.fit(straight, x, epochs=3, batch_size=64, verbose=0)

    ck = tmp_path / "ck.npz"
    model = small_model()

    def interrupt_in_third_epoch(n, step, *_):
        if n == 10:  # 4 steps an epoch: step 2 of epoch 3
            raise KeyboardInterrupt
        return step()

    wrap_steps(model, monkeypatch, interrupt_in_third_epoch)
    with pytest.raises(KeyboardInterrupt):
        npvae.fit(model, x, epochs=3, batch_size=64, verbose=0, checkpoint=ck)
    assert load_checkpoint(ck)["epoch"] == 2  # only the epoch in progress is lost

    fresh = small_model()
    npvae.fit(fresh, x, epochs=3, batch_size=64, verbose=0, checkpoint=ck, resume=True)
    assert_same_params(fresh, straight)


def test_resume_with_other_settings_is_refused(tmp_path):
    x, _ = make_data()
    ck = tmp_path / "ck.npz"
    npvae.fit(small_model(), x, epochs=1, batch_size=64, verbose=0, checkpoint=ck)
    with pytest.raises(ValueError, match=r"mc_samples: it has 1, this run has 4"):
        npvae.fit(small_model(), x, epochs=2, batch_size=64, mc_samples=4, verbose=0, checkpoint=ck, resume=True)


def test_nan_loss_stops_with_clear_message_and_keeps_checkpoint(tmp_path, monkeypatch):
    x, _ = make_data()
    ck = tmp_path / "ck.npz"
    model = small_model()

    def nan_in_second_epoch(n, step, *_):
        bound, grads = step()
        return (bound._replace(loss=float("nan")) if n == 6 else bound), grads

    wrap_steps(model, monkeypatch, nan_in_second_epoch)
    with pytest.raises(npvae.TrainingError, match=r"loss became nan at epoch 2, step 2/4.*epoch 1"):
        npvae.fit(model, x, epochs=3, batch_size=64, verbose=0, checkpoint=ck)
    state = load_checkpoint(ck)
    assert state["epoch"] == 1 and len(state["history"]) == 1


def test_progress_lines(capsys):
    x, xv = make_data()
    out = stdio.StringIO()
    npvae.fit(small_model(), x, epochs=2, batch_size=64, validation_data=xv, verbose=1, file=out)
    lines = out.getvalue().strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("Epoch 1/2  loss ") and "  val_loss " in lines[0] and lines[0].endswith(" s")
    npvae.fit(small_model(), x, epochs=1, verbose=0)
    assert capsys.readouterr().out == ""


def test_history_json_round_trip(tmp_path):
    _, history = run(epochs=2)
    path = history.save(tmp_path / "history.json")
    records = json.loads(path.read_text())
    assert records == history.records
    assert set(records[0]) >= {"epoch", "loss", "val_loss", "seconds"}


def test_float32_training_tracks_float64():
    x, xv = make_data()
    h = {}
    for dtype in (np.float64, np.float32):
        model = small_model(dtype=dtype)
        h[dtype] = npvae.fit(model, x, epochs=3, batch_size=64, validation_data=xv, verbose=0)
    np.testing.assert_allclose(h[np.float32]["loss"], h[np.float64]["loss"], rtol=1e-4)


@pytest.mark.parametrize("kwargs,match", [
    (dict(epochs=0), r"epochs: expected an integer >= 1, got 0"),
    (dict(batch_size=-1), r"batch_size: expected an integer >= 1, got -1"),
    (dict(mc_samples=0), r"mc_samples: expected an integer >= 1, got 0"),
    (dict(noise="frozen"), r"noise: expected one of 'fresh', 'fixed', got 'frozen'"),
    (dict(binarize="otsu"), r"binarize: expected one of"),
    (dict(objective="vae"), r"objective: expected one of"),
    (dict(optimizer="lbfgs"), r"lbfgs"),
    (dict(resume=True), r"resume: resuming needs a checkpoint path"),
    (dict(validation_data=np.zeros((3, 5))), r"validation_data: the model takes 12-dimensional inputs .* has 5 columns"),
    (dict(verbose=3), r"verbose: expected 0, 1 or 2"),
])
def test_bad_fit_arguments(kwargs, match):
    x, _ = make_data()
    with pytest.raises(ValueError, match=match):
        npvae.fit(small_model(), x, **{"epochs": 1, "verbose": 0, **kwargs})


def test_bad_training_data_is_named():
    with pytest.raises(ValueError, match=r"x_train: expected values in \[0.0, 1.0\]"):
        npvae.fit(small_model(), np.full((10, 12), 2.0), epochs=1, verbose=0)


def test_callback_sees_every_epoch_and_its_dict_joins_the_history(tmp_path):
    x, xv = make_data()
    seen = []

    def callback(model, record):
        seen.append((record["epoch"], "val_loss" in record, model.params["dec.out.b"].copy()))
        return {"marker": 10 * record["epoch"]}

    model = small_model()
    ck = tmp_path / "ck.npz"
    history = npvae.fit(model, x, epochs=3, batch_size=64, validation_data=xv, verbose=0, callback=callback,
                        checkpoint=ck)
    assert [e for e, _, _ in seen] == [1, 2, 3] and all(v for _, v, _ in seen)
    assert not np.array_equal(seen[0][2], seen[1][2])          # called with the trained model of that epoch
    assert list(history["marker"]) == [10, 20, 30]
    assert [r["marker"] for r in load_checkpoint(ck)["history"]] == [10, 20, 30]
    with pytest.raises(ValueError, match="callback: expected a callable"):
        npvae.fit(small_model(), x, epochs=1, verbose=0, callback=3)


# ---------------------------------------------------------------------------
# The sample-budget objectives through fit (outer, beta)
# ---------------------------------------------------------------------------
def test_miwae_with_one_group_trains_as_iwae_and_two_groups_do_not():
    a, ha = run(epochs=2, mc_samples=4, objective="iwae")
    b, hb = run(epochs=2, mc_samples=4, objective="miwae", outer=1)
    c, hc = run(epochs=2, mc_samples=4, objective="miwae", outer=2)
    assert_same_params(a, b)
    assert strip_seconds(ha) == strip_seconds(hb)
    assert hc["loss"][-1] != hb["loss"][-1]


def test_ciwae_trains_between_its_ends():
    _, h0 = run(epochs=1, mc_samples=4, objective="ciwae", beta=0.0)
    _, hi = run(epochs=1, mc_samples=4, objective="iwae")
    np.testing.assert_allclose(h0["loss"], hi["loss"], rtol=1e-9)       # beta = 0: the IWAE bound
    _, h1 = run(epochs=1, mc_samples=4, objective="ciwae", beta=1.0)
    _, he = run(epochs=1, mc_samples=4, objective="elbo", kl="mc")
    np.testing.assert_allclose(h1["loss"], he["loss"], rtol=1e-9)       # beta = 1: the sampled-KL ELBO


def test_fit_refuses_samples_that_do_not_fill_the_groups_and_bad_budget_settings():
    with pytest.raises(ValueError, match=r"mc_samples: miwae\(outer=3\) needs a multiple of outer=3"):
        run(epochs=1, mc_samples=4, objective="miwae", outer=3)
    with pytest.raises(ValueError, match=r"beta: expected a number in \[0, 1\], got 1.5"):
        run(epochs=1, mc_samples=2, objective="ciwae", beta=1.5)
    with pytest.raises(ValueError, match="outer: expected an integer >= 1"):
        run(epochs=1, mc_samples=2, objective="miwae", outer=0)


def test_a_resumed_budget_run_must_keep_its_outer(tmp_path):
    x, _ = make_data()
    ckpt = tmp_path / "c.npz"
    npvae.fit(small_model(), x, epochs=1, mc_samples=4, objective="miwae", outer=2, checkpoint=ckpt, verbose=0)
    with pytest.raises(ValueError, match="outer: it has 2, this run has 4"):
        npvae.fit(small_model(), x, epochs=2, mc_samples=4, objective="miwae", outer=4, checkpoint=ckpt,
                  resume=True, verbose=0)
