-- wrk script for bench/run.sh: one request shape per run, set through the environment,
-- and one machine-readable result line at the end.
--   BENCH_METHOD      GET or POST (default GET)
--   BENCH_PATH        request path (default /pix?inicio=2026-01-01&fim=2026-01-02)
--   BENCH_BODY_BYTES  POST body size in bytes (default 0: no body)
local method = os.getenv("BENCH_METHOD") or "GET"
local path = os.getenv("BENCH_PATH") or "/pix?inicio=2026-01-01&fim=2026-01-02"
local body_bytes = tonumber(os.getenv("BENCH_BODY_BYTES") or "0")

wrk.method = method
wrk.path = path
wrk.headers["Accept"] = "application/json"
if body_bytes > 0 then
  -- wrk sends this with a Content-Length header; the proxies stream it upstream.
  wrk.body = string.rep("x", body_bytes)
  wrk.headers["Content-Type"] = "application/octet-stream"
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d " ..
    "err_connect=%d err_read=%d err_write=%d err_status=%d err_timeout=%d\n",
    summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
end
