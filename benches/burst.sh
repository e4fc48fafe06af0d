#!/usr/bin/env bash
# Memory under bursts (issue: hostile upstreams, bursts and reloads): a
# release sidecar on the embedded store, its delivery target down (so every
# accepted event stays in the store), takes bursts of 2 KiB events with
# unique ids, published by the app on the egress listener and posted as
# Stripe webhooks on the ingress, at fixed rates and as fast as 256
# connections get answers (examples/burst.rs). Each burst runs on a fresh
# sidecar; prints RSS before, at its peak, at the burst's end and after the
# settle, with the answers and the store file's size. Loopback only, bounded in time.
# Usage: benches/burst.sh [seconds] [settle] [rates...]   (default: 8 5 2000 6000 8000 max)
# MEMORY=<limits.memory> runs with that budget (default: the sidecar's own).
# SIDECAR=<binary> measures another build (an earlier one, for a before/after).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-8}
SETTLE=${2:-5}
shift $(( $# < 2 ? $# : 2 ))
RATES=("$@")
[ ${#RATES[@]} -eq 0 ] && RATES=(2000 6000 8000 max)
LIMITS=""
[ -n "${MEMORY:-}" ] && LIMITS="limits: { memory: $MEMORY }"
cargo build --release --locked --bin wedsync-sidecar --example burst 2>&1 | tail -1
. benches/common.sh
SECRET=whsec_benchmark_secret_0123456789

run() { # mode rate
  local eg in ad url
  eg=$(port); in=$(port); ad=$(port)
  rm -rf "$WORK/data"
  cat > "$WORK/burst.yaml" <<YAML
listen: { egress: 127.0.0.1:$eg, ingress: 127.0.0.1:$in, admin: 127.0.0.1:$ad }
store: { path: $WORK/data }
$LIMITS
$(webhook_yaml "$SECRET")
events:
  wedding:
    path: /events/wedding
    routes: [{ events: ["*"], targets: [notify] }]
YAML
  RUST_LOG=warn "${SIDECAR:-./target/release/wedsync-sidecar}" run -c "$WORK/burst.yaml" 2>"$WORK/burst.log" &
  local pid=$!
  wait_ready "$ad"
  sleep 1
  if [ "$1" = publish ]; then url="http://127.0.0.1:$eg/events/wedding"; else url="http://127.0.0.1:$in/webhooks/stripe"; fi
  printf '%-8s %-5s ' "$1" "$2"
  ./target/release/examples/burst "$1" "$url" "$SECRET" "$pid" "$2" "$SECONDS_PER_RUN" "$SETTLE" | tr -d '\n'
  echo " store_mib: $(( $(stat -c %s "$WORK/data/events.redb") >> 20 ))"
  kill -9 $pid; wait $pid 2>/dev/null || true
}
for mode in publish webhook; do
  for rate in "${RATES[@]}"; do run "$mode" "$rate"; done
done
