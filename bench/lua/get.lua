-- A plain GET of the URL's path (the hello-world baseline): only the JSON summary is added.
-- wrk -s get.lua URL
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local report = dofile(here .. "report.lua")

done = report.done
