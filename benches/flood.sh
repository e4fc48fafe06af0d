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
start_webhook_sidecar flood "${SIDECAR:-./target/release/wedsync-sidecar}" "store: { path: $WORK/data }"
pid=$PID
ad=$ADMIN_PORT
sleep 1
./target/release/examples/ingress_flood "$URL" "$SECRET" "$pid" "$CONNECTIONS" "$BODY" 3 "$SETTLE"
curl -s "http://127.0.0.1:$ad/metrics" | grep -E '^sidecar_webhook_rejections_total' || true
kill -9 $pid
