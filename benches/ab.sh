#!/usr/bin/env bash
# Webhook ingest, two builds of the sidecar against each other and against
# the durable floor in the same run: on a shared machine two runs of one
# binary differ by up to 30%, so an effect of 10-20% shows only in runs
# that alternate. Per round: the durable floor (examples/ingest_floor.rs
# appending to a file, group fdatasync), then A and B (order swapped every
# other round), each on a fresh embedded store: closed loop (accepted/s and
# the ratio to this round's durable floor) and open loop at half of its own
# saturation (ack p99). Loopback only, bounded in time.
# Usage: benches/ab.sh A_BINARY B_BINARY [rounds] [seconds] [senders]
# Build the other one with e.g.
#   git worktree add /tmp/a REV && CARGO_TARGET_DIR=/tmp/a-target cargo build --release --bin wedsync-sidecar
# (a separate target dir: sharing this one rebuilds it).
set -euo pipefail
cd "$(dirname "$0")/.."
A=$(realpath "$1"); B=$(realpath "$2")
ROUNDS=${3:-2}
SECONDS_PER_RUN=${4:-5}
SENDERS=${5:-64}
cargo build --release --locked --example ingest_load --example ingest_floor 2>&1 | tail -1
. benches/common.sh
SECRET=whsec_benchmark_secret_0123456789
LOADGEN=./target/release/examples/ingest_load
load() { "$LOADGEN" "$1" "$SECRET" "$SENDERS" "$SECONDS_PER_RUN" "${@:2}"; }
rate_of() { sed -E 's/.*= ([0-9]+)\/s.*/\1/'; }
p99_of() { sed -E 's/.* p99 ([0-9.]+) ms.*/\1/'; }

FLOOR_PORT=$(port)
echo "| round | build | accepted/s | x durable floor | ack p99, closed | ack p99 at half saturation |"
echo "|---|---|---:|---:|---:|---:|"
for round in $(seq "$ROUNDS"); do
  ./target/release/examples/ingest_floor "127.0.0.1:$FLOOR_PORT" "$WORK/floor.log" 2>/dev/null &
  FLOOR_PID=$!
  sleep 0.5
  DURABLE=$(load "http://127.0.0.1:$FLOOR_PORT/webhooks/stripe" | rate_of)
  kill -9 $FLOOR_PID
  wait $FLOOR_PID 2>/dev/null || true
  rm -f "$WORK/floor.log"
  echo "| $round | durable floor | $DURABLE | 1.00 | | |"
  order=(A B)
  [ $((round % 2)) = 0 ] && order=(B A)
  for which in "${order[@]}"; do
    bin=$A
    [ "$which" = B ] && bin=$B
    rm -rf "$WORK/data"
    start_webhook_sidecar sidecar "$bin" "store: { path: $WORK/data }"
    closed=$(load "$URL")
    rate=$(echo "$closed" | rate_of)
    half=$(load "$URL" 0 $((rate / 2)))
    kill -9 $PID
    wait $PID 2>/dev/null || true
    ratio=$(awk -v a="$rate" -v b="$DURABLE" 'BEGIN { printf "%.2f", a / b }')
    echo "| $round | $which | $rate | $ratio | $(echo "$closed" | p99_of) ms | $(echo "$half" | p99_of) ms |"
  done
done
echo "A: $A"
echo "B: $B"
