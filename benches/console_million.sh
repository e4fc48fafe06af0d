#!/usr/bin/env bash
# The console with 1,000,000 events in the log: fills an embedded store with
# examples/event_log_page (kept under DIR between runs), starts the release
# sidecar on it, and times in Chromium how long the Events page takes from
# navigation to its first 50 rows, unfiltered and filtered, and the
# overview. Loopback only. Usage: benches/console_million.sh [DIR] [COUNT]
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-/tmp/console-million}
COUNT=${2:-1000000}
cargo build --release --locked --bin wedsync-sidecar --example event_log_page 2>&1 | tail -1
./target/release/examples/event_log_page "$DIR" "$COUNT" | tail -3
. benches/common.sh
SECRET=whsec_benchmark_secret_0123456789
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
# The log kept whole: no retention or size limit drops the filled events.
start_webhook_sidecar million ./target/release/wedsync-sidecar \
  "store: { path: $DIR, history: { retention: 3650d, max_size: 4GiB } }"
ADMIN_URL="http://localhost:$ADMIN_PORT" node benches/console_million.mjs
kill -9 "$PID"
