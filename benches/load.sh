#!/usr/bin/env bash
# Egress load benchmark: one local upstream, then the same wrk load against
#   direct  - the upstream itself,
#   bare    - a bare Pingora passthrough proxy (examples/bare_proxy.rs),
#   bare_je - the same with the sidecar's allocator, jemalloc
#             (examples/bare_proxy_jemalloc.rs), to tell the allocator's
#             gain from the sidecar's own cost,
#   sidecar - the sidecar's egress route with bearer injection and its
#             access log on (the default log level),
#   guarded - the same with a circuit breaker and a per-pod rate limit set
#             high enough never to refuse (the cost of the resilience checks),
# in ROUNDS interleaved rounds (the order of the proxies rotates, so drift on
# a noisy machine hits all of them). Prints, per round and as the median,
# requests/s, p50/p99, CPU time per request of each proxy process, and the
# ratios sidecar/bare and sidecar/bare_je; then the sidecar's idle RSS and its RSS under 256
# keep-alive connections. Loopback only, bounded in time.
# Usage: benches/load.sh [seconds per run] [connections] [rounds]
#        benches/load.sh pinned [seconds] [rounds] [rate]   (benches/pinned.sh:
#        proxy and upstream on one core, load generator on the other, CPU per
#        request against bare Pingora and open-loop added latency)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = pinned ]; then shift; exec benches/pinned.sh "$@"; fi
DURATION=${1:-5}
CONNS=${2:-64}
ROUNDS=${3:-5}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
cargo build --release --locked --bin wedsync-sidecar --example bare_proxy --example bare_proxy_jemalloc --example bench_upstream 2>&1 | tail -1

. benches/common.sh
UP=$(port); BARE=$(port); BARE_JE=$(port); EG=$(port); IN=$(port); AD=$(port)
G_EG=$(port); G_IN=$(port); G_AD=$(port)

./target/release/examples/bench_upstream "127.0.0.1:$UP" &
./target/release/examples/bare_proxy "127.0.0.1:$BARE" "127.0.0.1:$UP" 2>/dev/null &
BARE_PID=$!
./target/release/examples/bare_proxy_jemalloc "127.0.0.1:$BARE_JE" "127.0.0.1:$UP" 2>/dev/null &
BARE_JE_PID=$!
cat > "$WORK/sidecar.yaml" <<YAML
listen: { egress: 127.0.0.1:$EG, ingress: 127.0.0.1:$IN, admin: 127.0.0.1:$AD }
store: { path: $WORK/data }
services:
  stripe:
    route: /stripe
    upstream: http://127.0.0.1:$UP
    auth: { kind: bearer, token: sk_test_benchmark_key }
YAML
env -u RUST_LOG ./target/release/wedsync-sidecar run -c "$WORK/sidecar.yaml" 2>"$WORK/sidecar.log" &
SIDECAR_PID=$!
egress_yaml "$G_EG" "$G_IN" "$G_AD" "$WORK/guarded-data" "$UP" > "$WORK/guarded.yaml"
env -u RUST_LOG ./target/release/wedsync-sidecar run -c "$WORK/guarded.yaml" 2>"$WORK/guarded.log" &
GUARDED_PID=$!
for a in $AD $G_AD; do wait_ready "$a"; done
sleep 1
rss() { awk '/VmRSS/ {print int($2/1024)}' "/proc/$1/status"; }
IDLE_RSS=$(rss $SIDECAR_PID)

