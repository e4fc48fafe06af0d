#!/usr/bin/env bash
# Webhook ingest benchmark: the sidecar's ingress with the embedded store and
# with a private Redis, 64 senders posting Stripe-signed 2 KiB events with
# fresh ids (examples/ingest_load.rs), loopback only, bounded in time.
# Usage: benches/ingest.sh [seconds] [senders]
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-10}
SENDERS=${2:-64}
cargo build --release --locked --bin wedsync-sidecar --example ingest_load 2>&1 | tail -1
. benches/common.sh
SECRET=whsec_benchmark_secret_0123456789

run() { # name store-yaml
  local eg in ad
  eg=$(port); in=$(port); ad=$(port)
  cat > "$WORK/$1.yaml" <<YAML
listen: { egress: 127.0.0.1:$eg, ingress: 127.0.0.1:$in, admin: 127.0.0.1:$ad }
$2
upstreams:
  notify: { backends: [127.0.0.1:9] }
webhooks:
  stripe:
    path: /webhooks/stripe
    verify: { kind: stripe, secrets: [$SECRET] }
    routes: [{ events: ["*"], targets: [notify] }]
YAML
  RUST_LOG=warn ./target/release/wedsync-sidecar run -c "$WORK/$1.yaml" 2>"$WORK/$1.log" &
  local pid=$!
  wait_ready "$ad"
  echo "$1: $(./target/release/examples/ingest_load "http://127.0.0.1:$in/webhooks/stripe" "$SECRET" "$SENDERS" "$SECONDS_PER_RUN")"
  kill -9 $pid
}

run embedded "store: { path: $WORK/data }"
start_redis
run redis "store: { kind: redis, url: redis://127.0.0.1:$REDIS_PORT }"
echo "(redis without AOF: see README for the persistence settings durability needs)"
