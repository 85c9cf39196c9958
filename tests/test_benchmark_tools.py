"""The benchmark tools: what the scripts share (benchmarks/_common.py), reports into figures
(plot_speed.py), report sections and workers (speed.py), the sample-size study (sample_sizes.py),
the SNR studies (snr_vs_k.py, snr_vs_mk.py), the end-to-end timing (end_to_end.py), the host meter (hostload.py) and the
speed of the study's workload (speed_study.py).

How these tests import the scripts: ``benchmarks/`` is a folder of scripts, not a package (each
runs as ``python benchmarks/x.py``, and its first import, ``import _common``, puts the repository
and ``benchmarks/peers/`` on ``sys.path``). Running a script puts its folder first on
``sys.path``; the test session does the same once, through pytest's ``pythonpath = benchmarks``
(setup.cfg), so the tests import the scripts by the names the scripts import each other by
(``import speed``), as ordinary modules: no loading by file path, and worker processes find
``sample_sizes.run_cell`` by its module's name. The tests of pure helpers (ESS, FLOPs, tables,
report lines) need only NumPy; they run with the rest of the suite in CI's full environment.
"""

import argparse
import concurrent.futures as cf
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import _common
import end_to_end
import hostload
import mnist_idx
import plot_speed
import sample_sizes as study
import snr_vs_k
import snr_vs_mk
import speed
import speed_study

import npvae  # after _common: this checkout's

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

SCRIPTS = ["compare_peer", "end_to_end", "ll_throughput", "plot_speed", "posterior_gap", "sample_sizes", "snr_vs_k",
           "snr_vs_mk", "speed", "speed_study"]


# ---------------------------------------------------------------------------
# benchmarks/_common.py
# ---------------------------------------------------------------------------
def test_ess_is_the_effective_sample_size_of_the_weights():
    with np.errstate(divide="ignore"):          # a weight of 0 is a log weight of -inf
        log_w = np.log(np.array([[1.0, 1.0, 1.0, 1.0], [4.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]]))
    np.testing.assert_allclose(_common.ess(log_w), [4.0, 36.0 / 18.0, 1.0])
    # a shift of every log weight changes nothing, and a huge one does not overflow
    np.testing.assert_allclose(_common.ess(log_w[:2] + 1000.0), [4.0, 2.0])
    assert _common.ess(np.zeros((2, 3, 5)), axis=1).shape == (2, 5)


def test_step_flops_counts_the_products_of_the_layer_shapes():
    import npvae
    b, S = 100, 5
    seed = npvae.VAE(backend="numpy").layer_shapes()          # 784-256-2
    fwd = 2.0 * (b * 784 * 256 + 2 * b * 256 * 2 + b * S * 2 * 256 + b * S * 256 * 784)
    # forward, dW of every layer, dX of every layer but the first (the data needs no gradient)
    assert _common.step_flops(seed, b, S) == pytest.approx(3 * fwd - 2.0 * b * 784 * 256, rel=1e-15)
    deep = npvae.VAE(input_dim=10, hidden=(6, 4), latent_dim=3, backend="numpy").layer_shapes()
    enc = [(10, 6), (6, 4), (4, 3), (4, 3)]
    dec = [(3, 4), (4, 6), (6, 10)]
    fwd = 2.0 * (sum(b * i * o for i, o in enc) + sum(b * S * i * o for i, o in dec))
    assert _common.step_flops(deep, b, S) == pytest.approx(3 * fwd - 2.0 * b * 10 * 6, rel=1e-15)
    # an epoch of 250 examples: two full batches and one of 50
    assert _common.epoch_flops(deep, 250, S, batch=b) == pytest.approx(
        2 * _common.step_flops(deep, b, S) + _common.step_flops(deep, 50, S), rel=1e-15)


def test_gflops_divides_the_flops_by_the_median_call(monkeypatch):
    clock = iter([0.0, 1.0, 10.0, 12.0, 20.0, 24.0])              # calls of 1, 2 and 4 seconds
    monkeypatch.setattr(_common.time, "perf_counter", lambda: next(clock))
    calls = []
    assert _common.gflops(lambda: calls.append(1), 6e9, reps=3) == pytest.approx(3.0)     # 6 GFLOP / 2 s
    assert len(calls) == 4                                                                  # and a warm-up call


def test_gemm_rates_are_measured_for_numpy_products():
    assert 0 < _common.gemm_rate(64, 32, 48, dtype="float64", reps=2) < np.inf
    assert 0 < _common.gemm_rate_parallel(64, 32, 48, "float32", threads=2, reps=2) < np.inf
    with pytest.raises(ValueError, match="lib: expected 'numpy', 'torch' or 'jax', got 'blis'"):
        _common.product(2, 2, 2, lib="blis")


def test_machine_is_one_line_and_numpy_blas_is_found_once(monkeypatch):
    name = _common.cpu_name()
    assert isinstance(name, str) and name and "\n" not in name
    line = _common.machine(load=True)
    assert "\n" not in line and f"{os.cpu_count()} logical CPUs" in line and f"NumPy {np.__version__}" in line
    assert "load average" in line and "load average" not in _common.machine()
    calls = []
    monkeypatch.setattr(_common, "_openblas_core", lambda: calls.append(1) or "Kernels")
    _common.numpy_blas.cache_clear()
    try:
        assert _common.numpy_blas() == _common.numpy_blas() and _common.numpy_blas().endswith(", kernels Kernels")
        assert calls == [1]
    finally:
        _common.numpy_blas.cache_clear()


def test_load_mnist_goes_through_npvae(monkeypatch, tmp_path):
    import npvae
    seen = []

    def fake(path, download, progress):
        seen.append((path, download, progress))
        return (np.zeros((3, 784), np.float32), np.zeros(3)), (np.ones((2, 784), np.float32), np.zeros(2))

    monkeypatch.setattr(npvae, "load_mnist", fake)
    x_train, x_test = _common.load_mnist(tmp_path, download=False)
    assert x_train.shape == (3, 784) and x_test.shape == (2, 784) and seen == [(tmp_path, False, False)]


def test_only_common_sets_up_the_import_path():
    for script in Path(_common.BENCHMARKS).glob("**/*.py"):
        if script.name != "_common.py":
            assert not re.search(r"sys\.path\.(insert|append)|sys\.path\s*=", script.read_text()), script


