"""Backend choice for backend="auto", from measured crossovers.

The thresholds below come from bench/crossover.py on the project's reference
machine (2-core AMD EPYC, AVX2, Numba's omp threading layer); its command and
output are recorded in bench/CROSSOVER.md. Re-run it on a new machine kind
and update the numbers here, not by guessing.
"""

from typing import NamedTuple

# Below this many multiply-adds per call the kernel runs on one thread: opening a
# parallel region and waking the other threads costs more than it saves. Measured:
# 2 x 4x4 N=8 (22k): serial 0.023 ms, batch 0.030; 4 x 8x8 N=8 (174k): 0.087 vs 0.086;
# 2 x 16x16 N=16 (1.5M): 0.357 vs 0.237.
PARALLEL_MIN_MACS = 100_000
# With fewer (sample, direction) pairs than threads, the cells of each plane are
# shared out (one region per plane) once a problem has this many multiply-adds.
# Measured with one pair: 32x32 N=16 (2.9M) serial 0.638 ms vs wavefront 0.672;
# 32x32 N=32 (13M) 1.293 vs 0.655; 64x64 N=64 (189M) 12.7 vs 7.7.
WAVEFRONT_MIN_MACS = 10_000_000
# With at least one pair per thread, threads take whole scans in one region:
# 2 x 32x32 N=32: batch 1.533 ms vs wavefront 1.672; 2 x 64x64 N=64: 10.2 vs 14.0.
# The pure-Python fallback never came within 14x of a numba driver (2x2 N=4: 0.37 ms
# vs 0.016), so "auto" chooses it only when numba cannot be imported.


class Choice(NamedTuple):
    """What backend="auto" runs for a problem, and why."""
    backend: str   # "numba" or "python"
    driver: str    # "serial", "batch" or "wavefront" ("reference" for python)
    reason: str


def work(batch, spatial, channels, hidden, directions):
    """(multiply-adds of the matrix products, (sample, direction) pairs) of a forward:
    B * |S| * (C + d*N) * (3+d)*N per direction."""
    d = len(spatial)
    cells = 1
    for s in spatial:
        cells *= s
    pairs = batch * directions
    return pairs * cells * (channels + d * hidden) * (3 + d) * hidden, pairs


def pick(batch, spatial, channels, hidden, directions, threads, have_numba):
    """(backend, driver) of choose(), without building the explanation (hot path)."""
    if not have_numba:
        return "python", "reference"
    macs, pairs = work(batch, spatial, channels, hidden, directions)
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
    macs, pairs = work(batch, spatial, channels, hidden, directions)
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
