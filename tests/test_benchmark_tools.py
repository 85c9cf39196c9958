"""The benchmark tools: reports into figures (benchmarks/plot_speed.py), report sections
(benchmarks/speed.py), the sample-size study's executor (benchmarks/sample_sizes.py) and the
log-likelihood throughput report (benchmarks/ll_throughput.py)."""

import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

REPORT = """# Training speed per epoch

Threads: 2 for every contender (OPENBLAS/OMP/MKL_NUM_THREADS=2, torch.set_num_threads(2)); ...

## Seconds per epoch (median, [min-max]) and ratio to the PyTorch peer

| S | numba-float32 | numpy-float64 | torch-float32 | numba-float32 / peer | numpy-float64 / peer |
|---|---|---|---|---|---|
| 1 | 2.10 [2.01-2.20] | 7.66 [7.60-7.70] | 4.75 [4.50-4.90] | 0.44 | 1.61 |
| 25 | 15.59 [15.00-16.00] | - | 18.45 [18.00-19.00] | 0.85 | - |

Target: numba float32 at most 0.67x the peer at every S.

## CPU seconds per epoch (median, [min-max]) and ratio to the peer

| S | numba-float32 | torch-float32 | numba-float32 / peer |
|---|---|---|---|
| 1 | 9.99 | 9.99 | 9.99 |
"""


