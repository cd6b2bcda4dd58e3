-- wrk script for bench/run.py: replays a file of requests, one per line, split
-- across wrk's threads, and counts the answers by status code.
--
--   wrk -s bench/requests.lua URL -- FILE NTHREADS
--
-- A line is "GET<TAB>path" or "POST<TAB>path<TAB>signature<TAB>body" (a signed
-- webhook notification: wrk cannot sign, so the bodies are made beforehand).
-- Thread t sends lines t, t+n, t+2n, ... and starts again at its first when it
-- runs out (done() says so: for webhooks that would mean duplicates).

local threads = {}
local counter = 0

function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

local lines = {}
local next_line = 1
issued = 0
wrapped = 0
codes = {}

function init(args)
  local file, nthreads = args[1], tonumber(args[2])
  local count = 0
  for _ in io.lines(file) do count = count + 1 end
  if count < nthreads then nthreads = 1 end  -- e.g. one URL: every thread sends it
  local i = 0
  for line in io.lines(file) do
    if i % nthreads == tid % nthreads then
      local method, path, sig, body = line:match("^(%u+)\t([^\t]+)\t?([^\t]*)\t?(.*)$")
      local headers = {}
      for name, value in pairs(wrk.headers) do headers[name] = value end  -- wrk's -H headers
      if method == "POST" then
        headers["Content-Type"] = "application/json"
        headers["Cronofy-HMAC-SHA256"] = sig
      else
        body = nil
      end
      table.insert(lines, wrk.format(method, path, headers, body))
    end
    i = i + 1
  end
end

function request()
  if next_line > #lines then
    next_line = 1
    wrapped = wrapped + 1
  end
  local req = lines[next_line]
  next_line = next_line + 1
  issued = issued + 1
  return req
end

function response(status, headers, body)
  codes[status] = (codes[status] or 0) + 1
end

function done(summary, latency, requests)
  local parts = {}
  for _, thread in ipairs(threads) do
    local c = {}
    for code, n in pairs(thread:get("codes")) do
      table.insert(c, string.format('"%d":%d', code, n))
    end
    table.insert(parts, string.format('{"tid":%d,"issued":%d,"wrapped":%d,"codes":{%s}}',
      thread:get("tid"), thread:get("issued"), thread:get("wrapped"), table.concat(c, ",")))
  end
  io.write("BENCH-THREADS [" .. table.concat(parts, ",") .. "]\n")
end
