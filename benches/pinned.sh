#!/usr/bin/env bash
# The egress as a sidecar runs: proxy and upstream pinned together on one
# core (they share the pod's CPU), the load generator alone on the other.
# `benches/load.sh pinned [seconds] [rounds] [rate]` runs this.
#
# Targets, interleaved in ROUNDS rounds (order rotated every round):
#   direct  - the upstream itself: nginx answering 64 bytes from its config
#             (examples/bench_upstream.rs when nginx is not installed)
#   bare    - a bare Pingora passthrough proxy, one worker
#             (examples/bare_proxy.rs), the floor for any Pingora sidecar
#   sidecar - the sidecar's egress with every feature on: bearer injection,
#             request ids, the access log, a per-pod rate limit that never
#             refuses, a breaker
#   nginx   - nginx from Debian as a reverse proxy, one worker, pooled
#             keep-alive upstream (only when nginx is installed)
# Each round measures
#   closed loop: wrk -t1 -c32 for SECONDS: req/s and the proxy's CPU
#                microseconds per request (utime+stime of its process);
#   open loop:   oha at RATE req/s over 32 connections with
#                --latency-correction for SECONDS: p50/p99/p99.9, reported
#                as added over direct's in the same round.
# Prints every round, then the medians and the ratios to bare Pingora, and
# the proxies' RSS idle and under 256 keep-alive connections.
# SIDECAR=<binary> measures another build of the sidecar (an A/B in one hour).
# Loopback only, bounded in time (about ROUNDS x 8 x SECONDS seconds).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10}
ROUNDS=${2:-3}
RATE=${3:-2000}
LOADGEN_CPU=${LOADGEN_CPU:-0}
SUT_CPU=${SUT_CPU:-1}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
OHA=${OHA:-$(command -v oha || echo "$HOME/.local/oha/bin/oha")}
if [ ! -x "$OHA" ]; then
  echo "installing oha 1.16.0 (open-loop load with latency correction; once, several minutes)" >&2
  cargo install oha --locked --version 1.16.0 --root "$HOME/.local/oha" -q
  OHA="$HOME/.local/oha/bin/oha"
fi
cargo build --release --locked --bin wedsync-sidecar --example bare_proxy --example bench_upstream 2>&1 | tail -1

. benches/common.sh
UP=$(port); BARE=$(port); EG=$(port); IN=$(port); AD=$(port); NGX=$(port)
load() { taskset -c "$LOADGEN_CPU" "$@"; }

# nginx_conf NAME HTTP: writes $WORK/NAME.conf, one worker in the
# foreground with its files under $WORK/NAME and HTTP inside `http { }`;
# prints its path.
nginx_conf() {
  mkdir -p "$WORK/$1"
  cat > "$WORK/$1.conf" <<NGINX
worker_processes 1;
daemon off;
error_log $WORK/$1/error.log warn;
pid $WORK/$1/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/$1; proxy_temp_path $WORK/$1;
  fastcgi_temp_path $WORK/$1; uwsgi_temp_path $WORK/$1; scgi_temp_path $WORK/$1;
$2
}
NGINX
  echo "$WORK/$1.conf"
}

# Servers start under taskset itself, not a shell function: `$!` must be the
# server's own pid (a function in the background is a subshell, which the
# exit trap would kill while the server ran on).
# The upstream: nginx answering a 64-byte body from its config when nginx is
# installed (as the shared harness does: known to be fast and steady, so
# direct's own latency is a clean reference), else examples/bench_upstream.
if command -v nginx >/dev/null; then
  conf=$(nginx_conf upstream "  server {
    listen 127.0.0.1:$UP;
    keepalive_requests 1000000;
    location / { default_type application/json; return 200 '{\"id\":\"ch_0123456789\",\"object\":\"charge\",\"amount\":100,\"currency\":\"eur\"}'; }
  }")
  taskset -c "$SUT_CPU" nginx -c "$conf" &
  UPSTREAM_NGINX_PID=$!
else
  taskset -c "$SUT_CPU" ./target/release/examples/bench_upstream "127.0.0.1:$UP" &
