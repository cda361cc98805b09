-- wrk script: POST one file's bytes, unchanged, as application/json, on every request.
-- Use: wrk -t1 -c32 -d10s -s post_file.lua http://127.0.0.1:8080/ -- bridge/samples/oss-put-object.json
-- At the end it prints one line, `wrk-summary {...}`, with the counts the caller parses.

function init(args)
  local path = args[1] or "bridge/samples/oss-put-object.json"
  local f = assert(io.open(path, "rb"))
  local body = f:read("*a")
  f:close()
  wrk.method = "POST"
  wrk.body = body
  wrk.headers["Content-Type"] = "application/json"
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'wrk-summary {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, ' ..
    '"write": %d, "status": %d, "timeout": %d, "p50_us": %d, "p99_us": %d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
