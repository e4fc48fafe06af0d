#!/usr/bin/env bash
# Webhook ingest benchmark, loopback only, bounded in time. SENDERS
# keep-alive connections post Stripe-signed 2 KiB events with fresh ids
# (examples/ingest_load.rs) to
#   floor    - a bare Pingora ServeHttp app that reads the body and answers
#              202, nothing else (examples/ingest_floor.rs), in the same run
#   durable  - the same app appending each body to a file and answering
#              after a group fdatasync covers it: the durable floor
#   embedded - the sidecar's ingress with the embedded store
#   redis    - the same with a private Redis
# first closed loop (each sender waits for its answer: saturation, accepted/s
# and the ratio to the floor), then, for the embedded store, open loop at
# 25%, 50% and 75% of its own saturation (events due at a fixed rate, each
# latency counted from when it was due, so queueing shows). The closed-loop
# runs also give CPU microseconds per event for each thread of the server and
# for the load generator (benches/cpu_per_event.py): with every core busy,
# CPU per event is what sets the rate.
# Usage: benches/ingest.sh [seconds] [senders]
# HISTORY=off runs the sidecars without the event log (store.history).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-10}
SENDERS=${2:-64}
cargo build --release --locked --bin wedsync-sidecar --example ingest_load --example ingest_floor 2>&1 | tail -1
. benches/common.sh
SECRET=whsec_benchmark_secret_0123456789

start() { start_webhook_sidecar "$1" ./target/release/wedsync-sidecar "$2"; }
LOADGEN=./target/release/examples/ingest_load
load() { "$LOADGEN" "$1" "$SECRET" "$SENDERS" "$SECONDS_PER_RUN" "${@:2}"; }
rate_of() { head -1 | sed -E 's/.*= ([0-9]+)\/s.*/\1/'; }
# Closed loop against the server whose pid is $1 at URL $2, with its CPU per event.
measured() { python3 benches/cpu_per_event.py "$1" -- "$LOADGEN" "$2" "$SECRET" "$SENDERS" "$SECONDS_PER_RUN"; }

FLOOR_PORT=$(port)
./target/release/examples/ingest_floor "127.0.0.1:$FLOOR_PORT" 2>/dev/null &
FLOOR_PID=$!
sleep 0.5
FLOOR=$(measured $FLOOR_PID "http://127.0.0.1:$FLOOR_PORT/webhooks/stripe")
kill -9 $FLOOR_PID
echo "floor (202, no verification, no store): $FLOOR"
# The durable floor: the same app appending each body to a file and
# answering after a group fdatasync covers it, on the volume the store uses.
./target/release/examples/ingest_floor "127.0.0.1:$FLOOR_PORT" "$WORK/floor.log" 2>/dev/null &
FLOOR_PID=$!
sleep 0.5
DURABLE=$(measured $FLOOR_PID "http://127.0.0.1:$FLOOR_PORT/webhooks/stripe")
kill -9 $FLOOR_PID
echo "durable floor (append + group fdatasync, no verification): $DURABLE"

HISTORY_YAML=""
[ "${HISTORY:-on}" = off ] && HISTORY_YAML=", history: { enabled: false }"
start embedded "store: { path: $WORK/data$HISTORY_YAML }"
EMBEDDED=$(measured $PID "$URL")
echo "embedded: $EMBEDDED"
SATURATION=$(echo "$EMBEDDED" | rate_of)
echo "embedded/floor accepted/s: $(awk -v a="$SATURATION" -v b="$(echo "$FLOOR" | rate_of)" 'BEGIN {printf "%.2f", a/b}')"
echo "embedded/durable floor accepted/s: $(awk -v a="$SATURATION" -v b="$(echo "$DURABLE" | rate_of)" 'BEGIN {printf "%.2f", a/b}') (target >= 0.5)"
us() { grep -F "$2" <<<"$1" | head -1 | sed -E 's/.*: ([0-9.]+) us\/event/\1/'; }
awk -v fs="$(us "$FLOOR" "server total")" -v fl="$(us "$FLOOR" "load generator")" \
  -v ss="$(us "$EMBEDDED" "server total")" -v sl="$(us "$EMBEDDED" "load generator")" \
  -v w="$(us "$EMBEDDED" "thread event-store:")" 'BEGIN {
  printf "CPU per event, server and load generator: floor %.1f us, embedded %.1f us (%.2fx; the store writer thread %.1f us)\n", fs + fl, ss + sl, (ss + sl) / (fs + fl), w }'
for share in 25 50 75; do
  rate=$((SATURATION * share / 100))
  echo "embedded, open loop at ${share}% of saturation ($rate/s): $(load "$URL" 0 "$rate")"
done
kill -9 $PID

start_redis
start redis "store: { kind: redis, url: redis://127.0.0.1:$REDIS_PORT$HISTORY_YAML }"
echo "redis: $(load "$URL")"
kill -9 $PID
echo "(redis without AOF: see README for the persistence settings durability needs)"
