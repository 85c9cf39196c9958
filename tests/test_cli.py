"""End-to-end command line: train, resume, evaluate, plot, gradcheck, and clean failures."""

import json
import subprocess
import sys

import numpy as np
import pytest

from npvae import cli
from npvae.model import VAE

pytest.importorskip("matplotlib")


def run_cli(*argv):
    return cli.main([str(a) for a in argv])


@pytest.fixture(scope="module")
def run_dir(mnist_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    status = run_cli("train", "--epochs", 1, "--hidden", 32, "--mc-samples", 2, "--dtype", "float32",
                     "--data", mnist_dir, "--out", out, "--quiet")
    assert status == 0
    return out


def test_train_writes_the_run_folder(run_dir):
    for name in ("config.json", "checkpoint.npz", "history.json", "model.npz"):
        assert (run_dir / name).exists(), name
    for name in ("latent.png", "manifold.png", "reconstructions.png", "history.png"):
        assert (run_dir / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    history = json.loads((run_dir / "history.json").read_text())
    assert len(history) == 1
    assert set(history[0]) >= {"epoch", "loss", "val_loss", "seconds"}
    assert 100 < history[0]["val_loss"] < 300  # nats per image: far below the untrained ~545


def test_resume_continues_and_refuses_changed_settings(run_dir, mnist_dir, capsys):
    assert run_cli("train", "--out", run_dir, "--resume", "--mc-samples", 3, "--data", mnist_dir) == 2
    assert "mc_samples: it has 2, this run has 3" in capsys.readouterr().err
    assert run_cli("train", "--out", run_dir, "--resume", "--epochs", 2, "--data", mnist_dir, "--quiet",
                   "--no-figures") == 0
    history = json.loads((run_dir / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2]


def test_train_refuses_to_overwrite_a_run(run_dir, mnist_dir, capsys):
    assert run_cli("train", "--out", run_dir, "--data", mnist_dir) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_evaluate_json(run_dir, mnist_dir, capsys):
    assert run_cli("evaluate", run_dir / "model.npz", "--mc-samples", 2, "--json", "--data", mnist_dir) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 10000 and report["mc_samples"] == 2
    assert report["elbo"] == pytest.approx(-report["loss"])
    assert report["loss"] == pytest.approx(report["recon"] + report["kl"], rel=1e-6)


def test_evaluate_iwae_is_tighter(run_dir, mnist_dir, capsys):
    run_cli("evaluate", run_dir, "--mc-samples", 10, "--objective", "elbo", "--json", "--data", mnist_dir)
    elbo = json.loads(capsys.readouterr().out)["elbo"]
    run_cli("evaluate", run_dir, "--mc-samples", 10, "--objective", "iwae", "--json", "--data", mnist_dir)
    iwae = json.loads(capsys.readouterr().out)["iwae_bound"]
    assert iwae > elbo


def test_plot_redraws_figures(run_dir, mnist_dir):
    for png in (run_dir / "figures").glob("*.png"):
        png.unlink()
    assert run_cli("plot", run_dir, "--data", mnist_dir) == 0
    assert (run_dir / "figures" / "manifold.png").exists()


def test_interrupt_keeps_finished_epochs(mnist_dir, tmp_path, monkeypatch, capsys):
    def interrupted_fit(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "fit", interrupted_fit)
    assert run_cli("train", "--out", tmp_path / "r", "--data", mnist_dir, "--hidden", 8) == 130
    assert "--resume" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["train", "--epochs", "0"], "expected a positive integer, got 0"),
    (["train", "--mc-samples", "many"], "expected a positive integer, got 'many'"),
    (["train", "--objective", "vae"], "invalid choice: 'vae'"),
    (["train", "--lr", "-1"], "expected a positive number"),
    (["evaluate"], "the following arguments are required: model"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_flags_give_usage_and_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "usage: npvae" in err and message in err


def test_missing_model_file_is_one_line(tmp_path, capsys):
    assert run_cli("evaluate", tmp_path / "nope.npz") == 2
    err = capsys.readouterr().err
    assert err.startswith("npvae evaluate: error: model file not found") and "Traceback" not in err


def test_missing_data_is_one_clear_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("NPVAE_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    model = tmp_path / "m.npz"
    from npvae import VAE
    VAE(hidden=(4,)).save(model)
    # an empty folder and no network: one message naming where to put the files
    monkeypatch.setattr("urllib.request.urlopen", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    assert run_cli("evaluate", model, "--data", tmp_path / "empty") == 2
    err = capsys.readouterr().err
    assert "npvae evaluate: error:" in err and "NPVAE_DATA" in err and "Traceback" not in err


def test_python_dash_m_runs():
    result = subprocess.run([sys.executable, "-m", "npvae", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "train" in result.stdout


# ---------------------------------------------------------------------------
# npvae gradcheck
# ---------------------------------------------------------------------------
def test_gradcheck_passes_and_prints_a_table(capsys):
    assert cli.main(["gradcheck"]) == 0
    out = capsys.readouterr().out
    assert "ops.dense" in out and "model iwae/analytic" in out and "dreg" in out
    assert "FAIL" not in out


def test_gradcheck_json_and_a_broken_backward_exits_1(monkeypatch, capsys):
    from npvae import ops
    real = ops.gaussian_kl_backward

    def broken(dkl, cache):                   # the mu gradient off by 1%
        dmu, dlog_var = real(dkl, cache)
        return 1.01 * dmu, dlog_var

    monkeypatch.setattr(ops, "gaussian_kl_backward", broken)
    assert cli.main(["gradcheck", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    failed = {(r["check"], r["parameter"]) for r in report["rows"] if not r["passed"]}
    assert report["passed"] is False and ("ops.gaussian_kl", "mu") in failed
    assert all(r["tolerance"] == 1e-6 for r in report["rows"])


def test_gradcheck_of_a_saved_float32_model(tmp_path, capsys):
    model = VAE(input_dim=10, hidden=(6,), latent_dim=2, activation="tanh", seed=1, dtype=np.float32)
    model.save(tmp_path / "m.npz")
    assert cli.main(["gradcheck", "--model", str(tmp_path / "m.npz"), "--coords", "5"]) == 0
    out = capsys.readouterr().out
    assert "(float64 copy)" in out and "enc.0.W" in out


def test_train_defaults_to_float32_and_float64_on_request(mnist_dir, tmp_path):
    for extra, want in (([], "float32"), (["--dtype", "float64"], "float64")):
        out = tmp_path / want
        assert run_cli("train", "--epochs", 1, "--hidden", 8, "--data", mnist_dir, "--out", out, "--quiet",
                       "--no-figures", *extra) == 0
        assert json.loads((out / "config.json").read_text())["dtype"] == want
        from npvae import load
        assert load(out / "model.npz").dtype == np.dtype(want)


# ---------------------------------------------------------------------------
# What a newcomer meets: the version, flags, data, interruptions, resuming
# ---------------------------------------------------------------------------
def test_version_flag_prints_the_package_version(capsys):
    import npvae
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"npvae {npvae.__version__}"


@pytest.mark.parametrize("command", ["train", "evaluate m.npz", "plot RUN", "gradcheck"])
def test_an_unknown_flag_is_reported_by_the_subcommand(command, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(command.split() + ["--bogus"])
    err = capsys.readouterr().err
    name = command.split()[0]
    assert exc.value.code == 2
    assert f"usage: npvae {name}" in err and f"npvae {name}: error: unrecognized arguments: --bogus" in err


def sums_printed(text):
    """Every 'A = recon B + kl C' and 'recon B + kl C = A' of a text, as (A, B + C)."""
    import re
    number = r"(-?\d+\.\d+)"
    before = re.findall(rf"{number} = recon {number} \+ kl {number}", text)
    after = re.findall(rf"recon {number} \+ kl {number} = {number}", text)
    return [(float(a), float(b) + float(c)) for a, b, c in before] + [(float(a), float(b) + float(c))
                                                                       for b, c, a in after]


@pytest.mark.parametrize("objective", ["elbo", "iwae"])
def test_evaluate_prints_only_sums_that_hold(objective, run_dir, mnist_dir, capsys):
    assert run_cli("evaluate", run_dir, "--mc-samples", 10, "--objective", objective, "--limit", 500,
                   "--data", mnist_dir, "--quiet") == 0
    out = capsys.readouterr().out
    sums = sums_printed(out)
    assert sums, out
    for total, parts in sums:
        assert total == pytest.approx(parts, abs=2e-4), out
    assert run_cli("evaluate", run_dir, "--mc-samples", 10, "--objective", objective, "--limit", 500,
                   "--data", mnist_dir, "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["elbo"] == pytest.approx(-(report["recon"] + report["kl"]), rel=1e-6)
    if objective == "iwae":
        assert f"{report['iwae_bound']:.4f} nats" in out and f"{report['elbo']:.4f} nats" in out


def test_data_naming_a_folder_without_mnist_is_an_error_naming_it(mnist_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NPVAE_DATA", str(mnist_dir))          # a copy load_mnist would fall back to
    empty = tmp_path / "not-mnist"
    empty.mkdir()
    out = tmp_path / "run"
    assert run_cli("train", "--epochs", 1, "--hidden", 8, "--data", empty, "--out", out, "--quiet") == 2
    err = capsys.readouterr().err
    assert f"--data: {empty} holds no MNIST" in err and "Traceback" not in err
    assert not (out / "config.json").exists()
    assert run_cli("evaluate", run_dir_model(tmp_path), "--data", empty) == 2
    assert f"--data: {empty} holds no MNIST" in capsys.readouterr().err


def run_dir_model(tmp_path):
    return VAE(hidden=(4,)).save(tmp_path / "m.npz")


def test_a_run_says_which_data_it_used(mnist_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NPVAE_DATA", str(mnist_dir))
    model = run_dir_model(tmp_path)
    assert run_cli("evaluate", model, "--limit", 10, "--data", mnist_dir) == 0
    assert f"Data: MNIST from {mnist_dir} (--data)" in capsys.readouterr().err
    assert run_cli("evaluate", model, "--limit", 10) == 0
    assert f"Data: MNIST from {mnist_dir} ($NPVAE_DATA)" in capsys.readouterr().err


def test_ctrl_c_in_the_first_epoch_claims_no_checkpoint_and_resume_then_says_so(mnist_dir, tmp_path, monkeypatch,
                                                                               capsys):
    def interrupted_fit(*args, **kwargs):
        raise KeyboardInterrupt

    out = tmp_path / "r"
    monkeypatch.setattr(cli, "fit", interrupted_fit)
    assert run_cli("train", "--out", out, "--data", mnist_dir, "--hidden", 8, "--quiet") == 130
    err = capsys.readouterr().err
    assert not (out / "checkpoint.npz").exists()
    assert "saved in" not in err and "before the first epoch ended" in err and "without --resume" in err
    monkeypatch.undo()
    assert run_cli("train", "--out", out, "--resume", "--data", mnist_dir, "--quiet") == 2
    err = capsys.readouterr().err
    assert f"--resume: {str(out)!r} holds no checkpoint.npz" in err and "without --resume" in err


@pytest.fixture(scope="module")
def two_epoch_run(mnist_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "two"
    assert run_cli("train", "--epochs", 2, "--hidden", 8, "--data", mnist_dir, "--out", out, "--quiet",
                   "--no-figures") == 0
    return out


def test_resume_with_fewer_epochs_is_refused_and_leaves_config_alone(two_epoch_run, mnist_dir, capsys):
    config = (two_epoch_run / "config.json").read_bytes()
    assert run_cli("train", "--out", two_epoch_run, "--resume", "--epochs", 1, "--data", mnist_dir) == 2
    err = capsys.readouterr().err
    assert "has 2 epochs done, more than the 1 asked for" in err
    assert (two_epoch_run / "config.json").read_bytes() == config


def test_resume_of_a_complete_run_says_so(two_epoch_run, mnist_dir, capsys):
    history = json.loads((two_epoch_run / "history.json").read_text())
    assert run_cli("train", "--out", two_epoch_run, "--resume", "--data", mnist_dir) == 0
    assert "the run is complete (2 of 2 epochs); nothing to train" in capsys.readouterr().err
    assert json.loads((two_epoch_run / "history.json").read_text()) == history
    assert json.loads((two_epoch_run / "config.json").read_text())["epochs"] == 2


def test_no_figures_is_remembered_on_resume(two_epoch_run, mnist_dir):
    assert json.loads((two_epoch_run / "config.json").read_text())["figures"] is False
    assert run_cli("train", "--out", two_epoch_run, "--resume", "--epochs", 3, "--data", mnist_dir, "--quiet") == 0
    assert not (two_epoch_run / "figures").exists()
    assert len(json.loads((two_epoch_run / "history.json").read_text())) == 3


def test_evaluate_method_ais_reports_an_annealed_estimate_above_the_elbo(run_dir, mnist_dir, capsys):
    assert run_cli("evaluate", run_dir, "--method", "ais", "--chains", 8, "--ais-steps", 200, "--limit", 4,
                   "--mc-samples", 200, "--json", "--quiet", "--data", mnist_dir) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["method"] == "ais" and report["chains"] == 8 and report["steps"] == 200 and report["n"] == 4
    assert 0.0 < report["acceptance_mean"] <= 1.0
    assert report["log_likelihood"] > report["elbo"]          # log p(x) >= ELBO, here with 200 samples
    assert run_cli("evaluate", run_dir, "--method", "ais", "--chains", 3, "--ais-steps", 30, "--limit", 4,
                   "--quiet", "--data", mnist_dir) == 0
    assert "AIS: 3 chains x 30 steps" in capsys.readouterr().out


def test_train_with_burdas_protocol_uses_their_settings_and_split(mnist_dir, tmp_path):
    out = tmp_path / "burda"
    assert run_cli("train", "--protocol", "burda", "--epochs", 1, "--hidden", 8, "--latent-dim", 2,
                   "--data", mnist_dir, "--out", out, "--quiet", "--no-figures") == 0
    config = json.loads((out / "config.json").read_text())
    assert {k: config[k] for k in ("protocol", "batch_size", "binarize", "kl", "shuffle", "lr_schedule",
                                   "output_bias", "optimizer")} == dict(
        protocol="burda", batch_size=20, binarize="dynamic", kl="mc", shuffle=False, lr_schedule="burda",
        output_bias="data", optimizer="adam")
    history = json.loads((out / "history.json").read_text())
    assert history[0]["lr"] == 1e-3
    from npvae.train import load_checkpoint
    settings = load_checkpoint(out / "checkpoint.npz")["settings"]
    assert (settings["n_train"], settings["n_val"]) == (59600, 400)     # their split (npvae.protocol)
    assert settings["optimizer_config"]["beta1"] == 0.99


def test_train_refuses_an_option_against_the_protocol(mnist_dir, tmp_path, capsys):
    assert run_cli("train", "--protocol", "burda", "--batch-size", 50, "--data", mnist_dir,
                   "--out", tmp_path / "x", "--quiet") == 2
    assert "--batch-size: protocol='burda' sets batch-size=20, got batch-size=50" in capsys.readouterr().err


def test_train_a_budget_objective_records_its_parameter_and_refuses_a_bad_split(mnist_dir, tmp_path, capsys):
    out = tmp_path / "miwae"
    assert run_cli("train", "--objective", "miwae", "--outer", 2, "--mc-samples", 4, "--epochs", 1, "--hidden", 8,
                   "--data", mnist_dir, "--out", out, "--quiet", "--no-figures") == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["objective"], config["outer"], config["mc_samples"]) == ("miwae", 2, 4)
    assert run_cli("train", "--objective", "miwae", "--outer", 3, "--mc-samples", 4, "--epochs", 1, "--hidden", 8,
                   "--data", mnist_dir, "--out", tmp_path / "bad", "--quiet", "--no-figures") == 2
    assert "needs a multiple of outer=3" in capsys.readouterr().err