to_ms() { awk '{v=$1; if (v ~ /us$/) {sub(/us/,"",v); print v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v); print v} else {sub(/s/,"",v); print v*1000}}'; }
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
declare -A URL=([direct]="http://127.0.0.1:$UP/v1/charges" [bare]="http://127.0.0.1:$BARE/v1/charges" [bare_je]="http://127.0.0.1:$BARE_JE/v1/charges" [sidecar]="http://127.0.0.1:$EG/stripe/v1/charges" [guarded]="http://127.0.0.1:$G_EG/stripe/v1/charges")
declare -A PID=([direct]=0 [bare]=$BARE_PID [bare_je]=$BARE_JE_PID [sidecar]=$SIDECAR_PID [guarded]=$GUARDED_PID)
run() { # name -> "rps p50_ms p99_ms cpu_us_per_request"
  local before=0 after=0
  [ "${PID[$1]}" = 0 ] || before=$(cpu_ticks "${PID[$1]}")
  wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency "${URL[$1]}" > "$WORK/$1.txt"
  [ "${PID[$1]}" = 0 ] || after=$(cpu_ticks "${PID[$1]}")
  local requests rps p50 p99
  requests=$(awk '/requests in/ {print $1}' "$WORK/$1.txt")
  rps=$(awk '/Requests\/sec/ {print $2}' "$WORK/$1.txt")
  p50=$(awk '$1=="50%" {print $2}' "$WORK/$1.txt" | to_ms)
  p99=$(awk '$1=="99%" {print $2}' "$WORK/$1.txt" | to_ms)
  # /proc ticks are 10 ms: CPU microseconds per request = ticks * 10000 / requests.
  echo "$rps $p50 $p99 $(awk -v t=$((after - before)) -v n="$requests" 'BEGIN {printf "%.1f", t * 10000 / n}')"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", a/b}'; }
median() { sort -g | awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2}'; }

for t in direct bare bare_je sidecar guarded; do wrk -t2 -c"$CONNS" -d2s "${URL[$t]}" >/dev/null 2>&1; done # warm-up
read -r D_RPS D_P50 D_P99 _ <<< "$(run direct)"
printf '\n(wrk -t2 -c%s -d%ss, %s rounds, %s cores; direct upstream: %.0f req/s, p99 %.3f ms)\n' "$CONNS" "$DURATION" "$ROUNDS" "$(nproc)" "$D_RPS" "$D_P99"
printf '%-5s %9s %9s %9s %8s %8s %8s %7s %7s %7s | %6s %6s %6s %6s | %6s %6s | %6s\n' round bare_rps je_rps sc_rps bare_p99 je_p99 sc_p99 bare_us je_us sc_us thru p50 p99 cpu je_thru je_cpu g_thru
: > "$WORK/ratios"
ORDERS=("bare bare_je sidecar guarded" "guarded sidecar bare bare_je" "sidecar guarded bare_je bare" "bare_je bare guarded sidecar")
for r in $(seq "$ROUNDS"); do
  declare -A OUT=()
  for t in ${ORDERS[$(( (r - 1) % 4 ))]}; do OUT[$t]=$(run "$t"); done
  read -r B_RPS B_P50 B_P99 B_CPU <<< "${OUT[bare]}"
  read -r M_RPS M_P50 M_P99 M_CPU <<< "${OUT[bare_je]}"
  read -r S_RPS S_P50 S_P99 S_CPU <<< "${OUT[sidecar]}"
  read -r G_RPS _ _ _ <<< "${OUT[guarded]}"
  RT=$(ratio "$S_RPS" "$B_RPS"); R50=$(ratio "$S_P50" "$B_P50"); R99=$(ratio "$S_P99" "$B_P99"); RC=$(ratio "$S_CPU" "$B_CPU")
  MT=$(ratio "$S_RPS" "$M_RPS"); MC=$(ratio "$S_CPU" "$M_CPU"); GT=$(ratio "$G_RPS" "$S_RPS")
  echo "$RT $R50 $R99 $RC $MT $MC $GT" >> "$WORK/ratios"
  printf '%-5s %9.0f %9.0f %9.0f %8.3f %8.3f %8.3f %7s %7s %7s | %6s %6s %6s %6s | %6s %6s | %6s\n' "$r" "$B_RPS" "$M_RPS" "$S_RPS" "$B_P99" "$M_P99" "$S_P99" "$B_CPU" "$M_CPU" "$S_CPU" "$RT" "$R50" "$R99" "$RC" "$MT" "$MC" "$GT"
done

# Memory under 256 keep-alive connections.
wrk -t2 -c256 -d5s "${URL[sidecar]}" >/dev/null 2>&1 &
LOAD=$!
sleep 4; LOADED_RSS=$(rss $SIDECAR_PID); wait $LOAD 2>/dev/null || true

col() { awk -v c="$1" '{print $c}' "$WORK/ratios" | median; }
echo
echo "median sidecar/bare:    throughput $(col 1)  p50 $(col 2)  p99 $(col 3)  CPU per request $(col 4)   (targets: throughput >= 0.9, p99 <= 1.15)"
echo "median sidecar/bare_je: throughput $(col 5)  CPU per request $(col 6)   (same allocator: the sidecar's own cost)"
echo "median guarded/sidecar: throughput $(col 7)   (breaker + per-pod limit on vs off; target >= 0.97)"
echo "sidecar RSS idle ${IDLE_RSS} MiB (target <= 20), under 256 keep-alive connections ${LOADED_RSS} MiB (target <= 64)"
echo "access-log lines written by the sidecar: $(grep -c 'access: egress' "$WORK/sidecar.log")"
