"""npvae.protocol and fit's protocol settings: Burda et al.'s choices, applied as theirs,
resumable bit for bit, and without them every number as before."""

import numpy as np
import pytest

import npvae
from npvae import optim, protocol
from npvae.train import load_checkpoint


def data(n=120, d=12, seed=0):
    return np.random.default_rng(seed).random((n, d))


def model(dtype=np.float64):
    return npvae.VAE(input_dim=12, hidden=(8,), latent_dim=3, activation="tanh", seed=0, dtype=dtype,
                     backend="numpy")


def losses(history):
    return [(r["loss"], r["recon"], r["kl"]) for r in history]


def test_fit_without_the_new_settings_equals_fit_with_their_defaults_given():
    x = data()
    a, b = model(), model()
    ha = npvae.fit(a, x, epochs=2, batch_size=32, binarize="dynamic", verbose=0)
    hb = npvae.fit(b, x, epochs=2, batch_size=32, binarize="dynamic", verbose=0, protocol="none",
                   lr_schedule="constant", output_bias="zero", shuffle=True)
    assert losses(ha) == losses(hb)
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    assert "lr" not in ha.records[0]


def test_the_schedule_is_their_stages_and_rounded_rates():
    assert protocol.BURDA_STAGE_ENDS == (1, 4, 13, 40, 121, 364, 1093, 3280)
    assert [protocol.stage_of_epoch(e) for e in (1, 2, 4, 5, 13, 14, 3280, 4000)] == [0, 1, 1, 2, 2, 3, 7, 7]
    rates = [protocol.learning_rate("burda", e, 1e-3) for e in protocol.BURDA_STAGE_ENDS]
    np.testing.assert_allclose(rates, [1e-3, 7.2e-4, 5.2e-4, 3.7e-4, 2.7e-4, 1.9e-4, 1.4e-4, 1e-4], rtol=1e-12)
    paper = [1e-3 * 10 ** (-i / 7) for i in range(8)]                # section 5, before their rounding
    assert np.max(np.abs(np.array(rates) / paper - 1)) < 0.016       # as learning_rate says
    assert protocol.learning_rate("constant", 500, 0.01) == 0.01


def test_fit_sets_the_scheduled_rate_each_epoch_and_records_it():
    opt = optim.Adam()
    history = npvae.fit(model(), data(), epochs=5, batch_size=40, optimizer=opt, lr_schedule="burda", verbose=0)
    np.testing.assert_allclose(history["lr"], [1e-3, 7.2e-4, 7.2e-4, 7.2e-4, 5.2e-4], rtol=1e-12)
    assert opt.lr == history["lr"][-1]


def test_a_run_of_the_protocol_resumes_bit_for_bit_across_stages(tmp_path):
    x = data()
    kw = dict(batch_size=20, protocol="burda", verbose=0, checkpoint=tmp_path / "c.npz", resume=True)
    whole = model()
    h_whole = npvae.fit(whole, x, epochs=5, **dict(kw, checkpoint=tmp_path / "whole.npz"))
    parts = model()
    npvae.fit(parts, x, epochs=2, **kw)
    again = model()                                        # a new process: fresh model and optimizer
    h_parts = npvae.fit(again, x, epochs=5, **kw)
    assert losses(h_parts) == losses(h_whole) and list(h_parts["lr"]) == list(h_whole["lr"])
    assert all(np.array_equal(again.params[k], whole.params[k]) for k in whole.params)


def test_the_protocol_sets_its_settings_and_records_them(tmp_path):
    x = data(n=100)
    h = npvae.fit(model(), x, epochs=1, protocol="burda", verbose=0, checkpoint=tmp_path / "c.npz")
    s = load_checkpoint(tmp_path / "c.npz")["settings"]
    assert {k: s[k] for k in ("protocol", "batch_size", "binarize", "kl", "shuffle", "lr_schedule",
                              "output_bias", "optimizer")} == dict(
        protocol="burda", batch_size=20, binarize="dynamic", kl="mc", shuffle=False, lr_schedule="burda",
        output_bias="data", optimizer="adam")
    assert s["optimizer_config"] == dict(lr=1e-3, beta1=0.99, beta2=0.999, epsilon=1e-4 / 20)
    assert list(h["lr"]) == [1e-3]
    npvae.fit(model(), x, epochs=1, protocol="burda", objective="iwae", mc_samples=2, verbose=0,
              checkpoint=tmp_path / "i.npz")
    assert load_checkpoint(tmp_path / "i.npz")["settings"]["kl"] == "analytic"   # the IWAE has no KL term


