-- Shared by every script: thread numbering, line files, and wrk's summary as JSON.
-- The harness reads the JSON from the file named by $WRK_REPORT.
local report = {}

local threads_started = 0

-- setup() runs in the main Lua state once per wrk thread: give each thread its index.
function report.setup(thread)
  thread:set("thread_index", threads_started)
  threads_started = threads_started + 1
end

function report.lines(path)
  local lines = {}
  for line in io.lines(path) do
    if line ~= "" then
      lines[#lines + 1] = line
    end
  end
  return lines
end

function report.done(summary, latency, _requests)
  local path = os.getenv("WRK_REPORT")
  if not path then
    return
  end
  local e = summary.errors
  local out = assert(io.open(path, "w"))
  out:write(string.format(
    '{"requests":%d,"duration_us":%d,"bytes":%d,'
      .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
      .. '"latency_us":{"p50":%.0f,"p90":%.0f,"p99":%.0f,"max":%.0f,"mean":%.1f}}',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean
  ))
  out:close()
end

return report
