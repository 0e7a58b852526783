"""Benchmark configurations and a small timing helper, shared by the bench/
suite (pytest-benchmark) and the command line (`fastmdlstm bench`, the demo)."""

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


def cpu_model():
    """The CPU's model name (from /proc/cpuinfo on Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
