//! The Redis backend: every state change is one Lua script, so it is atomic on the server.
//!
//! Keys, all under `anb_queue:{<queue>}:` (the braces keep a queue's keys in one cluster slot):
//! - `job:<id>`: a hash with the job's name, payload, attempts, lease owner and last error;
//! - `q:<name>`: a sorted set per job name of the jobs waiting to run, scored by the time (ms)
//!   they become due, so delayed jobs, retries and ready jobs share one structure and a claim
//!   reads only the due head (`ZRANGEBYSCORE … LIMIT`): nothing moves a whole backlog at once;
//!   jobs of a priority other than 0 wait in `qp:<priority>:<name>` instead (the job's hash
//!   holds its priority in field `r`), and a claim reads the sets of each priority in order
//!   until it has enough;
//! - `leases`: a sorted set of leased job ids scored by the lease deadline; a job whose
//!   deadline passed is put back by [`Backend::recover_expired`], so a worker that dies
//!   mid-job loses nothing;
//! - `dead`: the dead letters, scored by the time they died;
//! - `names`, `seq`: the job names seen, the id counter;
//! - `u:<length of name>:<name>:<key>`: a unique key, whose value is the id of the job
//!   holding it; one held while the job is unfinished is deleted by the script that completes
//!   or dead-letters the job (the job's hash names it in field `u`), one held for a period
//!   expires by itself (`PX`);
//! - `rl:<length of queue>:<named queue>:<window start>`: the permits taken from one window
//!   of a named queue's global rate limit, expiring by itself once the window is over;
//! - channel `wake`: published when a job becomes due now, so idle workers claim at once.
//!
//! Times come from the Redis server's clock (`TIME`), so workers on several hosts agree.
//!
//! Every script declares the prefix as `KEYS[1]` and builds its keys as `KEYS[1] .. suffix`:
//! a key's hash tag is its first `{…}`, which is the prefix's (queue names have no braces),
//! whatever job name or id follows, so all of a script's keys live in `KEYS[1]`'s slot and a
//! cluster client (`?cluster=true`) routes the call to the node that owns it.

use std::{
    sync::{Arc, Weak},
    time::Duration,
};

use ::redis::{
    RedisFuture, Script,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    cluster::ClusterClientBuilder,
    cluster_async::ClusterConnection,
};
use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::{OnceCell, watch};

use crate::{
    backend::{
        Backend, BackendKind, Cancelled, ClaimRequest, ClaimedJob, DeadJob, JobId, JobInfo,
        JobState, Lease, NewJob, Renewal, WorkSignal,
    },
    error::QueueError,
    rate_limit::{Permits, RateLimit},
    stats::QueueStats,
    unique::Enqueued,
};

/// The URL query parameter naming the queue (its key prefix); the rest goes to the client.
const QUEUE_PARAMETER: &str = "queue";
const DEFAULT_QUEUE: &str = "default";

/// Delays beyond this are stored as this: Lua numbers are doubles, exact up to 2^53 ms.
const MAX_DELAY_MS: u64 = 100 * 365 * 24 * 3600 * 1000;

/// How many jobs one enqueue script stores: a bulk enqueue of more runs one script per chunk
/// of this size, so no call blocks the server for long (about a millisecond per chunk).
const ENQUEUE_CHUNK: usize = 1000;

/// How many expired leases one `recover_expired` script handles before handing back the
/// server (it loops until none is left).
const RECOVER_BATCH: usize = 1000;

/// Shared Lua prelude: the server clock in milliseconds, and the key of the set where a job
/// of a name and priority waits (priority 0's is `q:<name>`, the key of releases without
/// priorities; a job hash without field `r` is of priority 0).
const NOW: &str = "local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function ready_key(prefix, name, priority)
  if not priority or priority == '0' or priority == 0 then return prefix .. 'q:' .. name end
  return prefix .. 'qp:' .. priority .. ':' .. name
end
local function waiting_key(prefix, id, name)
  return ready_key(prefix, name, redis.call('HGET', prefix .. 'job:' .. id, 'r'))
end
";

/// The highest priority level's number, for the scripts that visit every level.
const LOWEST_PRIORITY: u8 = crate::Priority::LOWEST.level();

/// KEYS: prefix. ARGV: (name, payload, max_attempts, delay_ms, priority) per job. Returns
/// the first id; the jobs get consecutive ids.
const ENQUEUE: &str = "
local prefix = KEYS[1]
local count = #ARGV / 5
local last = redis.call('INCRBY', prefix .. 'seq', count)
local first = last - count + 1
local wake = false
for i = 0, count - 1 do
  local base = 1 + i * 5
  local name, delay, priority = ARGV[base], tonumber(ARGV[base + 3]), ARGV[base + 4]
  local id = tostring(first + i)
  redis.call('HSET', prefix .. 'job:' .. id, 'n', name, 'p', ARGV[base + 1], 'a', 0,
    'm', ARGV[base + 2], 'e', now)
  if priority ~= '0' then redis.call('HSET', prefix .. 'job:' .. id, 'r', priority) end
  redis.call('ZADD', ready_key(prefix, name, priority), now + delay, id)
  redis.call('SADD', prefix .. 'names', name)
  if delay == 0 then wake = true end
end
if wake then redis.call('PUBLISH', prefix .. 'wake', '') end
return first
";

/// KEYS: prefix. ARGV: name, payload, max_attempts, delay_ms, key, period_ms ('' while
/// unfinished), priority. Returns (id, 1) for a duplicate (the holder's id), (id, 0) for a
/// new job.
const ENQUEUE_UNIQUE: &str = "
local prefix, name, delay, period = KEYS[1], ARGV[1], tonumber(ARGV[4]), ARGV[6]
local suffix = 'u:' .. #name .. ':' .. name .. ':' .. ARGV[5]
local ukey = prefix .. suffix
local holder = redis.call('GET', ukey)
if holder then
  -- A key held while unfinished whose job is gone or dead is stale (the scripts that end a
  -- job delete its key; this covers a key left by anything else).
  local live = redis.call('EXISTS', prefix .. 'job:' .. holder) == 1
    and not redis.call('ZSCORE', prefix .. 'dead', holder)
  if period ~= '' or live then return {holder, 1} end
  redis.call('DEL', ukey)
