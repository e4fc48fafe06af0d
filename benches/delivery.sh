#!/usr/bin/env bash
# End-to-end delivery benchmark: Stripe-signed 2 KiB events into the
# sidecar's ingress, delivered to a local target (examples/delivery_load.rs),
# with the embedded store and with a private Redis. Per store:
#   1. saturation: SENDERS senders as fast as they are acknowledged; the
#      ratio delivered/s : accepted/s says whether delivery keeps up;
#   2. half load: 50% of the rate run 1 sustained end to end (the lower of
#      its accepted/s and delivered/s), reporting 202 -> target p50/p99;
#   3. at the ingest target of the webhook issue (embedded 3,000/s, Redis
#      8,000/s): does delivery keep up, and at what latency;
#   4. idle queue: one sender at 50 events/s, 202 -> target latency.
# Loopback only, bounded in time. Usage: benches/delivery.sh [seconds] [senders]
# SIDECAR=path runs another build of the sidecar (e.g. an older commit's) for an
# A/B comparison on the same machine.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-10}
SENDERS=${2:-64}
SIDECAR=${SIDECAR:-./target/release/wedsync-sidecar}
cargo build --release --locked --bin wedsync-sidecar --example delivery_load 2>&1 | tail -1
. benches/common.sh
SECRET=whsec_benchmark_secret_0123456789

stop() { kill -9 "$(cat "$WORK/$1.pid")" 2>/dev/null || true; }
start() { # name store-yaml target-port -> prints the ingress URL
  local eg in ad
  eg=$(port); in=$(port); ad=$(port)
  cat > "$WORK/$1.yaml" <<YAML
listen: { egress: 127.0.0.1:$eg, ingress: 127.0.0.1:$in, admin: 127.0.0.1:$ad }
${2//RUN/$1}
delivery: { workers: 64 }
upstreams:
  notify: { backends: [127.0.0.1:$3], max_in_flight: 64 }
webhooks:
  stripe:
    path: /webhooks/stripe
    verify: { kind: stripe, secrets: [$SECRET] }
    routes: [{ events: ["*"], targets: [notify] }]
YAML
  RUST_LOG=warn "$SIDECAR" run -c "$WORK/$1.yaml" >/dev/null 2>"$WORK/$1.log" &
  echo $! > "$WORK/$1.pid"
  wait_ready "$ad" || return 1
  echo "http://127.0.0.1:$in/webhooks/stripe"
}

bench() { # name store-yaml target-rate
  local url target line rate
  target=$(port); url=$(start "$1-max" "$2" "$target")
  line=$(./target/release/examples/delivery_load "$url" "$SECRET" "127.0.0.1:$target" "$SENDERS" "$SECONDS_PER_RUN" 0)
  echo "$1 saturation: $line"
  # What the path sustains end to end: the lower of accepted/s and delivered/s.
  rate=$(echo "$line" | sed -E 's/.*= ([0-9]+)\/s, delivered.* = ([0-9]+)\/s,.*/\1 \2/' | awk '{ print ($1 < $2) ? $1 : $2 }')
  echo "$line" | awk -v n="$1" '{ for (i=1;i<=NF;i++) { if ($i=="accepted") a=$(i+3); if ($i=="delivered") d=$(i+5) } }
    END { gsub("/s,?","",a); gsub("/s,?","",d); printf "%s delivered/accepted ratio: %.2f\n", n, d/a }'
  stop "$1-max"
  target=$(port); url=$(start "$1-half" "$2" "$target")
  echo "$1 half load ($((rate / 2))/s): $(./target/release/examples/delivery_load "$url" "$SECRET" "127.0.0.1:$target" 16 "$SECONDS_PER_RUN" $((rate / 2)))"
  stop "$1-half"
  target=$(port); url=$(start "$1-target" "$2" "$target")
  echo "$1 at the ingest target ($3/s): $(./target/release/examples/delivery_load "$url" "$SECRET" "127.0.0.1:$target" 16 "$SECONDS_PER_RUN" "$3")"
  stop "$1-target"
  target=$(port); url=$(start "$1-idle" "$2" "$target")
  echo "$1 idle queue (50/s): $(./target/release/examples/delivery_load "$url" "$SECRET" "127.0.0.1:$target" 1 5 50)"
  stop "$1-idle"
}

bench embedded "store: { path: $WORK/data-RUN }" 3000
start_redis
bench redis "store: { kind: redis, url: redis://127.0.0.1:$REDIS_PORT }" 8000
echo "(redis without AOF: see README for the persistence settings durability needs)"
