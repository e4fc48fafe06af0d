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

WORK=$(mktemp -d)
# Pingora drains for minutes on SIGTERM; nothing here needs a graceful end.
trap 'kill -9 $(jobs -p) 2>/dev/null; rm -rf "$WORK"' EXIT