fi
taskset -c "$SUT_CPU" ./target/release/examples/bare_proxy "127.0.0.1:$BARE" "127.0.0.1:$UP" 2>/dev/null &
BARE_PID=$!
cat > "$WORK/sidecar.yaml" <<YAML
listen: { egress: 127.0.0.1:$EG, ingress: 127.0.0.1:$IN, admin: 127.0.0.1:$AD }
store: { path: $WORK/data }
services:
  app:
    route: /
    upstream: http://127.0.0.1:$UP
    auth: { kind: bearer, token: sk_test_benchmark_key_0123456789 }
    rate_limit: { requests: 1000000000, per: 1s }
    circuit_breaker: { failure_threshold: 5, open_for: 30s }
YAML
env -u RUST_LOG taskset -c "$SUT_CPU" "${SIDECAR:-./target/release/wedsync-sidecar}" run -c "$WORK/sidecar.yaml" 2>"$WORK/sidecar.log" &
SIDECAR_PID=$!
TARGETS="direct bare sidecar"
declare -A URL=([direct]="http://127.0.0.1:$UP/v1/charges" [bare]="http://127.0.0.1:$BARE/v1/charges" [sidecar]="http://127.0.0.1:$EG/v1/charges")
declare -A PID=([direct]=0 [bare]=$BARE_PID [sidecar]=$SIDECAR_PID)
if command -v nginx >/dev/null; then
  conf=$(nginx_conf nginx "  upstream app { server 127.0.0.1:$UP; keepalive 64; }
  server {
    listen 127.0.0.1:$NGX;
    keepalive_requests 1000000;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection \"\"; }
  }")
  taskset -c "$SUT_CPU" nginx -c "$conf" &
  NGINX_PID=$!
  TARGETS="$TARGETS nginx"
  URL[nginx]="http://127.0.0.1:$NGX/v1/charges"
  PID[nginx]=$NGINX_PID
fi
wait_ready "$AD"
sleep 1
rss() { local total=0; for p in "$@"; do total=$((total + $(awk '/VmRSS/ {print $2}' "/proc/$p/status"))); done; echo $((total / 1024)); }
# A process and all its descendants (`pin` runs in a subshell, nginx forks
# its worker).
# The subshell itself (bash) is not the proxy's and is left out.
children() {
  [ "$(cat "/proc/$1/comm" 2>/dev/null)" = bash ] || echo "$1"
  local c; for c in $(pgrep -P "$1"); do children "$c"; done
}
declare -A IDLE_RSS=()
for t in $TARGETS; do [ "${PID[$t]}" = 0 ] || IDLE_RSS[$t]=$(rss $(children "${PID[$t]}")); done

cpu_ticks() { local total=0; for p in $(children "$1"); do total=$((total + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo $total; }
closed() { # name -> "rps cpu_us_per_request"
  local before=0 after=0
  [ "${PID[$1]}" = 0 ] || before=$(cpu_ticks "${PID[$1]}")
  load wrk -t1 -c32 -d"${DURATION}s" "${URL[$1]}" > "$WORK/$1.wrk"
  [ "${PID[$1]}" = 0 ] || after=$(cpu_ticks "${PID[$1]}")
  local requests rps
  requests=$(awk '/requests in/ {print $1}' "$WORK/$1.wrk")
  rps=$(awk '/Requests\/sec/ {print $2}' "$WORK/$1.wrk")
  # /proc ticks are 10 ms: CPU microseconds per request = ticks * 10000 / requests.
  echo "$rps $(awk -v t=$((after - before)) -v n="$requests" 'BEGIN {printf "%.1f", t * 10000 / n}')"
}
open_loop() { # name -> "p50_us p99_us p999_us cpu_pct"
  local before=0 after=0
  [ "${PID[$1]}" = 0 ] || before=$(cpu_ticks "${PID[$1]}")
  load "$OHA" --no-tui --output-format json --worker-threads 1 -z "${DURATION}s" -c 32 -q "$RATE" \
    --latency-correction "${URL[$1]}" > "$WORK/$1.oha"
  [ "${PID[$1]}" = 0 ] || after=$(cpu_ticks "${PID[$1]}")
  python3 - "$WORK/$1.oha" $((after - before)) "$DURATION" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
p = j["latencyPercentiles"]
ticks, secs = int(sys.argv[2]), float(sys.argv[3])
print(f'{p["p50"]*1e6:.0f} {p["p99"]*1e6:.0f} {p["p99.9"]*1e6:.0f} {ticks / secs:.1f}')
PY
}
median() { sort -g | awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2}'; }

for t in $TARGETS; do load wrk -t1 -c32 -d2s "${URL[$t]}" >/dev/null 2>&1; done # warm-up
: > "$WORK/rows"
printf '\n(proxy + upstream on core %s, load generator on core %s; %s s runs, %s rounds, open loop at %s req/s)\n' "$SUT_CPU" "$LOADGEN_CPU" "$DURATION" "$ROUNDS" "$RATE"
printf '%-5s %-8s %9s %8s | %8s %8s %8s %6s\n' round target req/s cpu_us p50_us p99_us p999_us cpu%
read -ra ORDER <<< "$TARGETS"
for r in $(seq "$ROUNDS"); do
  n=${#ORDER[@]}; shift_by=$(( (r - 1) % n ))
  rotated=("${ORDER[@]:$shift_by}" "${ORDER[@]:0:$shift_by}")
  for t in "${rotated[@]}"; do
    read -r RPS CPU <<< "$(closed "$t")"
    read -r P50 P99 P999 PCT <<< "$(open_loop "$t")"
    echo "$r $t $RPS $CPU $P50 $P99 $P999 $PCT" >> "$WORK/rows"
    printf '%-5s %-8s %9.0f %8s | %8s %8s %8s %6s\n' "$r" "$t" "$RPS" "$CPU" "$P50" "$P99" "$P999" "$PCT"
  done
done

# Added latency per round (target minus direct of the same round), then medians.
stat() { awk -v t="$1" -v c="$2" '$2==t {print $c}' "$WORK/rows" | median; }
added() { # target column -> median over rounds of (target - direct)
  awk -v t="$1" -v c="$2" '$2=="direct" {d[$1]=$c} $2==t {v[$1]=$c} END {for (r in v) print v[r]-d[r]}' "$WORK/rows" | median
}
echo
printf '%-8s %9s %8s %9s | %9s %9s %9s %6s | %8s %8s\n' target req/s cpu_us cpu/bare +p50_us +p99_us +p999_us cpu% idle_MiB 256c_MiB
B_CPU=$(stat bare 4)
for t in $TARGETS; do
  CPU=$(stat "$t" 4)
  if [ "$t" = direct ]; then
    printf '%-8s %9.0f %8s %9s | %9s %9s %9s %6s | %8s %8s\n' "$t" "$(stat "$t" 3)" - - "$(stat direct 5)" "$(stat direct 6)" "$(stat direct 7)" - - -
    continue
  fi
  # Memory under 256 keep-alive connections.
  load wrk -t1 -c256 -d5s "${URL[$t]}" >/dev/null 2>&1 &
  sleep 4; LOADED=$(rss $(children "${PID[$t]}")); wait $! 2>/dev/null || true
  printf '%-8s %9.0f %8s %9s | %9s %9s %9s %6s | %8s %8s\n' "$t" "$(stat "$t" 3)" "$CPU" \
    "$(awk -v a="$CPU" -v b="$B_CPU" 'BEGIN {printf "%.2fx", a/b}')" \
    "$(added "$t" 5)" "$(added "$t" 6)" "$(added "$t" 7)" "$(stat "$t" 8)" "${IDLE_RSS[$t]}" "$LOADED"
done
echo "(direct's row: its own open-loop latency; other rows: added over direct in the same round, median of rounds)"
# Where direct's own tail is noisy (a shared machine), the proxies against
# each other say more: each one's p99 over bare Pingora's, per round.
vs_bare() { awk -v t="$1" '$2=="bare" {b[$1]=$6} $2==t {v[$1]=$6} END {for (r in v) printf "%.2f\n", v[r]/b[r]}' "$WORK/rows" | median; }
for t in $TARGETS; do
  case $t in direct|bare) ;; *) echo "$t open-loop p99 / bare's p99 (median of rounds): $(vs_bare "$t")" ;; esac
done
# nginx's worker outlives a SIGKILLed master: stop it the way nginx means.
for p in ${NGINX_PID:-} ${UPSTREAM_NGINX_PID:-}; do kill -TERM "$p" 2>/dev/null; done
sleep 0.5
