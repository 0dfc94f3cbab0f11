-- wrk script for bench/measure.py's API figure: every request GETs the next
-- path from BENCH_LINES (one per line, in turn) with the bearer token of
-- BENCH_AUTH, as the pipeline does.

local paths = {}
for line in io.lines(os.getenv("BENCH_LINES")) do
  paths[#paths + 1] = line
end
local headers = { ["Authorization"] = os.getenv("BENCH_AUTH"), ["Accept"] = "application/json" }
local n = 0

request = function()
  n = n + 1
  return wrk.format("GET", paths[((n - 1) % #paths) + 1], headers)
end

done = function(summary, latency, requests)
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "status_errors": %d, "connect_errors": %d, ' ..
    '"read_errors": %d, "write_errors": %d, "timeouts": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d}\n',
    summary.requests, summary.duration, summary.errors.status, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99)))
end
