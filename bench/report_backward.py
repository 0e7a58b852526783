"""Turn the JSON of bench/bench_backward.py into a markdown table.

    python -m pytest bench/bench_backward.py --benchmark-json=bwd.json
    python bench/report_backward.py bwd.json

One row per configuration: median milliseconds of our forward (with the cell
states and the gates' activations, as training runs it), our backward (given
them), our backward given only h and c ("recompute": it recomputes the gates),
our forward + backward, the PyTorch autograd peer's forward +
backward, and four ratios of those medians, all from the same run: "bwd / fwd"
(backward time over that forward's time), "bwd / inf. fwd" (over the plain
inference forward's, which neither allocates nor writes c and the gates: the
stricter yardstick), "alternating" (the same ratio, median over rounds that each
time one inference forward and then one backward: robust to a neighbour's burst of
load), "recompute / bwd" (what keeping the gates
saves the backward; above 1 means it helps) and "torch / ours" (the peer's
forward + backward over ours; above 1 means we are faster). The NumPy fallback's
backward, where it was measured, follows in its own column.
"""

import json
import sys
from collections import defaultdict

ORDER = ["standard", "digits"]
PREFIX = "backward-"


def load(path):
    """{configuration: {impl: median seconds}}, the JSON's machine_info, and extra info
    of the first benchmark per configuration (sizes, threads, torch version)."""
    with open(path) as f:
        data = json.load(f)
    medians = defaultdict(dict)
    info = {}
    for bench in data["benchmarks"]:
        group = bench.get("group") or ""
        if not group.startswith(PREFIX):
            continue
        name = group[len(PREFIX):]
        extra = bench.get("extra_info", {})
        medians[name][extra["impl"]] = bench["stats"]["median"]
        merged = info.setdefault(name, {})
        for key, value in extra.items():
            merged.setdefault(key, value)
    return data.get("machine_info", {}), medians, info


def _ms(seconds):
    return f"{seconds * 1e3:.1f}" if seconds is not None else "–"


def _ratio(a, b):
    return f"{a / b:.2f}" if a is not None and b else "–"


def table(machine, medians, info):
    threads = next((i["threads"] for i in info.values() if "threads" in i), "?")
    torch_version = next((i["torch_version"] for i in info.values() if "torch_version" in i),
                         None)
    lines = [f"CPU: {machine.get('cpu', {}).get('brand_raw', '?')}, {threads} threads; "
             f"Python {machine.get('python_version', '?')}"
             + (f"; torch {torch_version}" if torch_version else "; torch absent"), ""]
    lines += ["| configuration | forward ms | backward ms | backward (recompute) ms "
              "| fwd+bwd ms | torch fwd+bwd ms | bwd / fwd | bwd / inf. fwd | alternating "
              "| recompute / bwd | torch / ours | python backward ms |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    names = [n for n in ORDER if n in medians] + sorted(n for n in medians if n not in ORDER)
    for name in names:
        row = medians[name]
        fwd, bwd, both = row.get("forward"), row.get("backward"), row.get("fwd+bwd")
        recompute, inference = row.get("backward (recompute)"), row.get("inference forward")
        peer, python = row.get("torch fwd+bwd"), row.get("python backward")
        extra = info.get(name, {})
        alternating = extra.get("bwd_over_inference_fwd")
        alternating = f"{alternating:.2f}" if alternating is not None else "–"
        shape = ""
        if "batch" in extra and "spatial" in extra:
            shape = f" (B={extra['batch']}, {'×'.join(map(str, extra['spatial']))})"
        cells = [name + shape, _ms(fwd), _ms(bwd), _ms(recompute), _ms(both), _ms(peer),
                 _ratio(bwd, fwd), _ratio(bwd, inference), alternating, _ratio(recompute, bwd),
                 _ratio(peer, both), _ms(python)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv):
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    machine, medians, info = load(argv[0])
    if not medians:
        print(f"no {PREFIX}* groups in {argv[0]}", file=sys.stderr)
        return 1
    print(table(machine, medians, info))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
