# Sourced by the load scripts under benches/, never run: free ports, a
# sidecar's readiness, a private Redis, and a work directory that goes away
# (with every background job) when the script ends.

# A free loopback port, as the kernel hands them out.
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits up to 5 s for /readyz of the sidecar whose admin port is $1; a
# benchmark against a sidecar that never came up measures nothing.
wait_ready() {
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$1/readyz" >/dev/null && return 0
    sleep 0.05
  done
  echo "no ready sidecar on admin port $1 after 5 s" >&2
  return 1
}

# A private redis-server without persistence on a free port (REDIS_PORT);
# never the machine's own.
start_redis() {
  REDIS_PORT=$(port)
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no >/dev/null &
  sleep 0.5
}

# A private Redis Cluster: three masters with a replica each on free ports
# (CLUSTER_PORTS, CLUSTER_URLS as a YAML list), once every node says ok.
start_cluster() {
  CLUSTER_PORTS=()
  local p dir
  for _ in 1 2 3 4 5 6; do
    p=$(port); dir="$WORK/cluster-$p"; mkdir -p "$dir"
    redis-server --port "$p" --cluster-port "$(port)" --bind 127.0.0.1 --save "" --appendonly no \
      --cluster-enabled yes --cluster-config-file nodes.conf --dir "$dir" \
      --repl-diskless-sync-delay 0 >/dev/null &
    CLUSTER_PORTS+=("$p")
  done
  sleep 0.5
  redis-cli --cluster create $(printf '127.0.0.1:%s ' "${CLUSTER_PORTS[@]}") \
    --cluster-replicas 1 --cluster-yes >/dev/null
  for _ in $(seq 100); do
    local ok=1
    for p in "${CLUSTER_PORTS[@]}"; do
      redis-cli -p "$p" CLUSTER INFO | grep -q cluster_state:ok || ok=0
    done
    [ $ok = 1 ] && break
    sleep 0.1
  done
  CLUSTER_URLS="[$(printf 'redis://127.0.0.1:%s,' "${CLUSTER_PORTS[@]}" | sed 's/,$//')]"
}

# Redis's count of a server's commands, those its scripts run included
# (INFO stats), and of the scripts (EVALSHA calls: round trips, as a script
# cannot call another).
redis_commands() { redis-cli -p "$1" INFO stats | awk -F: '/^total_commands_processed/ { print $2+0 }'; }
redis_script_usec() {
  redis-cli -p "$1" INFO commandstats | sed -nE 's/^cmdstat_evalsha:calls=[0-9]+,usec=([0-9]+),.*/\1/p' | grep . || echo 0
}
redis_scripts() {
  redis-cli -p "$1" INFO commandstats | sed -nE 's/^cmdstat_evalsha:calls=([0-9]+),.*/\1/p' | grep . || echo 0
}

WORK=$(mktemp -d)
# Pingora drains for minutes on SIGTERM; nothing here needs a graceful end.
trap 'kill -9 $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

# The Stripe webhook (secret $1) the ingest benchmarks post to; its one
# target is unreachable, so every accepted event stays in the store.
webhook_yaml() {
  cat <<YAML
upstreams:
  notify: { backends: [127.0.0.1:9] }
webhooks:
  stripe:
    path: /webhooks/stripe
    verify: { kind: stripe, secrets: [$1] }
    routes: [{ events: ["*"], targets: [notify] }]
YAML
}

# Starts a sidecar (binary $2) with the ingest benchmarks' webhook (secret
# $SECRET) and the store $3 (YAML, e.g. "store: { path: ... }") on fresh
# ports, config and log under $WORK/$1.*; sets URL (the webhook's),
# ADMIN_PORT and PID once it is ready.
start_webhook_sidecar() {
  local eg in
  eg=$(port); in=$(port); ADMIN_PORT=$(port)
  cat > "$WORK/$1.yaml" <<YAML
listen: { egress: 127.0.0.1:$eg, ingress: 127.0.0.1:$in, admin: 127.0.0.1:$ADMIN_PORT }
$3
$(webhook_yaml "$SECRET")
YAML
  RUST_LOG=warn "$2" run -c "$WORK/$1.yaml" 2>"$WORK/$1.log" &
  PID=$!
  wait_ready "$ADMIN_PORT"
  URL="http://127.0.0.1:$in/webhooks/stripe"
}

# The sidecar's egress with every feature on (bearer injection, request ids,
# the access log, a per-pod rate limit that never refuses, a breaker), as
# YAML on stdout: egress_yaml EGRESS_PORT INGRESS_PORT ADMIN_PORT DATA_DIR UPSTREAM_PORT
egress_yaml() {
  cat <<YAML
listen: { egress: 127.0.0.1:$1, ingress: 127.0.0.1:$2, admin: 127.0.0.1:$3 }
drain_delay: 0s
store: { path: $4 }
services:
  stripe:
    route: /stripe
    upstream: http://127.0.0.1:$5
    auth: { kind: bearer, token: sk_test_benchmark_key }
    rate_limit: { requests: 1000000000, per: 1s }
    circuit_breaker: { failure_threshold: 5, open_for: 30s }
YAML
}
