#!/usr/bin/env bash
# An anonymous flood against the webhook listener (issue: hostile input):
# CONNECTIONS connections each declare a BODY-byte body with a fresh Stripe
# timestamp and a wrong MAC, send all but the last byte and hold; a genuine
# webhook is sent meanwhile. Reports the sidecar's RSS growth, what the flood
# got, the genuine webhook's answer and latency, and RSS after it settles.
# Release build, embedded store, loopback only, bounded in time.
# Usage: benches/flood.sh [connections] [body-bytes] [settle-seconds]
# SIDECAR=<binary> measures another build (an earlier one, for a before/after).
set -euo pipefail
cd "$(dirname "$0")/.."
CONNECTIONS=${1:-400}
BODY=${2:-1048576}
SETTLE=${3:-20}
cargo build --release --locked --bin wedsync-sidecar --example ingress_flood 2>&1 | tail -1
. benches/common.sh
SECRET=whsec_benchmark_secret_0123456789
eg=$(port); in=$(port); ad=$(port)
cat > "$WORK/flood.yaml" <<YAML
listen: { egress: 127.0.0.1:$eg, ingress: 127.0.0.1:$in, admin: 127.0.0.1:$ad }
store: { path: $WORK/data }
$(webhook_yaml "$SECRET")
YAML
RUST_LOG=warn "${SIDECAR:-./target/release/wedsync-sidecar}" run -c "$WORK/flood.yaml" 2>"$WORK/flood.log" &
pid=$!
wait_ready "$ad"
sleep 1
./target/release/examples/ingress_flood "http://127.0.0.1:$in/webhooks/stripe" "$SECRET" "$pid" "$CONNECTIONS" "$BODY" 3 "$SETTLE"
curl -s "http://127.0.0.1:$ad/metrics" | grep -E '^sidecar_webhook_rejections_total' || true
kill -9 $pid
