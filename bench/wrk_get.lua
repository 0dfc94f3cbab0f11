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

dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "wrk_report.lua")  -- done: the BENCH_JSON line