def _benchmark(name, register=False):
    """The script ``benchmarks/<name>.py`` imported as a module (benchmarks/ is no package);
    ``register``: also as ``sys.modules[name]``."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "benchmarks", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    if register:
        sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def plot_speed():
    return _benchmark("plot_speed")


@pytest.fixture
def speed():
    return _benchmark("speed")


def test_read_report_takes_the_seconds_table_only(tmp_path, plot_speed):
    path = tmp_path / "speed.md"
    path.write_text(REPORT)
    threads, times, ratio = plot_speed.read_report(str(path))
    assert threads == 2
    assert times == {"numba-float32": {1: 2.10, 25: 15.59}, "numpy-float64": {1: 7.66},
                     "torch-float32": {1: 4.75, 25: 18.45}}
    assert ratio == {"torch-float32": {1: 0.44, 25: 0.85}}


def test_read_report_takes_the_ratio_to_each_peer(tmp_path, plot_speed):
    path = tmp_path / "speed.md"
    path.write_text(REPORT.replace("| numpy-float64 / peer |\n|---|---|---|---|---|---|",
                                   "| jax-float32 / peer | numba-float32 / jax-float32 |\n|---|---|---|---|---|---|---|")
                    .replace("| 0.44 | 1.61 |", "| 0.44 | 0.70 | 0.62 |").replace("| 0.85 | - |", "| 0.85 | 1.50 | 0.57 |"))
    _, times, ratio = plot_speed.read_report(str(path))
    assert ratio == {"torch-float32": {1: 0.44, 25: 0.85}, "jax-float32": {1: 0.62, 25: 0.57}}
    assert set(times) == {"numba-float32", "numpy-float64", "torch-float32"}   # no ratio column as a contender


def test_plot_writes_a_figure_and_rejects_other_files(tmp_path, plot_speed, capsys):
    pytest.importorskip("matplotlib")
    report = tmp_path / "speed.md"
    report.write_text(REPORT)
    out = tmp_path / "speed.png"
    assert plot_speed.main([str(report), "--out", str(out)]) == 0
    assert out.stat().st_size > 1000
    other = tmp_path / "other.md"
    other.write_text("# something else\n")
    assert plot_speed.main([str(other), "--out", str(out)]) == 2
    assert "not a report" in capsys.readouterr().err


def test_floor_section_divides_the_epochs_flops_by_npvaes_rate(speed):
    n, S = 1000, 25
    flops = speed.dense_flops_per_epoch(n, S)
    own = flops / 1e9 / 2.0                                    # a rate that makes the floor 2 s
    secs = {("numba-float32", S): 4.0, (speed.PEER, S): 5.0}
    rates = {("numba-float32", S): [own, own], (speed.PEER, S): [1.5 * own]}
    lines = speed.floor_section([1, S], n, secs, rates)
    rows = [line for line in lines if line.startswith(f"| {S} |")]
    assert len(rows) == 1 and not any(line.startswith("| 1 |") for line in lines)   # S=1 not measured
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    # floor 2 s; best ratio 2/5; share needed 2/(0.67*5); share now 2/4; peer's BLAS 1.5x
    assert cells == [str(S), "2.00", "0.40", f"{2 / (0.67 * 5):.0%}", "50%", "1.50"]


# ---------------------------------------------------------------------------
# The sample-size study's executor (benchmarks/sample_sizes.py), on tiny synthetic cells
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def study():
    module = _benchmark("sample_sizes", register=True)  # registered: workers unpickle run_cell by reference
    yield module
    sys.modules.pop("sample_sizes", None)


def tiny_argv(out, *extra):
    return ["--synthetic", "12", "--samples", "1", "3", "--objectives", "elbo", "iwae", "--epochs", "1",
            "--subset", "40", "--test-subset", "10", "--k", "8", "--snr-repeats", "2", "--snr-batch", "10",
            "--hidden", "8", "--out", str(out), *extra]


@pytest.mark.slow      # trains 4 tiny cells in worker processes, twice
def test_study_runs_cells_in_workers_and_resumes(study, tmp_path, capsys):
    out = tmp_path / "ss"
    assert study.main(tiny_argv(out, "--workers", "2")) == 0
    log = capsys.readouterr().out
    assert "4 cells: 0 already done, 4 to run" in log and "[4/4]" in log and "ETA" in log
    results = sorted((out / "cells").glob("*/result.json"))
    assert [p.parent.name for p in results] == ["elbo-S1-seed0", "elbo-S3-seed0", "iwae-S1-seed0", "iwae-S3-seed0"]
    assert not list((out / "cells").glob("*/checkpoint.npz"))
    stamps = [p.stat().st_mtime_ns for p in results]
    report = Path(str(out) + ".md").read_text()
    assert "| iwae | 3 | 1 |" in report and "Command: `python benchmarks/sample_sizes.py" in report
    assert "| its Monte Carlo SE | ESS of the k samples (median over images) |" in report
    assert "Compute: 4 cells took" in report
    for name in ("bounds", "snr", "time"):
        if importlib.util.find_spec("matplotlib"):
            assert Path(f"{out}_{name}.png").exists()

    # Resume: a finished cell is not recomputed; a deleted one is.
    (out / "cells" / "iwae-S3-seed0" / "result.json").unlink()
    assert study.main(tiny_argv(out, "--workers", "1", "--no-plots")) == 0
    assert "4 cells: 3 already done, 1 to run" in capsys.readouterr().out
    assert [p.stat().st_mtime_ns for p in results[:3]] == stamps[:3]

    # Other settings over the same folder are refused rather than mixed in.
    with pytest.raises(SystemExit, match=r"other settings \(epochs\)"):
        study.main(tiny_argv(out, "--epochs", "2", "--no-plots"))


def test_study_refuses_bad_grid(study, tmp_path, capsys):
    with pytest.raises(SystemExit):
        study.main(tiny_argv(tmp_path / "ss", "--samples", "0"))
    assert "--samples: expected integers >= 1, got 0" in capsys.readouterr().err


@pytest.mark.slow      # starts a Dask cluster
def test_study_on_a_dask_cluster(study, tmp_path, capsys):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp",
                                  host="127.0.0.1", dashboard_address=None) as cluster:
        out = tmp_path / "ss"
        argv = tiny_argv(out, "--samples", "2", "--objectives", "iwae", "--scheduler", cluster.scheduler_address,
                         "--no-plots")
        assert study.main(argv) == 0
        log = capsys.readouterr().out
        assert "1 cells: 0 already done, 1 to run (scheduler tcp://127.0.0.1:" in log
        result = json.loads((out / "cells" / "iwae-S2-seed0" / "result.json").read_text())
        assert result["mc_samples"] == 2 and np.isfinite(result["log_likelihood"])


def test_study_cells_with_dreg_binarized_float32_and_a_curve(study, tmp_path, capsys):
    out = tmp_path / "ss"
    argv = tiny_argv(out, "--objectives", "elbo", "iwae-dreg", "--samples", "2", "--epochs", "2", "--dtype",
                     "float32", "--binarize", "dynamic", "--curve", "6", "--no-plots")
    assert study.main(argv) == 0
    capsys.readouterr()
    r = json.loads((out / "cells" / "iwae-dreg-S2-seed0" / "result.json").read_text())
    assert r["settings"]["dtype"] == "float32" and r["settings"]["binarize"] == "dynamic"
    assert 0 <= r["active_units"] <= 2 and r["test_kl"] >= 0 and np.isfinite(r["log_likelihood"])
    assert [("curve_iwae_50" in h) for h in r["history"]] == [True, True]
    report = Path(str(out) + ".md").read_text()
    assert "## Equal wall-clock time" in report and "| iwae-dreg | 2 |" in report
    assert "Best S for iwae-dreg, by budget" in report or "Best S for elbo, by budget" in report


def test_study_reads_cells_of_the_first_grid_as_computed_with_the_old_defaults(study, tmp_path, capsys):
    out = tmp_path / "ss"
    argv = tiny_argv(out, "--samples", "1", "--objectives", "elbo", "--no-plots")
    assert study.main(argv) == 0
    path = out / "cells" / "elbo-S1-seed0" / "result.json"
    r = json.loads(path.read_text())
    for key in study.LATER_SETTINGS:                     # as the first grid's cells were written
        del r["settings"][key]
    path.write_text(json.dumps(r))
    capsys.readouterr()
    assert study.main(argv) == 0
    assert "1 cells: 1 already done, 0 to run" in capsys.readouterr().out
    with pytest.raises(SystemExit, match=r"other settings \(dtype\)"):
        study.main(argv + ["--dtype", "float32"])


def test_burda_section_sets_the_cells_beside_table_1_and_reads_the_directions(study):
    import argparse
    args = argparse.Namespace(hidden=[200, 200], activation="tanh", latent_dim=50, binarize="dynamic",
                              epochs=10, batch_size=100)
    assert study.is_burda_architecture(args)
    assert not study.is_burda_architecture(argparse.Namespace(**{**vars(args), "binarize": "none"}))

    def row(ll, au):
        return {"log_likelihood": (ll, float("nan"), 1), "active_units": (au, float("nan"), 1)}

    # here: IWAE better than the VAE at S = 5, worse at S = 50; the VAE's NLL rises from S = 5 to 50
    agg = {("elbo", 1): row(-95.0, 12), ("elbo", 5): row(-94.0, 13), ("elbo", 50): row(-94.5, 13),
           ("iwae", 1): row(-95.1, 12), ("iwae", 5): row(-93.0, 15), ("iwae", 50): row(-95.0, 16),
           ("elbo", 25): row(-94.2, 13)}
    text = "\n".join(study.burda_section(agg, args))
    assert "| 5 | 94.00 | 86.47 | 93.00 | 85.54 | — | 1.00 | 0.93 | 13 / 15 | 20 / 22 |" in text
    assert "S = 5: the IWAE bound trains a better model than the ELBO here (+1.00 nats)" in text
    assert "S = 50: the IWAE bound trains a worse model" in text and "**the opposite direction**" in text
    assert "- VAE: NLL against S here 95.00, 94.00, 94.50 (does not fall monotonically" in text
    assert "- IWAE: NLL against S here 95.10, 93.00, 95.00 (does not fall" in text
    assert "| 25 |" not in text                                        # not in their table
    assert "10 epochs of RMSprop" in text and "3280 passes" in text
    assert study.burda_section({("elbo", 25): row(-94.2, 13)}, args) == []


def test_curve_at_takes_the_last_epoch_within_the_budget(study):
    result = {"history": [{"seconds": 2.0, "curve_iwae_50": -100.0}, {"seconds": 2.0, "curve_iwae_50": -90.0}]}
    assert study.curve_at(result, 1.0) is None
    assert study.curve_at(result, 3.9) == -100.0
    assert study.curve_at(result, 4.0) == -90.0


def test_compute_line_counts_a_resumed_cells_every_epoch(study):
    fresh = {"train_seconds": 1000.0, "eval_seconds": 500.0, "cell_seconds": 1600.0}     # + 100 s of SNR
    resumed = {"train_seconds": 3000.0, "eval_seconds": 600.0, "cell_seconds": 900.0}    # last process only
    line = study.compute_line([fresh, resumed])
    assert line.startswith("Compute: 2 cells took 1.4 hours of one core in all (training 1.1 h, "
                           "the log-likelihood and test bounds 0.3 h")


def test_snr_vs_k_runs_resumes_and_reports_slopes(tmp_path, capsys, monkeypatch, mnist_dir):
    snr = _benchmark("snr_vs_k")
    monkeypatch.setenv("NPVAE_DATA", str(mnist_dir))
    out, models = tmp_path / "snr", tmp_path / "models"
    argv = ["--K", "1", "4", "--points", "init", "--batches", "2", "--repeats", "10", "--max-repeats", "40",
            "--fit-from", "1", "--estimators", "iwae-standard", "elbo", "--out", str(out), "--models", str(models)]
    assert snr.main(argv) == 0
    data = json.loads(Path(str(out) + ".json").read_text())
    cell = data["cells"]["init/B2"]["4"]
    assert set(cell) == {"ess", "iwae-standard", "elbo"} and 1.0 <= cell["ess"] <= 4.0
    assert 10 <= cell["elbo"]["repeats"] <= 40 and cell["elbo"]["encoder"]["norm_snr_corrected"] > 0
    report = Path(str(out) + ".md").read_text()
    assert "## init, a minibatch of 2" in report and "* elbo: encoder" in report and "[published +0.5]" in report
    # a cell at the floor says how many draws it had, once (on its encoder column)
    floor = [c for K in data["cells"]["init/B2"].values() for c in K.values() if isinstance(c, dict) and c["at_floor"]]
    assert report.count("] floor (R=") == len(floor) and report.count("] floor") == 2 * len(floor)
    assert all(f" floor (R={c['repeats']})" in report for c in floor)
    capsys.readouterr()
    assert snr.main(argv) == 0                            # resumed: nothing recomputed
    assert "K=4" not in capsys.readouterr().out


def test_snr_vs_k_compute_line_sums_the_kept_measurements_per_setting():
    snr = _benchmark("snr_vs_k")
    cell = lambda seconds: {"repeats": 20, "seconds": seconds}      # noqa: E731
    data = {"cells": {"init/B1": {"1": {"ess": 1.0, "elbo": cell(1800.0), "iwae-dreg": cell(900.0)},
                                  "3": {"ess": 2.5, "elbo": cell(900.0)}},
                      "iwae/B100": {"1": {"ess": 1.0, "elbo": cell(3600.0)}}}}
    line = snr.compute_line(data)
    assert line.startswith("Compute: the kept measurements took 2.0 hours of one core "
                           "(init/B1 1.00, iwae/B100 1.00)")


def test_cpu_name_is_one_line_of_text():
    name = _benchmark("hostload").cpu_name()
    assert isinstance(name, str) and name and "\n" not in name


def test_time_table_sets_numba_against_both_peers_with_their_targets(speed):
    values = {("numba-float32", 1): [1.0, 1.2], ("torch-float32", 1): [2.0], ("jax-float32", 1): [1.25],
              ("numba-float32", 25): [7.0], ("torch-float32", 25): [10.0], ("jax-float32", 25): [10.0]}
    rows, verdicts, med = speed.time_table([1, 25], ["numba-float32", "torch-float32", "jax-float32"], values)
    assert rows[0].endswith("| numba-float32 / peer | jax-float32 / peer | numba-float32 / jax-float32 |")
    assert rows[2].split(" | ")[-1].rstrip(" |") == f"{1.1 / 1.25:.2f}"
    assert "- S=1, against torch-float32: ratio 0.55, met" in verdicts
    assert "- S=1, against jax-float32: ratio 0.88, missed by 1.17x (0.88 vs 0.75)" in verdicts
    assert "- S=25, against torch-float32: ratio 0.70, missed by 1.04x (0.70 vs 0.67)" in verdicts


def test_meter_counts_what_others_took_of_the_machine(monkeypatch):
    hostload = _benchmark("hostload")
    busy = iter([100.0, 100.0 + (os.cpu_count() or 1)])              # every CPU busy for the whole second
    own = iter([10.0, 10.0])                                              # this process took no CPU
    clock = iter([0.0, 1.0])
    monkeypatch.setattr(hostload, "busy_seconds", lambda: next(busy))
    monkeypatch.setattr(hostload, "own_seconds", lambda: next(own))
    monkeypatch.setattr(hostload.time, "perf_counter", lambda: next(clock))
    with hostload.Meter(threshold=0.4) as m:
        pass
    assert m.wall == 1.0 and m.cpu == 0.0
    assert m.others == pytest.approx(1.0) and m.disturbed             # others kept every CPU busy
    m2 = hostload.Meter()
    m2.others = 0.05
    assert not m2.disturbed and hostload.DISTURBED == 0.10


def test_end_to_end_alternates_measures_disturbed_runs_again_resumes_and_reports(tmp_path, monkeypatch):
    e2e = _benchmark("end_to_end")
    calls, jax_runs = [], []
    walls = {"npvae": 40.0, "torch": 100.0, "jax": 70.0}

    def fake_run(contender, epochs, threads, scratch, threshold):
        calls.append(contender)
        jax_runs.extend([1] if contender == "jax" else [])
        disturbed = contender == "jax" and len(jax_runs) == 1          # the first JAX run was disturbed
        return dict(wall=walls[contender] + len(calls), cpu=2.0 * walls[contender], others=0.5 if disturbed else 0.0,
                    disturbed=disturbed, load=0.1, val_loss=153.0, train_seconds=30.0, figures=[])

    monkeypatch.setattr(e2e, "run_once", fake_run)
    out = tmp_path / "e2e.md"
    argv = ["--rounds", "2", "--contenders", "npvae", "torch", "jax", "--out", str(out), "--scratch", str(tmp_path)]
    assert e2e.main(argv) == 0
    # round 0 in the given order, round 1 rotated; the disturbed JAX run was measured again at once
    assert calls == ["npvae", "torch", "jax", "jax", "torch", "jax", "npvae"]
    text = out.read_text()
    npvae_med, torch_med = np.median([41.0, 47.0]), np.median([102.0, 105.0])
    assert f"ratio {npvae_med / torch_med:.2f}, met" in text
    assert "no (disturbed, measured again)" in text and text.count("| jax |") == 3
    # a restart reads the finished runs back and runs nothing
    calls.clear()
    assert e2e.main(argv) == 0 and calls == []
    # a third round only runs the third round
    assert e2e.main(argv[:1] + ["3"] + argv[2:]) == 0 and calls == ["jax", "npvae", "torch"]


def test_end_to_end_commands_are_the_readme_main_job_and_the_peers_mains(tmp_path):
    e2e = _benchmark("end_to_end")
    argv, history = e2e.command("npvae", 50, 2, str(tmp_path))
    assert argv[1:] == ["train", "--epochs", "50", "--out", str(tmp_path), "--threads", "2", "--quiet"]
    assert history == str(tmp_path / "history.json")
    readme = Path(REPO, "README.md").read_text()
    assert "npvae train --epochs 50 --out runs/seed" in readme
    for peer in ("torch", "jax"):
        argv, _ = e2e.command(peer, 50, 2, str(tmp_path))
        assert argv[1].endswith(os.path.join("peers", f"{peer}_vae.py")) and "--threads" in argv
