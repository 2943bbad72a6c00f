-- wrk script: POST one signed Yeastar 30031 "new message" webhook, the same
-- bytes every time. The signature was computed independently with
--   printf '%s' "$body" | openssl dgst -sha256 -hmac "$secret" -binary | base64
-- for secret zD4kX9mQ2vL7pR1sT8wY3nB6cF0hJ5aE (scripts/bench-ingest.sh
-- starts ingest with it).
wrk.method = "POST"
wrk.body = '{"type":30031,"sn":"3631A0000001","msg":{"session_id":2862,"msg_id":28620,"msg_type":0}}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Signature"] = "zUOeXIFAauX8vPick+yLUMlPE3ZNLc/HS3w1+sm9qY8="

-- Prints the status counts, so a run with any non-200 answer is visible.
local statuses = {}
function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  io.write(string.format("p99 latency: %.2f ms\n", latency:percentile(99) / 1000))
  io.write(string.format("requests completed: %d, socket errors: connect %d read %d write %d timeout %d\n",
    summary.requests, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.timeout))
end
