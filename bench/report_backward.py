"""Turn the JSON of bench/bench_backward.py into a markdown table.

    python -m pytest bench/bench_backward.py --benchmark-json=bwd.json
    python bench/report_backward.py bwd.json [more.json ...]

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

"alternating 95 % CI" is a distribution-free 95 % confidence interval of the
alternating rounds' median (order statistics of the rounds: no assumption about
how the machine's noise is distributed). It treats the rounds of one run as
independent, which they are not quite (a run catches the machine in one state),
so it is narrower than the spread between runs. Given several JSON files
(separate runs, each a process of its own), a table per file and then the rounds
of every run pooled per configuration, size and thread count: the median, its
interval, the share of rounds over 2, the runs' own medians and the median of
those with its interval. The interval over the runs' medians (six runs or more)
is the one to quote; it still speaks only for the machine and the hour the runs
shared.
"""

import json
import math
import sys
from collections import defaultdict
from fractions import Fraction

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


def median_interval(values, level=0.95):
    """(median, low, high) of values, low..high a distribution-free interval that
    holds the population median with probability >= level: the k-th smallest and
    k-th largest value, k the largest with 2 P(Binomial(n, 1/2) < k) <= 1 - level.
    low and high are None when there are too few values for that level (n < 6 at
    95 %)."""
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        raise ValueError("values is empty")
    middle = n // 2
    median = ordered[middle] if n % 2 else (ordered[middle - 1] + ordered[middle]) / 2
    # Exact arithmetic: 2 ** n overflows a float from n = 1024 on.
    alpha = 1 - Fraction(str(level))
    k, below, total = 0, 0, 2 ** n  # below: total * P(Binomial(n, 1/2) < k + 1)
    while k < middle:
        below += math.comb(n, k)
        if 2 * below > alpha * total:
            break
        k += 1
    if k == 0:
        return median, None, None
    return median, ordered[k - 1], ordered[n - k]


def _interval(rounds):
    if not rounds:
        return "–"
    _, low, high = median_interval(rounds)
    return f"{low:.2f}–{high:.2f}" if low is not None else "–"


def _ordered(names):
    """The configurations of ORDER first, in that order, then the others sorted."""
    return [n for n in ORDER if n in names] + sorted(n for n in names if n not in ORDER)


def _shape(extra):
    """'B=16, 64×64' from a benchmark's extra info, or '' without its sizes."""
    if "batch" in extra and "spatial" in extra:
        return f"B={extra['batch']}, {'×'.join(map(str, extra['spatial']))}"
    return ""


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
              "| alternating 95 % CI | recompute / bwd | torch / ours | python backward ms |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in _ordered(medians):
        row = medians[name]
        fwd, bwd, both = row.get("forward"), row.get("backward"), row.get("fwd+bwd")
        recompute, inference = row.get("backward (recompute)"), row.get("inference forward")
        peer, python = row.get("torch fwd+bwd"), row.get("python backward")
        extra = info.get(name, {})
        alternating = extra.get("bwd_over_inference_fwd")
        alternating = f"{alternating:.2f}" if alternating is not None else "–"
        shape = f" ({_shape(extra)})" if _shape(extra) else ""
        cells = [name + shape, _ms(fwd), _ms(bwd), _ms(recompute), _ms(both), _ms(peer),
                 _ratio(bwd, fwd), _ratio(bwd, inference), alternating,
                 _interval(extra.get("bwd_over_inference_fwd_rounds")), _ratio(recompute, bwd),
                 _ratio(peer, both), _ms(python)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _label(name, extra):
    shape = _shape(extra)
    return f"{name} ({shape + ', ' if shape else ''}{extra.get('threads', '?')} threads)"


def pooled(infos):
    """Lines on the alternating rounds of several runs (their `load` infos), pooled
    per configuration, size and thread count (a smoke run's shrunken problem or
    another thread count is a set of its own)."""
    by_name = defaultdict(lambda: defaultdict(list))  # name -> label -> runs' rounds
    for info in infos:
        for name, extra in info.items():
            rounds = extra.get("bwd_over_inference_fwd_rounds")
            if rounds:
                by_name[name][_label(name, extra)].append(rounds)
    lines = []
    for label, runs in ((label, runs) for name in _ordered(by_name)
                        for label, runs in sorted(by_name[name].items())):
        every = [r for rounds in runs for r in rounds]
        median, low, high = median_interval(every)
        interval = f"{low:.3f}–{high:.3f}" if low is not None else "too few rounds"
        over = sum(r > 2 for r in every) / len(every)
        run_medians = [median_interval(rounds)[0] for rounds in runs]
        of_runs, run_low, run_high = median_interval(run_medians)
        of_runs = f"{of_runs:.3f}" + (f" (95 % CI {run_low:.3f}–{run_high:.3f})"
                                      if run_low is not None else "")
        lines.append(f"- {label}: alternating over {len(runs)} runs, {len(every)} rounds: "
                     f"median {median:.3f} (95 % CI {interval}); rounds over 2: "
                     f"{over:.0%}; the runs' medians: "
                     f"{', '.join(f'{m:.2f}' for m in run_medians)}, their median {of_runs}")
    return lines


def main(argv):
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    infos = []
    for path in argv:
        machine, medians, info = load(path)
        if not medians:
            print(f"no {PREFIX}* groups in {path}", file=sys.stderr)
            return 1
        if len(argv) > 1:
            print(f"{path}:\n")
        print(table(machine, medians, info))
        infos.append(info)
    if len(argv) > 1:
        lines = pooled(infos)
        print("\nPooled:\n" if lines else "\nNo alternating rounds to pool.")
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