@pytest.mark.parametrize("change,words", [
    (dict(batch_size=50), "batch_size: protocol='burda' sets batch_size=20, got batch_size=50"),
    (dict(binarize="threshold"), "binarize: protocol='burda' sets binarize='dynamic'"),
    (dict(optimizer="SGD"), "optimizer: protocol='burda' sets optimizer='adam', got optimizer='sgd'"),
    (dict(optimizer=optim.RMSprop()), "optimizer: protocol='burda' trains with npvae.protocol.burda_adam"),
    (dict(optimizer=optim.Adam()), "optimizer: protocol='burda' trains with npvae.protocol.burda_adam"),
    (dict(protocol="theirs"), "protocol: expected one of"),
    (dict(lr_schedule="cosine"), "lr_schedule: expected one of"),
])
def test_a_setting_against_the_protocol_is_refused_naming_it(change, words):
    with pytest.raises(ValueError) as exc:
        npvae.fit(model(), data(), epochs=1, verbose=0, **dict(dict(protocol="burda"), **change))
    assert words in str(exc.value)


def test_their_adam_on_the_summed_gradient_is_burda_adam_on_the_mean():
    rng = np.random.default_rng(0)
    batch, steps = 20, 6
    p0 = rng.standard_normal(7)
    grads = [rng.standard_normal(7) * 10 ** rng.uniform(-3, 1) for _ in range(steps)]   # of the mean loss
    # optimizers.py of yburda/iwae without its one-step lag: v from 1, eps 1e-4, gradient of the sum
    p, m, v = p0.copy(), np.zeros(7), np.ones(7)
    for t, g in enumerate(grads, 1):
        G = batch * g
        m = 0.99 * m + 0.01 * G
        v = 0.999 * v + 0.001 * G ** 2
        p = p - 1e-3 * np.sqrt(1 - 0.999 ** t) / (1 - 0.99 ** t) * m / (np.sqrt(v) + 1e-4)
    opt, params = protocol.burda_adam(batch_size=batch), {"w": p0.copy()}
    protocol.start_burda_adam(opt, params, batch)
    for g in grads:
        opt.step(params, {"w": g})
    np.testing.assert_allclose(params["w"], p, rtol=1e-12, atol=0)
    assert not np.allclose(p, _plain_adam(p0, grads))        # the initial v matters


def _plain_adam(p0, grads):
    opt, params = optim.Adam(beta1=0.99, epsilon=1e-4 / 20), {"w": p0.copy()}
    for g in grads:
        opt.step(params, {"w": g})
    return params["w"]


def test_the_output_bias_is_the_clipped_logit_of_the_training_mean():
    x = np.zeros((4, 3))
    x[:, 1] = 1.0
    x[:2, 2] = 1.0                                          # mean 0.5: logit 0
    np.testing.assert_allclose(protocol.output_bias(x), [np.log(0.001 / 0.999), np.log(0.999 / 0.001), 0.0],
                               atol=1e-12)
    with pytest.raises(ValueError, match="x_train: expected a non-empty float array"):
        protocol.output_bias(np.zeros((0, 3)))


def test_fit_with_the_data_bias_equals_setting_it_first():
    x = data()
    a, b = model(), model()
    protocol.set_output_bias(a, x)
    assert not np.array_equal(a.params["dec.out.b"], b.params["dec.out.b"])
    ha = npvae.fit(a, x, epochs=2, batch_size=32, verbose=0)
    hb = npvae.fit(b, x, epochs=2, batch_size=32, verbose=0, output_bias="data")
    assert losses(ha) == losses(hb)


def test_without_shuffling_the_batches_come_in_order():
    x, m, seen = data(n=50), model(), []
    step = m.engine.loss_and_grads

    def record(xb, *args, **kw):
        seen.append(xb.copy())
        return step(xb, *args, **kw)

    m.engine.loss_and_grads = record
    npvae.fit(m, x, epochs=2, batch_size=20, shuffle=False, verbose=0)
    expected = [x[0:20], x[20:40], x[40:50]] * 2
    assert len(seen) == 6 and all(np.array_equal(s, e) for s, e in zip(seen, expected))


