#!/usr/bin/env bash
# Egress load benchmark: one local upstream, then the same wrk load against
#   direct  - the upstream itself,
#   bare    - a bare Pingora passthrough proxy (examples/bare_proxy.rs),
#   sidecar - the sidecar's egress route with bearer injection,
# and prints requests/s, p50/p99 and the ratios sidecar/bare and sidecar/direct,
# plus the sidecar's idle RSS and its RSS under 256 keep-alive connections.
# Loopback only, bounded in time. Usage: benches/load.sh [seconds] [connections]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10}
CONNS=${2:-64}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
cargo build --release --locked --bin wedsync-sidecar --example bare_proxy --example bench_upstream 2>&1 | tail -1

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(port); BARE=$(port); EG=$(port); IN=$(port); AD=$(port)
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$WORK"' EXIT

./target/release/examples/bench_upstream "127.0.0.1:$UP" & 
./target/release/examples/bare_proxy "127.0.0.1:$BARE" "127.0.0.1:$UP" 2>/dev/null &
cat > "$WORK/sidecar.yaml" <<YAML
listen: { egress: 127.0.0.1:$EG, ingress: 127.0.0.1:$IN, admin: 127.0.0.1:$AD }
store: { path: $WORK/data }
services:
  stripe:
    route: /stripe
    upstream: http://127.0.0.1:$UP
    auth: { kind: bearer, token: sk_test_benchmark_key }
YAML
RUST_LOG=warn ./target/release/wedsync-sidecar run -c "$WORK/sidecar.yaml" 2>"$WORK/sidecar.log" &
SIDECAR=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$AD/readyz" >/dev/null && break; sleep 0.05; done
sleep 1
rss() { awk '/VmRSS/ {print int($2/1024)}' "/proc/$1/status"; }
IDLE_RSS=$(rss $SIDECAR)

to_ms() { awk '{v=$1; if (v ~ /us$/) {sub(/us/,"",v); print v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v); print v} else {sub(/s/,"",v); print v*1000}}'; }
run() { # name url
  wrk -t2 -c"$CONNS" -d3s "$2" >/dev/null 2>&1 # warm-up
  wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency "$2" > "$WORK/$1.txt"
  RPS[$1]=$(awk '/Requests\/sec/ {print $2}' "$WORK/$1.txt")
  P50[$1]=$(awk '$1=="50%" {print $2}' "$WORK/$1.txt" | to_ms)
  P99[$1]=$(awk '$1=="99%" {print $2}' "$WORK/$1.txt" | to_ms)
}
declare -A RPS P50 P99
run direct "http://127.0.0.1:$UP/v1/charges"
run bare "http://127.0.0.1:$BARE/v1/charges"
run sidecar "http://127.0.0.1:$EG/stripe/v1/charges"

# Memory under 256 keep-alive connections.
wrk -t2 -c256 -d5s "http://127.0.0.1:$EG/stripe/v1/charges" >/dev/null 2>&1 &
sleep 4; LOADED_RSS=$(rss $SIDECAR); wait %4 2>/dev/null || true

printf '\n%-8s %12s %10s %10s   (wrk -t2 -c%s -d%ss, %s cores)\n' target req/s p50_ms p99_ms "$CONNS" "$DURATION" "$(nproc)"
for t in direct bare sidecar; do printf '%-8s %12.0f %10.3f %10.3f\n' $t "${RPS[$t]}" "${P50[$t]}" "${P99[$t]}"; done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", a/b}'; }
echo
echo "sidecar/bare   throughput $(ratio "${RPS[sidecar]}" "${RPS[bare]}")  p50 $(ratio "${P50[sidecar]}" "${P50[bare]}")  p99 $(ratio "${P99[sidecar]}" "${P99[bare]}")   (targets: throughput >= 0.9, p99 <= 1.15)"
echo "sidecar/direct throughput $(ratio "${RPS[sidecar]}" "${RPS[direct]}")  p50 $(ratio "${P50[sidecar]}" "${P50[direct]}")  p99 $(ratio "${P99[sidecar]}" "${P99[direct]}")"
echo "sidecar RSS idle ${IDLE_RSS} MiB (target <= 20), under 256 keep-alive connections ${LOADED_RSS} MiB (target <= 64)"
