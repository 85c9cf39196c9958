"""Faults around a run folder: a second process, full and read-only disks, signals, damaged files,
hostile sizes and results that are not numbers. Each must end in one clear line and a run folder
that a resume continues bit for bit."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import npvae
from npvae import cli, io
from npvae.runfolder import RunLock, read_config
from npvae.train import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 3


def train_argv(out, mnist_dir, *extra, epochs=EPOCHS):
    return ["train", "--epochs", str(epochs), "--hidden", "8", "--data", str(mnist_dir), "--out", str(out),
            "--quiet", "--no-figures", *extra]


def final_params(out):
    return npvae.load(Path(out) / "model.npz").params


def assert_same_params(a, b):
    assert set(a) == set(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def one_error_line(err, *words):
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("npvae "), lines[0]
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def reference(mnist_dir, tmp_path_factory):
    """The parameters after an uninterrupted run of EPOCHS epochs."""
    out = tmp_path_factory.mktemp("ref") / "run"
    assert cli.main(train_argv(out, mnist_dir)) == 0
    return final_params(out)


# --------------------------------------------------------------------------
# Two processes, one run folder
# --------------------------------------------------------------------------
def test_a_second_trainer_of_a_locked_folder_is_refused(mnist_dir, tmp_path, capsys):
    out = tmp_path / "run"
    with RunLock(out):
        assert cli.main(train_argv(out, mnist_dir)) == 2
    line = one_error_line(capsys.readouterr().err, "is in use by process", str(os.getpid()), "started")
    assert str(out) in line
    assert not (out / "config.json").exists()                      # nothing written by the refused one


def test_a_lock_left_by_a_dead_process_is_taken_over_with_a_message(mnist_dir, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / RunLock.NAME).write_text(json.dumps({"pid": 999999, "host": "gone", "started": "2026-01-01 00:00:00"}))
    argv = [a for a in train_argv(out, mnist_dir, epochs=1) if a != "--quiet"]
    assert cli.main(argv) == 0
    assert "took over the lock of process 999999 on gone" in capsys.readouterr().err


@pytest.mark.slow
def test_two_trainers_racing_for_one_folder(mnist_dir, tmp_path):
    out = tmp_path / "run"
    # -W: without numba the CLI's one notice of the slower engine is not the error line looked for
    python = [sys.executable, "-W", "ignore:numba could not be imported"]
    # long enough that the winner still holds the folder when the other has started (at 2 epochs, ~1 s
    # with the compiled step, the winner could finish first and the other find a finished run instead)
    procs = [subprocess.Popen([*python, "-m", "npvae", *train_argv(out, mnist_dir, "--seed", str(seed), epochs=30)],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for seed in (0, 1)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    one_error_line(loser, "is in use by process")
    winner_seed = next(seed for (code, _), seed in zip(results, (0, 1)) if code == 0)
    assert read_config(out / "config.json")["seed"] == winner_seed        # one run's files, not a mix
    assert load_checkpoint(out / "checkpoint.npz")["settings"]["seed"] == winner_seed


# --------------------------------------------------------------------------
# The disk: full, read-only, failing, at every write site
# --------------------------------------------------------------------------
SITES = [("config.json", 1), ("checkpoint.npz", 2), ("history.json", 1), ("model.npz", 1), ("figures", 1)]
ERRNOS = [errno.ENOSPC, errno.EROFS, errno.EIO]


@pytest.mark.slow
@pytest.mark.parametrize("site,nth", SITES)
def test_a_failing_write_is_one_line_and_the_run_resumes_bit_for_bit(site, nth, mnist_dir, tmp_path, monkeypatch,
                                                                     capsys, reference):
    code = ERRNOS[SITES.index((site, nth)) % len(ERRNOS)]
    out = tmp_path / "run"
    seen = {"n": 0}
    real_replace = os.replace

    def failing_replace(src, dst, *args, **kwargs):
        if Path(dst).name == site:
            seen["n"] += 1
            if seen["n"] == nth:
                raise OSError(code, os.strerror(code), str(src))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(io.os, "replace", failing_replace)
    argv = train_argv(out, mnist_dir)
    if site == "figures":
        argv.remove("--no-figures")
        pytest.importorskip("matplotlib")
        from matplotlib.figure import Figure

        def failing_savefig(self, *a, **k):
            raise OSError(code, os.strerror(code), str(out / "figures" / "latent.png"))
        monkeypatch.setattr(Figure, "savefig", failing_savefig)
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    target = "latent.png" if site == "figures" else site
    one_error_line(err, os.strerror(code), target)
    assert not list(out.rglob(".*.tmp")), list(out.rglob("*"))          # no temporary file left
    if (out / "checkpoint.npz").exists():
        load_checkpoint(out / "checkpoint.npz")                             # loadable as it is
    monkeypatch.undo()
    if site == "figures":
        assert cli.main(["plot", str(out), "--data", str(mnist_dir)]) == 0
        assert_same_params(final_params(out), reference)
        return
    status = cli.main(train_argv(out, mnist_dir, "--resume") if (out / "config.json").exists()
                      else train_argv(out, mnist_dir))
    assert status == 0, capsys.readouterr().err
    assert_same_params(final_params(out), reference)


def test_out_that_is_a_file_is_one_line(mnist_dir, tmp_path, capsys):
    out = tmp_path / "a-file"
    out.write_text("not a folder")
    assert cli.main(train_argv(out, mnist_dir)) == 2
    one_error_line(capsys.readouterr().err, "is a file")


def test_stale_temporary_files_are_removed_at_start(mnist_dir, tmp_path):
    out = tmp_path / "run"
    assert cli.main(train_argv(out, mnist_dir, epochs=1)) == 0
    stale = [out / ".checkpoint.npz.x1y2z3.tmp", out / ".model.npz.a9b8c7.tmp"]
    for p in stale:
        p.write_bytes(b"\0" * 1000)
    assert cli.main(train_argv(out, mnist_dir, "--resume", epochs=2)) == 0
    assert not any(p.exists() for p in stale)


# --------------------------------------------------------------------------
# Signals
# --------------------------------------------------------------------------
def spawn_training(out, mnist_dir, epochs=EPOCHS, *extra):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "npvae", *train_argv(out, mnist_dir, *extra, epochs=epochs)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def wait_for(path, proc, timeout=120):
    t0 = time.time()
    while not path.exists():
        if proc.poll() is not None or time.time() - t0 > timeout:
            raise AssertionError(f"{path} never appeared: {proc.communicate()}")
        time.sleep(0.02)


@pytest.mark.slow
def test_sigterm_stops_cleanly_with_143_and_the_resume_command(mnist_dir, tmp_path, reference):
    out = tmp_path / "run"
    proc = spawn_training(out, mnist_dir)
    wait_for(out / "checkpoint.npz", proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "Terminated (SIGTERM)" in err and f"npvae train --out {out} --resume" in err
    assert 1 <= len(load_checkpoint(out / "checkpoint.npz")["history"]) < EPOCHS
    assert not list(out.glob(".*.tmp"))
    assert cli.main(train_argv(out, mnist_dir, "--resume")) == 0
    assert_same_params(final_params(out), reference)


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.0, 0.15, 0.45])
def test_sigkill_at_any_moment_leaves_a_folder_that_resumes_bit_for_bit(delay, mnist_dir, tmp_path, reference):
    out = tmp_path / "run"
    proc = spawn_training(out, mnist_dir)
    wait_for(out / "checkpoint.npz", proc)          # then kill it, sometimes in the middle of the next write
    time.sleep(delay)
    proc.kill()
    proc.communicate(timeout=60)
    load_checkpoint(out / "checkpoint.npz")
    assert cli.main(train_argv(out, mnist_dir, "--resume")) == 0
    assert_same_params(final_params(out), reference)
    assert not list(out.glob(".*.tmp"))


# --------------------------------------------------------------------------
# Damaged files of the run folder
# --------------------------------------------------------------------------
@pytest.fixture
def finished_run(mnist_dir, tmp_path):
    out = tmp_path / "run"
    assert cli.main(train_argv(out, mnist_dir, epochs=1)) == 0
    return out


@pytest.mark.parametrize("text,words", [
    ("", ["config.json", "empty"]),
    ('{"epochs": 3, "batch_', ["config.json", "not valid JSON"]),
    ("[1, 2]", ["config.json", "expected a JSON object", "list"]),
    ('"settings"', ["config.json", "expected a JSON object", "str"]),
])
def test_a_damaged_config_is_one_line_naming_it(text, words, finished_run, mnist_dir, capsys):
    (finished_run / "config.json").write_text(text)
    assert cli.main(train_argv(finished_run, mnist_dir, "--resume", epochs=2)) == 2
    one_error_line(capsys.readouterr().err, *words)


@pytest.mark.parametrize("key,value", [("optimizer", 3), ("hidden", "256"), ("mc_samples", 0), ("lr", "fast"),
                                       ("seed", True)])
def test_a_config_value_of_the_wrong_type_names_the_key(key, value, finished_run, mnist_dir, capsys):
    config = json.loads((finished_run / "config.json").read_text())
    config[key] = value
    (finished_run / "config.json").write_text(json.dumps(config))
    assert cli.main(train_argv(finished_run, mnist_dir, "--resume", epochs=2)) == 2
    one_error_line(capsys.readouterr().err, "config.json", f"{key}: expected")


@pytest.mark.parametrize("text,words", [('[{"epoch": 1, "loss"', ["history.json", "not valid JSON"]),
                                        ('{"loss": [1]}', ["history.json", "expected a JSON list"]),
                                        ('[{"epoch": 1, "loss": "x"}]', ["history.json", "loss: expected a number"])])
def test_a_damaged_history_is_one_line_when_plotting(text, words, finished_run, mnist_dir, capsys):
    (finished_run / "history.json").write_text(text)
    assert cli.main(["plot", str(finished_run), "--data", str(mnist_dir)]) == 2
    one_error_line(capsys.readouterr().err, *words)


def rewrite_checkpoint(path, change):
    arrays = io.load_npz(path)
    change(arrays)
    io.atomic_savez(path, arrays)


def test_a_checkpoint_with_another_architectures_parameters_is_refused(finished_run, mnist_dir, capsys):
    other = npvae.VAE(input_dim=784, hidden=(9,), latent_dim=2, dtype=np.float32)

    def swap(arrays):   # a whole, self-consistent checkpoint of the other model
        for k in [k for k in arrays if k.startswith(("param/", "optim/"))]:
            del arrays[k]
        arrays["config"] = io.to_json_array(other.config)
        arrays.update({f"param/{k}": v for k, v in other.params.items()})
        opt = npvae.optim.RMSprop()
        opt.step(other.params, {k: np.zeros_like(v) for k, v in other.params.items()})
        arrays.update({f"optim/{k}": v for k, v in opt.state_dict().items()})

    rewrite_checkpoint(finished_run / "checkpoint.npz", swap)
    assert cli.main(train_argv(finished_run, mnist_dir, "--resume", epochs=2)) == 2
    one_error_line(capsys.readouterr().err, "checkpoint.npz", "another model")


def test_optimizer_state_of_the_wrong_shape_is_refused(finished_run, mnist_dir, capsys):
    def bad_state(arrays):
        arrays["optim/v/enc.0.W"] = np.zeros((3, 3), np.float32)

    rewrite_checkpoint(finished_run / "checkpoint.npz", bad_state)
    assert cli.main(train_argv(finished_run, mnist_dir, "--resume", epochs=2)) == 2
    one_error_line(capsys.readouterr().err, "checkpoint.npz", "optimizer state")


def test_a_bogus_rng_state_is_refused(finished_run, mnist_dir, capsys):
    def bogus(arrays):
        meta = io.from_json_array(arrays["train"])
        meta["rng_state"] = {"bit_generator": "PCG64", "state": "nonsense"}
        arrays["train"] = io.to_json_array(meta)

    rewrite_checkpoint(finished_run / "checkpoint.npz", bogus)
    assert cli.main(train_argv(finished_run, mnist_dir, "--resume", epochs=2)) == 2
    one_error_line(capsys.readouterr().err, "checkpoint.npz", "rng_state")


def test_a_checkpoint_whose_training_record_is_a_list_is_refused(finished_run, mnist_dir, capsys):
    rewrite_checkpoint(finished_run / "checkpoint.npz", lambda a: a.update(train=io.to_json_array([1, 2])))
    assert cli.main(train_argv(finished_run, mnist_dir, "--resume", epochs=2)) == 2
    one_error_line(capsys.readouterr().err, "checkpoint.npz", "train: expected a JSON object")


# --------------------------------------------------------------------------
# Sizes and results that are not numbers
# --------------------------------------------------------------------------
def test_a_step_too_large_for_memory_is_refused_before_allocating(mnist_dir, tmp_path, capsys):
    argv = train_argv(tmp_path / "run", mnist_dir, "--mc-samples", "100000", "--batch-size", "1000")
    assert cli.main(argv) == 2
    one_error_line(capsys.readouterr().err, "GiB", "--mc-samples", "--batch-size")


def test_evaluate_refuses_to_report_a_result_that_is_not_finite(mnist_dir, tmp_path, capsys):
    model = npvae.VAE(input_dim=784, hidden=(8,), latent_dim=2, dtype=np.float32, seed=0)
    for name, p in model.params.items():
        if name.startswith("enc.logvar"):
            p[...] = 1e30 if name.endswith(".b") else 0.0      # sigma = exp(1e30 / 2): inf
    model.save(tmp_path / "m.npz")
    assert cli.main(["evaluate", str(tmp_path / "m.npz"), "--limit", "20", "--json", "--data", str(mnist_dir)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""                                   # no JSON with NaN in it
    one_error_line(captured.err, "not finite", "m.npz")


def test_a_model_too_large_for_memory_is_refused_before_allocating():
    with pytest.raises(ValueError, match=r"input_dim, hidden, latent_dim: the model would have .* GiB"):
        npvae.VAE(input_dim=10**9, hidden=(256,), backend="numpy")


# --------------------------------------------------------------------------
# A run folder written before npvae.settings
# --------------------------------------------------------------------------
def test_a_run_folder_of_the_old_layout_resumes_bit_for_bit(finished_run, mnist_dir, reference):
    """config.json without figures and npvae_version, a checkpoint whose settings nest the
    architecture under "model" and hold the optimizer as a dict, no npvae_version member:
    the files of npvae before its settings had one definition."""
    config = json.loads((finished_run / "config.json").read_text())
    for key in ("figures", "npvae_version"):
        del config[key]
    (finished_run / "config.json").write_text(json.dumps(config, indent=1) + "\n")

    def old_layout(arrays):
        meta = io.from_json_array(arrays["train"])
        s = meta["settings"]
        s["model"] = {k: s.pop(k) for k in ("input_dim", "hidden", "latent_dim", "activation", "dtype")}
        s["optimizer"] = dict(s.pop("optimizer_config"), name=s["optimizer"])
        arrays["train"] = io.to_json_array(meta)
        del arrays["npvae_version"]

    rewrite_checkpoint(finished_run / "checkpoint.npz", old_layout)
    assert cli.main(train_argv(finished_run, mnist_dir, "--resume")) == 0
    assert_same_params(final_params(finished_run), reference)