def test_their_split_holds_out_the_last_images_in_order():
    x = np.arange(1000)[:, None] * np.ones((1, 2))
    train, val = protocol.train_validation_split(x)
    assert train.shape == (600, 2) and val.shape == (400, 2) and val[0, 0] == 600 and train[-1, 0] == 599
    with pytest.raises(ValueError, match="n_validation: expected fewer than the 1000 examples"):
        protocol.train_validation_split(x, 1000)


def test_active_units_count_the_units_whose_mean_varies():
    m, x = model(), data()
    m.params["enc.mu.W"][:, 0] = 0.0            # unit 0's mean is its bias for every image: inactive
    m.params["enc.mu.W"][:, 1] *= 100.0         # unit 1 varies a lot
    result = protocol.active_units(m, x)
    mu, _ = m.encode(x)
    np.testing.assert_allclose(result.variances, mu.var(axis=0), rtol=1e-12)
    assert result.variances[0] == 0 and result.variances[1] > 1e-2
    assert result.count == int(np.sum(mu.var(axis=0) > 1e-2))
    assert protocol.active_units(m, x, threshold=0.0).count == 2      # units 1 and 2 vary at all
    with pytest.raises(ValueError, match="x: expected at least 2 images"):
        protocol.active_units(m, x[:1])


# ----------------------------------------------------------------------------------------
# benchmarks/burda_table1.py: the staged runner on a tiny budget
# ----------------------------------------------------------------------------------------
def _runner():
    import importlib
    import sys
    from pathlib import Path
    pytest.importorskip("numba")
    bench = str(Path(__file__).resolve().parents[1] / "benchmarks")
    if bench not in sys.path:
        sys.path.insert(0, bench)
    return importlib.import_module("burda_table1")


TINY = ["--cells", "vae-k1", "iwae-k5", "--max-stage", "1", "--k", "50", "--synthetic", "600",
        "--train-subset", "100", "--test-subset", "50", "--quiet"]


def _numbers(out):
    import json
    from pathlib import Path
    drop = ("eval_seconds",)
    return {p.parent.name: [{k: v for k, v in s.items() if k not in drop} for s in json.loads(p.read_text())["stages"]]
            for p in sorted(Path(out).glob("cells/*/result.json"))}


def test_the_runner_resumes_after_an_interruption_to_the_same_numbers(tmp_path, monkeypatch, capsys):
    import json
    from pathlib import Path
    bt = _runner()
    assert bt.main(TINY + ["--out", str(tmp_path / "whole")]) == 0
    whole = _numbers(tmp_path / "whole")
    assert [s["epochs"] for s in whole["vae-k1-seed0"]] == [1, 4] and set(whole) == {"vae-k1-seed0", "iwae-k5-seed0"}
    assert all(np.isfinite(s["nll"]) and s["k"] == 50 and s["n"] == 50 for s in whole["iwae-k5-seed0"])

    train_epoch, calls = bt.train_epoch, []

    def interrupted(folder, name, seed, epoch, x):
        calls.append(epoch)
        if name == "iwae-k5" and epoch == 3:
            raise KeyboardInterrupt
        return train_epoch(folder, name, seed, epoch, x)

    monkeypatch.setattr(bt, "train_epoch", interrupted)
    part = str(tmp_path / "part")
    assert bt.main(TINY + ["--out", part]) == 130
    assert "Interrupted: every finished epoch is in its cell's checkpoint.npz" in capsys.readouterr().err
    monkeypatch.setattr(bt, "train_epoch", train_epoch)
    first_code = bt.CODE
    monkeypatch.setattr(bt, "CODE", "abc1234")              # the run resumed by other code: recorded
    assert bt.main(TINY + ["--out", part]) == 0
    assert _numbers(part) == whole
    codes = {c: json.loads((Path(part) / "cells" / c / "result.json").read_text())["code"]
             for c in ("vae-k1-seed0", "iwae-k5-seed0")}
    assert codes["vae-k1-seed0"] == [{"from_epoch": 1, "commit": first_code}]
    assert codes["iwae-k5-seed0"] == [{"from_epoch": 1, "commit": first_code}, {"from_epoch": 3, "commit": "abc1234"}]
    text = (tmp_path / "part.md").read_text()
    assert "## Stage 1: epoch 4" in text and "| vae-k1-seed0 | 4 | 2 of 8 |" in text and "86.76" in text
    # the report names the command that trained the cells (each result.json keeps it), not only its own
    command = "python benchmarks/burda_table1.py " + " ".join(TINY + ["--out", part])
    result = json.loads((Path(part) / "cells" / "vae-k1-seed0" / "result.json").read_text())
    assert result["commands"] == [command]
    assert bt.main(TINY + ["--out", part, "--report-only"]) == 0
    text = (tmp_path / "part.md").read_text()
    assert f"- trained vae-k1-seed0, iwae-k5-seed0: `{command}`" in text
    assert f"- this report: `{command} --report-only`" in text


