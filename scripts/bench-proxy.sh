#!/usr/bin/env bash
# Measures herd's added latency against a bare httputil.ReverseProxy and going direct to a fake
# upstream: builds herd, fakeupstream and herdbench into a temp dir, then runs
# `herdbench proxy "$@"` (its flags: --rates, --duration, --warmup, --rounds, --json, ...).
# The markdown report goes to stdout, progress to stderr. See docs/BENCHMARKS.md.
#
#   scripts/bench-proxy.sh --rates 1000,3000 --duration 10s --rounds 2
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="$(mktemp -d "${TMPDIR:-/tmp}/herd-bench.XXXXXX")"
trap 'rm -rf "$bin"' EXIT

build() { (cd "$root" && go build "$@" -o "$bin/" ./cmd/herd ./cmd/fakeupstream ./cmd/herdbench); }
# Stamp the git revision into herd so the report can name it; without git (or when git refuses
# the checkout) build unstamped.
build -buildvcs=auto 2>/dev/null || build -buildvcs=false
# The report shows this command rather than herdbench's own, which names the temp dir.
cmd="scripts/bench-proxy.sh"
for a in "$@"; do
	if [[ $a =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then cmd+=" $a"; else cmd+=" '${a//\'/\'\\\'\'}'"; fi
done
HERDBENCH_COMMAND="$cmd" "$bin/herdbench" proxy --herd "$bin/herd" --fakeupstream "$bin/fakeupstream" "$@"
