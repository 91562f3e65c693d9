-- Shared by the load benchmark's wrk scripts: numbers the threads, counts
-- responses by status class, and prints one RESULT line at the end.
--
-- Environment: ANB_LOAD_NAME (the label of the run).

local threads = {}

function setup(thread)
    thread:set("thread_index", #threads)
    table.insert(threads, thread)
end

-- Per-thread counters (each wrk thread has its own Lua state).
s2xx, s3xx, s4xx, s5xx = 0, 0, 0, 0

function response(status, headers, body)
    if status < 300 then
        s2xx = s2xx + 1
    elseif status < 400 then
        s3xx = s3xx + 1
    elseif status < 500 then
        s4xx = s4xx + 1
    else
        s5xx = s5xx + 1
    end
end

function done(summary, latency, requests)
    local c2, c3, c4, c5 = 0, 0, 0, 0
    for _, thread in ipairs(threads) do
        c2 = c2 + thread:get("s2xx")
        c3 = c3 + thread:get("s3xx")
        c4 = c4 + thread:get("s4xx")
        c5 = c5 + thread:get("s5xx")
    end
    local e = summary.errors
    local seconds = summary.duration / 1e6
    io.write(string.format(
        "RESULT name=%s requests=%d seconds=%.1f rps=%.1f p50_ms=%.2f p95_ms=%.2f p99_ms=%.2f max_ms=%.2f "
            .. "s2xx=%d s3xx=%d s4xx=%d s5xx=%d socket_errors=%d\n",
        os.getenv("ANB_LOAD_NAME") or "run", summary.requests, seconds, summary.requests / seconds,
        latency:percentile(50) / 1000, latency:percentile(95) / 1000, latency:percentile(99) / 1000,
        latency.max / 1000, c2, c3, c4, c5, e.connect + e.read + e.write + e.timeout))
end
