"""bench/report.py: a results table names its CPU and gives each row's % of the
machine's FMA peak measured in the same run (issue 10, item 12)."""

import importlib.util
import json
import os

import pytest

REPORT = os.path.join(os.path.dirname(__file__), os.pardir, "bench", "report.py")


@pytest.fixture
def report():
    if not os.path.exists(REPORT):
        pytest.skip("bench/ is not next to tests/ (not a source checkout)")
    spec = importlib.util.spec_from_file_location("bench_report", REPORT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def entry(group, impl, median, flops, threads, dtype="float32", minimum=None):
    return {"group": group, "stats": {"median": median, "min": minimum or median},
            "extra_info": {"impl": impl, "flops": flops, "threads": threads, "dtype": dtype}}


def test_table_names_the_cpu_and_the_percent_of_the_measured_peak(report, tmp_path):
    data = {
        "machine_info": {"fastmdlstm_cpu": "AMD EPYC (family 25 model 17, Zen 4 class)",
                         "fastmdlstm_simd": "512-bit vectors (AVX-512)",
                         "python_version": "3.11"},
        "benchmarks": [
            entry("peak", "fma-float32-1t", 2.0, 200e9, 1, minimum=1.0),  # 200 GFLOP/s
            entry("peak", "fma-float32-2t", 1.0, 400e9, 2),
            entry("peak", "fma-float64-2t", 1.0, 200e9, 2, dtype="float64"),
            entry("standard", "numba", 1.0, 100e9, 2),
            entry("standard-f64", "numba", 1.0, 100e9, 2, dtype="float64"),
            entry("scaling-digits", "numba-1t", 1.0, 50e9, 1),
            entry("roof", "gemm", 1.0, 200e9, 2),
        ]}
    path = tmp_path / "r.json"
    path.write_text(json.dumps(data))
    data, groups = report.load(str(path))
    text = report.table(data, groups)
    assert text.startswith("CPU: AMD EPYC (family 25 model 17, Zen 4 class), 512-bit")
    assert "float32 200.0 GFLOP/s on 1 thread, 400.0 GFLOP/s on 2 threads" in text
    assert "GEMM roof (NumPy float32 2048² matmul): 200.0 GFLOP/s (50% of FMA peak)" in text
    assert "| standard | numba | 1000.000 | 100.0 | 25% |" in text  # of the 2-thread f32 peak
    assert "| standard-f64 | numba | 1000.000 | 100.0 | 50% |" in text  # of the f64 peak
    assert "| scaling-digits | numba-1t | 1000.000 | 50.0 | 25% |" in text  # 1-thread peak
    assert "| peak |" not in text and "% FMA peak" in text


def test_old_json_without_peak_still_reports(report, tmp_path):
    data = {"machine_info": {"cpu": {"brand_raw": "Some CPU", "family": 6, "model": 85}},
            "benchmarks": [{"group": "tiny", "stats": {"median": 1.0, "min": 1.0},
                            "extra_info": {"impl": "numba", "flops": 1e9, "threads": 2}}]}
    path = tmp_path / "old.json"
    path.write_text(json.dumps(data))
    text = report.table(*report.load(str(path)))
    assert text.startswith("CPU: Some CPU (family 6 model 85), 2 threads")
    assert "| tiny | numba | 1000.000 | 1.0 |  |" in text


@pytest.fixture
def report_backward():
    path = os.path.join(os.path.dirname(__file__), os.pardir, "bench", "report_backward.py")
    if not os.path.exists(path):
        pytest.skip("bench/ is not next to tests/ (not a source checkout)")
    spec = importlib.util.spec_from_file_location("bench_report_backward", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _backward_json(tmp_path, name, rounds, threads=2):
    def row(impl, median, **extra):
        return {"group": "backward-standard", "stats": {"median": median},
                "extra_info": dict(impl=impl, threads=threads, batch=16, spatial=[64, 64],
                                   **extra)}

    data = {"machine_info": {"cpu": {"brand_raw": "Some CPU"}, "python_version": "3.11"},
            "benchmarks": [row("forward", 2.0), row("inference forward", 1.0),
                           row("backward", 3.0), row("backward (recompute)", 6.0),
                           row("fwd+bwd", 5.0), row("torch fwd+bwd", 20.0),
                           row("alternating", 4.0, bwd_over_inference_fwd=2.5,
                               bwd_over_inference_fwd_rounds=rounds)]}
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def test_backward_table_ratios_under_their_headers(report_backward, tmp_path):
    rounds = [1.5 + 0.1 * k for k in range(10)]  # 1.5 .. 2.4
    path = _backward_json(tmp_path, "bwd.json", rounds)
    lines = report_backward.table(*report_backward.load(path)).splitlines()
    header = [cell.strip() for cell in lines[2].strip("|").split("|")]
    cells = dict(zip(header, (cell.strip() for cell in lines[4].strip("|").split("|"))))
    assert cells["bwd / fwd"] == "1.50" and cells["bwd / inf. fwd"] == "3.00"
    assert cells["alternating"] == "2.50" and cells["recompute / bwd"] == "2.00"
    assert cells["torch / ours"] == "4.00" and cells["backward ms"] == "3000.0"
    # n = 10 at 95 %: the 2nd smallest to the 2nd largest (P(Bin(10, 1/2) <= 1) = 11/1024).
    assert cells["alternating 95 % CI"] == "1.60–2.30"


def test_median_interval_order_statistics(report_backward):
    median_interval = report_backward.median_interval
    assert median_interval([5, 1, 3, 2, 4]) == (3, None, None)  # 5 values: no 95 % interval
    assert median_interval([6, 1, 2, 3, 4, 5]) == (3.5, 1, 6)  # 2/64 <= 0.05
    assert median_interval(range(1, 8)) == (4, 1, 7)  # 2 * 8/128 > 0.05: k = 1
    # Textbook values: n = 100 gives the 40th and 61st of the sorted values.
    assert median_interval(range(1, 101)) == (50.5, 40, 61)
    # Past n = 1023 the binomial sums exceed a float's range: exact arithmetic.
    # Median of 0..1999 is 999.5, its 95 % interval about +-1.96 sqrt(n) / 2 = +-44.
    assert median_interval(range(2000)) == (999.5, 955, 1044)
    with pytest.raises(ValueError, match="values"):
        median_interval([])


def test_backward_report_pools_runs(report_backward, tmp_path, capsys):
    first = _backward_json(tmp_path, "a.json", [1.8] * 6)
    second = _backward_json(tmp_path, "b.json", [2.2] * 3 + [1.9] * 3)
    assert report_backward.main([first, second]) == 0
    out = capsys.readouterr().out
    assert out.count("| standard") == 2  # a table per run
    pooled = out.split("Pooled:")[1]
    assert "- standard (B=16, 64×64, 2 threads): alternating over 2 runs, 12 rounds: " \
        "median 1.850 (95 % CI 1.800–2.200)" in pooled
    assert "rounds over 2: 25%" in pooled
    assert "the runs' medians: 1.80, 2.05, their median 1.925\n" in pooled  # 2 runs: no CI
    paths = [_backward_json(tmp_path, f"r{k}.json", [1.7 + 0.05 * k] * 6) for k in range(6)]
    assert report_backward.main(paths) == 0
    assert "their median 1.825 (95 % CI 1.700–1.950)" in capsys.readouterr().out


def test_backward_report_pools_like_with_like(report_backward, tmp_path, capsys):
    """Runs at another thread count pool apart; a run without rounds (an older
    JSON) still gets its table and adds nothing to the pool."""
    two = _backward_json(tmp_path, "two.json", [1.8] * 6)
    one = _backward_json(tmp_path, "one.json", [1.6] * 6, threads=1)
    old = _backward_json(tmp_path, "old.json", [])
    assert report_backward.main([two, one, old]) == 0
    out = capsys.readouterr().out
    assert out.count("| standard") == 3
    pooled = out.split("Pooled:")[1].strip().splitlines()
    assert len(pooled) == 2
    assert pooled[0].startswith("- standard (B=16, 64×64, 1 threads): alternating over 1 runs")
    assert pooled[1].startswith("- standard (B=16, 64×64, 2 threads): alternating over 1 runs")
    assert report_backward.main([old, old]) == 0
    assert "No alternating rounds to pool." in capsys.readouterr().out
