#!/usr/bin/env bash
# Instructions per request, deterministic (valgrind's callgrind counts
# user-space instructions; they do not wander with the machine's load):
#   bare    - a bare Pingora passthrough proxy (examples/bare_proxy.rs)
#   egress  - the sidecar's egress with bearer injection, request ids, the
#             access log, a per-pod rate limit that never refuses and a
#             breaker (every egress feature on)
#   untraced- the same egress with tracing.propagate: false
#   traced  - the same egress with spans exported over OTLP/HTTP (to the
#             bench upstream, which answers every POST), sample ratio 1
#             (egress propagates trace context: a child traceparent)
#   ingest  - the sidecar's webhook ingress: a Stripe-signed 2 KiB event
#             verified and stored (embedded store, fsync included)
# Each runs under callgrind twice, for N1 then N2 sequential keep-alive
# requests; (instructions(N2) - instructions(N1)) / (N2 - N1) is the cost of
# one request, start-up and shutdown excluded. Compare builds with
# SIDECAR=<binary> (and BARE_PROXY=<binary> for the baseline built the same
# way, e.g. another profile). Usage: benches/callgrind.sh [N1] [N2]
set -euo pipefail
cd "$(dirname "$0")/.."
N1=${1:-500}
N2=${2:-2500}
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind >/dev/null; }
cargo build --release --locked --bin wedsync-sidecar --example bare_proxy --example bench_upstream --example ingest_load 2>&1 | tail -1
SIDECAR=${SIDECAR:-./target/release/wedsync-sidecar}
BARE_PROXY=${BARE_PROXY:-./target/release/examples/bare_proxy}
. benches/common.sh
SECRET=whsec_benchmark_secret_0123456789
UP=$(port)
./target/release/examples/bench_upstream "127.0.0.1:$UP" &

# instructions <name> <requests> <command...>: total Ir of the command
# serving <requests> requests sent by send_<name>.
instructions() {
  local name=$1 requests=$2; shift 2
  local out="$WORK/$name-$requests.out"
  valgrind --tool=callgrind --callgrind-out-file="$out" "$@" 2>"$WORK/$name.log" &
  local pid=$!
  ready_"$name"
  send_"$name" "$requests"
  kill -INT $pid 2>/dev/null || true
  wait $pid 2>/dev/null || true
  grep -h '^summary:\|^totals:' "$out" | head -1 | awk '{print $2}'
}

BARE=$(port)
ready_bare() { for _ in $(seq 200); do curl -sf "http://127.0.0.1:$BARE/x" >/dev/null && return; sleep 0.1; done; }
send_bare() { curl -s "http://127.0.0.1:$BARE/x?i=[1-$1]" -o /dev/null; }

EG=$(port); IN=$(port); AD=$(port)
egress_yaml "$EG" "$IN" "$AD" "$WORK/egress-data" "$UP" > "$WORK/egress.yaml"
cp "$WORK/egress.yaml" "$WORK/untraced.yaml"
echo "tracing: { propagate: false }" >> "$WORK/untraced.yaml"
sed -i -e "s#egress-data#untraced-data#" "$WORK/untraced.yaml"
cp "$WORK/egress.yaml" "$WORK/traced.yaml"
echo "tracing: { otlp: { endpoint: \"http://127.0.0.1:$UP\" } }" >> "$WORK/traced.yaml"
sed -i -e "s#egress-data#traced-data#" "$WORK/traced.yaml"
ready_egress() { for _ in $(seq 300); do curl -sf "http://127.0.0.1:$AD/readyz" >/dev/null && return; sleep 0.1; done; }
send_egress() { curl -s "http://127.0.0.1:$EG/stripe/v1/charges?i=[1-$1]" -o /dev/null; }
ready_untraced() { ready_egress; }
send_untraced() { send_egress "$1"; }
ready_traced() { ready_egress; }
send_traced() { send_egress "$1"; }

IEG=$(port); IIN=$(port); IAD=$(port)
cat > "$WORK/ingest.yaml" <<YAML
listen: { egress: 127.0.0.1:$IEG, ingress: 127.0.0.1:$IIN, admin: 127.0.0.1:$IAD }
drain_delay: 0s
# Valgrind's own memory counts in the sidecar's RSS: without room, the
# memory budget refuses every webhook (and this would count refusals).
limits: { memory: 1024GiB }
store: { path: $WORK/ingest-data }
upstreams:
  notify: { backends: [127.0.0.1:9] }
delivery: { workers: 1 }
webhooks:
  stripe:
    path: /webhooks/stripe
    verify: { kind: stripe, secrets: [$SECRET] }
    routes: [{ events: ["*"], targets: [notify] }]
YAML
ready_ingest() { for _ in $(seq 300); do curl -sf "http://127.0.0.1:$IAD/readyz" >/dev/null && return; sleep 0.1; done; }
send_ingest() { ./target/release/examples/ingest_load "http://127.0.0.1:$IIN/webhooks/stripe" "$SECRET" 1 600 "$1" >/dev/null; }

b1=$(instructions bare "$N1" "$BARE_PROXY" "127.0.0.1:$BARE" "127.0.0.1:$UP")
b2=$(instructions bare "$N2" "$BARE_PROXY" "127.0.0.1:$BARE" "127.0.0.1:$UP")
# (The environment is set here, not with env(1): valgrind does not follow
# an exec, so `valgrind env X=y prog` would measure nothing.)
export RUST_LOG=info
e1=$(instructions egress "$N1" "$SIDECAR" run -c "$WORK/egress.yaml")
rm -rf "$WORK/egress-data"
e2=$(instructions egress "$N2" "$SIDECAR" run -c "$WORK/egress.yaml")
u1=$(instructions untraced "$N1" "$SIDECAR" run -c "$WORK/untraced.yaml")
rm -rf "$WORK/untraced-data"
u2=$(instructions untraced "$N2" "$SIDECAR" run -c "$WORK/untraced.yaml")
t1=$(instructions traced "$N1" "$SIDECAR" run -c "$WORK/traced.yaml")
rm -rf "$WORK/traced-data"
t2=$(instructions traced "$N2" "$SIDECAR" run -c "$WORK/traced.yaml")
export RUST_LOG=warn
i1=$(instructions ingest "$N1" "$SIDECAR" run -c "$WORK/ingest.yaml")
rm -rf "$WORK/ingest-data"
i2=$(instructions ingest "$N2" "$SIDECAR" run -c "$WORK/ingest.yaml")
bare=$(( (b2 - b1) / (N2 - N1) )); egress=$(( (e2 - e1) / (N2 - N1) )); ingest=$(( (i2 - i1) / (N2 - N1) ))
traced=$(( (t2 - t1) / (N2 - N1) )); untraced=$(( (u2 - u1) / (N2 - N1) ))
echo "instructions per request (callgrind, $N1 and $N2 requests):"
echo "  bare Pingora   $bare"
echo "  egress, no trace context  $untraced   ($(python3 -c "print(round($untraced/$bare, 3))") x bare)"
echo "  egress         $egress   ($(python3 -c "print(round($egress/$bare, 3))") x bare)"
echo "  egress, spans exported  $traced   ($(python3 -c "print(round($traced/$bare, 3))") x bare)"
echo "  ingest         $ingest"
