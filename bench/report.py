"""Turn a pytest-benchmark JSON file into the README's performance table.

    python bench/report.py bench/results.json > bench/RESULTS.md

Columns per configuration: median time, GFLOP/s (matrix-product FLOPs),
% of the GEMM roof measured in the same run, and speed-up over each peer
(torch = the PyTorch eager wavefront peer, python = the NumPy fallback).
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
            "median": bench["stats"]["median"], "flops": info.get("flops"),
            "threads": info.get("threads"), "torch": info.get("torch_version")}
    return data, groups


def table(data, groups):
    machine = data.get("machine_info", {})
    roof = groups.get("roof", {}).get("gemm")
    roof_rate = roof["flops"] / roof["median"] if roof else None
    torch_version = next((r["torch"] for g in groups.values() for r in g.values()
                          if r.get("torch")), None)
    threads = next((r["threads"] for g in groups.values() for r in g.values()
                    if r.get("threads")), "?")
    lines = [
        f"CPU: {machine.get('cpu', {}).get('brand_raw', '?')}, {threads} threads; "
        f"Python {machine.get('python_version', '?')}; "
        + ", ".join(f"{k} {v}" for k, v in data.get("versions", {}).items())
        + (f"; torch {torch_version}" if torch_version else "; torch absent"),
        "",
    ]
    if roof_rate:
        lines += [f"GEMM roof (NumPy float32 2048² matmul): {roof_rate / 1e9:.1f} GFLOP/s", ""]
    lines += ["| configuration | implementation | median ms | GFLOP/s | % roof "
              "| × torch | × python |",
              "|---|---|---:|---:|---:|---:|---:|"]
    names = [g for g in ORDER if g in groups] + sorted(
        g for g in groups if g not in ORDER and g != "roof")
    for name in names:
        rows = groups[name]
        for impl, r in sorted(rows.items(), key=lambda kv: kv[1]["median"]):
            rate = r["flops"] / r["median"] if r["flops"] else None
            cells = [name, impl, f"{r['median'] * 1e3:.3f}",
                     f"{rate / 1e9:.1f}" if rate else "",
                     f"{100 * rate / roof_rate:.0f}%" if rate and roof_rate else ""]
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
