-- GET a protected path, rotating the access tokens of many users (one token per line).
-- wrk -s bearer.lua URL -- TOKENS_FILE PATH
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local report = dofile(here .. "report.lua")

setup = report.setup
done = report.done

local requests = {}
local next_request = 0

function init(args)
  local path = args[2] or "/me"
  for _, token in ipairs(report.lines(args[1])) do
    requests[#requests + 1] = wrk.format("GET", path, { ["Authorization"] = "Bearer " .. token })
  end
  -- Threads start at different users, so the rotation is spread from the first request on.
  next_request = (thread_index or 0) * 7
end

function request()
  next_request = next_request % #requests + 1
  return requests[next_request]
end
