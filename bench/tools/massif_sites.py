#!/usr/bin/env python3
"""Sums the heap of one massif snapshot by allocation site, named after the first frame (from
the allocation upwards) that matches one of the patterns: where the bytes of idle connections go.

    python3 bench/tools/massif_sites.py massif.out [--snapshot N] [--per N] [--pattern REGEX ...]

Reads `ms_print` output (runs ms_print itself when given a massif.out file). `--per N` divides
by N (the connections open at that snapshot). The default patterns pick Herald's own frames,
then the task cells, buffers and maps that Herald asks tokio, hyper, bytes and the standard
library for.
"""
import argparse
import re
import subprocess
import sys
from collections import defaultdict

DEFAULT_PATTERNS = [
    r"herald_\w+::[\w:]+",
]
LINE = re.compile(r"^([ |]*)->([\d.]+)% \(([\d,]+)B\) (0x[0-9A-F]+: )?(.*)$")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("file")
    ap.add_argument("--snapshot", type=int, help="snapshot number (default: the peak)")
    ap.add_argument("--per", type=float, default=1.0)
    ap.add_argument("--pattern", action="append")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    patterns = [re.compile(p) for p in (args.pattern or DEFAULT_PATTERNS)]
    text = open(args.file).read()
    if not text.startswith("---") and "desc:" in text[:200]:
        text = subprocess.run(["ms_print", args.file], capture_output=True, text=True, check=True).stdout
    lines = text.splitlines()
    want = args.snapshot
    if want is None:
        m = re.search(r"Detailed snapshots: \[.*?(\d+) \(peak\)", text)
        want = int(m.group(1))
    start = next(i for i, l in enumerate(lines) if re.match(rf"^\s*{want}\s+[\d,]+\s+[\d,]+", l))
    # The tree of this snapshot: lines from the heading until the next table heading.
    stack = []  # frames from the allocation function down to the current node
    sums = defaultdict(int)
    tree = []
    for line in lines[start + 1 :]:
        if re.match(r"^-{20,}", line) or re.match(r"^\s+n\s+time", line):
            break
        m = LINE.match(line)
        if not m:
            continue
        depth = len(m.group(1)) // 2
        tree.append((depth, int(m.group(3).replace(",", "")), m.group(5)))
    # Leaves: nodes not followed by a deeper node. A node's own bytes not covered by its
    # children (massif's "in N places, below threshold") count as a leaf too.
    for i, (depth, size, frame) in enumerate(tree):
        children = []
        j = i + 1
        while j < len(tree) and tree[j][0] > depth:
            if tree[j][0] == depth + 1:
                children.append(tree[j][1])
            j += 1
        stack = stack[:depth] + [frame]
        own = size - sum(children)
        if own <= 0:
            continue
        name = None
        for k, f in enumerate(stack):
            for p in patterns:
                mm = p.search(f)
                if mm:
                    # The site, and what it allocated: the nearest frame below it that names
                    # a type or a constructor.
                    what = next(
                        (g for g in reversed(stack[:k]) if re.search(r"new|with_capacity|reserve|Box|Vec|Arc|clone|spawn", g)),
                        "",
                    )
                    loc = re.search(r"\(([\w./-]+:\d+)\)", f)
                    name = mm.group(0) + (f" ({loc.group(1)})" if loc else "") + (" <- " + what[:90] if what else "")
                    break
            if name:
                break
        if name is None:
            name = "other: " + (stack[min(len(stack) - 1, 6)] if stack else "?")[:100]
        sums[name] += own
    grand = sum(sums.values())
    print(f"snapshot {want}: {grand:,} B of heap in these sites" + (f", {grand / args.per:,.0f} B per connection" if args.per != 1 else ""))
    for name, size in sorted(sums.items(), key=lambda kv: -kv[1])[: args.top]:
        per = f"{size / args.per:10,.0f} B/conn" if args.per != 1 else ""
        print(f"{size:14,} B  {100 * size / grand:5.1f}%  {per}  {name}")


if __name__ == "__main__":
    sys.exit(main())
