"""Benchmark configurations and a small timing helper, shared by the bench/
suite (pytest-benchmark) and the command line (`fastmdlstm bench`, the demo);
the machine's measured FMA peak and a description of its CPU, so that a results
table says where it ran and how far from that machine's peak it is."""

import platform
import time
from typing import NamedTuple

import numpy as np

from ._api import forward, init_params
from ._dispatch import work

ALL_2D = ("tl", "tr", "bl", "br")


class Config(NamedTuple):
    name: str
    batch: int
    spatial: tuple
    channels: int
    hidden: int
    directions: tuple = None
    dtype: type = np.float32
    note: str = ""

    @property
    def ndim(self):
        return len(self.spatial)

    @property
    def n_directions(self):
        return 1 if self.directions is None else len(self.directions)

    @property
    def flops(self):
        """FLOPs of the matrix products: 2 per multiply-add (see _dispatch.work)."""
        return 2 * work(self.batch, self.spatial, self.channels, self.hidden,
                        self.n_directions)[0]

    def problem(self, seed=0):
        """x, weights, bias for this configuration (reproducible)."""
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((self.batch,) + self.spatial + (self.channels,))
        weights, bias = init_params(self.channels, self.hidden,
                                    directions=self.n_directions, dtype=self.dtype,
                                    seed=seed, ndim=self.ndim)
        return x.astype(self.dtype), weights, bias


CONFIGS = {c.name: c for c in [
    Config("tiny", 1, (8, 8), 1, 8, note="latency; the seed's toy scale"),
    Config("digits", 64, (28, 28), 1, 32, note="small images, big batch"),
    Config("standard", 16, (64, 64), 16, 64, note="the headline number"),
    Config("wide", 8, (32, 512), 16, 32, note="text lines (short diagonals)"),
    Config("single-large", 1, (256, 256), 16, 32, note="one big image"),
    Config("standard-4dir", 16, (64, 64), 16, 64, ALL_2D, note="four directions"),
    Config("standard-f64", 16, (64, 64), 16, 64, dtype=np.float64, note="float64"),
    Config("volume", 4, (16, 32, 32), 8, 32, note="3-D volume / video"),
    Config("volume-8dir", 2, (8, 16, 16), 8, 16,
           tuple((a, b, c) for a in (1, -1) for b in (1, -1) for c in (1, -1)),
           note="3-D, all eight directions"),
]}


def time_call(fn, repeat=5, min_time=0.05):
    """Median seconds of fn() after one warm-up call (which also compiles)."""
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    fn()
    times = []
    budget = time.perf_counter() + max(min_time * repeat, 0)
    while len(times) < repeat or (time.perf_counter() < budget and len(times) < 50):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def throughput(config, backends=("auto", "numba", "python"), repeat=3):
    """[(backend, seconds, images/s, GFLOP/s)] for one configuration."""
    x, weights, bias = config.problem()
    out = np.empty(x.shape[:-1] + (config.n_directions * config.hidden,), x.dtype)
    rows = []
    for backend in backends:
        seconds = time_call(lambda b=backend: forward(
            x, weights, bias, directions=config.directions, backend=b, out=out),
            repeat=repeat)
        rows.append((backend, seconds, config.batch / seconds, config.flops / seconds / 1e9))
    return rows


def _cpuinfo():
    """The first processor's fields of /proc/cpuinfo ({} where there is none)."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    if fields:
                        break
                    continue
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_model():
    """The CPU's model name (from /proc/cpuinfo on Linux)."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


# AMD family 25 (0x19) holds both Zen 3 and Zen 4: told apart by model ranges.
_AMD = {23: "Zen / Zen 2", 26: "Zen 5"}
_AMD_25_ZEN4 = [(0x10, 0x1F), (0x60, 0x7F), (0xA0, 0xAF)]


def _amd_class(family, model):
    if family == 25:
        return "Zen 4" if any(lo <= model <= hi for lo, hi in _AMD_25_ZEN4) else "Zen 3"
    return _AMD.get(family)


def cpu_description():
    """The CPU as a results table should name it: the model name with its family and
    model numbers, and the core class where the name alone does not tell it (a
    virtual machine may report only "AMD EPYC"), e.g.
    "AMD EPYC (family 25 model 17, Zen 4 class)"; plus the SIMD width the kernels use."""
    info = _cpuinfo()
    name = cpu_model()
    try:
        family, model = int(info["cpu family"]), int(info["model"])
    except (KeyError, ValueError):
        return name
    details = f"family {family} model {model}"
    core = _amd_class(family, model) if info.get("vendor_id") == "AuthenticAMD" else None
    if core:
        details += f", {core} class"
    return f"{name} ({details})"


def simd_description():
    """The vector width the kernels were compiled for (AVX-512 or AVX2 registers)."""
    try:
        from ._lowlevel import VEC_BYTES
    except ImportError:  # no numba
        return "no numba: NumPy fallback"
    return f"{VEC_BYTES * 8}-bit vectors ({'AVX-512' if VEC_BYTES == 64 else 'AVX2'})"