end
local id = tostring(redis.call('INCR', prefix .. 'seq'))
if period ~= '' then
  redis.call('SET', ukey, id, 'NX', 'PX', tonumber(period))
  redis.call('HSET', prefix .. 'job:' .. id, 'n', name, 'p', ARGV[2], 'a', 0, 'm', ARGV[3], 'e', now)
else
  redis.call('SET', ukey, id, 'NX')
  redis.call('HSET', prefix .. 'job:' .. id, 'n', name, 'p', ARGV[2], 'a', 0, 'm', ARGV[3], 'e', now,
    'u', suffix)
end
if ARGV[7] ~= '0' then redis.call('HSET', prefix .. 'job:' .. id, 'r', ARGV[7]) end
redis.call('ZADD', ready_key(prefix, name, ARGV[7]), now + delay, id)
redis.call('SADD', prefix .. 'names', name)
if delay == 0 then redis.call('PUBLISH', prefix .. 'wake', '') end
return {id, 0}
";

/// Shared Lua helper: frees the unique key a job holds while unfinished, if it still holds it.
const FREE_UNIQUE: &str = "
local function free_unique(prefix, id)
  local key = prefix .. 'job:' .. id
  local suffix = redis.call('HGET', key, 'u')
  if suffix then
    if redis.call('GET', prefix .. suffix) == id then redis.call('DEL', prefix .. suffix) end
    redis.call('HDEL', key, 'u')
  end
end
";