def test_the_runner_stops_at_its_time_budget_then_adds_ais_at_the_last_stage(tmp_path, capsys):
    import json
    from pathlib import Path
    bt = _runner()
    out = str(tmp_path / "t")
    assert bt.main(TINY + ["--out", out, "--hours", "0"]) == 0
    assert "time budget of 0.0 h spent" in capsys.readouterr().err
    ais_args = TINY + ["--out", out, "--ais", "--ais-images", "3", "--ais-chains", "2", "--ais-steps", "5",
                       "--bdmc-images", "2"]
    assert bt.main(ais_args) == 0
    for cell in ("vae-k1-seed0", "iwae-k5-seed0"):
        result = json.loads((Path(out) / "cells" / cell / "result.json").read_text())
        assert "ais" not in result                     # its own file: a cell training meanwhile loses nothing
        (check,) = json.loads((Path(out) / "cells" / cell / "ais.json").read_text())
        assert check["stage"] == len(result["stages"]) - 1 and check["images"] == 3 and check["k"] == 50
        assert check["ais"]["method"] == "ais" and check["ais"]["n"] == 3 and check["ais"]["chains"] == 2
        assert check["bdmc"]["n"] == 2 and check["bdmc"]["upper"] >= check["bdmc"]["lower"] - 5.0
        assert check["bdmc"]["gap_se"] > 0 and check["command"].endswith("--bdmc-images 2")
        with np.load(Path(out) / "cells" / cell / "ais-stage{stage}-3x2x5.npz".format(**check)) as f:
            assert f["ais"].shape == f["is"].shape == (3,)
            assert f["ais"].mean() == pytest.approx(check["ais"]["log_likelihood"])
        # paired on the same images: AIS - IS is the difference of the two means
        assert check["ais_minus_is"] == pytest.approx(check["ais"]["log_likelihood"] - check["is_log_likelihood"],
                                                      abs=1e-9)
    text = Path(out + ".md").read_text()
    assert "## AIS at the last stage checked" in text and "| vae-k1-seed0 | " in text.split("## AIS")[1]
    # a rerun with the same settings checks nothing again; other settings add a record
    capsys.readouterr()
    assert bt.main(ais_args) == 0
    assert "AIS" not in capsys.readouterr().err.replace("## AIS", "")
    assert bt.main(ais_args[:-1] + ["0"]) == 0
    records = json.loads((Path(out) / "cells" / "vae-k1-seed0" / "ais.json").read_text())
    assert len(records) == 2 and "bdmc" not in records[1]


def test_the_budget_grid_trains_each_split_of_the_samples_and_evaluates_from_its_stage(tmp_path):
    """``--grid budget``: each cell trains with its own objective settings (MIWAE's and PIWAE's
    ``outer``, CIWAE's ``beta``) on 64 samples per image; stages before ``--eval-from`` are
    recorded unevaluated, and the report shows the evaluated ones with IWAE-64."""
    import json
    from pathlib import Path
    bt = _runner()
    out = tmp_path / "budget"
    args = ["--grid", "budget", "--cells", "miwae-4x16", "ciwae-0.5", "piwae-8x8", "--max-stage", "1", "--eval-from",
            "1", "--k", "50", "--synthetic", "300", "--train-subset", "40", "--test-subset", "50", "--quiet",
            "--out", str(out)]
    assert bt.main(args) == 0
    for cell, setting in (("miwae-4x16", {"outer": 4}), ("ciwae-0.5", {"beta": 0.5}), ("piwae-8x8", {"outer": 8})):
        result = json.loads((out / "cells" / f"{cell}-seed0" / "result.json").read_text())
        assert result["k"] == 64 and all(result[k] == v for k, v in setting.items())
        first, second = result["stages"]
        assert "nll" not in first and first["epochs"] == 1
        assert np.isfinite(second["nll"]) and second["test_iwae64"] >= second["test_elbo"] - 1.0
    text = Path(str(out) + ".md").read_text()
    assert "## Stage 1: epoch 4" in text and "## Stage 0" not in text and "| piwae-8x8-seed0 |" in text
    assert "python benchmarks/burda_table1.py --grid budget" in text
    assert Path(str(out) + ".png").stat().st_size > 0 and "![NLL and active units against epochs](budget.png)" in text
    assert Path(str(out) + "_split.png").stat().st_size > 0 and "![What each split buys](budget_split.png)" in text


