-- wrk script: GET /api/public/rankings, one of three mixes
-- (ANB_LOAD_RANKINGS):
--   overall  the first page of the overall ranking (default page size, 20)
--   city     pages 1-5 of each of the eight seeded cities, the filter typed
--            with and without accents and in any case
--   pages    every page of the overall ranking at 50 a page (1-200: all of
--            10 000 players), so deep offsets are included

dofile(os.getenv("ANB_LOAD_LUA_DIR") .. "/report.lua")

local mode = os.getenv("ANB_LOAD_RANKINGS") or "overall"
local paths = {}

if mode == "overall" then
    paths = { "/api/public/rankings" }
elseif mode == "city" then
    local cities = { "Bogot%C3%A1", "medellin", "CALI", "Barranquilla", "cartagena",
                     "C%C3%BAcuta", "Bucaramanga", "santa%20marta" }
    for _, city in ipairs(cities) do
        for page = 1, 5 do
            table.insert(paths, "/api/public/rankings?city=" .. city .. "&page=" .. page)
        end
    end
elseif mode == "pages" then
    local pages = tonumber(os.getenv("ANB_LOAD_PAGES") or "200")
    for page = 1, pages do
        table.insert(paths, "/api/public/rankings?page=" .. page .. "&limit=50")
    end
else
    error("ANB_LOAD_RANKINGS must be overall, city or pages, not " .. mode)
end

local next_path = nil

function request()
    -- Threads start at different places in the list.
    next_path = next_path or (thread_index or 0) * 7
    next_path = next_path + 1
    return wrk.format("GET", paths[next_path % #paths + 1])
end
