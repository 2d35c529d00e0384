-- POST /auth/refresh along many chains of refresh tokens: each response's new refresh token
-- goes back in the queue, so every token is presented exactly once (no reuse, no grace retry).
-- wrk -s refresh.lua URL -- TOKENS_FILE THREADS
-- Give every thread more chains than connections: a failed refresh ends its chain.
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local report = dofile(here .. "report.lua")

setup = report.setup
done = report.done

local headers = { ["Content-Type"] = "application/json" }
local queue, head, tail = {}, 1, 0
-- Well-formed but unknown: once a thread has lost every chain, it gets 401s, counted as errors.
local exhausted = "exhausted-chain-exhausted-chain-exhausted-chain-00"

function init(args)
  local threads = tonumber(args[2]) or 1
  for n, token in ipairs(report.lines(args[1])) do
    if (n - 1) % threads == (thread_index or 0) then
      tail = tail + 1
      queue[tail] = token
    end
  end
end

function request()
  local token = exhausted
  if head <= tail then
    token = queue[head]
    queue[head] = nil
    head = head + 1
  end
  return wrk.format("POST", "/auth/refresh", headers, '{"refresh_token":"' .. token .. '"}')
end

function response(status, _headers, body)
  if status == 200 then
    local token = body:match('"refresh_token"%s*:%s*"([^"]+)"')
    if token then
      tail = tail + 1
      queue[tail] = token
    end
  end
end
