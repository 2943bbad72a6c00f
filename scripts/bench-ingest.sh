#!/usr/bin/env bash
# Load figure for `session-enricher ingest` (BENCHMARKS.md, "Webhook intake"):
# a release build on loopback, signed 30031 webhooks from wrk, then a check
# that every accepted event was confirmed into the queue.
#
# Needs: wrk (apt-get install -y wrk), curl, rabbitmqctl, python3 with pika
# (pip install pika), the local RabbitMQ. ingest declares nothing (the worker
# owns the topology), so the script declares the bench queue itself, as the
# worker would: quorum, with its dead-letter queue.
# Usage: scripts/bench-ingest.sh [connections] [duration]   (default 64 30s)
set -euo pipefail
cd "$(dirname "$0")/.."

connections=${1:-64}
duration=${2:-30s}
port=${BENCH_PORT:-18181}
queue="bench.ingest.$(date +%s).$$"
binary=target/release/session-enricher
url="http://127.0.0.1:${port}"

[ -x "$binary" ] || cargo build --release --locked

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(free -g | awk '/Mem:/ {print $2}') GiB RAM"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"

python3 - "$queue" <<'PY'
import sys, pika
queue = sys.argv[1]
connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1"))
channel = connection.channel()
# The worker's topology (src/broker.rs): a quorum work queue dead-lettering
# to a classic .dead queue.
channel.queue_declare(queue=queue + ".dead", durable=True, arguments={"x-queue-type": "classic"})
channel.queue_declare(queue=queue, durable=True, arguments={
    "x-queue-type": "quorum", "x-delivery-limit": 20,
    "x-dead-letter-exchange": "", "x-dead-letter-routing-key": queue + ".dead",
    "x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"})
connection.close()
PY

YEASTAR_WEBHOOK_SECRET=zD4kX9mQ2vL7pR1sT8wY3nB6cF0hJ5aE \
INGEST_ADDR="127.0.0.1:${port}" AMQP_QUEUE="$queue" RUST_LOG=info LOG_FORMAT=json \
  "$binary" ingest 2>"/tmp/${queue}.log" &
pid=$!
cleanup() {
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rabbitmqctl -q delete_queue "$queue" >/dev/null 2>&1 || true
  rabbitmqctl -q delete_queue "$queue.dead" >/dev/null 2>&1 || true
}
trap cleanup EXIT

for _ in $(seq 100); do
  curl -sf "${url}/readyz" >/dev/null && break
  sleep 0.1
done
curl -sf "${url}/readyz" >/dev/null || { echo "ingest never became ready"; cat "/tmp/${queue}.log"; exit 1; }

wrk -t2 -c"$connections" -d"$duration" --latency -s benches/ingest.lua "${url}/webhooks/yeastar"

# Stop ingest gracefully: it finishes every webhook in flight (wrk hangs up
# on some at the end), closes the connection and logs its final counts.
kill -TERM "$pid"
wait "$pid" && echo "ingest exited 0 after SIGTERM"
trap 'rabbitmqctl -q delete_queue "$queue" >/dev/null 2>&1 || true; rabbitmqctl -q delete_queue "$queue.dead" >/dev/null 2>&1 || true' EXIT
final=$(grep '"Stopped receiving webhooks."' "/tmp/${queue}.log")
accepted=$(sed -E 's/.*"accepted":([0-9]+).*/\1/' <<<"$final")
answered=$(sed -E 's/.*"answered":([0-9]+).*/\1/' <<<"$final")
# A quorum queue's count in list_queues comes from statistics emitted every
# few seconds: read it until two reads 6 s apart agree.
count() { rabbitmqctl -q list_queues name messages | awk -v q="$queue" '$1 == q {print $2}'; }
queued=$(count)
for _ in $(seq 10); do
  sleep 6
  again=$(count)
  [ "$again" = "$queued" ] && break
  queued=$again
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "ingest answered ${answered} webhooks, ${accepted} accepted (200 after a confirm)"
echo "messages in ${queue}: ${queued}"
if [ "$accepted" = "$queued" ]; then
  echo "OK: every accepted event is in the queue"
else
  echo "MISMATCH: ${accepted} accepted, ${queued} queued" >&2
  exit 1
fi
