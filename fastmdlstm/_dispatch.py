"""Backend choice for backend="auto", from measured crossovers.

The thresholds below come from bench/crossover.py on the project's reference
machine (2-core AMD EPYC, Zen 5 with AVX-512, Numba's omp threading layer);
its command and output are recorded in bench/CROSSOVER.md. Re-run it on a new
machine kind and update the numbers here, not by guessing.
"""

from typing import NamedTuple

GROUP = 8  # cells per weight pass and rows per strip (the kernels' DEFAULT_GROUP)

# Numbers quoted below: bench/CROSSOVER.md (python bench/crossover.py), medians in ms.
# Below this many multiply-adds per call the kernel runs on one thread: opening a
# parallel region and waking the other threads costs more than it saves:
# 2 x 2x2 N=4 (1.4k): serial 0.008, batch 0.009; 2 x 4x4 N=8 (22k): 0.012 vs 0.011;
# 2 x 8x8 N=8 (87k): 0.025 vs 0.017.
PARALLEL_MIN_MACS = 10_000
# With fewer (sample, direction) pairs than threads, the work inside each scan
# is shared out (tiles on a diagonal; planes in 3-D) once a problem has this
# many multiply-adds: one pair, 48x48 N=32 (29M) serial 0.479 vs wavefront
# 0.425; 64x64 N=32 (52M) 0.840 vs 0.574; 8x16x16 N=16 (11M) 0.356 vs 0.285.
WAVEFRONT_MIN_MACS = 10_000_000
# ... and, for 2-D scans, once a strip's sweep makes at least 3 blocks of steps
# (tile_blocks), so that tile diagonals hold 2 tiles: with 2 blocks each holds
# one and the wavefront is a serial scan plus overhead (32x32 N=32: 0.222 vs
# 0.272). Never for 1-D scans.
# With at least one pair per thread, threads take whole scans in one region:
# 2 x 64x64 N=64: batch 2.109 vs wavefront 2.383; 8 x 32x32 N=32: 0.884 vs 1.046.
# The pure-Python fallback never came within 10x of a numba driver (2 x 2x2
# N=4: 0.13 vs 0.008), so "auto" chooses it only when numba cannot be imported.


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


def tile_blocks(width, group, threads):
    """Blocks of steps per strip in the tiled wavefront (_kernels._wavefront_tiles)
    for an image `width` cells wide (a strip has width + group - 1 steps): 4
    per thread, as a tile diagonal holds about half the blocks, but no fewer
    than 2 groups' worth of steps per block."""
    return max(1, min(4 * threads, (width + group - 1) // (2 * group)))


def ring_rows(s0, s1, group):
    """Rows of state slots the kernels keep per scan in strip or tile order
    (_kernels._roll_pos): one row in 1-D/2-D (slot j holds the latest cell of
    column j), the slice before and a strip in 3-D."""
    return 1 if s0 == 1 else min(s0 * s1, s1 + group)


def pick(batch, spatial, channels, hidden, directions, threads, have_numba):
    """(backend, driver) of choose(), without building the explanation (hot path)."""
    if not have_numba:
        return "python", "reference"
    macs, pairs = work(batch, spatial, channels, hidden, directions)
    if threads <= 1 or macs < PARALLEL_MIN_MACS:
        return "numba", "serial"
    if pairs >= threads:
        return "numba", "batch"
    d = len(spatial)  # a 1-D scan has no parallel work inside
    if macs >= WAVEFRONT_MIN_MACS and (
            d == 3 or (d == 2 and tile_blocks(spatial[1], GROUP, threads) > 2)):
        return "numba", "wavefront"
    return "numba", ("batch" if pairs > 1 else "serial")


def _no_wavefront(spatial, macs, threads):
    """Why a scan's work is not shared out (the wavefront's conditions that failed)."""
    d = len(spatial)
    if d == 1:
        return "a 1-D scan has no cells to share between threads"
    if macs < WAVEFRONT_MIN_MACS:
        return (f"{macs} multiply-adds < {WAVEFRONT_MIN_MACS}: sharing out the cells of "
                "a scan would cost more than it saves")
    blocks = tile_blocks(spatial[1], GROUP, threads)
    return (f"a width of {spatial[1]} makes {blocks} blocks of steps per strip (< 3): "
            "a tile diagonal would hold one tile")


def choose(batch, spatial, channels, hidden, directions, threads, have_numba):
    """The auto choice for a problem of the given sizes, with the reason: the
    condition that decided it (the branches of pick(), in the same order)."""
    backend, driver = pick(batch, spatial, channels, hidden, directions, threads, have_numba)
    if backend == "python":
        return Choice(backend, driver,
                      "numba cannot be imported; using the pure-Python fallback")
    macs, pairs = work(batch, spatial, channels, hidden, directions)
    pair_s = "pair" if pairs == 1 else "pairs"
    if threads <= 1:
        reason = "one numba thread: nothing runs in parallel"
    elif macs < PARALLEL_MIN_MACS:
        reason = (f"{macs} multiply-adds < {PARALLEL_MIN_MACS}: a parallel region would "
                  "cost more than it saves")
    elif pairs >= threads:
        reason = (f"{pairs} (sample, direction) {pair_s} >= {threads} threads: threads "
                  "take whole scans in one parallel region")
    elif driver == "wavefront":
        share = ("the cells of each anti-diagonal plane" if len(spatial) == 3 else
                 f"the tiles of each tile diagonal "
                 f"({tile_blocks(spatial[1], GROUP, threads)} blocks of steps per strip)")
        reason = (f"{pairs} (sample, direction) {pair_s} < {threads} threads and {macs} "
                  f"multiply-adds >= {WAVEFRONT_MIN_MACS}: threads share {share}")
    else:
        why = _no_wavefront(spatial, macs, threads)
        if driver == "batch":
            reason = (f"{pairs} (sample, direction) pairs < {threads} threads, but {why}; "
                      "threads take whole scans in one parallel region")
        else:
            reason = f"one (sample, direction) pair, and {why}"
    return Choice(backend, driver, reason)
