-- wrk script: POST /api/public/videos/{id}/vote, each request a (voter,
-- video) pair no other request of the run uses, so a vote is refused only
-- when the seed already cast it or the video is the voter's own.
--
-- Environment: ANB_LOAD_TOKENS (a file of access tokens, one a line),
-- ANB_LOAD_VIDEOS (a file of published video ids, one a line),
-- ANB_LOAD_THREADS (wrk's -t).

dofile(os.getenv("ANB_LOAD_LUA_DIR") .. "/report.lua")

local tokens, videos = {}, {}
local threads_total = tonumber(os.getenv("ANB_LOAD_THREADS") or "1")
local sent = 0

function init(args)
    for line in io.lines(os.getenv("ANB_LOAD_TOKENS")) do
        table.insert(tokens, line)
    end
    for line in io.lines(os.getenv("ANB_LOAD_VIDEOS")) do
        table.insert(videos, line)
    end
    assert(#tokens > 0 and #videos > 0, "no tokens or no videos")
end

function request()
    -- Request g of the whole run (threads interleave): voter g mod V votes
    -- in round g div V for the video (round + 37 * voter) mod M. For a fixed
    -- voter the rounds give distinct videos, so no pair repeats before
    -- V * M requests, and concurrent voters vote for different videos.
    local g = sent * threads_total + (thread_index or 0)
    sent = sent + 1
    local voter = g % #tokens
    local round = math.floor(g / #tokens)
    local video = (round + 37 * voter) % #videos
    return wrk.format("POST", "/api/public/videos/" .. videos[video + 1] .. "/vote",
        { ["Authorization"] = "Bearer " .. tokens[voter + 1] }, "")
end
