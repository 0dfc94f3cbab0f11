-- wrk script for bench/measure.py: every request POSTs the submission form to
-- a fresh single-use link (one token per request, from BENCH_LINES), with
-- the CSRF cookie and field, and a made-up client address in X-Forwarded-For
-- (198.18.0.0/15, the range set aside for benchmarks; only a header value,
-- nothing is sent there), as the trusted proxy would add it, so the per-IP
-- rate limits see many clients.
--
-- A line of BENCH_LINES is "token" or "token<TAB>client_id<TAB>secret"
-- (URL-encoded): with a key, it replaces __CLIENT_ID__ and __SECRET__ in the body,
-- so each request hands in a key of its own (one Client ID, one
-- institution: the same key twice is refused as already on file).

local tokens, keys = {}, {}
for line in io.lines(os.getenv("BENCH_LINES")) do
  local token, client_id, secret = line:match("^([^\t]+)\t([^\t]+)\t([^\t]+)$")
  if token then
    tokens[#tokens + 1] = token
    -- "%" is special in a gsub replacement (%23 is the "#" of a Client ID).
    keys[#tokens] = { (client_id:gsub("%%", "%%%%")), (secret:gsub("%%", "%%%%")) }
  else
    tokens[#tokens + 1] = line
  end
end
local prefix = os.getenv("BENCH_PATH_PREFIX")
local body = os.getenv("BENCH_BODY")
local cookie = os.getenv("BENCH_COOKIE")
local n = 0

request = function()
  n = n + 1
  local i = ((n - 1) % #tokens) + 1
  local token = tokens[i]
  local request_body = body
  if keys[i] then
    request_body = body:gsub("__CLIENT_ID__", keys[i][1], 1):gsub("__SECRET__", keys[i][2], 1)
  end
  local client = string.format("198.%d.%d.%d", 18 + math.floor(n / 65536) % 2, math.floor(n / 256) % 256, n % 256)
  local headers = {
    ["Content-Type"] = "application/x-www-form-urlencoded",
    ["Cookie"] = cookie,
    ["X-Forwarded-For"] = client,
  }
  return wrk.format("POST", prefix .. token .. "/", headers, request_body)
end

dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "wrk_report.lua")  -- done: the BENCH_JSON line
