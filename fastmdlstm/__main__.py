"""Command line: `python -m fastmdlstm [demo|run|bench|info]` (also `fastmdlstm ...`).

With no arguments it runs the demo: a batch forward on a generated sample
batch with every backend, printing throughput and what backend="auto" chose.
Errors end with a one-line message and a non-zero exit status, not a traceback.
"""

import argparse
import os
import platform
import signal
import sys
import threading

import numpy as np

from . import __version__, _api, _dispatch
from ._bench import CONFIGS, cpu_description, fma_peak, simd_description, throughput
from ._run import RunError, compile_notice, one_line, run_file


def _threads():
    return _api.numba.get_num_threads() if _api.HAVE_NUMBA else 1


def _check_threading():
    """Start numba's threads now, so that a threading layer that cannot load
    (NUMBA_THREADING_LAYER naming one that is not installed) is one error line
    before any work rather than a failure inside the first parallel call."""
    if not _api.HAVE_NUMBA:
        return
    try:
        _api.numba.get_num_threads()  # launches the threading layer
    except Exception as err:  # numba raises ValueError, say it in one line
        layer = _api.numba.config.THREADING_LAYER
        raise RunError(f"numba's threading layer {layer!r} (NUMBA_THREADING_LAYER) cannot be "
                       f"loaded: {one_line(err)}") from None


def _notice_enabled(args):
    """The compile notice goes to a terminal only (like the progress bar)."""
    return not getattr(args, "quiet", False) and sys.stderr.isatty()


def _warm_up(config, backends, notice):
    """One call per numba-backed backend before timing, so that a first call that
    compiles can say so (compile_notice) instead of sitting silent."""
    if not notice or not _api.HAVE_NUMBA:
        return
    x, weights, bias = config.problem()
    for backend in backends:
        if backend != "python":
            with compile_notice(True):
                _api.forward(x, weights, bias, directions=config.directions, backend=backend)


def _peaks():
    """{dtype name: FMA peak GFLOP/s on the current thread count} (empty without numba)."""
    if not _api.HAVE_NUMBA:
        return {}
    return {name: fma_peak(dtype=name) for name in ("float32", "float64")}


def _print_machine(peaks):
    print(f"cpu {cpu_description()}, {simd_description()}, {_threads()} threads")
    if peaks:
        print("measured FMA peak on these threads: "
              + ", ".join(f"{name} {rate:.1f} GFLOP/s" for name, rate in peaks.items()))


def _print_table(config, backends, repeat, peaks=None, notice=False):
    """Print one configuration's throughput table; return its rows."""
    x, weights, _ = config.problem()
    choice = _api.choose_backend(x, weights, directions=config.directions)
    print(f"\n{config.name}: B={config.batch} spatial={config.spatial} C={config.channels} "
          f"N={config.hidden} directions={config.n_directions} "
          f"{np.dtype(config.dtype).name}  ({config.flops / 1e9:.3f} GFLOP per forward)")
    print(f"  auto -> {choice.backend}/{choice.driver}: {choice.reason}")
    peak = (peaks or {}).get(np.dtype(config.dtype).name)
    print(f"  {'backend':<8} {'median ms':>10} {'images/s':>10} {'GFLOP/s':>8}"
          + (f" {'% of FMA peak':>14}" if peak else ""))
    _warm_up(config, backends, notice)
    rows = throughput(config, backends, repeat)
    for backend, seconds, images, gflops in rows:
        print(f"  {backend:<8} {seconds * 1e3:>10.2f} {images:>10.1f} {gflops:>8.2f}"
              + (f" {100 * gflops / peak:>13.1f}%" if peak else ""))
    return rows


def demo(args):
    print(f"fastmdlstm {__version__}: spatial-LSTM forward on a generated batch "
          f"({_threads()} numba threads)" if _api.HAVE_NUMBA else
          f"fastmdlstm {__version__}: numba not importable, python fallback only")
    _check_threading()
    backends = ("auto", "numba", "python") if _api.HAVE_NUMBA else ("auto", "python")
    _print_table(CONFIGS[args.config], backends, repeat=3, notice=_notice_enabled(args))
    return 0