@pytest.mark.parametrize("script", SCRIPTS)
def test_each_script_runs_from_anywhere_and_shows_its_defaults(script, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}        # _common finds npvae itself
    p = subprocess.run([sys.executable, str(_common.BENCHMARKS / f"{script}.py"), "--help"], cwd=tmp_path,
                       capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "usage:" in p.stdout and "Traceback" not in p.stderr and "(default:" in p.stdout


def test_peers_read_mnist_from_the_idx_files(tmp_path, monkeypatch):
    import gzip
    import struct
    for name, n in (("train-images-idx3-ubyte.gz", 3), ("t10k-images-idx3-ubyte.gz", 2)):
        pixels = np.arange(n * 4, dtype=np.uint8).reshape(n, 4)
        with gzip.open(tmp_path / name, "wb") as f:
            f.write(struct.pack(">4I", 2051, n, 2, 2) + pixels.tobytes())
    monkeypatch.setenv("NPVAE_DATA", str(tmp_path))
    x_train, x_test = mnist_idx.load_mnist()
    assert x_train.shape == (3, 4) and x_test.shape == (2, 4) and x_train.dtype == np.float32
    np.testing.assert_array_equal(x_test[1], np.arange(4, 8).astype(np.float32) / np.float32(255.0))
    monkeypatch.delenv("NPVAE_DATA")
    with pytest.raises(ValueError, match="no MNIST folder: pass --data"):
        mnist_idx.load_mnist()


# ---------------------------------------------------------------------------
# plot_speed.py, speed.py
# ---------------------------------------------------------------------------
def test_read_report_takes_the_seconds_table_only(tmp_path):
    path = tmp_path / "speed.md"
    path.write_text(REPORT)
    threads, times, ratio = plot_speed.read_report(str(path))
    assert threads == 2
    assert times == {"numba-float32": {1: 2.10, 25: 15.59}, "numpy-float64": {1: 7.66},
                     "torch-float32": {1: 4.75, 25: 18.45}}
    assert ratio == {"torch-float32": {1: 0.44, 25: 0.85}}


def test_read_report_takes_the_ratio_to_each_peer(tmp_path):
    path = tmp_path / "speed.md"
    path.write_text(REPORT.replace("| numpy-float64 / peer |\n|---|---|---|---|---|---|",
                                   "| jax-float32 / peer | numba-float32 / jax-float32 |\n|---|---|---|---|---|---|---|")
                    .replace("| 0.44 | 1.61 |", "| 0.44 | 0.70 | 0.62 |").replace("| 0.85 | - |", "| 0.85 | 1.50 | 0.57 |"))
    _, times, ratio = plot_speed.read_report(str(path))
    assert ratio == {"torch-float32": {1: 0.44, 25: 0.85}, "jax-float32": {1: 0.62, 25: 0.57}}
    assert set(times) == {"numba-float32", "numpy-float64", "torch-float32"}   # no ratio column as a contender


def test_plot_writes_a_figure_and_rejects_other_files(tmp_path, capsys):
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


def test_speed_takes_the_product_and_the_flops_from_the_seed_models_layers():
    assert speed.output_product(25) == (2500, 256, 784)
    assert [name for name, _, _ in speed.seed_layers()][0] == "enc.0"


def test_floor_section_divides_the_epochs_flops_by_npvaes_rate():
    n, S = 1000, 25
    flops = _common.epoch_flops(speed.seed_layers(), n, S)
    own = flops / 1e9 / 2.0                                    # a rate that makes the floor 2 s
    secs = {("numba-float32", S): 4.0, (speed.PEER, S): 5.0}
    rates = {("numba-float32", S): [own, own], (speed.PEER, S): [1.5 * own]}
    lines = speed.floor_section([1, S], n, secs, rates)
    rows = [line for line in lines if line.startswith(f"| {S} |")]
    assert len(rows) == 1 and not any(line.startswith("| 1 |") for line in lines)   # S=1 not measured
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    # floor 2 s; best ratio 2/5; share needed 2/(0.67*5); share now 2/4; peer's BLAS 1.5x
    assert cells == [str(S), "2.00", "0.40", f"{2 / (0.67 * 5):.0%}", "50%", "1.50"]


def test_time_table_sets_numba_against_both_peers_with_their_targets():
    values = {("numba-float32", 1): [1.0, 1.2], ("torch-float32", 1): [2.0], ("jax-float32", 1): [1.25],
              ("numba-float32", 25): [7.0], ("torch-float32", 25): [10.0], ("jax-float32", 25): [10.0]}
    rows, verdicts, med = speed.time_table([1, 25], ["numba-float32", "torch-float32", "jax-float32"], values)
    assert rows[0].endswith("| numba-float32 / peer | jax-float32 / peer | numba-float32 / jax-float32 |")
    assert rows[2].split(" | ")[-1].rstrip(" |") == f"{1.1 / 1.25:.2f}"
    assert "- S=1, against torch-float32: ratio 0.55, met" in verdicts
    assert "- S=1, against jax-float32: ratio 0.88, missed by 1.17x (0.88 vs 0.75)" in verdicts
    assert "- S=25, against torch-float32: ratio 0.70, missed by 1.04x (0.70 vs 0.67)" in verdicts


def test_drift_counts_subnormals_through_the_optimizers_public_state():
    x = (np.random.default_rng(0).random((200, 784)) < 0.2).astype(np.float32)
    records = speed._drift_npvae("numpy-float64", x, epochs=2, seed=0)
    assert [sorted(r) for r in records] == [["cpu", "deep", "seconds", "subnormal_params", "subnormal_state"]] * 2
    assert all(r["seconds"] > 0 and r["subnormal_state"] >= 0 and 0.0 <= r["deep"] <= 1.0 for r in records)
    source = Path(speed.__file__).read_text()
    assert "._state" not in source and "torch.optim.RMSprop =" not in source


def test_meter_counts_what_others_took_of_the_machine(monkeypatch):
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


def test_step_products_are_the_products_step_flops_counts():
    import npvae
    b, S = 20, 5
    deep = npvae.VAE(input_dim=10, hidden=(6, 4), latent_dim=3, backend="numpy").layer_shapes()
    products = _common.step_products(deep, b, S)
    # forward, dW (X^T dY) and dX (dY W^T) per layer, no dX for the first: 7 layers, 20 products
    assert products[:5] == [(b, 10, 6), (10, b, 6), (b, 6, 4), (6, b, 4), (b, 4, 6)]
    assert products[-3:] == [(b * S, 6, 10), (6, b * S, 10), (b * S, 10, 6)] and len(products) == 20
    assert _common.step_flops(deep, b, S) == sum(2.0 * m * k * n for m, k, n in products)


def test_train_once_measures_a_disturbed_run_again_and_says_what_the_first_saw(monkeypatch):
    shares = iter([0.30, 0.05])

    class Meter:                                   # others took 30% of the first run, 5% of the second
        def __init__(self, threshold):
            self.threshold = threshold

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.others = next(shares)
            self.disturbed = self.others > self.threshold

    calls = []
    monkeypatch.setattr(speed, "Meter", Meter)
    monkeypatch.setattr(speed, "spawn",
                        lambda threads, *argv, script: calls.append((argv, script)) or {"seconds": [1.0]})
    args = argparse.Namespace(disturbed=0.1, threads=2, epochs=1, subset=400)
    res, line = speed.train_once(args, 0, "numba-float32", 5, script="other.py")
    assert [script for _, script in calls] == ["other.py", "other.py"] and calls[0][0][-2:] == ("--subset", 400)
    assert res["others"] == 0.05
    assert line == ("rep 0 S=5 numba-float32: others took 5% of the machine "
                    "(measured again: others took 30% of the first run)")
    assert speed.rotation(["a", "b", "c"], 4) == ["b", "c", "a"]


def test_the_warm_up_epoch_ends_with_a_batch_of_the_timed_epochs_last_size():
    assert len(speed.warm_up_data(np.arange(400), 20)) == 40
    assert len(speed.warm_up_data(np.arange(410), 20)) == 50          # 20, 20 and the last 10
    assert len(speed.warm_up_data(np.arange(30), 20)) == 30


# ---------------------------------------------------------------------------
# benchmarks/speed_study.py: the report from a synthetic record (no training)
# ---------------------------------------------------------------------------
def study_record():
    """A record of 3 rounds: S = 1 with all three contenders (npvae's runs of two epochs), S = 50
    without the PyTorch peer."""
    seconds = {(1, "numba-float32"): [[1.9, 2.1], [3.0, 3.0], [2.4, 2.6]],      # per round medians 2, 3, 2.5
               (1, "jax-float32"): [[4.0], [5.0], [6.0]], (1, "torch-float32"): [[3.0], [4.0], [10.0]],
               (50, "numba-float32"): [[40.0], [44.0], [42.0]], (50, "jax-float32"): [[50.0], [40.0], [60.0]]}
    runs = [dict(round=r, S=S, contender=c, seconds=secs[r], cpu=[2 * v for v in secs[r]],
                 loss=[100.0 + r] * len(secs[r]), others=0.01, note=f"rep {r} S={S} {c}: others took 1% of the machine")
            for (S, c), secs in seconds.items() for r in range(3)]
    rates = [dict(round=r, S=S, groups=1, gflops=g, products=[[20 * S, 200, 784, 2 * g]])
             for S in (1, 50) for r, g in enumerate((50.0, 70.0, 60.0))]
    w = speed_study.workload()
    return dict(command="python benchmarks/speed_study.py --repeats 3", started="2026-01-01 00:00:00",
                finished="2026-01-01 01:00:00", machine="Some CPU, 2 logical CPUs", load_end="1.00/1.00/1.00",
                libraries="numba 0.1", layers=[list(layer) for layer in speed_study.layers()],
                settings=dict(threads=2, epochs=2, subset=None, n=60000, repeats=3, samples=[1, 50],
                              contenders=list(speed_study.CONTENDERS), disturbed=0.1),
                workload=dict(w._asdict(), hyperparameters=dict(w.hyperparameters)), runs=runs, rates=rates)


def _row(report, title, S):
    section = report.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    row = next(line for line in section.splitlines() if line.startswith(f"| {S} |"))
    return [c.strip() for c in row.strip("|").split("|")]


def test_speed_study_report_takes_medians_over_rounds_and_the_ratio_round_by_round():
    report = speed_study.build_report(study_record())
    # npvae's rounds 2, 3, 2.5 (each the median of its epochs); torch (median 4) is the fastest peer,
    # and the per-round ratios 2/3, 3/4, 2.5/10 have the median 0.67 (the ratio of the medians is 0.62)
    assert _row(report, "Seconds per epoch", 1) == ["1", "2.50 [2.00-3.00]", "5.00 [4.00-6.00]", "4.00 [3.00-10.00]",
                                                    "torch-float32", "0.67 [0.25-0.75]"]
    assert _row(report, "Seconds per epoch", 50) == ["50", "42.00 [40.00-44.00]", "50.00 [40.00-60.00]", "-",
                                                     "jax-float32", "0.80 [0.70-1.10]"]   # 40/50, 44/40, 42/60
    assert _row(report, "CPU seconds per epoch", 1) == ["1", "5.00", "10.00", "8.00"]
    flops = _common.epoch_flops(speed_study.layers(), 60000, 50, batch=20)
    achieved = flops / 42.0 / 1e9
    assert _row(report, "The products' rate and what npvae achieves", 50) == [
        "50", "1", f"{_common.step_flops(speed_study.layers(), 20, 50) / 1e9:.3f}", f"{flops / 1e9:.1f}", "60.0",
        "120.0", f"{achieved:.1f}", f"{achieved / 60.0:.0%}"]
    assert _row(report, "Training loss of the timed epochs", 1) == ["1", "101.00", "101.00", "101.00"]
    assert "Command: `python benchmarks/speed_study.py --repeats 3`" in report and "Some CPU" in report
    assert "batch 20, IWAE bound, Adam (lr 0.001, beta1 0.99, beta2 0.999, epsilon 5e-06" in report
    assert "- rep 2 S=50 jax-float32: others took 1% of the machine" in report


def test_speed_study_report_only_redraws_the_report_from_the_json(tmp_path):
    record = study_record()
    (tmp_path / "study.json").write_text(json.dumps(record))
    assert speed_study.main(["--report-only", "--out", str(tmp_path / "study.md")]) == 0
    assert (tmp_path / "study.md").read_text() == speed_study.build_report(record)


def test_speed_study_trains_burdas_workload_on_data_binarized_once(monkeypatch):
    import npvae
    w = speed_study.workload()
    assert (w.hidden, w.latent_dim, w.activation, w.batch_size, w.objective) == ((200, 200), 50, "tanh", 20, "iwae")
    assert npvae.protocol.is_burda_adam(w.npvae_optimizer(), 20) and w.npvae_optimizer().lr == 1e-3
    grey = np.random.default_rng(1).random((50, 784)).astype(np.float32)
    monkeypatch.setattr(speed_study, "load_mnist", lambda download: (grey, None))
    x = speed_study.study_data(subset=30)
    assert x.shape == (30, 784) and x.dtype == np.float32 and set(np.unique(x)) == {0.0, 1.0}
    np.testing.assert_array_equal(x, speed_study.study_data(subset=50)[:30])      # one draw, whatever the subset
    assert abs(x.mean() - grey[:30].mean()) < 0.01


def test_speed_study_combines_the_products_rates_by_their_times(monkeypatch):
    monkeypatch.setattr(speed_study, "step_groups", lambda S, threads: 1)
    monkeypatch.setattr(speed_study, "gemm_rate", lambda rows, inner, cols, reps: float(rows))   # GFLOP/s = rows
    res = speed_study.worker_rate(5, threads=2)
    shapes = _common.step_products(speed_study.layers(), 20, 5)
    flops = [2.0 * m * k * n for m, k, n in shapes]
    assert res["groups"] == 1 and len(res["products"]) == len(set(shapes))
    assert res["gflops"] == pytest.approx(sum(flops) / sum(f / 1e9 / m for f, (m, _, _) in zip(flops, shapes)) / 1e9)
    assert speed_study.repo_relative([str(_common.REPO / "benchmarks" / "results" / "x.md"), "/tmp/y.md", "3"]) == [
        "benchmarks/results/x.md", "/tmp/y.md", "3"]


# ---------------------------------------------------------------------------
# The sample-size study (benchmarks/sample_sizes.py), on tiny synthetic cells
# ---------------------------------------------------------------------------
def tiny_argv(out, *extra):
    """A grid of tiny synthetic cells (``out`` None: the default --out); ``extra`` overrides."""
    return ["--synthetic", "12", "--samples", "1", "3", "--objectives", "elbo", "iwae", "--epochs", "1",
            "--subset", "40", "--test-subset", "10", "--k", "8", "--snr-repeats", "2", "--snr-batch", "10",
            "--hidden", "8", *([] if out is None else ["--out", str(out)]), *extra]


@pytest.mark.slow      # trains 4 tiny cells in worker processes, twice
def test_study_runs_cells_in_workers_and_resumes(tmp_path, capsys):
    out = tmp_path / "ss"
    assert study.main(tiny_argv(out, "--workers", "2")) == 0
    log = capsys.readouterr().out
    assert "4 cells: 0 already done, 4 to run" in log and "[4/4]" in log and "ETA" in log
    results = sorted((out / "cells").glob("*/result.json"))
    assert [p.parent.name for p in results] == ["elbo-S1-seed0", "elbo-S3-seed0", "iwae-S1-seed0", "iwae-S3-seed0"]
    assert not list((out / "cells").glob("*/checkpoint.npz"))
    assert json.loads(results[0].read_text())["settings"]["dtype"] == "float32"      # the default, as the CLI's
    stamps = [p.stat().st_mtime_ns for p in results]
    report = Path(str(out) + ".md").read_text()
    assert "| iwae | 3 | 1 |" in report and "Command: `python benchmarks/sample_sizes.py" in report
    assert "| its Monte Carlo SE | ESS of the k samples (median over images) |" in report
    assert "Compute: 4 cells took" in report
    for name in ("bounds", "snr", "time"):
        if _has("matplotlib"):
            assert Path(f"{out}_{name}.png").exists()

    # Resume: a finished cell is not recomputed; a deleted one is.
    (out / "cells" / "iwae-S3-seed0" / "result.json").unlink()
    assert study.main(tiny_argv(out, "--workers", "1", "--no-plots")) == 0
    assert "4 cells: 3 already done, 1 to run" in capsys.readouterr().out
    assert [p.stat().st_mtime_ns for p in results[:3]] == stamps[:3]

    # Other settings over the same folder are refused rather than mixed in.
    with pytest.raises(SystemExit, match=r"other settings \(epochs: 1 there, 2 here"):
        study.main(tiny_argv(out, "--epochs", "2", "--no-plots"))


def _has(module):
    import importlib.util
    return importlib.util.find_spec(module) is not None


def test_study_splits_the_sample_budget_as_the_objectives_name_says(tmp_path, capsys):
    """``miwae-M2``, ``piwae-M2``, ``ciwae-b0.5``: each cell trains :func:`npvae.fit` with the name's
    parameter (its loss equals a direct fit's), a split whose M does not divide S is left out, and
    the report names each split."""
    out = tmp_path / "ss"
    argv = tiny_argv(out, "--samples", "1", "4", "--objectives", "iwae", "miwae-M2", "piwae-M2", "ciwae-b0.5",
                     "--no-plots")
    assert study.main(argv) == 0
    cells = sorted(p.name for p in (out / "cells").glob("*"))
    assert cells == ["ciwae-b0.5-S1-seed0", "ciwae-b0.5-S4-seed0", "iwae-S1-seed0", "iwae-S4-seed0",
                     "miwae-M2-S4-seed0", "piwae-M2-S4-seed0"]
    args = study.build_parser().parse_args(argv)
    for name, params in (("miwae-M2", {"outer": 2}), ("piwae-M2", {"outer": 2}), ("ciwae-b0.5", {"beta": 0.5})):
        cell = next(c for c in study.make_cells(args) if c["objective"] == name and c["mc_samples"] == 4)
        x_train, _ = study._load_data(cell)
        model = npvae.VAE(input_dim=x_train.shape[1], hidden=cell["hidden"], latent_dim=cell["latent_dim"],
                          seed=0, dtype=cell["dtype"])
        history = npvae.fit(model, x_train, epochs=1, batch_size=cell["batch_size"], mc_samples=4,
                            objective=name.split("-")[0], seed=0, verbose=0, **params)
        result = json.loads((out / "cells" / f"{name}-S4-seed0" / "result.json").read_text())
        assert result["train_loss"] == history[-1]["loss"]
    iwae = json.loads((out / "cells" / "iwae-S4-seed0" / "result.json").read_text())
    miwae = json.loads((out / "cells" / "miwae-M2-S4-seed0" / "result.json").read_text())
    assert iwae["train_loss"] != miwae["train_loss"]           # the split is trained, not IWAE(4)
    report = Path(str(out) + ".md").read_text()
    assert "miwae-M2 (the mean of 2 IWAE bounds of S / 2 samples)" in report and "| piwae-M2 | 4 | 1 |" in report
    for bad, says in ((["miwae-8"], "a split named with its parameter"), (["miwae-M3"], "no S of --samples (1, 4)"),
                      (["ciwae-b2"], "beta in [0, 1]")):
        with pytest.raises(SystemExit):
            study.main(tiny_argv(tmp_path / "x", "--samples", "1", "4", "--objectives", *bad))
        assert says in capsys.readouterr().err


def test_study_refuses_bad_grid(tmp_path, capsys):
    with pytest.raises(SystemExit):
        study.main(tiny_argv(tmp_path / "ss", "--samples", "0"))
    assert "--samples: expected integers >= 1, got 0" in capsys.readouterr().err


def test_study_writes_under_runs_by_default_and_shows_its_defaults(tmp_path, monkeypatch, capsys):
    p = study.build_parser()
    assert p.parse_args([]).out == os.path.join("runs", "sample_sizes") and p.parse_args([]).dtype == "float32"
    text = p.format_help()
    assert "(default: runs/sample_sizes)" in text and "(default: float32)" in text and "(default: [1, 5, 25, 50])" in text
    monkeypatch.chdir(tmp_path)
    assert study.main(tiny_argv(None, "--samples", "1", "--objectives", "elbo", "--no-plots")) == 0
    assert (tmp_path / "runs" / "sample_sizes" / "cells" / "elbo-S1-seed0" / "result.json").exists()
    assert "Report: " + str(tmp_path / "runs" / "sample_sizes.md") in capsys.readouterr().out


def test_study_refuses_a_folder_of_another_study_but_not_another_data_folder(tmp_path, capsys):
    out = tmp_path / "ss"
    assert study.main(tiny_argv(out, "--samples", "1", "--objectives", "elbo", "--no-plots")) == 0
    before = Path(str(out) + ".md").read_text()
    # another grid (other S) of other settings: its report would replace this study's
    with pytest.raises(SystemExit, match=r"holds finished cells computed with other settings \(k: 8 there, 9 here"):
        study.main(tiny_argv(out, "--samples", "2", "--objectives", "elbo", "--k", "9", "--no-plots"))
    assert Path(str(out) + ".md").read_text() == before and not (out / "cells" / "elbo-S2-seed0").exists()
    # the same study read from another data folder (or keeping checkpoints) is the same study
    capsys.readouterr()
    argv = tiny_argv(out, "--samples", "1", "--objectives", "elbo", "--no-plots", "--data", str(tmp_path))
    assert study.main(argv + ["--keep-checkpoints"]) == 0
    assert "1 cells: 1 already done, 0 to run" in capsys.readouterr().out
    result = json.loads((out / "cells" / "elbo-S1-seed0" / "result.json").read_text())
    assert result["settings"]["data"] is None            # recorded as the cell was computed


def test_study_reads_cells_of_the_first_grid_as_computed_with_the_old_defaults(tmp_path, capsys):
    out = tmp_path / "ss"
    argv = tiny_argv(out, "--samples", "1", "--objectives", "elbo", "--no-plots", "--dtype", "float64")
    assert study.main(argv) == 0
    path = out / "cells" / "elbo-S1-seed0" / "result.json"
    r = json.loads(path.read_text())
    for key in study.LATER_SETTINGS:                     # as the first grid's cells were written
        del r["settings"][key]
    r["settings"]["data"] = "../elsewhere/mnist"         # the first grid named its data folder
    path.write_text(json.dumps(r))
    capsys.readouterr()
    assert study.main(argv) == 0
    assert "1 cells: 1 already done, 0 to run" in capsys.readouterr().out
    with pytest.raises(SystemExit, match=r"other settings \(dtype: 'float64' there, 'float32' here"):
        study.main(argv[:-2])                            # the default dtype now


def test_study_resolves_a_relative_out_on_the_client_before_sending_cells(tmp_path, monkeypatch, capsys):
    sent = []

    class Cluster:            # a scheduler whose workers run in another folder: it records what is sent
        def __init__(self, address, timeout, tls):
            assert (address, timeout, tls) == ("tcp://10.0.0.5:8786", 30.0, None)

        def submit(self, fn, cell):
            sent.append(dict(cell))
            future = cf.Future()
            future.set_result(fn(cell))
            return future

        def as_completed(self, futures):
            return futures

        def close(self, interrupted=False):
            pass

    monkeypatch.setattr(study, "_Dask", Cluster)
    monkeypatch.chdir(tmp_path)
    argv = tiny_argv(Path("shared", "ss"), "--samples", "2", "--objectives", "iwae", "--no-plots",
                     "--scheduler", "tcp://10.0.0.5:8786")
    assert study.main(argv) == 0
    assert [c["dir"] for c in sent] == [str(tmp_path / "shared" / "ss" / "cells" / "iwae-S2-seed0")]
    assert (tmp_path / "shared" / "ss" / "cells" / "iwae-S2-seed0" / "result.json").exists()


def test_an_unreachable_scheduler_is_one_line_naming_it_and_the_timeout(tmp_path):
    pytest.importorskip("distributed")
    with socket.socket() as s:                   # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    argv = tiny_argv(tmp_path / "ss", "--scheduler", address, "--connect-timeout", "1", "--no-plots")
    with pytest.raises(SystemExit) as raised:
        study.main(argv)
    message = str(raised.value.code)
    assert f"cannot reach the Dask scheduler at {address} within 1 s" in message and "\n" not in message


def test_tls_options_make_a_security_for_a_tls_scheduler(tmp_path, monkeypatch, capsys):
    distributed = pytest.importorskip("distributed")
    seen = {}

    def client(address, timeout, security):
        seen.update(address=address, security=security)
        raise OSError(f"Timed out trying to connect to {address} after {timeout} s")

    monkeypatch.setattr(distributed, "Client", client)
    tls = ["--tls-ca-file", "ca.pem", "--tls-cert", "client.pem", "--tls-key", "client.key"]
    with pytest.raises(SystemExit, match="cannot reach the Dask scheduler at tls://10.0.0.5:8786"):
        study.main(tiny_argv(tmp_path / "ss", "--scheduler", "tls://10.0.0.5:8786", *tls))
    sec = seen["security"]
    assert (sec.tls_ca_file, sec.tls_client_cert, sec.tls_client_key, sec.require_encryption) == (
        "ca.pem", "client.pem", "client.key", True)
    for argv, error in ((tls, "expected a --scheduler tls://HOST:PORT address, got None"),
                        (tls[:4] + ["--scheduler", "tls://h:1"], "expected all three, got --tls-ca-file, --tls-cert"),
                        (tls + ["--scheduler", "tcp://h:1"], "got 'tcp://h:1'")):
        with pytest.raises(SystemExit):
            study.main(tiny_argv(tmp_path / "ss", *argv))
        assert error in capsys.readouterr().err


def test_a_failed_cell_names_its_worker_and_prints_the_message_with_its_newlines(tmp_path, monkeypatch, capsys):
    def broken(model, x_test, cell):
        raise ValueError("first line\nsecond line")

    monkeypatch.setattr(study, "_test_metrics", broken)      # the forked worker inherits it
    out = tmp_path / "ss"
    assert study.main(tiny_argv(out, "--samples", "1", "--objectives", "elbo", "--no-plots", "--workers", "1")) == 1
    log = capsys.readouterr().out
    assert f"elbo-S1-seed0 FAILED on {platform.node()}, process " in log
    assert "ValueError: first line\nsecond line" in log and "\\n" not in log
    error = out / "cells" / "elbo-S1-seed0" / "error.txt"
    assert f"(traceback in {error})" in log and "Traceback" in error.read_text()
    assert not (out / "cells" / "elbo-S1-seed0" / "result.json").exists()


def test_ctrl_c_ends_the_study_and_its_workers_with_one_line_and_no_traceback(tmp_path):
    argv = tiny_argv(tmp_path / "ss", "--samples", "1", "--objectives", "elbo", "--epochs", "100000",
                     "--subset", "400", "--workers", "1", "--no-plots")
    # SIGINT as at a terminal: a background job of a non-interactive shell (a CI script run with
    # `&`) inherits it ignored, and Python then installs no KeyboardInterrupt handler
    p = subprocess.Popen([sys.executable, str(_common.BENCHMARKS / "sample_sizes.py"), *argv], text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert "1 cells: 0 already done, 1 to run" in p.stdout.readline()
        # the cell is training in its worker once its first epoch's checkpoint is written (a
        # fresh numba cache on a loaded machine takes a minute or more to compile the kernels
        # first: wait for the file, not for a time)
        checkpoint = tmp_path / "ss" / "cells" / "elbo-S1-seed0" / "checkpoint.npz"
        for _ in range(3000):
            if checkpoint.exists() or p.poll() is not None:
                break
            time.sleep(0.1)
        assert checkpoint.exists(), "the cell did not start within 300 s"
        os.killpg(p.pid, signal.SIGINT)                    # as Ctrl-C does: the whole process group
        stdout, stderr = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 130, stderr
    assert stderr.strip().endswith("\nInterrupted: finished cells are kept; run the same command to continue.") \
        or stderr.strip() == "Interrupted: finished cells are kept; run the same command to continue."
    assert "Traceback" not in stderr and "Traceback" not in stdout
    for _ in range(50):                                    # and the worker is gone with it
        try:
            os.killpg(p.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("a worker of the interrupted study is still running")


@pytest.mark.slow      # starts a Dask cluster
def test_study_on_a_dask_cluster(tmp_path, capsys, monkeypatch):
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

        def broken(model, x_test, cell):
            raise RuntimeError("no memory\nfor this cell")

        monkeypatch.setattr(study, "_test_metrics", broken)
        assert study.main(argv + ["--samples", "3"]) == 1
        log = capsys.readouterr().out
        assert re.search(r"iwae-S3-seed0 FAILED on Dask worker .*tcp://127\.0\.0\.1:\d+", log)
        assert "RuntimeError: no memory\nfor this cell" in log


def test_study_cells_with_dreg_binarized_float32_and_a_curve(tmp_path, capsys):
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
    assert "Objectives: elbo (analytic KL), iwae-dreg (the IWAE bound trained with the DReG estimator)." in report
    assert "2 epochs on the first 40 training images" in report


def test_report_names_only_the_objectives_that_ran_and_counts_in_words():
    import argparse
    args = argparse.Namespace(hidden=[8], activation="relu", latent_dim=2, batch_size=100, dtype="float32",
                              epochs=1, subset=40, binarize="none", test_subset=10, k=8, snr_batch=10, snr_repeats=2)
    line = study.setup_line(args, [{"seed": 0, "objective": "elbo"}, {"seed": 0, "objective": "iwae"}])
    assert "1 epoch on the first 40" in line and "Objectives: elbo (analytic KL), iwae." in line
    assert "dreg" not in line.lower()
    assert study.compute_line([{"train_seconds": 20.0, "eval_seconds": 10.0, "cell_seconds": 40.0}]) == (
        "Compute: 1 cell took 40 seconds of one core in all (training 20 s, the log-likelihood and test bounds "
        "10 s, the rest SNR and set-up), one thread per cell.")
    assert study.duration(300) == "5 minutes" and study.duration(60) == "1 minute" and study.duration(360) == "0.1 hours"


def test_burda_section_sets_the_cells_beside_table_1_and_reads_the_directions():
    import argparse
    args = argparse.Namespace(hidden=[200, 200], activation="tanh", latent_dim=50, binarize="dynamic",
                              epochs=10, batch_size=100, subset=60000)
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
    assert "S = 5: after 10 epochs, the IWAE bound trains a better model than the ELBO (analytic KL) here " \
           "(+1.00 nats)" in text
    assert "S = 50: after 10 epochs, the IWAE bound trains a worse model" in text
    assert "**the opposite direction**" in text
    assert "- elbo (analytic KL): NLL against S here after 10 epochs 95.00, 94.00, 94.50 (does not fall " \
           "monotonically" in text
    assert "- IWAE: NLL against S here after 10 epochs 95.10, 93.00, 95.00 (does not fall" in text
    assert "| 25 |" not in text                                        # not in their table
    assert "10 epochs × 600 updates = 6,000 updates here" in text
    assert study.burda_section({("elbo", 25): row(-94.2, 13)}, args) == []


def test_burda_section_names_every_difference_of_protocol_and_the_epochs_of_its_numbers():
    import argparse
    args = argparse.Namespace(hidden=[200, 200], activation="tanh", latent_dim=50, binarize="dynamic",
                              epochs=10, batch_size=100, subset=60000, test_subset=10000)
    row = {"log_likelihood": (-100.0, float("nan"), 1), "active_units": (30.0, float("nan"), 1)}
    text = "\n".join(study.burda_section({("elbo", 5): row, ("iwae", 5): {**row, "log_likelihood": (-98.0, 0, 1)}},
                                         args))
    for difference in ("analytic KL here, the sampled KL", "RMSprop at a constant learning rate of 1e-3 here, Adam "
                       "with their schedule", "the minibatch: 100 here, 20 there", "zero here, the logit of the "
                       "training mean there", "the first 60,000, shuffled every epoch, here; the first 59,600 in "
                       "the same order", "binarized once", "over the test images here, over the first 500 training",
                       "10 epochs × 600 updates = 6,000 updates here, 3,280 epochs × 2,980 updates = 9,774,400 "
                       "there (0.06% of theirs)"):
        assert difference in text
    assert "not comparable to Table 1's converged values" in text and "`benchmarks/burda_table1.py`" in text
    assert "VAE (elbo)" not in text and "| elbo, analytic KL, here | VAE (sampled KL) there |" in text
    assert "- S = 5: after 10 epochs, the IWAE bound trains a better model than the ELBO (analytic KL) here " \
           "(+2.00 nats); after 3,280 epochs, a better one than the VAE there (+0.93): the same direction." in text
    # 5 epochs of a 20-image batch: 15,000 updates of 3,000 each
    fewer = argparse.Namespace(**{**vars(args), "epochs": 5, "batch_size": 20})
    text = "\n".join(study.burda_section({("elbo", 5): row}, fewer))
    assert "5 epochs × 3,000 updates = 15,000 updates here" in text and "the minibatch: 20 here" in text


def _snr_cell(objective, S, seed, median, share, init_median=2.0, repeats=50):
    summary = {"median_snr": median, "share_below_floor": share, "floor": 1 / np.sqrt(repeats)}
    init = {"median_snr": init_median, "share_below_floor": 0.1, "floor": 1 / np.sqrt(repeats)}
    return {"objective": objective, "mc_samples": S, "seed": seed, "snr_encoder": median, "snr_decoder": 5.0,
            "snr_encoder_init": init_median, "snr_decoder_init": 5.0, "settings": {"snr_repeats": repeats},
            "snr_summary": {"encoder": summary, "decoder": dict(summary, median_snr=5.0, share_below_floor=0.0)},
            "snr_summary_init": {"encoder": init, "decoder": dict(init, median_snr=5.0)}}


def test_a_median_snr_at_the_noise_floor_is_shown_as_a_bound():
    # R = 50: the floor 3 / sqrt(50) = 0.42
    under = _snr_cell("iwae", 25, 0, 0.30, 0.8)
    by_share = _snr_cell("iwae", 25, 1, 0.45, 0.55)             # the median above 0.42, most coordinates under
    assert study.snr_at_floor(under, "snr_encoder") == (True, pytest.approx(3 / np.sqrt(50)))
    assert study.snr_at_floor(by_share, "snr_encoder")[0]
    assert not study.snr_at_floor(_snr_cell("iwae", 5, 0, 0.45, 0.2), "snr_encoder")[0]
    # the one rule of every SNR report: more than a quarter of the coordinates under the floor
    assert study.snr_at_floor(_snr_cell("iwae", 5, 0, 0.45, 0.3), "snr_encoder")[0]
    assert not study.snr_at_floor(under, "snr_decoder")[0]
    # a cell of the first grid stored no floor summary: its median and R decide
    old = {"snr_encoder": 0.3, "settings": {"snr_repeats": 50}, "snr_summary": {"encoder": {"median_snr": 0.3}}}
    assert study.snr_at_floor(old, "snr_encoder")[0]
    assert not study.snr_at_floor(dict(old, snr_summary={"encoder": {"median_snr": 0.5}}), "snr_encoder")[0]

    results = [under, by_share, _snr_cell("iwae", 5, 0, 0.9, 0.2, init_median=0.2), _snr_cell("iwae", 5, 1, 1.1, 0.1)]
    table = "\n".join(study.metrics_table(study.aggregate(results)))
    rows = {line.split(" | ")[1]: line.split(" | ") for line in table.splitlines() if line.startswith("| iwae")}
    col = 3 + [m for m, _, _ in study.METRICS].index("snr_encoder")
    assert rows["25"][col] == "< 0.42" and rows["5"][col] == "1.00 ± 0.14"
    assert rows["5"][col + 2] == "1.10 ± 1.27 †1"                    # one seed's init SNR is at the floor
    assert "SNR `< x`: in every seed's cell" in table and "SNR `†n`: n of the seeds' cells" in table
    clean = "\n".join(study.metrics_table(study.aggregate([_snr_cell("iwae", 5, 1, 1.1, 0.1)])))
    assert "<" not in clean and "†" not in clean
    # every seed flagged by the share of coordinates alone, the medians above the floor: not "< 0.42",
    # which the medians contradict, but the values marked as no measurement
    shares = [_snr_cell("iwae", 1, 0, 0.9, 0.3), _snr_cell("iwae", 1, 1, 1.0, 0.4)]
    row = [line.split(" | ") for line in study.metrics_table(study.aggregate(shares)) if line.startswith("| iwae")][0]
    assert row[col] == "0.95 ± 0.07 †2"


def test_the_setup_says_each_cells_own_parameters_not_fixed_ones():
    import argparse
    args = argparse.Namespace(hidden=[8], activation="relu", latent_dim=2, batch_size=100, dtype="float32",
                              epochs=1, subset=40, binarize="none", test_subset=10, k=8, snr_batch=10, snr_repeats=50)
    line = study.setup_line(args, [{"seed": 0, "objective": "iwae"}])
    assert "at each cell's own (trained) parameters" in line and "not S at fixed parameters" in line
    assert "at the trained parameters" not in line and "upper bound" in line


def test_curve_at_takes_the_last_epoch_within_the_budget():
    result = {"history": [{"seconds": 2.0, "curve_iwae_50": -100.0}, {"seconds": 2.0, "curve_iwae_50": -90.0}]}
    assert study.curve_at(result, 1.0) is None
    assert study.curve_at(result, 3.9) == -100.0
    assert study.curve_at(result, 4.0) == -90.0


def test_compute_line_counts_a_resumed_cells_every_epoch():
    fresh = {"train_seconds": 1000.0, "eval_seconds": 500.0, "cell_seconds": 1600.0}     # + 100 s of SNR
    resumed = {"train_seconds": 3000.0, "eval_seconds": 600.0, "cell_seconds": 900.0}    # last process only
    line = study.compute_line([fresh, resumed])
    assert line.startswith("Compute: 2 cells took 1.4 hours of one core in all (training 1.1 h, "
                           "the log-likelihood and test bounds 0.3 h")


# ---------------------------------------------------------------------------
# snr_vs_k.py, end_to_end.py
# ---------------------------------------------------------------------------
def test_snr_vs_k_runs_resumes_and_reports_slopes(tmp_path, capsys, monkeypatch, mnist_dir):
    monkeypatch.setenv("NPVAE_DATA", str(mnist_dir))
    out, models = tmp_path / "snr", tmp_path / "models"
    argv = ["--K", "1", "4", "--points", "init", "--batches", "2", "--repeats", "10", "--max-repeats", "40",
            "--fit-from", "1", "--estimators", "iwae-standard", "elbo", "--out", str(out), "--models", str(models)]
    assert snr_vs_k.main(argv) == 0
    data = json.loads(Path(str(out) + ".json").read_text())
    cell = data["cells"]["init/B2"]["4"]
    assert set(cell) == {"ess", "iwae-standard", "elbo"} and 1.0 <= cell["ess"] <= 4.0
    assert 10 <= cell["elbo"]["repeats"] <= 40 and cell["elbo"]["encoder"]["norm_snr_corrected"] > 0
    report = Path(str(out) + ".md").read_text()
    assert "## At fixed parameters (the init point), a minibatch of 2" in report and "* elbo: encoder" in report
    assert "[published +0.5]" in report
    # a network at the floor is marked; a cell with one says how many draws it had, once (on its encoder column)
    cells = [c for K in data["cells"]["init/B2"].values() for c in K.values() if isinstance(c, dict)]
    networks = sum(snr_vs_k.at_floor(c, p) for c in cells for p in ("encoder", "decoder"))
    marked = [c for c in cells if snr_vs_k.at_floor(c, "encoder") or snr_vs_k.at_floor(c, "decoder")]
    assert report.count("] floor") == networks and report.count("(R=") == len(marked)
    assert all(f"(R={c['repeats']})" in report for c in marked)
    # a new measurement's stored mark is the report's rule
    assert all(c["at_floor"] == any(snr_vs_k.at_floor(c, p) for p in ("encoder", "decoder")) for c in cells)
    capsys.readouterr()
    assert snr_vs_k.main(argv) == 0                            # resumed: nothing recomputed
    assert "K=4" not in capsys.readouterr().out


def _k_cell(norm, median=None, share=0.0, repeats=100):
    part = {"median_snr": median or norm, "median_snr_corrected": median or norm, "norm_snr": norm,
            "norm_snr_corrected": norm, "norm_snr_ci": [0.9 * norm, 1.1 * norm], "share_below_floor": share}
    return {"repeats": repeats, "floor": 1 / np.sqrt(repeats), "at_floor": False, "seconds": 1.0,
            "encoder": part, "decoder": dict(part, share_below_floor=0.0, median_snr_corrected=5.0,
                                             norm_snr_corrected=5.0)}


def test_snr_vs_k_floor_rule_takes_the_median_the_norm_or_the_share_of_coordinates():
    # R = 100: 3 / sqrt(R) = 0.3
    assert not snr_vs_k.at_floor(_k_cell(1.0, share=snr_vs_k.FLOOR_SHARE), "encoder")
    assert snr_vs_k.at_floor(_k_cell(1.0, share=0.44), "encoder")            # most of the median measured, not all
    assert snr_vs_k.at_floor(_k_cell(1.0, median=0.2), "encoder")
    assert snr_vs_k.at_floor(_k_cell(0.2, median=1.0), "encoder")
    assert not snr_vs_k.at_floor(_k_cell(1.0, share=0.44), "decoder")         # per network


def test_snr_vs_k_slopes_leave_out_the_cells_at_the_floor_and_the_table_marks_them_as_bounds():
    import argparse
    args = argparse.Namespace(K=[30, 100, 300, 1000], fit_from=30, max_repeats=2000)
    # the encoder's norm SNR falls as K^-1/2 where measured; K = 300 has 44% of its coordinates under the
    # floor and a norm SNR off that line, K = 1000 a median under 3 / sqrt(R)
    by_k = {str(K): {"ess": 1.0, "iwae-standard": _k_cell(30.0 / np.sqrt(K))} for K in (30, 100)}
    by_k["300"] = {"ess": 1.0, "iwae-standard": _k_cell(5.0, share=0.44)}
    by_k["1000"] = {"ess": 1.0, "iwae-standard": _k_cell(0.5, median=0.1)}
    text = "\n".join(snr_vs_k.slope_lines(by_k, args))
    assert "* iwae-standard: encoder -0.50 over 2 K, at the floor at K = 300, 1000 [published -0.5]" in text
    assert "against K at fixed parameters" in text
    table = "\n".join(snr_vs_k.snr_table(by_k, args))
    row300 = next(line for line in table.splitlines() if line.startswith("| 300 |")).split(" | ")
    assert row300[2] == "5 / 5 [4.5, 5.5] floor (R=100)" and row300[3] == "5 / 5 [4.5, 5.5]"
    row1000 = next(line for line in table.splitlines() if line.startswith("| 1000 |")).split(" | ")
    assert row1000[2] == "< 0.3 / 0.5 [0.45, 0.55] floor (R=100)"
    row30 = next(line for line in table.splitlines() if line.startswith("| 30 |")).split(" | ")
    assert "floor" not in row30[2] and "(R=" not in row30[2]


def test_snr_vs_k_compute_line_sums_the_kept_measurements_per_setting():
    cell = lambda seconds: {"repeats": 20, "seconds": seconds}      # noqa: E731
    data = {"cells": {"init/B1": {"1": {"ess": 1.0, "elbo": cell(1800.0), "iwae-dreg": cell(900.0)},
                                  "3": {"ess": 2.5, "elbo": cell(900.0)}},
                      "iwae/B100": {"1": {"ess": 1.0, "elbo": cell(3600.0)}}}}
    line = snr_vs_k.compute_line(data)
    assert line.startswith("Compute: the kept measurements took 2.0 hours of one core "
                           "(init/B1 1.00, iwae/B100 1.00)")


def test_snr_vs_mk_runs_resumes_and_refuses_a_changed_point(tmp_path, capsys, monkeypatch, mnist_dir):
    monkeypatch.setenv("NPVAE_DATA", str(mnist_dir))
    out = tmp_path / "mk"
    argv = ["--M", "1", "2", "--K", "1", "2", "--points", "init", "--hidden", "16", "--latent-dim", "4",
            "--repeats", "10", "--max-repeats", "40", "--fit-from", "1", "--out", str(out)]
    assert snr_vs_mk.main(argv + ["--max-draw-rows", "2"]) == 0             # 2 x 2 rows a draw left out
    assert set(json.loads(Path(str(out) + ".json").read_text())["cells"]["init/B1"]) == {"1x1", "1x2", "2x1"}
    assert "Not measured: M x K = 2x2" in Path(str(out) + ".md").read_text()
    capsys.readouterr()
    assert snr_vs_mk.main(argv) == 0                            # resumed: the missing cell only
    printed = capsys.readouterr().out
    assert printed.count("M=") == 2 and "init/B1 M=2 K=2 dreg" in printed
    data = json.loads(Path(str(out) + ".json").read_text())
    by_mk = data["cells"]["init/B1"]
    assert set(by_mk) == {"1x1", "1x2", "2x1", "2x2"} and set(data["ess"]["init/B1"]) == {"1", "2"}
    for cell in (c for mk in by_mk.values() for c in mk.values()):
        assert 20 <= cell["repeats"] <= 40
        assert cell["at_floor"] == any(snr_vs_k.at_floor(cell, p) for p in snr_vs_k.PARTS)
        q = cell["encoder"]["quantiles"]
        assert list(q) == [str(v) for v in snr_vs_k.QUANTILES] and q["0.1"] <= q["0.5"] <= q["0.9"]
        assert q["0.5"] == pytest.approx(cell["encoder"]["median_snr_corrected"])
    # DReG changes the encoder's gradient only, and the estimators of a cell share their draws
    same_r = [mk for mk in by_mk.values() if mk["standard"]["repeats"] == mk["dreg"]["repeats"]]
    assert all(mk["standard"]["decoder"] == mk["dreg"]["decoder"] for mk in same_r)
    report = Path(str(out) + ".md").read_text()
    assert "## At fixed parameters (the init point), one data point (test image 0)" in report
    assert "784-16-4 (tanh, float32) at its initialization" in report
    assert "| theorem, against K | -0.5 | +0.5 |" in report
    assert Path(str(out) + ".png").exists() == _has("matplotlib")
    capsys.readouterr()
    assert snr_vs_mk.main(argv) == 0                            # resumed: nothing measured again
    assert "M=" not in capsys.readouterr().out
    data["points"]["init"]["sha256"] = "0" * 64                 # cells measured at another model
    Path(str(out) + ".json").write_text(json.dumps(data))
    with pytest.raises(SystemExit):
        snr_vs_mk.main(argv)
    assert "the init point's model is not the one" in capsys.readouterr().err


def _mk_cell(q, p, share=0.0):
    """A measured MIWAE cell: encoder norm SNR ``q`` (``share`` of its coordinates under the floor),
    decoder ``p``, R = 100 (floor 3 / sqrt(R) = 0.3)."""
    cell = _k_cell(q, share=share)
    cell["decoder"] = dict(cell["encoder"], norm_snr_corrected=p, median_snr_corrected=p, share_below_floor=0.0,
                           norm_snr_ci=[0.9 * p, 1.1 * p])
    for part in ("encoder", "decoder"):
        s = cell[part]["median_snr_corrected"]
        cell[part]["quantiles"] = {str(v): s * f for v, f in zip(snr_vs_k.QUANTILES, (0.5, 0.7, 1.0, 2.0))}
    return cell


def test_snr_vs_mk_slopes_follow_the_grid_leave_out_the_floor_and_sit_beside_the_theorem():
    args = argparse.Namespace(M=[1, 4, 16], K=[1, 4, 16, 64], fit_from=4, estimators=["standard"],
                              max_draw_rows=256)
    # the theorem's rates exactly: encoder sqrt(M / K), decoder sqrt(M K); (M, K) = (1, 64) at the floor by
    # its share of coordinates, (16, 64) not measured (16 x 64 rows a draw > 256)
    by_mk = {snr_vs_mk.cell_name(M, K): {"standard": _mk_cell(10 * np.sqrt(M / K), np.sqrt(M * K))}
             for M, K in snr_vs_mk.grid(args, batch=1)}
    assert snr_vs_mk.cell_name(16, 64) not in by_mk and snr_vs_mk.grid(args, 1)[0] == (1, 1)
    by_mk["1x64"]["standard"] = _mk_cell(10 / 8, 8.0, share=0.44)
    f = snr_vs_mk.fits(by_mk, args)
    enc, dec = f[("standard", "encoder")], f[("standard", "decoder")]
    assert enc["M"][1].norm == pytest.approx(0.5) and enc["M"][1].used == [1, 4, 16]
    assert enc["M"][1].median == pytest.approx(0.5)
    assert enc["K"][1].norm == pytest.approx(-0.5) and (enc["K"][1].used, enc["K"][1].floor) == ([4, 16], [64])
    assert dec["K"][1].norm == pytest.approx(0.5) and dec["K"][1].used == [4, 16, 64]          # per network
    assert np.isnan(enc["M"][64].norm) and (enc["M"][64].used, enc["M"][64].floor) == ([4], [1])
    text = "\n".join(snr_vs_mk.slope_table(by_mk, args))
    assert "| theorem, against M | +0.5 | +0.5 |" in text and "| theorem, against K | -0.5 | +0.5 |" in text
    # the slopes' SE from the cells' intervals (each +10% of the value: a log SD of 0.1 / 1.96), two cells
    # a factor 4 apart: sqrt(2) SD / log(4)
    assert enc["K"][1].norm_se == pytest.approx(0.1 / 1.959964 * np.sqrt(2) / np.log(4))
    assert "| against K at M = 1 | -0.50 ± 0.05 / -0.50 (2; floor at K = 64) | +0.50 ± 0.03 / +0.50 (3) |" in text
    assert "| against M at K = 64 | no fit: floor at M = 1 | +0.50 ± 0.05 / +0.50 (2) |" in text
    summary = snr_vs_mk.summary_table({"cells": {"init/B1": by_mk}}, argparse.Namespace(**vars(args), points=["init"],
                                                                                        batches=[1]))
    assert "| init/B1 | standard | encoder | +0.50, +0.50, +0.50, · | +0.5 | -0.50*, -0.50, -0.50 | -0.5 |" in summary
    table = "\n".join(snr_vs_mk.cell_table(by_mk, {"64": 30.0}, "standard", args))
    row = next(line for line in table.splitlines() if line.startswith("| 1 | 64 |")).split(" | ")
    assert row[2:5] == ["30.0", "100", "1.25 [1.1, 1.4] **floor**"] and row[6] == "0.625 / 0.875 / 1.25 / 2.5"
    assert "floor" not in next(line for line in table.splitlines() if line.startswith("| 4 | 16 |"))
    # DReG's encoder has no published exponent against K
    assert snr_vs_mk.exponent(snr_vs_mk.THEORY[("dreg", "encoder")][1], "encoder", "dreg") == "rises (Tucker et al.)"


def test_end_to_end_alternates_measures_disturbed_runs_again_resumes_and_reports(tmp_path, monkeypatch):
    calls, jax_runs = [], []
    walls = {"npvae": 40.0, "torch": 100.0, "jax": 70.0}

    def fake_run(contender, epochs, threads, scratch, threshold):
        calls.append(contender)
        jax_runs.extend([1] if contender == "jax" else [])
        disturbed = contender == "jax" and len(jax_runs) == 1          # the first JAX run was disturbed
        return dict(wall=walls[contender] + len(calls), cpu=2.0 * walls[contender], others=0.5 if disturbed else 0.0,
                    disturbed=disturbed, load=0.1, val_loss=153.0, train_seconds=30.0, figures=[])

    monkeypatch.setattr(end_to_end, "run_once", fake_run)
    out = tmp_path / "e2e.md"
    argv = ["--rounds", "2", "--contenders", "npvae", "torch", "jax", "--out", str(out), "--scratch", str(tmp_path)]
    assert end_to_end.main(argv) == 0
    # round 0 in the given order, round 1 rotated; the disturbed JAX run was measured again at once
    assert calls == ["npvae", "torch", "jax", "jax", "torch", "jax", "npvae"]
    text = out.read_text()
    npvae_med, torch_med = np.median([41.0, 47.0]), np.median([102.0, 105.0])
    assert f"ratio {npvae_med / torch_med:.2f}, met" in text
    assert "no (disturbed, measured again)" in text and text.count("| jax |") == 3
    # a restart reads the finished runs back and runs nothing
    calls.clear()
    assert end_to_end.main(argv) == 0 and calls == []
    # a third round only runs the third round
    assert end_to_end.main(argv[:1] + ["3"] + argv[2:]) == 0 and calls == ["jax", "npvae", "torch"]


def test_end_to_end_commands_are_the_readme_main_job_and_the_peers_mains(tmp_path):
    argv, history = end_to_end.command("npvae", 50, 2, str(tmp_path))
    assert argv[1:] == ["train", "--epochs", "50", "--out", str(tmp_path), "--threads", "2", "--quiet"]
    assert history == str(tmp_path / "history.json")
    readme = Path(_common.REPO, "README.md").read_text()
    assert "npvae train --epochs 50 --out runs/seed" in readme
    for peer in ("torch", "jax"):
        argv, _ = end_to_end.command(peer, 50, 2, str(tmp_path))
        assert argv[1].endswith(os.path.join("peers", f"{peer}_vae.py")) and "--threads" in argv


# ---------------------------------------------------------------------------
# benchmarks/posterior_gap.py
# ---------------------------------------------------------------------------
def test_posterior_gap_is_the_log_likelihood_minus_the_test_elbo_per_cell(tmp_path):
    import posterior_gap
    cells = [("iwae", 5, 0, -100.0, -110.0), ("iwae", 5, 1, -102.0, -108.0), ("elbo", 5, 0, -104.0, None)]
    for objective, S, seed, ll, elbo in cells:
        folder = tmp_path / "grid" / "cells" / f"{objective}-S{S}-seed{seed}"
        folder.mkdir(parents=True)
        result = {"objective": objective, "mc_samples": S, "seed": seed, "log_likelihood": ll}
        if elbo is not None:
            result["test_elbo"] = elbo
        (folder / "result.json").write_text(json.dumps(result))
    rows = {(r["objective"], r["S"]): r for r in posterior_gap.grid_rows(posterior_gap.read_grid(tmp_path / "grid"))}
    assert rows["iwae", 5]["gaps"] == [10.0, 6.0] and rows["iwae", 5]["mean_gap"] == 8.0
    assert rows["elbo", 5]["gaps"] == [None] and rows["elbo", 5]["mean_gap"] is None
    out = tmp_path / "gap.md"
    assert posterior_gap.main(["--grids", str(tmp_path / "grid"), "--out", str(out)]) == 0
    text = out.read_text()
    assert "| iwae | 5 | 2 | -101.00 | -109.00 | 8.00 | 10.00, 6.00 |" in text and "has no test ELBO" in text
    with pytest.raises(ValueError, match="grids: expected a folder"):
        posterior_gap.read_grid(tmp_path / "empty")


def test_a_redrawn_report_keeps_the_runs_date_and_machine(tmp_path):
    out = tmp_path / "ss"
    argv = tiny_argv(out, "--samples", "1", "--objectives", "elbo", "--workers", "1", "--no-plots")
    assert study.main(argv) == 0
    md = out.with_suffix(".md")
    text = md.read_text().replace("Machine: ", "Machine: the run's own processor, ", 1)
    md.write_text(text)
    run_line = next(line for line in text.splitlines() if line.startswith("Date: "))
    for _ in range(2):                                   # twice: the redraw note is not stacked
        assert study.main(argv + ["--report-only"]) == 0
        lines = md.read_text().splitlines()
        assert [line for line in lines if line.startswith("Date: ")] == [run_line]
        assert sum(line.startswith("Redrawn from the cells' files on ") for line in lines) == 1


# ---------------------------------------------------------------------------
# benchmarks/grid_ais.py
# ---------------------------------------------------------------------------
@pytest.mark.slow      # trains 2 tiny cells twice (the study's, then the retraining), with IS, AIS and BDMC
def test_grid_ais_retrains_cells_bit_for_bit_keeps_models_and_resumes(tmp_path, capsys):
    import grid_ais
    source, out = tmp_path / "ss", tmp_path / "ga"
    assert study.main(tiny_argv(source, "--samples", "1", "2", "--objectives", "elbo", "iwae-dreg", "--binarize",
                                "dynamic", "--curve", "6", "--epochs", "2", "--no-plots")) == 0
    argv = ["--source", str(source), "--out", str(out), "--samples", "1", "2", "--objectives", "elbo", "iwae-dreg",
            "--n", "6", "--k", "8", "--chains", "3", "--steps", "4", "--bdmc-cells", "elbo-S1-seed0", "--bdmc-n",
            "2", "--bdmc-steps", "2", "4"]
    assert grid_ais.main(argv) == 0
    capsys.readouterr()
    cells = sorted((out / "cells").glob("*/result.json"))
    assert [p.parent.name for p in cells] == ["elbo-S1-seed0", "elbo-S2-seed0", "iwae-dreg-S1-seed0",
                                              "iwae-dreg-S2-seed0"]
    for p in cells:
        r = json.loads(p.read_text())
        committed = json.loads((source / "cells" / p.parent.name / "result.json").read_text())
        # the retraining repeats the study's cell exactly: every epoch and every test number
        assert r["check"]["all_equal"] and r["check"]["epochs_equal"] == [True, True], r["check"]
        model = npvae_load(p.parent / "model.npz")
        assert model.dtype == np.float32 and not (p.parent / "checkpoint.npz").exists()
        x_test = study._load_data(committed["settings"])[1]
        elbo = study.evaluate_bound(model, x_test, mc_samples=10, objective="elbo", seed=[0, 10])
        assert -elbo["loss"] == committed["test_elbo"]          # the kept model is the cell's final model
        with np.load(p.parent / "ais.npz") as f:
            assert f["per_example"].shape == (6,) and ((0 <= f["acceptance"]) & (f["acceptance"] <= 1)).all()
        assert r["ais"]["chains"] == 3 and r["is"]["k"] == 8 and r["n"] == 6
    bdmc = json.loads((out / "cells" / "elbo-S1-seed0" / "bdmc.json").read_text())
    assert [b["steps"] for b in bdmc] == [2, 4] and all(np.isfinite(b["gap"]) for b in bdmc)
    report = Path(str(out) + ".md").read_text()
    assert "| elbo-S1-seed0 | 2/2 | equal | equal | equal | equal | equal | equal |" in report
    assert "| 2 | " in report and "IWAE − ELBO (AIS)" in report and "## How tight is AIS here: BDMC" in report
    assert "Command: `python benchmarks/grid_ais.py --source" in report

    # Resume: finished cells are read back, not recomputed
    stamps = [p.stat().st_mtime_ns for p in cells]
    assert grid_ais.main(argv) == 0
    assert capsys.readouterr().err.count(": done") == 4
    assert [p.stat().st_mtime_ns for p in cells] == stamps


def npvae_load(path):
    import npvae
    return npvae.load(path)


def test_grid_ais_verdict_says_whether_a_difference_holds_beyond_two_se():
    import grid_ais
    holds = grid_ais._verdict("iwae", "elbo", 5, (2.0, 0.1), (1.5, 0.1))
    assert "the same sign beyond 2 SE under AIS, 0.50 nats smaller" in holds and "+2.00 ± 0.10 by IS" in holds
    assert "it holds under AIS" in grid_ais._verdict("iwae", "elbo", 5, (2.0, 0.1), (1.5, 0.1), bias=0.6)
    assert "not established" in grid_ais._verdict("iwae", "elbo", 5, (2.0, 0.1), (1.5, 0.1), bias=1.4)
    assert "the sign reverses" in grid_ais._verdict("iwae", "elbo", 1, (0.33, 0.15), (-0.31, 0.14))
    assert "does not hold" in grid_ais._verdict("iwae-dreg", "iwae", 5, (0.4, 0.1), (0.1, 0.1))
    assert "neither beyond 2 SE" in grid_ais._verdict("iwae-dreg", "iwae", 5, (0.1, 0.1), (0.1, 0.1))
    assert grid_ais.paired(np.array([1.0, 2.0, 3.0]), np.array([0.0, 0.0, 0.0])) == (2.0, 1.0 / np.sqrt(3))


# --------------------------------------------------------------------------
# ll_vs_k.py: the importance-sampled log-likelihood against k
# --------------------------------------------------------------------------
def test_ll_vs_k_estimates_each_k_from_disjoint_blocks_and_pairs_the_reference():
    import ll_vs_k
    rng = np.random.default_rng(0)
    flat = np.full((4, 12), -3.0)                         # equal weights: every k gives log w exactly
    est = ll_vs_k.block_estimates(flat, [1, 3, 12], reference=np.full(4, -1.0))
    for k in (1, 3, 12):
        assert est[k][0] == pytest.approx(-3.0) and est[k][2] == pytest.approx(2.0) and est[k][3] == 0
    lw = rng.standard_normal((50, 600)) * 2.0
    est = ll_vs_k.block_estimates(lw, [1, 10, 100, 600], reference=np.zeros(50))
    means = [est[k][0] for k in (1, 10, 100, 600)]
    assert means == sorted(means)                         # the bound rises with k (Burda et al.)
    one = lw[:, :10]
    by_hand = np.mean([np.log(np.exp(one[i]).mean()) for i in range(50)])
    assert ll_vs_k.block_estimates(one, [10], np.zeros(50))[10][0] == pytest.approx(by_hand)


def test_ll_vs_k_keeps_the_model_its_numbers_are_of(tmp_path):
    """A staged cell's model.npz is replaced at its next stage: the run keeps a copy beside its
    results, described from the cell's result.json; given that copy, the note is kept by digest."""
    import json
    import ll_vs_k
    import npvae
    cell = tmp_path / "cells" / "vae-k1-seed0"
    cell.mkdir(parents=True)
    npvae.VAE(hidden=(8,), latent_dim=2, seed=0).save(cell / "model.npz")
    (cell / "result.json").write_text(json.dumps({"cell": "vae-k1-seed0", "stages": [{"stage": 0, "epochs": 1}]}))
    out = tmp_path / "ll_vs_k"
    note, shown, digest = ll_vs_k.pin_model((cell / "model.npz").resolve(), out)
    copy = tmp_path / "ll_vs_k_model.npz"
    assert "vae-k1-seed0" in note and "stage 0" in note and "(epoch 1)" in note and shown == "ll_vs_k_model.npz"
    kept, original = npvae.load(copy), npvae.load(cell / "model.npz")
    x = np.random.default_rng(0).random((3, 784))
    np.testing.assert_array_equal(kept.encode(x)[0], original.encode(x)[0])
    out.with_suffix(".json").write_text(json.dumps({"model_note": note, "model_sha256": digest}))
    assert ll_vs_k.pin_model(copy.resolve(), out) == (note, shown, digest)
    (cell / "model.npz").unlink()
    assert ll_vs_k.pin_model(copy.resolve(), out)[0] == note      # the copy stands alone


def test_ll_vs_k_deep_run_is_reported_per_seed_and_refuses_another_models_json(tmp_path):
    import json
    import ll_vs_k
    import npvae
    deep = {"n": 3, "k_max": 10000, "seeds": [0, 1], "command": "python benchmarks/ll_vs_k.py --deep",
            "date": "2026-12-07 19:00", "ais": {"mean": -80.0, "se": 1.0, "mc_se": 0.01, "chains": 16, "steps": 200},
            "is": {"5000": [[-81.0, 1.0, 1.0, 0.1], [-81.2, 1.0, 1.2, 0.1]],
                   "10000": [[-80.9, 1.0, 0.9, 0.1], [-80.9, 1.0, 0.9, 0.2]]}}
    text = "\n".join(ll_vs_k.deep_section({"deep": deep}))
    assert "## To k = 10,000 on the first 3 images, 2 seeds" in text
    assert "| 5,000 | -81.10 | 0.200 | +1.10 (0.10) |" in text and "| 10,000 | -80.90 | 0.000 | +0.90 (0.20) |" in text
    assert "From k = 5,000 to 10,000 the estimate rises 0.20 nats (per seed 0.10 to 0.30)" in text
    assert ll_vs_k.deep_section({}) == []
    model = tmp_path / "m.npz"
    npvae.VAE(hidden=(8,), latent_dim=2, seed=0).save(model)
    (tmp_path / "ll.json").write_text(json.dumps({"model_sha256": "0" * 64, "model": "other.npz"}))
    with pytest.raises(SystemExit, match="whose numbers are of another model"):
        ll_vs_k.main(["--deep", "--model", str(model), "--out", str(tmp_path / "ll")])
