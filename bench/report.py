"""Turn a pytest-benchmark JSON file into the README's performance table.

    python bench/report.py bench/results.json > bench/RESULTS.md

The header names the CPU (model name, family/model, core class, vector width) and
the machine's FMA peak measured in the same run (group "peak": independent vector
FMA chains per dtype, on 1 thread and on all). Columns per configuration: median
time, GFLOP/s (matrix-product FLOPs), % of that measured FMA peak for the row's
dtype and thread count, and speed-up over each peer (torch = the PyTorch eager
wavefront peer, python = the NumPy fallback).
"""

import json
import sys
from collections import defaultdict

ORDER = ["tiny", "digits", "standard", "wide", "single-large", "standard-4dir",
         "standard-f64", "volume", "volume-8dir", "scaling-digits", "scaling-single-large"]


def load(path):
    with open(path) as f:
        data = json.load(f)
    groups = defaultdict(dict)
    for bench in data["benchmarks"]:
        info = bench["extra_info"]
        groups[bench["group"]][info["impl"]] = {
            "median": bench["stats"]["median"], "min": bench["stats"]["min"],
            "flops": info.get("flops"),
            "threads": info.get("threads"), "torch": info.get("torch_version"),
            "dtype": info.get("dtype", "float32")}
    return data, groups


def peaks(groups):
    """{(dtype, threads): GFLOP/s} from the "peak" group, from each entry's fastest
    round (a peak: what the machine can do, not what a busy moment left)."""
    found = {}
    for r in groups.get("peak", {}).values():
        rate = r["flops"] / r["min"] / 1e9
        key = (r["dtype"], r["threads"])
        found[key] = max(found.get(key, 0.0), rate)
    return found


def cpu_line(machine, threads):
    cpu = machine.get("fastmdlstm_cpu")
    if not cpu:  # a JSON from before: what pytest-benchmark recorded
        info = machine.get("cpu", {})
        cpu = info.get("brand_raw", "?")
        if "family" in info and "model" in info:
            cpu += f" (family {info['family']} model {info['model']})"
    simd = machine.get("fastmdlstm_simd")
    return f"CPU: {cpu}" + (f", {simd}" if simd else "") + f", {threads} threads"


def table(data, groups):
    machine = data.get("machine_info", {})
    roof = groups.get("roof", {}).get("gemm")
    roof_rate = roof["flops"] / roof["median"] if roof else None
    peak = peaks(groups)
    torch_version = next((r["torch"] for g in groups.values() for r in g.values()
                          if r.get("torch")), None)
    threads = max((r["threads"] for g in groups.values() for r in g.values()
                   if r.get("threads")), default="?")
    lines = [
        f"{cpu_line(machine, threads)}; "
        f"Python {machine.get('python_version', '?')}; "
        + ", ".join(f"{k} {v}" for k, v in data.get("versions", {}).items())
        + (f"; torch {torch_version}" if torch_version else "; torch absent"),
        "",
    ]
    if peak:
        lines += ["Measured FMA peak (this run): " + "; ".join(
            f"{dtype} " + ", ".join(f"{peak[(d, t)]:.1f} GFLOP/s on {t} thread"
                                    + ("s" if t != 1 else "")
                                    for d, t in sorted(peak) if d == dtype)
            for dtype in sorted({d for d, _ in peak})), ""]
    if roof_rate:
        share = peak.get(("float32", roof["threads"]))
        lines += [f"GEMM roof (NumPy float32 2048² matmul): {roof_rate / 1e9:.1f} GFLOP/s"
                  + (f" ({100 * roof_rate / 1e9 / share:.0f}% of FMA peak)" if share else ""),
                  ""]
    lines += ["| configuration | implementation | median ms | GFLOP/s | % FMA peak "
              "| × torch | × python |",
              "|---|---|---:|---:|---:|---:|---:|"]
    names = [g for g in ORDER if g in groups] + sorted(
        g for g in groups if g not in ORDER and g not in ("roof", "peak"))
    for name in names:
        rows = groups[name]
        for impl, r in sorted(rows.items(), key=lambda kv: kv[1]["median"]):
            rate = r["flops"] / r["median"] if r["flops"] else None
            top = peak.get((r["dtype"], r["threads"]))
            cells = [name, impl, f"{r['median'] * 1e3:.3f}",
                     f"{rate / 1e9:.1f}" if rate else "",
                     f"{100 * rate / 1e9 / top:.0f}%" if rate and top else ""]
            for peer in ("torch", "python"):
                p = rows.get(peer)
                cells.append(f"{p['median'] / r['median']:.2f}" if p and impl != peer else "")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv):
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    data, groups = load(argv[0])
    try:
        import numba
        import numpy
        data["versions"] = {"numpy": numpy.__version__, "numba": numba.__version__}
    except ImportError:
        data["versions"] = {}
    print(table(data, groups))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
