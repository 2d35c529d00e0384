-- POST a new account on every request: unique emails per run, thread and request.
-- wrk -s register.lua URL -- RUN_ID PATH PASSWORD
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local report = dofile(here .. "report.lua")

setup = report.setup
done = report.done

local headers = { ["Content-Type"] = "application/json" }
local run_id, path, password = "run", "/auth/register", "Bench-Secret-7419-kt"
local created = 0

function init(args)
  run_id, path, password = args[1] or run_id, args[2] or path, args[3] or password
end

function request()
  created = created + 1
  local email = string.format("r%s-%d-%d@bench.example.com", run_id, thread_index or 0, created)
  local body = string.format('{"email":"%s","password":"%s"}', email, password)
  return wrk.format("POST", path, headers, body)
end
