#!/usr/bin/env bash
# What trace context and span export cost the egress, closed loop, in one
# run on loopback: the sidecar's egress (bearer injection, request ids, the
# access log, a rate limit that never refuses, a breaker) three ways:
#   off        - tracing.propagate: false
#   propagate  - the default: a child traceparent per exchange
#   export     - propagate, and every span exported over OTLP/HTTP to a
#                collector stand-in (the bench upstream, which answers 200),
#                sample ratio 1
#   export10   - the same with sample_ratio: 0.1
# ROUNDS rounds of SECONDS-second wrk runs, the three taken in turn within
# a round; the median req/s of each and its ratio to `off` are printed.
# (The three are taken in turn so that the machine's drift hits them alike.)
# Usage: benches/tracing.sh [seconds] [rounds] [connections]
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-5}
ROUNDS=${2:-3}
CONNECTIONS=${3:-32}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
cargo build --release --locked --bin wedsync-sidecar --example bench_upstream 2>&1 | tail -1
. benches/common.sh
UP=$(port)
./target/release/examples/bench_upstream "127.0.0.1:$UP" &
sleep 0.3

start() { # name tracing-yaml -> EG, PID
  local in ad
  EG=$(port); in=$(port); ad=$(port)
  { egress_yaml "$EG" "$in" "$ad" "$WORK/$1-data" "$UP"; echo "$2"; } > "$WORK/$1.yaml"
  RUST_LOG=warn ./target/release/wedsync-sidecar run -c "$WORK/$1.yaml" 2>"$WORK/$1.log" &
  PID=$!
  wait_ready "$ad"
}

declare -A RESULTS
for mode in off propagate export export10; do RESULTS[$mode]=""; done
for round in $(seq "$ROUNDS"); do
  for mode in off propagate export export10; do
    case $mode in
      off) tracing="tracing: { propagate: false }" ;;
      propagate) tracing="" ;;
      export) tracing="tracing: { otlp: { endpoint: \"http://127.0.0.1:$UP\" } }" ;;
      export10) tracing="tracing: { otlp: { endpoint: \"http://127.0.0.1:$UP\", sample_ratio: 0.1 } }" ;;
    esac
    start "$mode-$round" "$tracing"
    wrk -t2 -c"$CONNECTIONS" -d1s "http://127.0.0.1:$EG/stripe/v1/charges" >/dev/null
    rate=$(wrk -t2 -c"$CONNECTIONS" -d"${SECONDS_PER_RUN}s" "http://127.0.0.1:$EG/stripe/v1/charges" \
      | awk '/Requests\/sec/ {print int($2)}')
    kill "$PID"; wait "$PID" 2>/dev/null || true
    RESULTS[$mode]="${RESULTS[$mode]} $rate"
    echo "round $round $mode: $rate req/s"
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
off=$(echo "${RESULTS[off]}" | median)
for mode in off propagate export export10; do
  m=$(echo "${RESULTS[$mode]}" | median)
  echo "$mode: median $m req/s ($(awk -v a="$m" -v b="$off" 'BEGIN {printf "%.3f", a/b}')x off)"
done
