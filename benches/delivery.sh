#!/usr/bin/env bash
# End-to-end delivery benchmark: Stripe-signed 2 KiB events into the
# sidecar's ingress, delivered to a local target (examples/delivery_load.rs),
# with the embedded store and with a private Redis. Per store:
#   1. saturation: SENDERS senders as fast as they are acknowledged; the
#      ratio delivered/s : accepted/s says whether delivery keeps up;
#   2. open loop at 25%, 50% and 75% of the rate run 1 sustained end to end
#      (the lower of its accepted/s and delivered/s): paced senders, ack
#      latency from when each send was due, and 202 -> target p50/p99;
#   3. at the webhook ingest targets (embedded 3,000/s, Redis
#      8,000/s): does delivery keep up, and at what latency;
#   4. idle queue: one sender at 50 events/s, 202 -> target latency.
# Loopback only, bounded in time. Usage: benches/delivery.sh [seconds] [senders]
# STORE=embedded, redis or cluster runs one store (default: embedded and
# redis). STORE=cluster runs a private 3-master/3-replica Redis Cluster and a
# single Redis side by side, and reports accepted/s and delivered/s of each,
# Redis commands (round trips) per event, and how the keys spread over the
# masters.
# HISTORY=off runs the sidecars without the event log (store.history).
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
HISTORY_YAML=""
[ "${HISTORY:-on}" = off ] && HISTORY_YAML=", history: { enabled: false }"

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
  # Open loop: paced senders, latencies from when each send was due.
  local share
  for share in 25 50 75; do
    target=$(port); url=$(start "$1-$share" "$2" "$target")
    echo "$1 at $share% ($((rate * share / 100))/s): $(./target/release/examples/delivery_load "$url" "$SECRET" "127.0.0.1:$target" 16 "$SECONDS_PER_RUN" $((rate * share / 100)))"
    stop "$1-$share"
  done
  target=$(port); url=$(start "$1-target" "$2" "$target")
  echo "$1 at the ingest target ($3/s): $(./target/release/examples/delivery_load "$url" "$SECRET" "127.0.0.1:$target" 16 "$SECONDS_PER_RUN" "$3")"
  stop "$1-target"
  target=$(port); url=$(start "$1-idle" "$2" "$target")
  echo "$1 idle queue (50/s): $(./target/release/examples/delivery_load "$url" "$SECRET" "127.0.0.1:$target" 1 5 50)"
  stop "$1-idle"
}

# Saturation only, with Redis's command counts: name store-yaml ports...
saturate() {
  local name=$1 store=$2 target url line p delivered
  local commands=0 scripts=0 usec=0
  shift 2
  for p in "$@"; do
    commands=$((commands - $(redis_commands "$p"))); scripts=$((scripts - $(redis_scripts "$p")))
    usec=$((usec - $(redis_script_usec "$p")))
  done
  target=$(port); url=$(start "$name" "$store" "$target")
  line=$(./target/release/examples/delivery_load "$url" "$SECRET" "127.0.0.1:$target" "$SENDERS" "$SECONDS_PER_RUN" 0)
  sleep 1
  stop "$name"
  for p in "$@"; do
    commands=$((commands + $(redis_commands "$p"))); scripts=$((scripts + $(redis_scripts "$p")))
    usec=$((usec + $(redis_script_usec "$p")))
  done
  delivered=$(echo "$line" | sed -E 's/.*delivered ([0-9]+) .*/\1/')
  echo "$name saturation: $line"
  awk -v n="$name" -v c=$commands -v s=$scripts -v u=$usec -v d="$delivered" 'BEGIN { if (d > 0)
    printf "%s per delivered event: %.2f scripts (EVALSHA round trips), %.1f Redis commands inside and out, %.1f us of Redis time in scripts\n", n, s / d, c / d, u / d }'
}

case "${STORE:-both}" in
  embedded) bench embedded "store: { path: $WORK/data-RUN$HISTORY_YAML }" 3000 ;;
  redis)
    start_redis
    bench redis "store: { kind: redis, url: redis://127.0.0.1:$REDIS_PORT$HISTORY_YAML }" 8000 ;;
  cluster)
    start_redis
    start_cluster
    saturate single "store: { kind: redis, url: redis://127.0.0.1:$REDIS_PORT, prefix: RUN }" "$REDIS_PORT"
    masters=()
    for p in "${CLUSTER_PORTS[@]}"; do
      redis-cli -p "$p" INFO replication | grep -q role:master && masters+=("$p")
    done
    saturate cluster "store: { kind: redis, url: $CLUSTER_URLS, prefix: RUN }" "${masters[@]}"
    # Each event leaves its dedup key (kept for dedup_window) on its part's master.
    for p in "${masters[@]}"; do
      echo "master :$p holds $(redis-cli -p "$p" --scan --pattern 'cluster:dedup:*' | wc -l) events' dedup keys, $(redis-cli -p "$p" DBSIZE) keys"
    done ;;
  *)
    bench embedded "store: { path: $WORK/data-RUN$HISTORY_YAML }" 3000
    start_redis
    bench redis "store: { kind: redis, url: redis://127.0.0.1:$REDIS_PORT$HISTORY_YAML }" 8000 ;;
esac
echo "(redis without AOF: see README for the persistence settings durability needs)"
