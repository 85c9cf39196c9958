"""The benchmark helpers: reports into figures (benchmarks/plot_speed.py), report sections (benchmarks/speed.py)."""

import importlib.util
import os

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


def _benchmark(name):
    """The script ``benchmarks/<name>.py`` imported as a module (benchmarks/ is no package)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "benchmarks", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
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
    assert ratio == {1: 0.44, 25: 0.85}


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