/// KEYS: prefix. ARGV: owner, lease_ms, max, lowest priority, names… Returns (id, name,
/// payload, attempt, max_attempts, enqueued_at, cancelled: '1' or '0') per claimed job,
/// highest priority first, then oldest due: the due heads of each priority's sets in turn,
/// until `max` are found.
const CLAIM: &str = "
local prefix, owner, lease, max = KEYS[1], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local candidates = {}
for priority = 0, tonumber(ARGV[4]) do
  local level = {}
  for i = 5, #ARGV do
    local name = ARGV[i]
    local key = ready_key(prefix, name, priority)
    local due = redis.call('ZRANGEBYSCORE', key, '-inf', now, 'WITHSCORES', 'LIMIT', 0, max - #candidates)
    for j = 1, #due, 2 do
      level[#level + 1] = {due[j], tonumber(due[j + 1]), name, key}
    end
  end
  table.sort(level, function(a, b) return a[2] < b[2] end)
  for k = 1, math.min(max - #candidates, #level) do candidates[#candidates + 1] = level[k] end
  if #candidates >= max then break end
end
local out = {}
for k = 1, #candidates do
  local id, name, waiting = candidates[k][1], candidates[k][3], candidates[k][4]
  local key = prefix .. 'job:' .. id
  if redis.call('EXISTS', key) == 1 then
    -- The lease first, the ready entry last: a server that refuses a write midway (out of
    -- memory) leaves the job both ready and leased, to be claimed again, never neither.
    redis.call('ZADD', prefix .. 'leases', now + lease, id)
    local attempt = redis.call('HINCRBY', key, 'a', 1)
    redis.call('HSET', key, 'o', owner)
    redis.call('ZREM', waiting, id)
    local fields = redis.call('HMGET', key, 'p', 'm', 'e', 'c')
    for _, value in ipairs({id, name, fields[1], tostring(attempt), fields[2], fields[3], fields[4] or '0'}) do
      out[#out + 1] = value
    end
  else
    redis.call('ZREM', waiting, id)
  end
end
return out
";

/// Shared Lua helper: whether the claim with lease `token` holds job `id` (a claim's token
/// names its worker and the claim, so a re-claim by the same worker is another holder).
const HELD: &str = "
local function held(prefix, id, token)
  return redis.call('HGET', prefix .. 'job:' .. id, 'o') == token
    and redis.call('ZSCORE', prefix .. 'leases', id) ~= false
end
";

/// KEYS: prefix. ARGV: a job id. Deletes the job if it waits (freeing its unique key), flags
/// it if it runs; returns `removed`, `requested` or `not_found` (no such job, or dead).
const CANCEL: &str = "
local prefix, id = KEYS[1], ARGV[1]
local key = prefix .. 'job:' .. id
local name = redis.call('HGET', key, 'n')
if not name or redis.call('ZSCORE', prefix .. 'dead', id) then return 'not_found' end
if redis.call('ZSCORE', prefix .. 'leases', id) then
  redis.call('HSET', key, 'c', '1')
  return 'requested'
end
free_unique(prefix, id)
redis.call('ZREM', waiting_key(prefix, id, name), id)
redis.call('DEL', key)
return 'removed'
";

/// KEYS: prefix, the unique key. Returns the id of the job holding it, or nil.
const UNIQUE_HOLDER: &str = "return redis.call('GET', KEYS[2])";

/// KEYS: prefix. ARGV: (id, lease token) pairs.
const COMPLETE: &str = "
local prefix = KEYS[1]
for i = 1, #ARGV, 2 do
  if held(prefix, ARGV[i], ARGV[i + 1]) then
    free_unique(prefix, ARGV[i])
    redis.call('ZREM', prefix .. 'leases', ARGV[i])
    redis.call('DEL', prefix .. 'job:' .. ARGV[i])
  end
end
return 0
";

/// KEYS: prefix. ARGV: lease token, id, delay_ms, error.
const RETRY: &str = "
local prefix, owner, id = KEYS[1], ARGV[1], ARGV[2]
if held(prefix, id, owner) then
  local key = prefix .. 'job:' .. id
  local name = redis.call('HGET', key, 'n')
  redis.call('ZADD', waiting_key(prefix, id, name), now + tonumber(ARGV[3]), id)
  redis.call('SADD', prefix .. 'names', name)
  redis.call('HSET', key, 'err', ARGV[4])
  redis.call('HDEL', key, 'o')
  redis.call('ZREM', prefix .. 'leases', id)
end
return 0
";

/// KEYS: prefix. ARGV: lease token, id, error.
const DEAD_LETTER: &str = "
local prefix, owner, id = KEYS[1], ARGV[1], ARGV[2]
if held(prefix, id, owner) then
  local key = prefix .. 'job:' .. id
  free_unique(prefix, id)
  redis.call('ZADD', prefix .. 'dead', now, id)
  redis.call('HSET', key, 'err', ARGV[3])
  redis.call('HDEL', key, 'o')
  redis.call('ZREM', prefix .. 'leases', id)
end
return 0
";

/// KEYS: prefix. ARGV: delay_ms, then (id, lease token) pairs. Gives the attempt back and
/// makes the jobs due after the delay (a release: none; a snooze); their last error stays.
const RELEASE: &str = "
local prefix, delay = KEYS[1], tonumber(ARGV[1])
local released = 0
for i = 2, #ARGV, 2 do
  local id = ARGV[i]
  if held(prefix, id, ARGV[i + 1]) then
    local key = prefix .. 'job:' .. id
    local name = redis.call('HGET', key, 'n')
    redis.call('ZADD', waiting_key(prefix, id, name), now + delay, id)
    redis.call('SADD', prefix .. 'names', name)
    redis.call('HINCRBY', key, 'a', -1)
    redis.call('HDEL', key, 'o')
    redis.call('ZREM', prefix .. 'leases', id)
    released = released + 1
  end
end
if released > 0 and delay == 0 then redis.call('PUBLISH', prefix .. 'wake', '') end
return released
";

/// KEYS: prefix. ARGV: lease_ms, progress ('' for none), then (id, lease token) pairs.
/// Returns (kind, id, lease token) triples: kind `l` for a lease that is lost (not
/// extended), `c` for one extended whose job was cancelled.
const EXTEND: &str = "
local prefix, lease, progress = KEYS[1], tonumber(ARGV[1]), ARGV[2]
local out = {}
for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  local kind = nil
  if held(prefix, id, ARGV[i + 1]) then
    redis.call('ZADD', prefix .. 'leases', 'XX', now + lease, id)
    if progress ~= '' then redis.call('HSET', prefix .. 'job:' .. id, 'pr', progress) end
    if redis.call('HGET', prefix .. 'job:' .. id, 'c') then kind = 'c' end
  else
    kind = 'l'
  end
  if kind then
    out[#out + 1] = kind
    out[#out + 1] = id
    out[#out + 1] = ARGV[i + 1]
  end
end
return out
";

/// KEYS: prefix. ARGV: limit. Returns how many expired leases it handled.
const RECOVER: &str = "
local prefix, limit = KEYS[1], tonumber(ARGV[1])
local expired = redis.call('ZRANGEBYSCORE', prefix .. 'leases', '-inf', '(' .. now, 'LIMIT', 0, limit)
local requeued = 0
for _, id in ipairs(expired) do
  local key = prefix .. 'job:' .. id
  local job = redis.call('HMGET', key, 'n', 'a', 'm')
  if job[1] then
    if tonumber(job[2]) >= tonumber(job[3]) then
      free_unique(prefix, id)
      redis.call('ZADD', prefix .. 'dead', now, id)
    else
      redis.call('ZADD', waiting_key(prefix, id, job[1]), now, id)
      redis.call('SADD', prefix .. 'names', job[1])
      requeued = requeued + 1
    end
    redis.call('HSET', key, 'err', 'lease expired: the worker stopped renewing it (crashed or stalled)')
    redis.call('HDEL', key, 'o')
  end
  redis.call('ZREM', prefix .. 'leases', id)
end
if requeued > 0 then redis.call('PUBLISH', prefix .. 'wake', '') end
return #expired
";

/// KEYS: prefix. ARGV: lowest priority, names… Returns milliseconds until the earliest job
/// is due (0 if one is due now), or -1 when none waits.
const NEXT_DUE: &str = "
local earliest = nil
for priority = 0, tonumber(ARGV[1]) do
  for i = 2, #ARGV do
    local head = redis.call('ZRANGE', ready_key(KEYS[1], ARGV[i], priority), 0, 0, 'WITHSCORES')
    if head[2] then
      local due = tonumber(head[2])
      if earliest == nil or due < earliest then earliest = due end
    end
  end
end
if earliest == nil then return -1 end
return math.max(0, earliest - now)
";

/// KEYS: prefix. ARGV: lowest priority. Returns ready, in flight, delayed, dead, age of the
/// oldest ready job (ms). Forgets the names with no job waiting (none of their sorted sets is
/// left): every script that puts a job back in a name's set adds the name again, and leased
/// and dead jobs are counted without the names, so the set holds the names that have jobs
/// waiting, not every name ever enqueued.
const STATS: &str = "
local prefix = KEYS[1]
local ready, delayed, oldest = 0, 0, nil
for _, name in ipairs(redis.call('SMEMBERS', prefix .. 'names')) do
  local waiting = false
  for priority = 0, tonumber(ARGV[1]) do
    local key = ready_key(prefix, name, priority)
    if redis.call('EXISTS', key) == 1 then
      waiting = true
      ready = ready + redis.call('ZCOUNT', key, '-inf', now)
      delayed = delayed + redis.call('ZCOUNT', key, '(' .. now, '+inf')
      local head = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
      if head[2] and tonumber(head[2]) <= now and (oldest == nil or tonumber(head[2]) < oldest) then
        oldest = tonumber(head[2])
      end
    end
  end
  if not waiting then redis.call('SREM', prefix .. 'names', name) end
end
local age = 0
if oldest ~= nil then age = now - oldest end
return {ready, redis.call('ZCARD', prefix .. 'leases'), delayed, redis.call('ZCARD', prefix .. 'dead'), age}
";

/// KEYS: prefix. ARGV: limit, after ('' for the first page). Returns (id, name, payload, attempts,
/// has_error, error, dead_at_ms) per dead job, newest first.
const DEAD_JOBS: &str = "
local prefix, limit, after = KEYS[1], tonumber(ARGV[1]), ARGV[2]
local out = {}
local start = 0
if after ~= '' then
  local rank = redis.call('ZREVRANK', prefix .. 'dead', after)
  if not rank then return out end
  start = rank + 1
end
local dead = redis.call('ZREVRANGE', prefix .. 'dead', start, start + limit - 1, 'WITHSCORES')
for i = 1, #dead, 2 do
  local id, died = dead[i], dead[i + 1]
  local job = redis.call('HMGET', prefix .. 'job:' .. id, 'n', 'p', 'a', 'err')
  if job[1] then
    local has_error = '0'
    if job[4] then has_error = '1' end
    for _, value in ipairs({id, job[1], job[2], job[3], has_error, job[4] or '', died}) do
      out[#out + 1] = value
    end
  end
end
return out
";

/// KEYS: prefix. ARGV: id. Returns (name, state, attempts, max_attempts, has_error, error,
/// progress, priority) or nothing.
const JOB: &str = "
local prefix, id = KEYS[1], ARGV[1]
local job = redis.call('HMGET', prefix .. 'job:' .. id, 'n', 'a', 'm', 'err', 'pr', 'r')
if not job[1] then return {} end
local state = 'ready'
if redis.call('ZSCORE', prefix .. 'dead', id) then
  state = 'dead'
elseif redis.call('ZSCORE', prefix .. 'leases', id) then
  state = 'running'
else
  local due = redis.call('ZSCORE', waiting_key(prefix, id, job[1]), id)
  if due and tonumber(due) > now then state = 'delayed' end
end
local has_error = '0'
if job[4] then has_error = '1' end
return {job[1], state, job[2] or '0', job[3] or '0', has_error, job[4] or '', job[5] or '',
  job[6] or '0'}
";

/// KEYS: prefix. ARGV: ids… Returns how many dead jobs were requeued.
const REQUEUE_DEAD: &str = "
local prefix = KEYS[1]
local requeued = 0
for i = 1, #ARGV do
  local id = ARGV[i]
  local key = prefix .. 'job:' .. id
  local name = redis.call('HGET', key, 'n')
  if name and redis.call('ZSCORE', prefix .. 'dead', id) then
    redis.call('ZADD', waiting_key(prefix, id, name), now, id)
    redis.call('SADD', prefix .. 'names', name)
    redis.call('HSET', key, 'a', 0)
    redis.call('HDEL', key, 'c')
    redis.call('ZREM', prefix .. 'dead', id)
    requeued = requeued + 1
  end
end
if requeued > 0 then redis.call('PUBLISH', prefix .. 'wake', '') end
return requeued
";

/// KEYS: prefix. ARGV: age_ms, limit. Deletes up to `limit` jobs dead for longer than `age_ms`;
/// returns how many.
const PRUNE_DEAD: &str = "
local prefix, age, limit = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2])
local old = redis.call('ZRANGEBYSCORE', prefix .. 'dead', '-inf', '(' .. (now - age), 'LIMIT', 0, limit)
for _, id in ipairs(old) do
  redis.call('DEL', prefix .. 'job:' .. id)
  redis.call('ZREM', prefix .. 'dead', id)
end
return #old
";

/// KEYS: prefix. ARGV: named queue, want, permits per window, period_ms. Takes up to `want`
/// permits from the current window of the queue's rate limit (windows aligned to the Unix
/// epoch by the server's clock). Returns (granted, window start, ms until the window ends).
const TAKE_PERMITS: &str = "
local prefix, queue = KEYS[1], ARGV[1]
local want, limit, period = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local start = now - now % period
local key = prefix .. 'rl:' .. #queue .. ':' .. queue .. ':' .. start
local used = tonumber(redis.call('GET', key) or '0')
local granted = math.max(math.min(want, limit - used), 0)
if granted > 0 then
  redis.call('INCRBY', key, granted)
  -- Kept a period past the window's end, so a late give-back finds it and does nothing.
  redis.call('PEXPIRE', key, start + 2 * period - now)
end
return {granted, start, start + period - now}
";

/// KEYS: prefix. ARGV: named queue, window start, count. Gives permits back to their window
/// (a window that ended is never taken from again, so giving back to it changes nothing).
const RETURN_PERMITS: &str = "
local prefix, queue, count = KEYS[1], ARGV[1], tonumber(ARGV[3])
local key = prefix .. 'rl:' .. #queue .. ':' .. queue .. ':' .. ARGV[2]
local used = tonumber(redis.call('GET', key) or '0')
if used > 0 then redis.call('DECRBY', key, math.min(count, used)) end
return 0
";

/// The scripts, hashed once; `invoke_async` runs them by hash and loads them when missing.
#[derive(Debug)]
struct Scripts {
    enqueue: Script,
    enqueue_unique: Script,
    claim: Script,
    complete: Script,
    retry: Script,
    dead_letter: Script,
    release: Script,
    extend: Script,
    cancel: Script,
    unique_holder: Script,
    recover: Script,
    next_due: Script,
    stats: Script,
    dead_jobs: Script,
    job: Script,
    requeue_dead: Script,
    prune_dead: Script,
    take_permits: Script,
    return_permits: Script,
}

impl Scripts {
    fn new() -> Self {
        let timed = |body: &str| Script::new(&format!("{NOW}{body}"));
        let leased = |body: &str| Script::new(&format!("{NOW}{HELD}{FREE_UNIQUE}{body}"));
        Self {
            enqueue: timed(ENQUEUE),
            enqueue_unique: timed(ENQUEUE_UNIQUE),
            claim: timed(CLAIM),
            complete: leased(COMPLETE),
            retry: leased(RETRY),
            dead_letter: leased(DEAD_LETTER),
            release: leased(RELEASE),
            extend: leased(EXTEND),
            cancel: leased(CANCEL),
            unique_holder: Script::new(UNIQUE_HOLDER),
            recover: Script::new(&format!("{NOW}{FREE_UNIQUE}{RECOVER}")),
            next_due: timed(NEXT_DUE),
            stats: timed(STATS),
            dead_jobs: Script::new(DEAD_JOBS),
            job: timed(JOB),
            requeue_dead: timed(REQUEUE_DEAD),
            prune_dead: timed(PRUNE_DEAD),
            take_permits: timed(TAKE_PERMITS),
            return_permits: Script::new(RETURN_PERMITS),
        }
    }
}

/// Opens a `redis://host:port/db?queue=name` URL. The `queue` parameter names the queue
/// (default `default`): queues with different names share a server without seeing each
/// other's jobs. `cluster=true` connects to a Redis Cluster through the node in the URL.
pub(crate) async fn connect(url: &str) -> Result<RedisBackend, QueueError> {
    let target = Target::parse(url)?;
    let client = redis::Client::open(target.client_url.as_str()).map_err(QueueError::from_redis)?;
    if target.cluster {
        RedisBackend::new_cluster(client, &target.client_url, &target.queue).await
    } else {
        RedisBackend::new(client, &target.queue).await
    }
}

/// The URL query parameter that selects the cluster client.
const CLUSTER_PARAMETER: &str = "cluster";

/// What a queue URL names once our parameters are taken out of it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    /// The URL the Redis client understands (our parameters removed).
    client_url: String,
    /// The queue, which becomes the hash tag of its key prefix.
    queue: String,
    /// Whether the server is a Redis Cluster (`cluster=true`); the URL names one seed node.
    cluster: bool,
}

impl Target {
    /// Separates the `queue` and `cluster` parameters (ours) from the rest of the URL.
    fn parse(url: &str) -> Result<Self, QueueError> {
        let invalid = |reason: String| QueueError::InvalidUrl {
            url: crate::queue::redact(url),
            reason,
        };
        let mut parsed = url::Url::parse(url).map_err(|error| invalid(error.to_string()))?;
        let mut queue = DEFAULT_QUEUE.to_owned();
        let mut cluster = None;
        let mut kept: Vec<(String, String)> = Vec::new();
        for (key, value) in parsed.query_pairs() {
            if key == QUEUE_PARAMETER {
                queue = value.into_owned();
            } else if key == CLUSTER_PARAMETER {
                cluster = Some(value.into_owned());
            } else {
                kept.push((key.into_owned(), value.into_owned()));
            }
        }
        if queue.is_empty() || queue.contains(['{', '}']) {
            return Err(invalid(
                "the queue name must be non-empty, without braces".to_owned(),
            ));
        }
        let cluster = match cluster.as_deref() {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                return Err(invalid(format!(
                    "cluster must be true or false, not {other:?}"
                )));
            }
        };
        if kept.is_empty() {
            parsed.set_query(None);
        } else {
            parsed.query_pairs_mut().clear().extend_pairs(kept);
        }
        Ok(Self {
            client_url: parsed.to_string(),
            queue,
            cluster,
        })
    }
}

/// A connection to one server or to a cluster: scripts run the same way on both, the
/// cluster client routing each call to the node that owns its first key's slot.
#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> RedisFuture<'a, redis::Value> {
        match self {
            Connection::Single(connection) => connection.req_packed_command(cmd),
            Connection::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Connection::Single(connection) => connection.req_packed_commands(cmd, offset, count),
            Connection::Cluster(connection) => connection.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(connection) => connection.get_db(),
            Connection::Cluster(connection) => connection.get_db(),
        }
    }
}

/// The Redis backend.
pub(crate) struct RedisBackend {
    /// The wake-up subscriptions' client; on a cluster, the seed node (a publish reaches
    /// every node's subscribers).
    client: redis::Client,
    connection: Connection,
    prefix: String,
    scripts: Scripts,
    /// Started by the first worker; the subscriber task stops once the backend is dropped.
    wake: OnceCell<Arc<watch::Sender<u64>>>,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisBackend {
    /// Makes leased jobs claimable after `delay` and gives their attempt back (a release,
    /// or a snooze).
    async fn give_back(&self, leases: &[Lease], delay: Duration) -> Result<(), QueueError> {
        let mut invocation = self.scripts.release.prepare_invoke();
        invocation
            .key(&self.prefix)
            .arg(millis(delay).min(MAX_DELAY_MS));
        for lease in leases {
            invocation.arg(lease.id.as_str()).arg(&lease.token);
        }
        let _: i64 = invocation
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(QueueError::from_redis)?;
        Ok(())
    }

    pub(crate) async fn new(client: redis::Client, queue: &str) -> Result<Self, QueueError> {
        // The client's defaults wait up to a minute between reconnects after an outage and
        // never time a request out; a queue should be back within seconds of Redis.
        let config = ConnectionManagerConfig::new()
            .set_factor(100)
            .set_exponent_base(2)
            .set_max_delay(2_000)
            .set_number_of_retries(6)
            .set_connection_timeout(Duration::from_secs(3))
            .set_response_timeout(Duration::from_secs(10));
        let connection = ConnectionManager::new_with_config(client.clone(), config)
            .await
            .map_err(QueueError::from_redis)?;
        Ok(Self::with_connection(
            client,
            Connection::Single(connection),
            queue,
        ))
    }

    /// A backend on a Redis Cluster reached through the seed node at `url`.
    async fn new_cluster(
        client: redis::Client,
        url: &str,
        queue: &str,
    ) -> Result<Self, QueueError> {
        // The same bounds as a single server's: reconnect within seconds, time requests out.
        let cluster = ClusterClientBuilder::new(vec![url])
            .retries(6)
            .min_retry_wait(100)
            .max_retry_wait(2_000)
            .connection_timeout(Duration::from_secs(3))
            .response_timeout(Duration::from_secs(10))
            .build()
            .map_err(QueueError::from_redis)?;
        let connection = cluster
            .get_async_connection()
            .await
            .map_err(QueueError::from_redis)?;
        Ok(Self::with_connection(
            client,
            Connection::Cluster(connection),
            queue,
        ))
    }

    fn with_connection(client: redis::Client, connection: Connection, queue: &str) -> Self {
        Self {
            client,
            connection,
            prefix: format!("anb_queue:{{{queue}}}:"),
            scripts: Scripts::new(),
            wake: OnceCell::new(),
        }
    }

    /// Extends leases (and stores a progress); returns the leases that are lost.
    async fn renew_leases(
        &self,
        leases: &[Lease],
        duration: Duration,
        progress: Option<u8>,
    ) -> Result<Renewal, QueueError> {
        let mut invocation = self.scripts.extend.prepare_invoke();
        invocation.key(&self.prefix).arg(millis(duration)).arg(
            progress
                .map(|percent| percent.to_string())
                .unwrap_or_default(),
        );
        for lease in leases {
            invocation.arg(lease.id.as_str()).arg(&lease.token);
        }
        let found: Vec<String> = invocation
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(QueueError::from_redis)?;
        let mut renewal = Renewal::default();
        for triple in found.chunks_exact(3) {
            let lease = Lease {
                id: JobId(triple[1].clone()),
                token: triple[2].clone(),
            };
            match triple[0].as_str() {
                "c" => renewal.cancelled.push(lease),
                _ => renewal.lost.push(lease),
            }
        }
        Ok(renewal)
    }

    fn channel(&self) -> String {
        format!("{}wake", self.prefix)
    }

    /// Starts the subscriber the first time a worker asks for wake-ups.
    async fn subscriber(&self) -> Result<WorkSignal, QueueError> {
        let sender = self
            .wake
            .get_or_try_init(|| async {
                let sender = Arc::new(watch::channel(0u64).0);
                let signal: Weak<watch::Sender<u64>> = Arc::downgrade(&sender);
                // Subscribe before returning, so no wake-up after `subscribe` is missed.
                let mut pubsub = self.client.get_async_pubsub().await.map_err(QueueError::from_redis)?;
                pubsub.subscribe(self.channel()).await.map_err(QueueError::from_redis)?;
                let (client, channel) = (self.client.clone(), self.channel());
                tokio::spawn(async move {
                    loop {
                        let mut messages = pubsub.into_on_message();
                        while messages.next().await.is_some() {
                            let Some(signal) = signal.upgrade() else {
                                return;
                            };
                            signal.send_modify(|count| *count = count.wrapping_add(1));
                        }
                        // The connection dropped: wake workers (messages may have been
                        // missed), then resubscribe.
                        let Some(signal) = signal.upgrade() else {
                            return;
                        };
                        signal.send_modify(|count| *count = count.wrapping_add(1));
                        drop(signal);
                        pubsub = loop {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            match resubscribe(&client, &channel).await {
                                Ok(pubsub) => break pubsub,
                                Err(error) => tracing::warn!(%error, "queue wake-up subscription failed; retrying"),
                            }
                        };
                    }
                });
                Ok::<_, QueueError>(sender)
            })
            .await?;
        Ok(sender.subscribe())
    }
}

async fn resubscribe(
    client: &redis::Client,
    channel: &str,
) -> redis::RedisResult<redis::aio::PubSub> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(channel).await?;
    Ok(pubsub)
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn parse_u32(value: &str) -> u32 {
    value
        .parse::<i64>()
        .ok()
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(0)
}

#[async_trait]
impl Backend for RedisBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Redis
    }

    fn supports_priorities(&self) -> bool {
        true
    }

    fn supports_unique(&self) -> bool {
        true
    }

    async fn enqueue_unique(&self, job: &NewJob) -> Result<Enqueued, QueueError> {
        let Some(unique) = &job.unique else {
            let id = self.enqueue(std::slice::from_ref(job)).await?.remove(0);
            return Ok(Enqueued {
                id,
                duplicate: false,
            });
        };
        // `PX` takes at least a millisecond.
        let period = unique
            .period
            .map(|period| millis(period).clamp(1, MAX_DELAY_MS).to_string())
            .unwrap_or_default();
        let (id, duplicate): (String, u8) = self
            .scripts
            .enqueue_unique
            .prepare_invoke()
            .key(&self.prefix)
            .arg(job.name)
            .arg(&job.payload)
            .arg(job.max_attempts)
            .arg(millis(job.delay).min(MAX_DELAY_MS))
            .arg(&unique.key)
            .arg(period)
            .arg(job.priority.level())
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(QueueError::from_redis)?;
        Ok(Enqueued {
            id: JobId(id),
            duplicate: duplicate == 1,
        })
    }

    async fn enqueue(&self, jobs: &[NewJob]) -> Result<Vec<JobId>, QueueError> {
        crate::backend::refuse_unique(jobs)?;
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        // One script per chunk, so a large batch never holds the server for long; each chunk
        // is stored all or none, and a failed chunk leaves the chunks before it enqueued
        // (reported as a partial enqueue).
        let mut ids = Vec::with_capacity(jobs.len());
        for chunk in jobs.chunks(ENQUEUE_CHUNK) {
            let mut invocation = self.scripts.enqueue.prepare_invoke();
            invocation.key(&self.prefix);
            for job in chunk {
                invocation
                    .arg(job.name)
                    .arg(&job.payload)
                    .arg(job.max_attempts)
                    .arg(millis(job.delay).min(MAX_DELAY_MS))
                    .arg(job.priority.level());
            }
            let first: u64 = match invocation.invoke_async(&mut self.connection.clone()).await {
                Ok(first) => first,
                // Nothing stored yet: the plain error, as for one chunk.
                Err(error) if ids.is_empty() => return Err(QueueError::from_redis(error)),
                Err(error) => {
                    let mut stored: Vec<Option<JobId>> = ids.into_iter().map(Some).collect();
                    stored.resize(jobs.len(), None);
                    return Err(QueueError::PartlyEnqueued {
                        ids: stored,
                        reason: QueueError::from_redis(error).to_string(),
                    });
                }
            };
            ids.extend((first..first + chunk.len() as u64).map(|id| JobId(id.to_string())));
        }
        Ok(ids)
    }

    async fn claim(&self, request: ClaimRequest<'_>) -> Result<Vec<ClaimedJob>, QueueError> {
        // The job hash's owner field holds the claim's token: the worker and the claim.
        let token = format!("{}/{}", request.owner, crate::backend::claim_token());
        let mut invocation = self.scripts.claim.prepare_invoke();
        invocation
            .key(&self.prefix)
            .arg(&token)
            .arg(millis(request.lease))
            .arg(request.max)
            .arg(LOWEST_PRIORITY);
        for name in request.names {
            invocation.arg(*name);
        }
        let fields: Vec<String> = invocation
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(QueueError::from_redis)?;
        Ok(fields
            .chunks_exact(7)
            .map(|job| ClaimedJob {
                id: JobId(job[0].clone()),
                name: job[1].clone(),
                payload: job[2].clone(),
                attempt: parse_u32(&job[3]),
                max_attempts: parse_u32(&job[4]),
                enqueued_at_ms: job[5].parse().unwrap_or(0),
                token: token.clone(),
                cancel_requested: job[6] == "1",
            })
            .collect())
    }

    async fn complete(&self, _owner: &str, leases: &[Lease]) -> Result<(), QueueError> {
        let mut invocation = self.scripts.complete.prepare_invoke();
        invocation.key(&self.prefix);
        for lease in leases {
            invocation.arg(lease.id.as_str()).arg(&lease.token);
        }
        let _: i64 = invocation
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(QueueError::from_redis)?;
        Ok(())
    }

    async fn retry(
        &self,
        _owner: &str,
        lease: &Lease,
        delay: Duration,
        error: &str,
    ) -> Result<(), QueueError> {
        let _: i64 = self
            .scripts
            .retry
            .prepare_invoke()
            .key(&self.prefix)
            .arg(&lease.token)
            .arg(lease.id.as_str())
            .arg(millis(delay).min(MAX_DELAY_MS))
            .arg(error)
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(QueueError::from_redis)?;
        Ok(())
    }

    async fn dead_letter(
        &self,
        _owner: &str,
        lease: &Lease,
        error: &str,
    ) -> Result<(), QueueError> {
        let _: i64 = self
            .scripts
            .dead_letter
            .prepare_invoke()
            .key(&self.prefix)
            .arg(&lease.token)
            .arg(lease.id.as_str())
            .arg(error)
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(QueueError::from_redis)?;
        Ok(())
    }

    async fn release(&self, _owner: &str, leases: &[Lease]) -> Result<(), QueueError> {
        self.give_back(leases, Duration::ZERO).await
    }

    async fn snooze(&self, _owner: &str, lease: &Lease, delay: Duration) -> Result<(), QueueError> {
        self.give_back(std::slice::from_ref(lease), delay).await
    }

    async fn extend(
        &self,
        _owner: &str,
        leases: &[Lease],
        lease: Duration,
    ) -> Result<Vec<Lease>, QueueError> {
        Ok(self.renew_leases(leases, lease, None).await?.lost)
    }

    async fn renew(
        &self,
        _owner: &str,
        leases: &[Lease],
        lease: Duration,
    ) -> Result<Renewal, QueueError> {
        self.renew_leases(leases, lease, None).await
    }

    fn supports_cancel(&self) -> bool {
        true
    }

    async fn cancel(&self, id: &JobId) -> Result<Cancelled, QueueError> {
        let outcome: String = self
            .scripts
            .cancel
            .prepare_invoke()
            .key(&self.prefix)
            .arg(id.as_str())
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(QueueError::from_redis)?;
        Ok(match outcome.as_str() {
            "removed" => Cancelled::Removed,
            "requested" => Cancelled::Requested,
            _ => Cancelled::NotFound,
        })
    }

    async fn unique_holder(&self, name: &str, key: &str) -> Result<Option<JobId>, QueueError> {
        let holder: Option<String> = self
            .scripts
            .unique_holder
            .prepare_invoke()
            .key(&self.prefix)
            .key(format!("{}u:{}:{name}:{key}", self.prefix, name.len()))
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(QueueError::from_redis)?;
        Ok(holder.map(JobId))
    }

    async fn progress(
        &self,
        _owner: &str,
        lease: &Lease,
        percent: u8,
        duration: Duration,
    ) -> Result<(), QueueError> {
        self.renew_leases(std::slice::from_ref(lease), duration, Some(percent))
            .await
            .map(drop)
    }

    async fn recover_expired(&self) -> Result<u64, QueueError> {
        let mut recovered = 0;
        loop {
            let handled: u64 = self
                .scripts
                .recover
                .prepare_invoke()
                .key(&self.prefix)
                .arg(RECOVER_BATCH)
                .invoke_async(&mut self.connection.clone())
                .await
                .map_err(QueueError::from_redis)?;
            recovered += handled;
            if handled < RECOVER_BATCH as u64 {
                return Ok(recovered);
            }
        }
    }

    async fn next_due_in(&self, names: &[&'static str]) -> Result<Option<Duration>, QueueError> {
        let mut invocation = self.scripts.next_due.prepare_invoke();
        invocation.key(&self.prefix).arg(LOWEST_PRIORITY);
        for name in names {
            invocation.arg(*name);
        }
        let wait_ms: i64 = invocation
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(QueueError::from_redis)?;
        Ok(u64::try_from(wait_ms).ok().map(Duration::from_millis))
    }

    async fn subscribe(&self) -> Result<WorkSignal, QueueError> {
        self.subscriber().await
    }

    fn idle_poll_interval(&self) -> Duration {
        // Pub/sub wakes workers; polling only covers a message lost while resubscribing.
        Duration::from_secs(1)
    }

    fn supports_global_rate_limit(&self) -> bool {
        true
    }

    async fn take_permits(
        &self,
        queue: &str,
        want: u32,
        limit: RateLimit,
    ) -> Result<Permits, QueueError> {
        let (granted, window, wait_ms): (u32, i64, u64) = self
            .scripts
            .take_permits
            .prepare_invoke()
            .key(&self.prefix)
            .arg(queue)
            .arg(want)
            .arg(limit.permits())
            .arg(limit.period_ms().min(MAX_DELAY_MS as i64))
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(QueueError::from_redis)?;
        Ok(Permits {
            granted,
            window,
            window_ends_in: Duration::from_millis(wait_ms),
        })
    }

    async fn return_permits(
        &self,
        queue: &str,
        permits: Permits,
        unused: u32,
    ) -> Result<(), QueueError> {
        if unused == 0 {
            return Ok(());
        }
        let _: i64 = self
            .scripts
            .return_permits
            .prepare_invoke()
            .key(&self.prefix)
            .arg(queue)
            .arg(permits.window)
            .arg(unused)
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(QueueError::from_redis)?;
        Ok(())
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        let (ready, in_flight, delayed, dead, oldest_ms): (u64, u64, u64, u64, u64) = self
            .scripts
            .stats
            .prepare_invoke()
            .key(&self.prefix)
            .arg(LOWEST_PRIORITY)
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(QueueError::from_redis)?;
        Ok(QueueStats {
            ready,
            in_flight,
            delayed,
            dead,
            oldest_ready_age: Duration::from_millis(oldest_ms),
        })
    }

    async fn dead_jobs(&self, limit: usize) -> Result<Vec<DeadJob>, QueueError> {
        self.dead_jobs_after(None, limit).await
    }

    async fn dead_jobs_after(
        &self,
        after: Option<&JobId>,
        limit: usize,
    ) -> Result<Vec<DeadJob>, QueueError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let fields: Vec<String> = self
            .scripts
            .dead_jobs
            .prepare_invoke()
            .key(&self.prefix)
            .arg(limit)
            .arg(after.map_or("", JobId::as_str))
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(QueueError::from_redis)?;
        Ok(fields
            .chunks_exact(7)
            .map(|job| DeadJob {
                id: JobId(job[0].clone()),
                name: job[1].clone(),
                payload: job[2].clone(),
                attempts: parse_u32(&job[3]),
                last_error: (job[4] == "1").then(|| job[5].clone()),
                // A sorted-set score as Redis prints it (an integer here, maybe in exponent form).
                dead_at_ms: job[6].parse::<f64>().map_or(0, |ms| ms as i64),
            })
            .collect())
    }

    async fn job(&self, id: &JobId) -> Result<Option<JobInfo>, QueueError> {
        let fields: Vec<String> = self
            .scripts
            .job
            .prepare_invoke()
            .key(&self.prefix)
            .arg(id.as_str())
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(QueueError::from_redis)?;
        let [
            name,
            state,
            attempts,
            max_attempts,
            has_error,
            error,
            progress,
            priority,
        ] = fields.as_slice()
        else {
            return Ok(None);
        };
        Ok(Some(JobInfo {
            id: id.clone(),
            name: name.clone(),
            state: match state.as_str() {
                "dead" => JobState::Dead,
                "running" => JobState::Running,
                "delayed" => JobState::Delayed,
                _ => JobState::Ready,
            },
            attempts: parse_u32(attempts),
            max_attempts: parse_u32(max_attempts),
            last_error: (has_error == "1").then(|| error.clone()),
            progress: progress.parse().ok(),
            priority: priority
                .parse()
                .ok()
                .and_then(|level: u8| crate::Priority::try_from(level).ok())
                .unwrap_or_default(),
        }))
    }

    async fn requeue_dead(&self, ids: &[JobId]) -> Result<u64, QueueError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let mut invocation = self.scripts.requeue_dead.prepare_invoke();
        invocation.key(&self.prefix);
        for id in ids {
            invocation.arg(id.as_str());
        }
        Ok(invocation
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(QueueError::from_redis)?)
    }

    async fn prune_dead(&self, older_than: Duration) -> Result<u64, QueueError> {
        let mut pruned = 0;
        loop {
            let deleted: u64 = self
                .scripts
                .prune_dead
                .prepare_invoke()
                .key(&self.prefix)
                .arg(millis(older_than).min(MAX_DELAY_MS))
                .arg(RECOVER_BATCH)
                .invoke_async(&mut self.connection.clone())
                .await
                .map_err(QueueError::from_redis)?;
            pruned += deleted;
            if deleted < RECOVER_BATCH as u64 {
                return Ok(pruned);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_parameter_becomes_the_key_prefix_and_leaves_the_url() {
        let target =
            Target::parse("redis://:pw@127.0.0.1:6379/2?queue=videos&protocol=resp3").unwrap();
        assert_eq!(
            target,
            Target {
                client_url: "redis://:pw@127.0.0.1:6379/2?protocol=resp3".to_owned(),
                queue: "videos".to_owned(),
                cluster: false,
            }
        );
        let target = Target::parse("redis://127.0.0.1:6379").unwrap();
        assert_eq!(
            (
                target.client_url.as_str(),
                target.queue.as_str(),
                target.cluster
            ),
            ("redis://127.0.0.1:6379", "default", false)
        );
    }

    #[test]
    fn the_cluster_parameter_selects_the_cluster_client_and_leaves_the_url() {
        let target = Target::parse("redis://127.0.0.1:7101?cluster=true&queue=videos").unwrap();
        assert_eq!(
            target,
            Target {
                client_url: "redis://127.0.0.1:7101".to_owned(),
                queue: "videos".to_owned(),
                cluster: true,
            }
        );
        let target = Target::parse("rediss://127.0.0.1:7101/?cluster=false&insecure=true").unwrap();
        assert!(!target.cluster);
        assert_eq!(target.client_url, "rediss://127.0.0.1:7101/?insecure=true");
        assert!(Target::parse("redis://127.0.0.1:7101?cluster=yes").is_err());
    }

    #[test]
    fn a_queue_name_with_braces_is_refused() {
        assert!(Target::parse("redis://127.0.0.1?queue=a}b").is_err());
    }
}