def bench(args):
    names = args.configs or ["tiny", "digits", "standard", "wide", "single-large"]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        print(f"fastmdlstm bench: unknown configuration(s) {unknown}; "
              f"choose from {list(CONFIGS)}", file=sys.stderr)
        return 2
    if args.repeat < 1:
        raise RunError(f"--repeat must be >= 1, got {args.repeat}")
    if args.plot and not os.path.isdir(os.path.dirname(os.path.abspath(args.plot))):
        raise RunError(f"--plot {args.plot}: folder "
                       f"{os.path.dirname(os.path.abspath(args.plot))} does not exist")
    _check_threading()
    backends = ("auto", "numba", "python") if _api.HAVE_NUMBA else ("auto", "python")
    if args.no_python:
        backends = tuple(b for b in backends if b != "python")
    if args.plot:
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            raise RunError("--plot needs matplotlib (pip install 'fastmdlstm[plot]')") from None
    notice = _notice_enabled(args)
    with compile_notice(notice):
        peaks = _peaks()
    _print_machine(peaks)
    results = {name: _print_table(CONFIGS[name], backends, repeat=args.repeat, peaks=peaks,
                                  notice=notice)
               for name in names}
    if args.plot:
        fig, ax = plt.subplots(figsize=(1.6 * len(names) + 2, 4))
        width = 0.8 / len(backends)
        for k, backend in enumerate(backends):
            ax.bar([i + k * width for i in range(len(names))],
                   [results[n][k][3] for n in names], width, label=backend)
        ax.set_xticks([i + width * (len(backends) - 1) / 2 for i in range(len(names))])
        ax.set_xticklabels(names)
        ax.set_ylabel("GFLOP/s")
        ax.set_title(f"fastmdlstm {__version__}, {_threads()} threads, {cpu_description()}",
                     fontsize="small")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot)
        print(f"\nplot written to {args.plot}")
    return 0


