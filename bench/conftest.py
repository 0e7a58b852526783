"""pytest-benchmark suite. Quick smoke mode (each benchmark runs once, untimed):
    pytest bench --benchmark-disable
Full run, saved for comparison across commits:
    pytest bench --benchmark-autosave --benchmark-json=bench/results.json
"""

import numba
import pytest

from fastmdlstm._bench import cpu_description, simd_description


def pytest_benchmark_update_machine_info(config, machine_info):
    """Name the CPU in the JSON as results tables do (model, family/model, core class)."""
    machine_info["fastmdlstm_cpu"] = cpu_description()
    machine_info["fastmdlstm_simd"] = simd_description()


@pytest.fixture
def run_bench(benchmark):
    """benchmark(fn) after an explicit warm-up call: pytest-benchmark's own
    warm-up is off by default, and a first call would time JIT compilation."""

    def run(fn, group, flops=None, **info):
        benchmark.group = group
        benchmark.extra_info.update(info)
        benchmark.extra_info["threads"] = info.get("threads", numba.get_num_threads())
        if flops is not None:
            benchmark.extra_info["flops"] = int(flops)
        if not benchmark.disabled:
            fn()
        return benchmark(fn)

    return run


@pytest.fixture
def numba_threads():
    before = numba.get_num_threads()
    yield numba.set_num_threads
    numba.set_num_threads(before)