# ---- FMA peak probe --------------------------------------------------------
# CHAINS independent chains acc = acc * m + c of vector FMAs: enough chains to cover
# the FMA latency on every pipe (4 cycles x 2 pipes needs 8), few enough that the
# accumulators and both operands stay in the 16 registers of AVX2 (12 + 2). m and c
# are run-time values, so the compiler can neither fold nor shorten the chains.
FMA_CHAINS = 12


def _fma_kernels():
    """(serial, parallel) probe kernels, compiled on first use (and cached)."""
    global _FMA_KERNELS
    if _FMA_KERNELS is None:
        import numba

        from ._lowlevel import vfma, vload, vsplat, vstore

        @numba.njit(cache=True, nogil=True)
        def chains(n, m, c, acc):  # acc: FMA_CHAINS vectors, updated in place
            lanes = acc.size // 12
            vm, vc = vsplat(m), vsplat(c)
            a0, a1, a2 = vload(acc, 0), vload(acc, lanes), vload(acc, 2 * lanes)
            a3, a4, a5 = vload(acc, 3 * lanes), vload(acc, 4 * lanes), vload(acc, 5 * lanes)
            a6, a7, a8 = vload(acc, 6 * lanes), vload(acc, 7 * lanes), vload(acc, 8 * lanes)
            a9, a10, a11 = (vload(acc, 9 * lanes), vload(acc, 10 * lanes),
                            vload(acc, 11 * lanes))
            for _ in range(n):
                a0, a1, a2 = vfma(a0, vm, vc), vfma(a1, vm, vc), vfma(a2, vm, vc)
                a3, a4, a5 = vfma(a3, vm, vc), vfma(a4, vm, vc), vfma(a5, vm, vc)
                a6, a7, a8 = vfma(a6, vm, vc), vfma(a7, vm, vc), vfma(a8, vm, vc)
                a9, a10, a11 = vfma(a9, vm, vc), vfma(a10, vm, vc), vfma(a11, vm, vc)
            vstore(acc, 0, a0), vstore(acc, lanes, a1), vstore(acc, 2 * lanes, a2)
            vstore(acc, 3 * lanes, a3), vstore(acc, 4 * lanes, a4)
            vstore(acc, 5 * lanes, a5), vstore(acc, 6 * lanes, a6)
            vstore(acc, 7 * lanes, a7), vstore(acc, 8 * lanes, a8)
            vstore(acc, 9 * lanes, a9), vstore(acc, 10 * lanes, a10)
            vstore(acc, 11 * lanes, a11)

        @numba.njit(cache=True, nogil=True, parallel=True)
        def chains_parallel(n, m, c, acc):  # acc: (threads, FMA_CHAINS * lanes)
            for t in numba.prange(acc.shape[0]):
                chains(n, m, c, acc[t])

        _FMA_KERNELS = chains, chains_parallel
    return _FMA_KERNELS


_FMA_KERNELS = None


def fma_probe(threads=None, dtype=np.float32, min_time=0.02):
    """(fn, flops): fn() runs the FMA chains on `threads` threads (default: numba's
    current count) for at least min_time seconds and does `flops` FLOPs (2 per lane
    and FMA). For timing by a harness (bench/); fma_peak() times it itself."""
    import numba

    from ._lowlevel import VEC_BYTES
    threads = numba.get_num_threads() if threads is None else int(threads)
    serial, parallel = _fma_kernels()
    dtype = np.dtype(dtype)
    lanes = VEC_BYTES // dtype.itemsize
    acc = np.zeros((threads, FMA_CHAINS * lanes), dtype)
    m, c = dtype.type(0.5), dtype.type(1.0)  # converges to 2: no overflow, no denormals

    def run(n):
        if threads == 1:
            serial(n, m, c, acc[0])
        else:
            parallel(n, m, c, acc)

    def seconds(n):  # on one thread, the best of 3: a busy machine only slows it
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            serial(n, m, c, acc[0])
            best = min(best, time.perf_counter() - start)
        return best

    n = 1024
    run(n)  # compiles (or loads from the cache)
    # Chain length from one thread (a parallel launch costs a wake-up, noisy on a
    # busy machine); each thread then does that many, about min_time of work.
    while (took := seconds(n)) < min_time and n < 2**40:
        n *= 4 if took < min_time / 8 else 2
    return (lambda: run(n)), 2 * FMA_CHAINS * lanes * n * threads


def fma_peak(threads=None, dtype=np.float32, min_time=0.02, repeat=3):
    """The machine's measured peak of vector fused multiply-adds in GFLOP/s (2 FLOPs
    per lane) for one dtype, on one thread (threads=1) or on `threads` threads at once
    (default: numba's current count), with the kernels' vector width: the best of
    `repeat` runs of at least min_time seconds. None without numba."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return None
    fn, flops = fma_probe(threads, dtype, min_time)
    best = float("inf")
    for _ in range(max(repeat, 1)):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return flops / best / 1e9