def test_the_runner_skips_a_cell_another_process_trains(tmp_path, capsys):
    """Each cell trains under its folder's lock: the same command on several cores shares the grid."""
    from npvae.runfolder import RunLock
    bt = _runner()
    out = tmp_path / "shared"
    held = RunLock(out / "cells" / "vae-k1-seed0").acquire()        # another worker trains this cell
    try:
        assert bt.main(TINY + ["--out", str(out), "--max-stage", "0"]) == 0
        # nor is it checked by AIS meanwhile: its last stage is not the one it will reach
        (out / "cells" / "vae-k1-seed0").mkdir(parents=True, exist_ok=True)
        (out / "cells" / "vae-k1-seed0" / "model.npz").write_bytes(b"")
        assert bt.main(TINY + ["--out", str(out), "--max-stage", "0", "--cells", "vae-k1", "--ais"]) == 0
        (out / "cells" / "vae-k1-seed0" / "model.npz").unlink()
    finally:
        held.release()
    err = capsys.readouterr().err
    assert "vae-k1-seed0: AIS skipped," in err
    assert "vae-k1-seed0: skipped," in err and "is in use by process" in err
    assert not (out / "cells" / "vae-k1-seed0" / "result.json").exists()
    assert (out / "cells" / "iwae-k5-seed0" / "result.json").exists()
    assert bt.main(TINY + ["--out", str(out), "--max-stage", "0"]) == 0    # free again: it trains now
    assert (out / "cells" / "vae-k1-seed0" / "result.json").exists()


def _per_image_values(seed, n, shifts, noise):
    """Per-image log-likelihoods of IWAE(64) (``base``) and of cells ``base + shift + noise`` (seed 0)."""
    rng = np.random.default_rng(seed)
    base = rng.normal(-90, 5, n)
    return base, {"iwae-64-seed0": base, **{f"{name}-seed0": base + shift + rng.normal(0, noise, n)
                                            for name, shift in shifts.items()}}


def test_cells_are_compared_by_ais_on_the_same_images_paired(tmp_path):
    bt = _runner()
    base, values = _per_image_values(0, 400, {"ciwae-0.5": 0.5, "vae-64": -0.05}, 0.2)
    checks = {}
    for cell, v in values.items():
        folder = tmp_path / "cells" / cell
        folder.mkdir(parents=True)
        checks[cell] = {"stage": 3, "images": 400, "chains": 16, "steps": 200, "k": 5000, "epochs": 40,
                        "bdmc": {"gap": 0.3}}
        np.savez(folder / bt.per_image_name(checks[cell]), ais=v, **{"is": v - 1.0})
    results = [{"cell": c, "name": c.rsplit("-seed", 1)[0], "seed": 0} for c in values]
    lines = bt.comparisons(results, checks, tmp_path, bt.AGAINST["budget"])
    text = "\n".join(lines)
    assert len(lines) == 2 and "iwae-64-seed0 minus" not in text
    ciwae = next(line for line in lines if line.startswith("- ciwae"))
    d = values["ciwae-0.5-seed0"] - base
    assert f"{d.mean():+.2f} ± {d.std(ddof=1) / np.sqrt(400):.2f} by AIS" in ciwae
    assert "beyond 2 SE, and beyond 2 SE plus the larger BDMC gap" in ciwae
    vae = next(line for line in lines if line.startswith("- vae"))
    assert "not beyond 2 SE plus the larger BDMC gap (0.30)" in vae
    checks["vae-64-seed0"]["steps"] = 1000                     # checked another way: not compared
    assert len(bt.comparisons(results, checks, tmp_path, bt.AGAINST["budget"])) == 1


