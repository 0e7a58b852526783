"""Instructions per cell of the numba kernels, counted by valgrind.

    python bench/icount.py                        # digits, backward and forward
    python bench/icount.py --config standard --hidden 4 --kind backward

Timings on these shared 2-core machines move by ±4-5 % between identical copies of
the code, so a change to the per-cell bookkeeping smaller than that cannot be timed
here. An instruction count can: valgrind's callgrind counts every instruction
executed, the same on every run. This script runs the calls in a child process
under callgrind twice (no timed call, then --calls of them) and reports the
difference per cell, counting only the compiled kernels (code without symbols) so
that Python and NumPy's BLAS threads do not enter.

What it is not: a time. The kernels run at ~3 instructions a cycle on Zen 5, and
a change can cut instructions but not time (or the reverse: prefetch placement,
code layout), so a count says where the instructions go, and a change still needs
a benchmark. Valgrind does not run AVX-512 code: the kernels are compiled for an
AVX2 target (Zen 3) here, with the lane counts that go with it, so the
arithmetic's counts are about twice an AVX-512 build's; the bookkeeping's are the
same. The first run compiles them for that target (about a minute per dtype) and
caches them beside the native ones.

Needs valgrind (callgrind_annotate). One thread, batch 8 of the configuration.
"""

import argparse
import math
import os
import subprocess
import sys
import tempfile

# An AVX2 target valgrind can run: Zen 3's name and no AVX-512 features.
TARGET = {
    "NUMBA_CPU_NAME": "znver3",
    "NUMBA_CPU_FEATURES": ",".join("+" + f for f in (
        "64bit", "avx", "avx2", "bmi", "bmi2", "cmov", "crc32", "cx16", "cx8", "f16c",
        "fma", "fxsr", "lzcnt", "mmx", "movbe", "popcnt", "sse", "sse2", "sse3",
        "sse4.1", "sse4.2", "ssse3", "xsave")),
    "NUMBA_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
}
BATCH = 8


def configuration(config, hidden):
    from fastmdlstm._bench import CONFIGS
    cfg = CONFIGS[config]._replace(batch=BATCH)
    return cfg._replace(hidden=hidden) if hidden else cfg


def problem(config, hidden):
    import numpy as np

    cfg = configuration(config, hidden)
    x, w, b = cfg.problem()
    grad_h = np.random.default_rng(1).standard_normal(
        x.shape[:-1] + (cfg.n_directions * cfg.hidden,)).astype(x.dtype)
    return cfg, x, w, b, grad_h


def child(config, hidden, kind, calls):
    """Compile and warm up (one call of each), then `calls` calls of `kind`."""
    import fastmdlstm
    cfg, x, w, b, grad_h = problem(config, hidden)
    dirs = cfg.directions
    h, c, g = fastmdlstm.forward(x, w, b, directions=dirs, return_cell=True,
                                 return_gates=True)
    fastmdlstm.backward(x, w, b, grad_h, h=h, c=c, gates=g, directions=dirs)
    fastmdlstm.forward(x, w, b, directions=dirs)
    for _ in range(calls):
        if kind == "backward":
            fastmdlstm.backward(x, w, b, grad_h, h=h, c=c, gates=g, directions=dirs)
        else:
            fastmdlstm.forward(x, w, b, directions=dirs)


def jit_instructions(out_file):
    """Instructions executed in code callgrind found no object file for: the JIT's."""
    report = subprocess.run(["callgrind_annotate", "--threshold=100", out_file],
                            capture_output=True, text=True, check=True).stdout
    total = 0
    for line in report.splitlines():
        if line.rstrip().endswith("[???]"):
            total += int(line.split()[0].replace(",", ""))
    return total


def count(config, hidden, kind, calls):
    env = dict(os.environ, **TARGET)
    me = [sys.executable, os.path.abspath(__file__), "--child", "--config", config,
          "--hidden", str(hidden), "--kind", kind]
    subprocess.run(me + ["--calls", "0"], env=env, check=True)  # compile outside valgrind
    counts = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in (0, calls):
            out = os.path.join(tmp, f"callgrind.{k}")
            subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
                           + me + ["--calls", str(k)], env=env, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            counts.append(jit_instructions(out))
    cfg = configuration(config, hidden)
    cells = cfg.batch * math.prod(cfg.spatial) * cfg.n_directions
    return (counts[1] - counts[0]) / calls / cells


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="digits")
    parser.add_argument("--hidden", type=int, default=0, help="N (default: the config's)")
    parser.add_argument("--kind", choices=("backward", "forward", "both"), default="both")
    parser.add_argument("--calls", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.config, args.hidden, args.kind, args.calls)
        return
    kinds = ("backward", "forward") if args.kind == "both" else (args.kind,)
    per = "cell" if configuration(args.config, args.hidden).n_directions == 1 else \
        "cell and direction"
    for kind in kinds:
        per_cell = count(args.config, args.hidden, kind, args.calls)
        label = f"{args.config}" + (f" N={args.hidden}" if args.hidden else "")
        print(f"{label} {kind}: {per_cell:.0f} instructions per {per} (AVX2 build, one thread)")


if __name__ == "__main__":
    main()
