#!/usr/bin/env bash
# The long chaos runs behind docs/CHAOS.md's results table: for each mode, one run per nemesis
# (and one with none, and one with all of them), 5 nodes, several minutes each, several seeds.
# Modes: fast, strict, redis, and strict-redis (strict rights over a Redis: --mode strict --redis single).
# Needs root. Usage: scripts/chaos-long.sh [--modes "fast strict redis"] [--seeds "1 2"]
#                    [--nemeses "none partition ... all"] [--time 120s] [--nodes 5]
#                    [--out chaos-results/long]
# Every run's directory stays under --out; the table is printed at the end (herd-chaos table).
set -uo pipefail
cd "$(dirname "$0")/.."
modes="fast strict redis" seeds="1" time=120s nodes=5 out=chaos-results/long nemeses=""
while [ $# -gt 0 ]; do
	case "$1" in
	--modes) modes=$2; shift 2 ;;
	--seeds) seeds=$2; shift 2 ;;
	--nemeses) nemeses=$2; shift 2 ;;
	--time) time=$2; shift 2 ;;
	--nodes) nodes=$2; shift 2 ;;
	--out) out=$2; shift 2 ;;
	*) echo "unknown flag $1" >&2; exit 2 ;;
	esac
done
mkdir -p "$out"
go build -o "$out/herd-chaos" ./cmd/herd-chaos || exit 2
go build -race -o "$out/herd" ./cmd/herd || exit 2
rc=0
for mode in $modes; do
	kinds="none partition loss kill pause clock leader"
	flags=(--mode "$mode")
	case $mode in
	redis) kinds="$kinds redis" ;;
	strict-redis)
		kinds="$kinds redis"
		flags=(--mode strict --redis single)
		;;
	esac
	kinds="$kinds all"
	[ -n "$nemeses" ] && kinds=$nemeses
	for kind in $kinds; do
		for seed in $seeds; do
			dir="$out/$mode-$kind-$seed"
			rm -rf "$dir"
			echo "== $mode / $kind / seed $seed"
			"$out/herd-chaos" run --herd "$out/herd" --nodes "$nodes" --time "$time" "${flags[@]}" \
				--nemesis "$kind" --seed "$seed" --out "$dir" | tail -n 1
			code=${PIPESTATUS[0]}
			[ "$code" -gt "$rc" ] && rc=$code
		done
	done
done
"$out/herd-chaos" table "$out"/*/
exit $rc