def test_the_seeds_are_set_together_by_ais_with_the_images_se_and_each_seeds_verdict(tmp_path):
    """Two seeds of CIWAE and IWAE(64) checked by AIS on the same images: each seed's paired difference,
    their mean with the SE over the images, the seeds' signs and the verdict in each seed."""
    bt = _runner()
    checks, results = {}, []
    for seed, (shift, gap) in enumerate([(0.5, 0.3), (0.05, 0.3)]):
        rng = np.random.default_rng(seed)
        base = rng.normal(-90, 5, 400)
        for name, v in (("iwae-64", base), ("ciwae-0.5", base + shift + rng.normal(0, 0.2, 400))):
            cell = f"{name}-seed{seed}"
            folder = tmp_path / "cells" / cell
            folder.mkdir(parents=True)
            checks[cell] = {"stage": 3, "images": 400, "chains": 16, "steps": 200, "k": 5000, "epochs": 40,
                            "bdmc": {"gap": gap}}
            np.savez(folder / bt.per_image_name(checks[cell]), ais=v, **{"is": v - 1.0})
            results.append({"cell": cell, "name": name, "seed": seed})
    lines = bt.ais_seeds(results, checks, tmp_path, bt.AGAINST["budget"])
    assert len(lines) == 1 and lines[0].startswith("- ciwae-0.5 minus iwae-64 (stage 3): ")
    pairs = bt.paired_checks(results, checks, tmp_path, bt.AGAINST["budget"])
    (d0, s0), (d1, s1) = (next(p["ais"] for p in pairs if p["seed"] == seed) for seed in (0, 1))
    assert f"{d0:+.2f} ± {s0:.2f} (seed 0), {d1:+.2f} ± {s1:.2f} (seed 1)" in lines[0]
    assert f"mean {(d0 + d1) / 2:+.2f} ± {np.sqrt(s0 ** 2 + s1 ** 2) / 2:.2f}" in lines[0]
    assert "same sign in every seed" in lines[0] and "resolved in 1 of 2 seeds" in lines[0]
    # the split figure gains a third panel, the paired AIS differences (wider by half: three panels of two)
    pytest.importorskip("matplotlib")
    from matplotlib.image import imread
    for r in results:
        r["stages"] = [{"stage": 3, "epochs": 40, "nll": 90.0, "posterior_gap": 8.0, "test_iwae64": -91.0}]
    widths = [imread(bt.plot_budget(results, tmp_path / f"fig{n}", chosen)).shape[1]
              for n, chosen in ((2, ()), (3, pairs))]
    assert widths[1] == widths[0] * 3 // 2
    checks["ciwae-0.5-seed1"]["steps"] = 1000                  # seed 1 checked another way: one seed left
    assert bt.ais_seeds(results, checks, tmp_path, bt.AGAINST["budget"]) == []


def test_each_step_of_rainforths_ranking_is_checked_by_ais_in_their_order(tmp_path):
    """The budget report's last section: their log p(x) column's order (best first), and each cell minus
    the next in it, paired on the same images, every step once per seed."""
    bt = _runner()
    order = bt.rainforth_order()
    assert set(order) == set(bt.BUDGET_CELLS)
    theirs = [bt.RAINFORTH[n][1][0] for n in order]
    assert theirs == sorted(theirs, reverse=True)
    checks, results = {}, []
    base = np.random.default_rng(0).normal(-90, 5, 100)
    for i, name in enumerate(reversed(order)):                 # each better split 0.5 nats ahead
        cell = f"{name}-seed0"
        (tmp_path / "cells" / cell).mkdir(parents=True)
        checks[cell] = {"stage": 3, "images": 100, "chains": 16, "steps": 200, "k": 5000, "epochs": 40}
        np.savez(tmp_path / "cells" / cell / bt.per_image_name(checks[cell]), ais=base + 0.5 * i, **{"is": base})
        results.append({"cell": cell, "name": name, "seed": 0})
    lines = [line for line in bt.neighbours_section(results, checks, tmp_path) if line.startswith("- ")]
    assert [line.split(" (epoch")[0] for line in lines] == [f"- {a}-seed0 minus {b}-seed0"
                                                             for a, b in zip(order, order[1:])]
    assert all("+0.50 ± 0.00 by AIS" in line for line in lines)


