"""Measure the crossovers behind fastmdlstm/_dispatch.py's thresholds.

    python bench/crossover.py            # prints a markdown report (bench/CROSSOVER.md)

For problems from a few cells to a few million multiply-adds it times every
numba driver (serial, batch, wavefront) and the python fallback, all on the
same data in one process, and reports which wins. Medians of repeated calls.
"""


import numpy as np

from fastmdlstm import _api, _dispatch, _kernels
from fastmdlstm._bench import cpu_model, time_call


def run_driver(driver, x, w, b, out):
    d = x.ndim - 2
    sizes = np.tile(np.array(x.shape[1:-1]), (x.shape[0], 1))
    signs = np.ones((w.shape[0], d), dtype=np.int64)
    _api._run_forward_kernel(driver, x, w, b, d, "slstm", signs, sizes, False, out, None)


def measure(batch, spatial, channels, hidden, directions=1):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch,) + spatial + (channels,)).astype(np.float32)
    w, b = _api.init_params(channels, hidden, directions=directions, ndim=len(spatial))
    out = np.empty((batch,) + spatial + (directions * hidden,), np.float32)
    times = {drv: time_call(lambda d=drv: run_driver(d, x, w, b, out), repeat=7)
             for drv in _kernels.DRIVERS}
    times["python"] = time_call(lambda: _api.forward(x, w, b, backend="python",
                                                     directions=[(1,) * len(spatial)]
                                                     * directions, out=out), repeat=3)
    cells = int(np.prod(spatial))
    d = len(spatial)
    macs = batch * directions * cells * (channels + d * hidden) * (3 + d) * hidden
    return macs, times


PROBLEMS = [  # (B, spatial, C, N, Z), from a few cells to millions of multiply-adds
    # one (sample, direction) pair: serial or wavefront
    (1, (2, 2), 1, 4, 1), (1, (8, 8), 1, 8, 1), (1, (16, 16), 4, 16, 1),
    (1, (32, 32), 4, 16, 1), (1, (32, 32), 16, 32, 1), (1, (48, 48), 16, 32, 1),
    (1, (64, 64), 16, 32, 1), (1, (96, 96), 16, 32, 1), (1, (64, 64), 16, 64, 1),
    (1, (128, 128), 16, 32, 1), (1, (8, 16, 16), 8, 16, 1), (1, (8, 32, 32), 8, 32, 1),
    # several pairs: serial, batch or wavefront
    (2, (2, 2), 1, 4, 1), (2, (4, 4), 1, 8, 1), (2, (8, 8), 1, 8, 1), (4, (8, 8), 1, 8, 1),
    (2, (16, 16), 4, 16, 1), (2, (32, 32), 16, 32, 1), (3, (32, 32), 16, 32, 1),
    (4, (32, 32), 16, 32, 1), (8, (32, 32), 16, 32, 1), (2, (64, 64), 16, 64, 1),
    (4, (64, 64), 16, 64, 1), (1, (32, 32), 16, 32, 4), (2, (8, 16, 16), 8, 16, 1),
]


def main():
    threads = _api.numba.get_num_threads()
    rows = []
    for batch, spatial, channels, hidden, z in PROBLEMS:
        macs, t = measure(batch, spatial, channels, hidden, z)
        best = min(t, key=t.get)
        pick = _dispatch.choose(batch, spatial, channels, hidden, z, threads, True).driver
        rows.append(f"| {batch} | {'x'.join(map(str, spatial))} | {channels} | {hidden} | {z} "
                    f"| {macs} | {t['serial'] * 1e3:.3f} | {t['batch'] * 1e3:.3f} "
                    f"| {t['wavefront'] * 1e3:.3f} | {t['python'] * 1e3:.2f} | {best} "
                    f"| {pick} |")
    print(f"# Dispatcher crossovers\n\nMachine: {cpu_model()}, {threads} numba threads, "
          f"threading layer {_api.numba.threading_layer()}, float32, variant slstm.\n"
          "Command: `python bench/crossover.py` (medians of repeated calls, one process).\n")
    print("| B | spatial | C | N | Z | multiply-adds | serial ms | batch ms | "
          "wavefront ms | python ms | fastest | auto picks |")
    print("|---|---|---|---|---|---:|---:|---:|---:|---:|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
