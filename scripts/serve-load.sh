#!/usr/bin/env bash
# Load test of `cellbench serve`, on loopback only, bounded in count and time.
#
#   scripts/serve-load.sh [CLIENTS] [REQUESTS_PER_CLIENT]      (default 32 clients × 20)
#
# Trains a small linear probe on the bundled demo (assets/demo/bccd) unless RUN names a run
# folder, starts `cellbench serve` on a free 127.0.0.1 port, and runs CLIENTS concurrent
# clients (Python standard library: threads and http.client, one kept-alive connection each)
# that POST the demo's real images. Prints throughput (images/s) and latency percentiles.
#
# Environment: PROFILE=debug|release (which build to measure; default debug), RUN=<run folder>,
# BACKEND=cpu|wgpu|auto (default cpu), IMAGE_SIZE (probe input side, default 224),
# SERVE_ARGS (extra `cellbench serve` options, e.g. "--max-batch 32"),
# TIME_LIMIT (seconds for the whole load phase, default 300), SKIP_BUILD=1 (measure the binary
# already built), BIN=<a cellbench binary> (instead of the target dir's), COMPARE=0 (skip the
# `cellbench bench featurize` run that follows, the model's own speed without HTTP).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cellbench-target}"
clients="${1:-32}"
per_client="${2:-20}"
profile="${PROFILE:-debug}"
backend="${BACKEND:-cpu}"
time_limit="${TIME_LIMIT:-300}"
[ "$clients" -ge 1 ] && [ "$clients" -le 256 ] || { echo "CLIENTS must be 1..256" >&2; exit 2; }
[ "$per_client" -ge 1 ] && [ "$per_client" -le 1000 ] || { echo "REQUESTS_PER_CLIENT must be 1..1000" >&2; exit 2; }

if [ -z "${SKIP_BUILD:-}" ]; then
  if [ "$profile" = release ]; then cargo build --locked --release --quiet; else cargo build --locked --quiet; fi
fi
bin="${BIN:-$CARGO_TARGET_DIR/$profile/cellbench}"

work="$(mktemp -d)"
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

run="${RUN:-}"
if [ -z "$run" ]; then
  echo "training a probe on the demo…" >&2
  CELLBENCH_CACHE="$work/cache" "$bin" train assets/demo/bccd --backend "$backend" \
    --image-size "${IMAGE_SIZE:-224}" --epochs 10 --seed 1 --json --runs "$work/runs" >/dev/null
  run="$(ls -d "$work"/runs/*/ | head -n 1)"
fi

# shellcheck disable=SC2086 # SERVE_ARGS is a list of options
"$bin" serve "$run" --host 127.0.0.1 --port 0 --backend "$backend" ${SERVE_ARGS:-} 2>"$work/serve.log" &
server_pid=$!
port=""
for _ in $(seq 1 600); do
  port="$(sed -n 's/.*on http:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p' "$work/serve.log" | head -n 1)"
  [ -n "$port" ] && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$work/serve.log" >&2; exit 1; }
  sleep 0.2
done
[ -n "$port" ] || { echo "the server did not start" >&2; cat "$work/serve.log" >&2; exit 1; }
grep 'serving' "$work/serve.log" >&2

timeout "$time_limit" python3 - "$port" "$clients" "$per_client" "$bin ($profile, $backend)" <<'PY'
import glob, http.client, json, sys, threading, time

port, clients, per_client, binary = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
images = [open(p, "rb").read() for p in sorted(glob.glob("assets/demo/bccd/*/*"))]
assert images, "no demo images under assets/demo/bccd"

def connect():
    return http.client.HTTPConnection("127.0.0.1", port, timeout=120)

def predict(conn, body):
    conn.request("POST", "/predict", body=body, headers={"Content-Type": "application/octet-stream"})
    r = conn.getresponse()
    r.read()
    return r.status, (r.getheader("Connection") or "").lower() == "close"

# Warm-up: a few single requests (first-call costs are not load).
warm = connect()
for body in images[:4]:
    predict(warm, body)
warm.close()

latencies, statuses, lock = [], {}, threading.Lock()
start_barrier = threading.Barrier(clients + 1)

def client(k):
    conn = connect()
    start_barrier.wait()
    for i in range(per_client):
        body = images[(k * per_client + i) % len(images)]
        t0 = time.perf_counter()
        try:
            status, closed = predict(conn, body)
        except (OSError, http.client.HTTPException) as e:
            status, closed = type(e).__name__, True
        dt = time.perf_counter() - t0
        with lock:
            statuses[status] = statuses.get(status, 0) + 1
            if status == 200:
                latencies.append(dt)
        if closed:
            conn.close()
            conn = connect()
    conn.close()

# Meanwhile, GET /health every 50 ms on its own connection: it never waits for the model, so
# its latency shows whether the load delays other clients.
health, done = [], threading.Event()
def prober():
    conn = connect()
    while not done.is_set():
        t0 = time.perf_counter()
        conn.request("GET", "/health")
        conn.getresponse().read()
        health.append(time.perf_counter() - t0)
        time.sleep(0.05)
    conn.close()

threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
for t in threads:
    t.start()
start_barrier.wait()
t0 = time.perf_counter()
probe = threading.Thread(target=prober)
probe.start()
for t in threads:
    t.join()
wall = time.perf_counter() - t0
done.set()
probe.join()
health.sort()

latencies.sort()
def pct(p):
    return 1000 * latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] if latencies else float("nan")
ok = statuses.get(200, 0)
summary = {
    "binary": binary, "clients": clients, "requests": clients * per_client, "ok": ok,
    "statuses": {str(k): v for k, v in sorted(statuses.items(), key=str)},
    "wall_s": round(wall, 3), "images_per_s": round(ok / wall, 2),
    "p50_ms": round(pct(50), 1), "p90_ms": round(pct(90), 1), "p99_ms": round(pct(99), 1),
    "max_ms": round(1000 * latencies[-1], 1) if latencies else None,
    "health_checks": len(health),
    "health_p50_ms": round(1000 * health[len(health) // 2], 1) if health else None,
    "health_max_ms": round(1000 * health[-1], 1) if health else None,
}
print(f"{clients} clients × {per_client} images: {ok} answered in {wall:.2f} s = "
      f"{summary['images_per_s']} images/s; latency p50 {summary['p50_ms']} ms, "
      f"p90 {summary['p90_ms']} ms, p99 {summary['p99_ms']} ms; statuses {summary['statuses']}; "
      f"GET /health meanwhile: p50 {summary['health_p50_ms']} ms, max {summary['health_max_ms']} ms")
print(json.dumps(summary))
sys.exit(0 if ok == clients * per_client else 1)
PY

# The model alone, for comparison: feature extraction without HTTP, decoding or batching waits.
if [ "${COMPARE:-1}" = 1 ]; then
  "$bin" bench featurize --backend "$backend" --batch-size 16 --batches 4 2>/dev/null | tail -n 1
fi