def test_the_budget_report_sets_the_seeds_side_by_side_at_the_last_stage_they_share():
    """Two seeds of a cell: each seed's value and their mean at the last stage both reached; each
    split minus IWAE(64) of the same seed, its sign called consistent only if every seed agrees."""
    bt = _runner()

    def result(name, seed, nll, gap, stages=(3,)):
        recs = [{"stage": s, "nll": nll + s, "posterior_gap": gap, "test_iwae64": -nll - 2.0, "test_elbo": -nll - gap,
                 "active_units": 20 + seed} for s in stages]
        return {"cell": f"{name}-seed{seed}", "name": name, "seed": seed, "stages": recs}

    results = [result("iwae-64", 0, 90.0, 16.0, (2, 3)), result("iwae-64", 1, 89.0, 17.0, (2, 3)),
               result("miwae-8x8", 0, 89.8, 10.0, (2, 3)), result("miwae-8x8", 1, 89.5, 9.0, (2, 3)),
               result("vae-64", 0, 91.0, 6.0, (2, 3)), result("vae-64", 1, 90.0, 5.0, (2,)),
               result("ciwae-0.5", 0, 90.5, 7.0, (2, 3))]
    text = "\n".join(bt.seeds_section(results))
    assert "## The seeds together: stage 3 (epoch 40)" in text
    assert "| iwae-64 | 2 | -91.50 (-92.00, -91.00) | -92.50 (-93.00, -92.00) |" in text
    assert "| vae-64 |" not in text and "| ciwae-0.5 |" not in text          # one seed at stage 3
    assert "- miwae-8x8: log p(x) +0.20, -0.50 (seeds 0, 1; the seeds disagree in sign); " \
           "posterior gap -6.00, -8.00." in text
    assert bt.seeds_section([result("iwae-64", 0, 90.0, 16.0)]) == []     # one seed: nothing to set beside


def test_per_image_is_values_are_kept_and_a_missing_file_is_made_again_identical(tmp_path):
    """Each evaluated stage keeps its per-image IS values; ``--per-image-is`` makes a missing file
    again with the stage's own seed, checked against the stored mean, and refuses another mean."""
    import json
    bt = _runner()
    out = tmp_path / "t"
    args = TINY + ["--out", str(out), "--cells", "vae-k1"]
    assert bt.main(args) == 0
    folder = out / "cells" / "vae-k1-seed0"
    kept = bt.load_per_image_is(folder, 1)
    result = json.loads((folder / "result.json").read_text())
    assert kept.shape == (50,) and -kept.mean() == pytest.approx(result["stages"][1]["nll"], rel=1e-12)
    (folder / "is-stage1.npz").unlink()
    assert bt.main(args + ["--per-image-is"]) == 0
    assert np.array_equal(bt.load_per_image_is(folder, 1), kept)
    (folder / "is-stage1.npz").unlink()
    result["stages"][1]["nll"] += 0.5                      # not what this computation gives
    (folder / "result.json").write_text(json.dumps(result))
    with pytest.raises(SystemExit, match="not the computation that made it"):
        bt.main(args + ["--per-image-is"])
    assert bt.load_per_image_is(folder, 1) is None


def test_cells_are_compared_by_is_on_every_test_image_paired(tmp_path):
    bt = _runner()
    base, values = _per_image_values(1, 1000, {"miwae-8x8": 0.1, "vae-64": -1.0}, 0.3)
    results = []
    for cell, v in values.items():
        folder = tmp_path / "cells" / cell
        folder.mkdir(parents=True)
        bt.save_per_image_is(folder, 3, type("LL", (), {"per_example": v, "k": 5000})())
        results.append({"cell": cell, "name": cell.rsplit("-seed", 1)[0], "seed": 0,
                        "stages": [{"stage": 3, "epochs": 40}]})
    text = "\n".join(bt.is_pairs_section(results, tmp_path, bt.AGAINST["budget"]))
    d = values["miwae-8x8-seed0"] - base
    assert f"- miwae-8x8-seed0 minus iwae-64-seed0 (stage 3, epoch 40): {d.mean():+.2f} ± " \
           f"{d.std(ddof=1) / np.sqrt(1000):.2f} on 1,000 images (beyond 2 SE)" in text
    assert "- vae-64-seed0 minus iwae-64-seed0" in text and "iwae-64-seed0 minus" not in text
