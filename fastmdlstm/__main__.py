"""Command line: `python -m fastmdlstm [demo|bench|info]` (also `fastmdlstm ...`).

With no arguments it runs the demo: a batch forward on a generated sample
batch with every backend, printing throughput and what backend="auto" chose.
"""

import argparse
import platform
import sys

import numpy as np

from . import __version__, _api, _dispatch
from ._bench import CONFIGS, cpu_model, throughput


def _threads():
    return _api.numba.get_num_threads() if _api.HAVE_NUMBA else 1


def _print_table(config, backends, repeat):
    x, weights, _ = config.problem()
    choice = _api.choose_backend(x, weights, directions=config.directions)
    print(f"\n{config.name}: B={config.batch} spatial={config.spatial} C={config.channels} "
          f"N={config.hidden} directions={config.n_directions} "
          f"{np.dtype(config.dtype).name}  ({config.flops / 1e9:.3f} GFLOP per forward)")
    print(f"  auto -> {choice.backend}/{choice.driver}: {choice.reason}")
    print(f"  {'backend':<8} {'median ms':>10} {'images/s':>10} {'GFLOP/s':>8}")
    for backend, seconds, images, gflops in throughput(config, backends, repeat):
        print(f"  {backend:<8} {seconds * 1e3:>10.2f} {images:>10.1f} {gflops:>8.2f}")


def demo(args):
    print(f"fastmdlstm {__version__}: spatial-LSTM forward on a generated batch "
          f"({_threads()} numba threads)" if _api.HAVE_NUMBA else
          f"fastmdlstm {__version__}: numba not importable, python fallback only")
    backends = ("auto", "numba", "python") if _api.HAVE_NUMBA else ("auto", "python")
    _print_table(CONFIGS[args.config], backends, repeat=3)
    return 0


def bench(args):
    names = args.configs or ["tiny", "digits", "standard", "wide", "single-large"]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        print(f"fastmdlstm bench: unknown configuration(s) {unknown}; "
              f"choose from {list(CONFIGS)}", file=sys.stderr)
        return 2
    backends = ("auto", "numba", "python") if _api.HAVE_NUMBA else ("auto", "python")
    if args.no_python:
        backends = tuple(b for b in backends if b != "python")
    for name in names:
        _print_table(CONFIGS[name], backends, repeat=args.repeat)
    return 0


def _touch_parallel(n):
    import numba

    @numba.njit(parallel=True)
    def total(n):
        s = 0
        for i in numba.prange(n):
            s += i
        return s

    return total(n)


def info(args):
    print(f"fastmdlstm {__version__}")
    print(f"python {platform.python_version()}, numpy {np.__version__}")
    if _api.HAVE_NUMBA:
        import llvmlite
        import numba
        from numba.core import config
        _touch_parallel(4)  # the threading layer is chosen on first parallel use
        print(f"numba {numba.__version__}, llvmlite {llvmlite.__version__}")
        print(f"threads {numba.get_num_threads()}, threading layer "
              f"{numba.threading_layer()}, cache dir {config.CACHE_DIR or '(default)'}")
    else:
        print("numba: not importable (python fallback only)")
    print(f"cpu {cpu_model()}")
    print(f"dispatcher: serial below {_dispatch.PARALLEL_MIN_MACS} multiply-adds; batch-"
          "parallel from one (sample, direction) pair per thread; wavefront from "
          f"{_dispatch.WAVEFRONT_MIN_MACS} multiply-adds (bench/CROSSOVER.md)")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="fastmdlstm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    p_demo = sub.add_parser("demo", help="forward on a generated batch (the default)")
    p_demo.add_argument("--config", default="digits", choices=list(CONFIGS))
    p_bench = sub.add_parser("bench", help="throughput table of the backends")
    p_bench.add_argument("configs", nargs="*", help=f"of {list(CONFIGS)}")
    p_bench.add_argument("--repeat", type=int, default=3)
    p_bench.add_argument("--no-python", action="store_true", help="skip the slow fallback")
    sub.add_parser("info", help="versions, threads and dispatcher thresholds")
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["demo"] if argv is None else list(argv) + ["demo"])
    return {"demo": demo, "bench": bench, "info": info}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
