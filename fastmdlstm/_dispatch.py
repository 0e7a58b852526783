"""Backend choice for backend="auto", from measured crossovers.

The thresholds below come from bench/crossover.py on the project's reference
machine (2-core AMD EPYC, AVX2, Numba's omp threading layer); its command and
output are recorded in bench/CROSSOVER.md. Re-run it on a new machine kind
and update the numbers here, not by guessing.
"""

from typing import NamedTuple

# Numbers quoted below: bench/CROSSOVER.md (python bench/crossover.py), medians in ms.
# Below this many multiply-adds per call the kernel runs on one thread: opening a
# parallel region and waking the other threads costs more than it saves:
# 2 x 2x2 N=4 (1.4k): serial 0.025, batch 0.030; 2 x 8x8 N=8 (87k): 0.047 vs 0.043;
# 4 x 8x8 N=8 (174k): 0.081 vs 0.052.
PARALLEL_MIN_MACS = 100_000
# With fewer (sample, direction) pairs than threads, the cells of each plane are
# shared out (one region per plane) once a problem has this many multiply-adds.
# One pair: 8x16x16 N=16 (11M) serial 1.705 vs wavefront 1.082; 32x32 N=32 (13M)
# 1.309 vs 1.355 (even); 48x48 N=32 (29M) 3.006 vs 2.261; 64x64 N=64 (189M) 13.0 vs 7.4.
WAVEFRONT_MIN_MACS = 10_000_000
# With at least one pair per thread, threads take whole scans in one region:
# 2 x 32x32 N=32: batch 1.407 vs wavefront 1.666; 2 x 64x64 N=64: 12.95 vs 14.79.
# The pure-Python fallback never came within 15x of a numba driver (2 x 2x2 N=4:
# 0.46 vs 0.025), so "auto" chooses it only when numba cannot be imported.


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
