"""Backend choice for backend="auto", from measured crossovers.

The thresholds below come from bench/crossover.py on the project's reference
machine (2-core AMD EPYC, AVX2, Numba's omp threading layer); its command and
output are recorded in bench/CROSSOVER.md. Re-run it on a new machine kind
and update the numbers here, not by guessing.
"""

from typing import NamedTuple

# Below this many multiply-adds per call, the numba kernel runs on one thread:
# opening a parallel region and waking the other thread costs more than it
# saves (measured crossover, see bench/CROSSOVER.md).
SERIAL_MAX_MACS = 2_000_000
# With at least this many (sample, direction) pairs per thread, threads take
# whole scans (one parallel region); below it, the cells of each plane are
# shared out (one region per plane: the only parallelism left at B = 1).
BATCH_PAIRS_PER_THREAD = 2
# The pure-Python fallback never beat the numba kernels in the measured range
# (ratio >= 20x for the smallest problem, see bench/CROSSOVER.md), so "auto"
# chooses it only when numba cannot be imported.


class Choice(NamedTuple):
    """What backend="auto" runs for a problem, and why."""
    backend: str   # "numba" or "python"
    driver: str    # "serial", "batch" or "wavefront" ("reference" for python)
    reason: str


def choose(batch, spatial, channels, hidden, directions, threads, have_numba):
    """The auto choice for a problem of the given sizes."""
    if not have_numba:
        return Choice("python", "reference",
                      "numba cannot be imported; using the pure-Python fallback")
    cells = 1
    for s in spatial:
        cells *= s
    d = len(spatial)
    macs = batch * directions * cells * (channels + d * hidden) * (3 + d) * hidden
    pairs = batch * directions
    if threads <= 1 or macs < SERIAL_MAX_MACS:
        return Choice("numba", "serial",
                      f"{macs} multiply-adds < {SERIAL_MAX_MACS} or one thread: "
                      "a parallel region would cost more than it saves")
    if pairs >= BATCH_PAIRS_PER_THREAD * threads:
        return Choice("numba", "batch",
                      f"{pairs} (sample, direction) pairs >= "
                      f"{BATCH_PAIRS_PER_THREAD} x {threads} threads: "
                      "threads take whole scans in one parallel region")
    return Choice("numba", "wavefront",
                  f"{pairs} (sample, direction) pairs < "
                  f"{BATCH_PAIRS_PER_THREAD} x {threads} threads: "
                  "threads share the cells of each anti-diagonal plane")
