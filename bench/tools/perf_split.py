#!/usr/bin/env python3
"""Where a Herald server's CPU goes, by part, from a perf profile with call graphs.

    perf script -i perf.data -F comm,tid,ip,sym > perf.script.txt
    bench/tools/perf_split.py perf.script.txt --us-per-delivery 21.6 [--deliveries-per-publish 3]
    bench/tools/perf_split.py perf.script.txt --callees 'Notifier::publish'   # what a part calls

Reads the samples of `perf script` (each a header line, then its stack, leaf first) and counts
each sample once, in the first part below whose every pattern is in its stack (its thread name
included). Prints each part's share of the samples and, with --us-per-delivery (the run's server
CPU per delivery, from herald-bench), what that share is in µs per delivery and per publish.
Then the store's writer thread alone, split the same way, per publish.

The stacks need DWARF call graphs (`bench/profile.sh` with CALLGRAPH=dwarf): the release build
has no frame pointers, so frame-pointer stacks stop at the first frame and every sample would
land in "other".
"""

import argparse
import sys

# (part, patterns): a sample belongs to the first part whose patterns are all in its stack.
PARTS = [
    ("the store's writer thread", ["herald-store-wr"]),
    ("tabs: socket writes (kernel)", ["run_stream", "WriteAll"]),
    ("tabs: next event and its SSE encoding", ["run_stream", "next_chunk"]),
    ("tabs: stream end polls", ["run_stream", "StreamEnd"]),
    ("tabs: the rest of their tasks", ["run_stream"]),
    ("publishes: Notifier::publish", ["poll_catch", "Notifier::publish"]),
    ("publishes: the body's JSON", ["poll_catch", "serde_json"]),
    ("publishes: the rest of the handler", ["poll_catch", "Handler<"]),
    ("publishes: writing the answer", ["poll_catch", "poll_write"]),
    ("publishes: reading the request", ["poll_catch", "poll_read"]),
    ("publishes: the rest of hyper and axum", ["poll_catch"]),
    ("tokio: parking and scheduling", ["park"]),
]

# What operating Herald costs (issue 15), with --parts operating: the /metrics scrapes, the
# admin page's sampler, the counters a publish and a delivery move, the publish-to-write clock
# read, the presence tracker and the webhook and Web Push senders; the rest is serving. The
# counters are inlined into their callers, so their frames show only with DWARF stacks (perf
# script names inlined frames).
OPERATING_PARTS = [
    ("operating: /metrics scrapes (the admin listener)", ["admin::accept_loop"]),
    ("operating: the admin page's sampler", ["admin::ui::samples"]),
    ("operating: the hub's census", ["Hub::census"]),
    ("operating: counters (herald_core::metrics)", ["herald_core::metrics"]),
    ("operating: the publish-to-write clock read", ["accept_live", "clock_gettime"]),
    ("operating: the presence tracker", ["presence_tracker"]),
    ("operating: the webhook sender", ["herald_server::webhook"]),
    ("operating: the Web Push sender", ["herald_server::push::sender"]),
]

# The writer thread's samples, split further (patterns within them).
WRITER_PARTS = [
    ("settling: the commit of a chunk", ["Settler::step", "commit"]),
    ("settling: inserts into the users' logs", ["Settler::step"]),
    ("a batch: fdatasync", ["run_batch", "fdatasync"]),
    ("a batch: the rest of its commit", ["run_batch", "commit_"]),
    ("a batch: reading a user's row", ["run_batch", "read_user_row"]),
    ("a batch: staging the rows", ["run_batch", "StagingWrites::stage"]),
    ("a batch: the notification's JSON", ["run_batch", "Notification::new"]),
    ("a batch: the rest", ["run_batch"]),
    ("checkpoints", ["Checkpoints::run"]),
    ("answering the requests", ["Request::send"]),
]


# Callees listed by --callees, the largest first.
CALLEES_SHOWN = 25


