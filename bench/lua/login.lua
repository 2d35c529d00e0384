-- POST credentials, rotating many users ("email<TAB>password" per line).
-- wrk -s login.lua URL -- CREDENTIALS_FILE PATH json|form
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local report = dofile(here .. "report.lua")

setup = report.setup
done = report.done

local requests = {}
local next_request = 0

local function form_escape(value)
  return (value:gsub("[^%w%-%._~]", function(c)
    return string.format("%%%02X", string.byte(c))
  end))
end

function init(args)
  local path, encoding = args[2], args[3] or "json"
  for _, line in ipairs(report.lines(args[1])) do
    local email, password = line:match("^([^\t]+)\t(.+)$")
    local headers, body
    if encoding == "form" then
      headers = { ["Content-Type"] = "application/x-www-form-urlencoded" }
      body = "username=" .. form_escape(email) .. "&password=" .. form_escape(password)
    else
      headers = { ["Content-Type"] = "application/json" }
      body = string.format('{"email":"%s","password":"%s"}', email, password)
    end
    requests[#requests + 1] = wrk.format("POST", path, headers, body)
  end
  next_request = (thread_index or 0) * 7
end

function request()
  next_request = next_request % #requests + 1
  return requests[next_request]
end
