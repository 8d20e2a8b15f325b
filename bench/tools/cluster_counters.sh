#!/usr/bin/env bash
# Prints the bus traffic of a Herald cluster's nodes as herald-bench's --counters-cmd wants it
# (`NAME VALUE` lines): each node's own count from `GET /v1/cluster` (with HERALD_API_KEY from
# the environment), per node (`node_<id>_bytes_in`, `…_bytes_out`) and summed over the nodes
# (`nodes_envelopes_out`, `nodes_bytes_in`, `nodes_echoes`, `nodes_repaired`, …).
#
#   bench/tools/cluster_counters.sh http://127.0.0.1:7330 http://127.0.0.1:7331 …
set -euo pipefail
: "${HERALD_API_KEY:?HERALD_API_KEY is not set}"
for url in "$@"; do
    curl -sf --max-time 5 -H "Authorization: Bearer $HERALD_API_KEY" "$url/v1/cluster"
done | jq -rs '
    (.[] | "node_\(.node)_bytes_in \(.bytes_in)\nnode_\(.node)_bytes_out \(.bytes_out)"),
    ("envelopes_out", "envelopes_in", "bytes_out", "bytes_in", "echoes", "rejected",
     "publish_failures", "repair_passes", "repaired") as $k
    | "nodes_\($k) \(map(.[$k] // 0) | add)"'