def samples(path):
    """Each sample as one string: its header line and its frames' symbols, joined by newlines."""
    current = []
    with open(path, encoding="utf-8", errors="replace") as lines:
        for line in lines:
            line = line.rstrip("\n")
            if not line.strip():
                if current:
                    yield "\n".join(current)
                current = []
            elif not line[0].isspace():
                if current:
                    yield "\n".join(current)
                current = [line]
            else:
                # "    ip symbol+offset (dso)": keep the symbol and what follows.
                current.append(line.strip().split(" ", 1)[-1])
    if current:
        yield "\n".join(current)


def split(stacks, parts):
    counts = {name: 0 for name, _ in parts}
    counts["other"] = 0
    for stack in stacks:
        for name, patterns in parts:
            if all(pattern in stack for pattern in patterns):
                counts[name] += 1
                break
        else:
            counts["other"] += 1
    return counts


def print_callees(stacks, pattern, per, deliveries_per_publish):
    """Splits the samples under `pattern` by the frame just below its innermost match."""
    total = len(stacks)
    counts = {}
    for stack in stacks:
        frames = stack.split("\n")[1:]  # leaf first; the header line dropped
        inner = next((i for i, frame in enumerate(frames) if pattern in frame), None)
        if inner is None:
            continue
        callee = "self" if inner == 0 else frames[inner - 1]
        counts[callee] = counts.get(callee, 0) + 1
    under = sum(counts.values())
    print(f"{under} under {pattern!r} ({100 * under / total:.1f} %), by callee:")
    if per is not None:
        print(f"{'share':>7}  {'µs/deliv':>8}  {'µs/publish':>10}  callee")
    for callee, count in sorted(counts.items(), key=lambda item: -item[1])[:CALLEES_SHOWN]:
        share = count / total
        cost = "" if per is None else f"  {share * per:8.2f}  {share * per * deliveries_per_publish:10.2f}"
        print(f"{100 * share:6.2f}%{cost}  {callee[:120]}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("script", help="output of `perf script -F comm,tid,ip,sym`")
    parser.add_argument("--us-per-delivery", type=float, help="the run's server CPU per delivery (µs)")
    parser.add_argument("--deliveries-per-publish", type=float, default=3.0, help="tabs per user (default 3)")
    parser.add_argument(
        "--parts",
        choices=["serving", "operating"],
        default="serving",
        help="serving: by part of the work (default); operating: what metrics, the admin page, "
        "presence and the senders cost, the rest as 'other'",
    )
    parser.add_argument(
        "--callees",
        metavar="PATTERN",
        help="instead of the parts: the samples whose stack has a frame matching PATTERN, split "
        "by the function that frame called (its innermost match; 'self' when the sample is in it)",
    )
    args = parser.parse_args()

    stacks = list(samples(args.script))
    if not stacks:
        sys.exit(f"no samples in {args.script}")
    total = len(stacks)
    per = args.us_per_delivery
    print(f"{total} samples")
    if args.callees:
        print_callees(stacks, args.callees, per, args.deliveries_per_publish)
        return
    print(f"{'share':>7}  {'µs/deliv':>8}  {'µs/publish':>10}  part")
    parts = PARTS if args.parts == "serving" else OPERATING_PARTS
    for name, count in split(stacks, parts).items():
        share = count / total
        if per is None:
            print(f"{100 * share:6.1f}%  {'':>8}  {'':>10}  {name}")
        else:
            print(f"{100 * share:6.1f}%  {share * per:8.2f}  {share * per * args.deliveries_per_publish:10.2f}  {name}")

    writer = [stack for stack in stacks if "herald-store-wr" in stack]
    if writer and per is not None and args.parts == "serving":
        print(f"\nthe store's writer thread, per publish ({len(writer)} samples):")
        for name, count in split(writer, WRITER_PARTS).items():
            print(f"{count / total * per * args.deliveries_per_publish:8.2f} µs  {name}")


if __name__ == "__main__":
    main()
