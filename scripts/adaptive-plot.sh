#!/usr/bin/env bash
# The README's chart of the adaptive limit (docs/adaptive.svg): the conformance test
# `adaptive::load_steps` runs a demo in front of a simulated service of N workers under a load
# stepping up and down and writes a CSV trace (one row per 100 ms) per demo and N into
# target/adaptive/; tools/adaptive-plot draws it.
#
# Usage: scripts/adaptive-plot.sh [N] [DEMO]   (defaults: N = 20, DEMO = axum-demo)
set -euo pipefail
cd "$(dirname "$0")/.."

n="${1:-20}"
demo="${2:-axum-demo}"
trace="target/adaptive/$demo-$n.csv"
out="docs/adaptive.svg"

TOLLGATE_ADAPTIVE_TRACE="$PWD/target/adaptive" \
    cargo test -p tollgate-conformance --test adaptive -- --nocapture load_steps
if [ ! -f "$trace" ]; then
    echo "adaptive-plot.sh: the test wrote no $trace (files in target/adaptive/: $(ls target/adaptive 2>/dev/null | tr '\n' ' '))" >&2
    exit 1
fi
mkdir -p docs
cargo run -q -p adaptive-plot -- "$trace" "$out"
echo "adaptive-plot.sh: wrote $PWD/$out (from $trace)"