class Terminated(BaseException):
    """SIGTERM or SIGHUP during `run`: unwinds like Ctrl-C (KeyboardInterrupt), so the
    temporary output is removed; not an Exception, so no handler on the way swallows it."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


class _signals_unwind:
    """While active, SIGTERM and SIGHUP raise Terminated in the main thread (Python
    runs the handler between bytecodes: at the latest when the current chunk's kernel
    call returns). Only in the main thread, where signal handlers can be set."""

    SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP")
                    if hasattr(signal, name))

    def __enter__(self):
        self.saved = {}
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self.saved[signum] = signal.signal(signum, self._raise)
        return self

    @staticmethod
    def _raise(signum, frame):
        raise Terminated(signum)

    def __exit__(self, *exc):
        for signum, handler in self.saved.items():
            signal.signal(signum, handler)
        return False


def run(args):
    before = None
    if args.threads is not None:
        if not _api.HAVE_NUMBA:
            raise RunError("--threads needs numba")
        limit = _api.numba.config.NUMBA_NUM_THREADS
        if not 1 <= args.threads <= limit:
            raise RunError(f"--threads must be between 1 and {limit} (NUMBA_NUM_THREADS)")
    if args.backend != "python":
        _check_threading()
    if args.threads is not None:
        before = _api.numba.get_num_threads()
        _api.numba.set_num_threads(args.threads)
    progress = not args.quiet and sys.stderr.isatty()
    try:
        with _signals_unwind():
            images, seconds = run_file(args.model, args.input, args.output,
                                       batch_size=args.batch_size, backend=args.backend,
                                       sizes_path=args.sizes, progress=progress,
                                       notice=progress and args.backend != "python")
    finally:  # main() may be called in-process: leave the caller's setting alone
        if before is not None:
            _api.numba.set_num_threads(before)
    if not args.quiet:
        print(f"{images} images in {seconds:.2f} s: {images / max(seconds, 1e-9):.1f} "
              f"images/s -> {args.output}")
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


def _cache_dir():
    """Where the kernels' compiled code is cached: asked of a kernel's cache (numba
    internals, so with a fallback on the documented rule)."""
    from numba.core import config
    try:
        return next(iter(_api._kernels.DRIVERS.values()))._cache._cache_path
    except Exception:  # a numba version without these internals
        return config.CACHE_DIR or os.path.join(os.path.dirname(__file__), "__pycache__")


def info(args):
    print(f"fastmdlstm {__version__}")
    print(f"python {platform.python_version()}, numpy {np.__version__}")
    failed = None
    if _api.HAVE_NUMBA:
        import llvmlite
        import numba
        from numba.core import config
        print(f"numba {numba.__version__}, llvmlite {llvmlite.__version__}")
        try:
            _check_threading()
            _touch_parallel(4)  # the threading layer is chosen on first parallel use
            print(f"threads {numba.get_num_threads()} (NUMBA_NUM_THREADS "
                  f"{config.NUMBA_NUM_THREADS}), threading layer {numba.threading_layer()}")
        except RunError as err:
            failed = err
        print(f"cache dir {_cache_dir()}")
    else:
        print("numba: not importable (python fallback only)")
    print(f"cpu {cpu_description()}, {simd_description()}")
    if _api.HAVE_NUMBA and failed is None:
        with compile_notice(_notice_enabled(args)):
            one, every = fma_peak(threads=1), fma_peak()
        print(f"measured FMA peak (float32): {one:.1f} GFLOP/s on 1 thread, {every:.1f} "
              f"GFLOP/s on {_threads()} threads")
    print(f"dispatcher (backend='auto'): serial below {_dispatch.PARALLEL_MIN_MACS} "
          "multiply-adds; batch-parallel from one (sample, direction) pair per thread; "
          f"wavefront from {_dispatch.WAVEFRONT_MIN_MACS} multiply-adds (thresholds "
          "measured by bench/crossover.py in the source repository)")
    if failed is not None:
        raise failed
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="fastmdlstm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    p_demo = sub.add_parser("demo", help="forward on a generated batch (the default)")
    p_demo.add_argument("--config", default="digits", choices=list(CONFIGS))
    p_bench = sub.add_parser("bench", help="throughput table of the backends")
    p_bench.add_argument("configs", nargs="*", help=f"of {list(CONFIGS)}")
    p_bench.add_argument("--repeat", type=int, default=3, help="timed calls (>= 1)")
    p_bench.add_argument("--no-python", action="store_true", help="skip the slow fallback")
    p_bench.add_argument("--plot", metavar="PATH.png", help="also plot GFLOP/s (matplotlib)")
    p_run = sub.add_parser("run", help="batch inference of a saved layer over an .npy file")
    p_run.add_argument("model", help="MODEL.npz written by MDLSTM2D/MDLSTM3D.save")
    p_run.add_argument("input", help="INPUT.npy of shape (B, *spatial, C), memory-mapped")
    p_run.add_argument("-o", "--output", required=True, help="OUTPUT.npy to write")
    p_run.add_argument("--batch-size", type=int, default=None,
                       help="images per chunk (default: about 256 MiB of input + output)")
    p_run.add_argument("--threads", type=int, default=None, help="numba threads")
    p_run.add_argument("--backend", default="auto", choices=_api.BACKENDS)
    p_run.add_argument("--sizes", default=None, help="SIZES.npy (B, d) valid extents")
    p_run.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    sub.add_parser("info", help="versions, threads and dispatcher thresholds")
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["demo"] if argv is None else list(argv) + ["demo"])
    command = {"demo": demo, "bench": bench, "info": info, "run": run}[args.command]
    name = f"fastmdlstm {args.command}"
    try:
        return command(args)
    except RunError as err:
        print(f"{name}: error: {one_line(err)}", file=sys.stderr)
        return 1
    except (OSError, MemoryError) as err:  # disk full, permissions, ...
        print(f"{name}: error: {one_line(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    except Terminated as sig:
        print(f"{name}: terminated by {signal.Signals(sig.signum).name}", file=sys.stderr)
        return 128 + sig.signum
    except Exception as err:  # never a traceback: one line, with its type
        print(f"{name}: error: {type(err).__name__}: {one_line(err)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
