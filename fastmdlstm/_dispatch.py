"""Backend choice for backend="auto", from measured crossovers.

The thresholds below come from bench/crossover.py on the project's reference
machine (2-core AMD EPYC, AVX2, Numba's omp threading layer); its command and
output are recorded in bench/CROSSOVER.md. Re-run it on a new machine kind
and update the numbers here, not by guessing.
"""

from typing import NamedTuple

# Below this many multiply-adds per call the kernel runs on one thread: opening a
# parallel region and waking the other threads costs more than it saves. Measured:
# 2 x 4x4 N=8 (22k) serial 0.031 ms vs batch 0.039; 2 x 8x8 N=8 (87k) 0.054 vs 0.053.
PARALLEL_MIN_MACS = 100_000
# With fewer (sample, direction) pairs than threads, the cells of each plane are
# shared out (one region per plane) once a problem has this many multiply-adds.
# Measured with one pair: 32x32 N=16 (2.9M) serial 0.647 ms vs wavefront 0.885;
# 32x32 N=32 (13M) 1.251 vs 1.137; 128x128 N=32 (210M) 20.5 vs 14.3.
WAVEFRONT_MIN_MACS = 10_000_000
# With at least one pair per thread, threads take whole scans in one region:
# 2 x 32x32 N=32: batch 1.376 ms vs wavefront 1.718; 3 x 32x32: 1.831 vs 2.049.
# The pure-Python fallback never came within 7x of a numba driver (2x2 N=4: 0.28 ms
# vs 0.023), so "auto" chooses it only when numba cannot be imported.


class Choice(NamedTuple):
    """What backend="auto" runs for a problem, and why."""
    backend: str   # "numba" or "python"
    driver: str    # "serial", "batch" or "wavefront" ("reference" for python)
    reason: str


def pick(batch, spatial, channels, hidden, directions, threads, have_numba):
    """(backend, driver) of choose(), without building the explanation (hot path)."""
    if not have_numba:
        return "python", "reference"
    cells = 1
    for s in spatial:
        cells *= s
    d = len(spatial)
    macs = batch * directions * cells * (channels + d * hidden) * (3 + d) * hidden
    pairs = batch * directions
    if threads <= 1 or macs < PARALLEL_MIN_MACS:
        return "numba", "serial"
    if pairs >= threads:
        return "numba", "batch"
    if macs >= WAVEFRONT_MIN_MACS:
        return "numba", "wavefront"
    return "numba", ("batch" if pairs > 1 else "serial")


def choose(batch, spatial, channels, hidden, directions, threads, have_numba):
    """The auto choice for a problem of the given sizes, with the reason."""
    backend, driver = pick(batch, spatial, channels, hidden, directions, threads, have_numba)
    if backend == "python":
        return Choice(backend, driver,
                      "numba cannot be imported; using the pure-Python fallback")
    d = len(spatial)
    cells = 1
    for s in spatial:
        cells *= s
    macs = batch * directions * cells * (channels + d * hidden) * (3 + d) * hidden
    pairs = batch * directions
    reasons = {
        "serial": (f"{macs} multiply-adds < {PARALLEL_MIN_MACS}, or one thread, or one "
                   f"(sample, direction) pair and < {WAVEFRONT_MIN_MACS} multiply-adds: "
                   "a parallel region would cost more than it saves"),
        "batch": (f"{pairs} (sample, direction) pairs for {threads} threads and {macs} "
                  "multiply-adds: threads take whole scans in one parallel region"),
        "wavefront": (f"{pairs} (sample, direction) pairs < {threads} threads and {macs} "
                      f"multiply-adds >= {WAVEFRONT_MIN_MACS}: threads share the cells of "
                      "each anti-diagonal plane"),
    }
    return Choice(backend, driver, reasons[driver])
