#!/usr/bin/env bash
# The worker's footprint, to size deploy/kubernetes/deployment.yaml: peak RSS
# (VmHWM) and CPU time of the release `run` draining N events (default 5000)
# from the local RabbitMQ into a scratch database, against the PBX simulator
# with 20 ms of latency. Needs the local services (README), python3 and
# curl; installs the `pika` AMQP client from PyPI if missing. BENCHMARKS.md
# records what it printed.
set -euo pipefail
cd "$(dirname "$0")/.."
events=${1:-5000}
prefetch=${ENRICHER_PREFETCH:-200}
bin=target/release/session-enricher
[ -x "$bin" ] || cargo build --release --locked --quiet
python3 -c 'import pika' 2>/dev/null || python3 -m pip install --quiet --root-user-action=ignore pika

run_id=$$
db=footprint_$run_id
queue=footprint.$run_id
sim_port=18088
http_port=19090
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null
  QUEUE=$queue python3 - <<'PY'
import os, pika
ch = pika.BlockingConnection(pika.URLParameters("amqp://guest:guest@127.0.0.1:5672/%2f")).channel()
for q in (os.environ["QUEUE"], os.environ["QUEUE"] + ".retry", os.environ["QUEUE"] + ".dead"):
    ch.queue_delete(q)
PY
}
trap cleanup EXIT

psql -q -h 127.0.0.1 -U postgres -c "CREATE DATABASE $db" >/dev/null
SIMULATOR_LATENCY_MS=20 "$bin" simulate-pbx --listen 127.0.0.1:$sim_port >/dev/null &
pids+=($!)

export DATABASE_URL=postgres://postgres@127.0.0.1:5432/$db AMQP_QUEUE=$queue \
  YEASTAR_BASE_URL=http://127.0.0.1:$sim_port YEASTAR_CLIENT_ID=simulator \
  YEASTAR_CLIENT_SECRET=simulator-secret ENRICHER_HTTP_ADDR=127.0.0.1:$http_port \
  ENRICHER_PREFETCH=$prefetch LOG_FORMAT=json RUST_LOG=warn
"$bin" run &
worker=$!
pids+=($worker)
# The worker declares its queues (a quorum work queue): publish once it is ready.
for _ in $(seq 300); do
  curl -fs "http://127.0.0.1:$http_port/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fs "http://127.0.0.1:$http_port/readyz" >/dev/null || { echo "the worker did not become ready" >&2; exit 1; }

started=$(date +%s.%N)
QUEUE=$queue EVENTS=$events python3 - <<'PY'
import json, os, time, pika
ch = pika.BlockingConnection(pika.URLParameters("amqp://guest:guest@127.0.0.1:5672/%2f")).channel()
queue = os.environ["QUEUE"]
now = int(time.time())
for i in range(1, int(os.environ["EVENTS"]) + 1):
    body = {"type": 30031, "sn": "3631A0000001", "msg": {"session_id": i, "msg_id": i * 10}}
    ch.basic_publish("", queue, json.dumps(body),
                     pika.BasicProperties(delivery_mode=2, timestamp=now))
PY

settled() {
  curl -fs "http://127.0.0.1:$http_port/metrics" 2>/dev/null \
    | awk '/^enricher_events_total\{outcome="(enriched|unchanged|not_found|dead_lettered)"\}/ {n += $2} END {print n + 0}'
}
deadline=$(( $(date +%s) + 600 ))
until [ "$(settled)" -ge "$events" ]; do
  [ "$(date +%s)" -lt "$deadline" ] || { echo "timed out" >&2; exit 1; }
  sleep 0.2
done
finished=$(date +%s.%N)

peak_kib=$(awk '/VmHWM/ {print $2}' /proc/$worker/status)
rss_kib=$(awk '/VmRSS/ {print $2}' /proc/$worker/status)
ticks=$(awk '{print $14 + $15}' /proc/$worker/stat)
hz=$(getconf CLK_TCK)
kill -TERM $worker
wait $worker
awk -v n="$events" -v s="$started" -v f="$finished" -v peak="$peak_kib" -v rss="$rss_kib" \
    -v ticks="$ticks" -v hz="$hz" -v prefetch="$prefetch" 'BEGIN {
  wall = f - s; cpu = ticks / hz
  printf "events %d, prefetch %d: published and drained in %.1f s (%.0f events/s)\n", n, prefetch, wall, n / wall
  printf "peak RSS %.1f MiB, RSS after draining %.1f MiB\n", peak / 1024, rss / 1024
  printf "CPU %.2f s (%.2f ms per event, %.0f%% of one core while draining)\n", cpu, 1000 * cpu / n, 100 * cpu / wall
}'
