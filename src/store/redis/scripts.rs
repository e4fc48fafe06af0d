//! The Lua scripts of the Redis event queue: each multi-key step is one
//! script on one part's keys (one Cluster slot), so it happens whole or
//! not at all.
//!
//! Every script but the accept drains the queue, and Redis must run it
//! even over `maxmemory` (a full Redis that refuses acks never empties):
//! they carry the `allow-oom` flag (Redis 7's script flags; without it a
//! script's first `HSET` or `HINCRBY` is refused with `OOM`). The accept
//! has none, so a Redis filled by something else still refuses new events.

/// KEYS: dedup, sequence, events, bodies, refs, jobs, targets, queued, age,
/// dead, dead_order, dead_counts, log, by_id, history, index, then each
/// target's queue (all of one part). ARGV: window ms, metadata, now ms,
/// body, webhook, the part's number, the event's by-id field, its weight
/// in bytes, its targets joined by `\x1f`, then per target its name and
/// its job record without the leading `{"id":0,"event":0,` (or, unrouted,
/// just that record). Numbers are counted per part and written `local *
/// 1024 + part`. The event joins the log (`log`, lexically sorted
/// `<received ms>.<event>` members), its lookup by id and the log's
/// counts; `index` keeps what removing it later needs (member, weight,
/// targets, and last the by-id field, which may hold any byte).
const ACCEPT: &str = r#"
if not redis.call('SET', KEYS[1], ARGV[3], 'NX', 'PX', ARGV[1]) then return -1 end
local part = tonumber(ARGV[6])
local function global(n) return n * 1024 + part end
local targets = math.floor((#ARGV - 9) / 2)
local jobs = math.max(targets, 1)
local seq = redis.call('INCRBY', KEYS[2], 1 + jobs) - jobs
local event = string.format('%d', global(seq))
redis.call('HSET', KEYS[3], event, ARGV[2])
redis.call('HSET', KEYS[4], event, ARGV[4])
redis.call('HSET', KEYS[5], event, jobs)
local member = string.format('%015d.%020d', tonumber(ARGV[3]), global(seq))
redis.call('ZADD', KEYS[13], 0, member)
redis.call('HSET', KEYS[14], ARGV[7], event)
redis.call('HINCRBY', KEYS[15], 'events', 1)
redis.call('HINCRBY', KEYS[15], 'bytes', tonumber(ARGV[8]))
redis.call('HSET', KEYS[16], event, member .. '\30' .. ARGV[8] .. '\30' .. ARGV[9] .. '\30' .. ARGV[7])
if targets == 0 then
  local id = global(seq + 1)
  local record = '{"job":{"id":' .. string.format('%d', id) .. ',"event":' .. event .. ',' .. ARGV[10] .. ',"reason":"unrouted","dead_at_ms":' .. ARGV[3] .. '}'
  redis.call('HSET', KEYS[10], string.format('%020d', id), record)
  redis.call('ZADD', KEYS[11], 0, string.format('%020d.%020d', tonumber(ARGV[3]), id))
  redis.call('HINCRBY', KEYS[12], ARGV[5], 1)
else
  for i = 1, targets do
    local id = global(seq + i)
    local member = string.format('%020d', id)
    redis.call('HSET', KEYS[6], member, '{"id":' .. string.format('%d', id) .. ',"event":' .. event .. ',' .. ARGV[9 + 2 * i])
    redis.call('HSET', KEYS[7], member, ARGV[8 + 2 * i])
    redis.call('HINCRBY', KEYS[8], ARGV[8 + 2 * i], 1)
    redis.call('ZADD', KEYS[16 + i], ARGV[3], member)
    redis.call('ZADD', KEYS[9], ARGV[3], member)
  end
end
return event
"#;

/// KEYS: queued, leases, jobs. ARGV: now ms, lease end ms, most jobs, the
/// lane's queue key prefix (a target's name completes it), then pairs of
/// (capped target, room left). Each target with room gives its oldest due
/// jobs (at most its room), so a full target's backlog costs nothing; the
/// oldest of all are leased. Returns 1 if a target was passed over for
/// want of room (0 otherwise), the earliest due time of a target with room
/// that had nothing due (-1: none), then a flat list of (token, id,
/// target, record).
const LEASE: &str = r#"
local most = tonumber(ARGV[3])
local room = {}
for i = 5, #ARGV, 2 do room[ARGV[i]] = tonumber(ARGV[i + 1]) end
local candidates = {}
local skipped = 0
local earliest = -1
for _, target in ipairs(redis.call('HKEYS', KEYS[1])) do
  local take = most
  if room[target] ~= nil then take = math.min(room[target], most) end
  if take <= 0 then skipped = 1 end
  if take > 0 then
    local due = redis.call('ZRANGEBYSCORE', ARGV[4] .. target, '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, take)
    for i = 1, #due, 2 do
      candidates[#candidates + 1] = { tonumber(due[i + 1]), due[i], target }
    end
    if #due == 0 then
      local first = redis.call('ZRANGE', ARGV[4] .. target, 0, 0, 'WITHSCORES')
      if #first == 2 and (earliest < 0 or tonumber(first[2]) < earliest) then earliest = tonumber(first[2]) end
    end
  end
end
table.sort(candidates, function(a, b)
  if a[1] ~= b[1] then return a[1] < b[1] end
  return a[2] < b[2]
end)
local leased = { skipped, string.format('%d', earliest) }
for i = 1, math.min(most, #candidates) do
  local id = candidates[i][2]
  redis.call('ZADD', ARGV[4] .. candidates[i][3], ARGV[2], id)
  leased[#leased + 1] = redis.call('HINCRBY', KEYS[2], id, 1)
  leased[#leased + 1] = id
  leased[#leased + 1] = candidates[i][3]
  leased[#leased + 1] = redis.call('HGET', KEYS[3], id)
end
return leased
"#;

/// A job whose record cannot be read, set aside as a dead letter.
/// KEYS: jobs, the job's queue, targets, age, queued, dead, dead_order,
/// dead_counts, leases. ARGV: id, target, dead-letter record, its order
/// key, webhook.
const SET_ASIDE: &str = r#"
redis.call('HDEL', KEYS[1], ARGV[1])
if redis.call('ZREM', KEYS[2], ARGV[1]) == 1 then
  if redis.call('HINCRBY', KEYS[5], ARGV[2], -1) <= 0 then redis.call('HDEL', KEYS[5], ARGV[2]) end
end
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('HDEL', KEYS[9], ARGV[1])
redis.call('HSET', KEYS[6], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[7], 0, ARGV[4])
redis.call('HINCRBY', KEYS[8], ARGV[5], 1)
return 1
"#;

/// The common head of the scripts that need the caller's lease to be the
/// job's current one. Their first keys are always leases, jobs, the job's
/// queue, targets, age, queued; ARGV[1] the job id, ARGV[2] the lease
/// token, ARGV[3] the target.
const HOLDS_LEASE: &str = r#"
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] or redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 then return 0 end
"#;

/// Takes the job off the queue (its lease token stays for a replay to
/// continue from).
const REMOVE_JOB: &str = r#"
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
if redis.call('HINCRBY', KEYS[6], ARGV[3], -1) <= 0 then redis.call('HDEL', KEYS[6], ARGV[3]) end
"#;

/// ARGV[4]: the new record, ARGV[5]: when it is due.
const RETRY: &str = r#"
redis.call('HSET', KEYS[2], ARGV[1], ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[1])
return 1
"#;

/// KEYS[7..15]: the event's keys (`EVENT_KEYS`). ARGV[4]: the event
/// number, ARGV[5]: `1` while the event log is kept, ARGV[6]: the target's
/// outcome for the log (empty without it).
const ACK: &str = r#"
redis.call('HDEL', KEYS[1], ARGV[1])
if ARGV[6] ~= '' then redis.call('HSET', KEYS[15], ARGV[4] .. '\31' .. ARGV[3], ARGV[6]) end
RELEASE
return 1
"#;

/// KEYS[7..10]: dead, dead_order, dead_counts, outcomes. ARGV[4]: the
/// dead-letter record, ARGV[5]: its order key, ARGV[6]: its webhook,
/// ARGV[7]: its outcome's field, ARGV[8]: the outcome (empty without the
/// event log).
const DEAD_LETTER: &str = r#"
if ARGV[8] ~= '' then redis.call('HSET', KEYS[10], ARGV[7], ARGV[8]) end
redis.call('HSET', KEYS[7], ARGV[1], ARGV[4])
redis.call('ZADD', KEYS[8], 0, ARGV[5])
redis.call('HINCRBY', KEYS[9], ARGV[6], 1)
return 1
"#;

/// An event's keys, in this order, wherever a script may finish or drop
/// one: refs, events, bodies, index, log, by_id, history, finished,
/// outcomes.
pub const EVENT_KEYS: [&str; 9] = [
    "refs", "events", "bodies", "index", "log", "by_id", "history", "finished", "outcomes",
];

/// Lua helpers: `split(text, sep)`, and `drop_event(keys, event)` which
/// removes an event, its body, its place in the log, its lookup by id, its
/// outcomes and its share of the log's counts (`keys` from `EVENT_KEYS`,
/// refs first).
const DROP_EVENT: &str = r#"
local function split(text, sep, most)
  local out, start = {}, 1
  while true do
    local at = string.find(text, sep, start, true)
    if not at or (most and #out == most - 1) then out[#out + 1] = string.sub(text, start) return out end
    out[#out + 1] = string.sub(text, start, at - 1)
    start = at + 1
  end
end
local function drop_event(k, ev)
  redis.call('HDEL', k[1], ev)
  redis.call('HDEL', k[2], ev)
  redis.call('HDEL', k[3], ev)
  local idx = redis.call('HGET', k[4], ev)
  if not idx then return end
  local f = split(idx, '\30', 4)
  redis.call('ZREM', k[5], f[1])
  redis.call('ZREM', k[8], f[1])
  if f[4] and redis.call('HGET', k[6], f[4]) == ev then redis.call('HDEL', k[6], f[4]) end
  redis.call('HINCRBY', k[7], 'events', -1)
  redis.call('HINCRBY', k[7], 'bytes', -(tonumber(f[2]) or 0))
  for _, target in ipairs(split(f[3] or '', '\31')) do redis.call('HDEL', k[9], ev .. '\31' .. target) end
  redis.call('HDEL', k[4], ev)
end
"#;

/// One job or dead letter fewer refers to the event ARGV[`event_arg`].
/// After the last one the event is finished: while the event log is kept
/// (ARGV[`history_arg`] is `1`) it joins `finished` for retention,
/// otherwise it is dropped. KEYS[`refs`] and the eight after it: the
/// event's keys (`EVENT_KEYS`).
fn release_event(refs: usize, event_arg: usize, history_arg: usize) -> String {
    let keys: Vec<String> = (refs..refs + EVENT_KEYS.len())
        .map(|k| format!("KEYS[{k}]"))
        .collect();
    let (index, finished) = (refs + 3, refs + 7);
    format!(
        "{DROP_EVENT}if redis.call('HINCRBY', KEYS[{refs}], ARGV[{event_arg}], -1) <= 0 then\n  redis.call('HDEL', KEYS[{refs}], ARGV[{event_arg}])\n  local idx = redis.call('HGET', KEYS[{index}], ARGV[{event_arg}])\n  if ARGV[{history_arg}] == '1' and idx then\n    redis.call('ZADD', KEYS[{finished}], 0, split(idx, '\\30')[1])\n  else\n    drop_event({{{}}}, ARGV[{event_arg}])\n  end\nend\n",
        keys.join(", ")
    )
}

/// One dead letter fewer for a webhook (KEYS[n], ARGV[m] in the caller).
fn uncount(counts_key: usize, webhook_arg: usize) -> String {
    format!(
        "if redis.call('HINCRBY', KEYS[{counts_key}], ARGV[{webhook_arg}], -1) <= 0 then redis.call('HDEL', KEYS[{counts_key}], ARGV[{webhook_arg}]) end\n"
    )
}

/// KEYS: dead, dead_order, jobs, targets, queue, age, dead_counts, queued,
/// outcomes. ARGV: id, order key, job record, target, due ms, received ms,
/// webhook, the outcome's field, the outcome (empty without the log).
const REPLAY: &str = r#"
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
if ARGV[9] ~= '' then redis.call('HSET', KEYS[9], ARGV[8], ARGV[9]) end
redis.call('ZREM', KEYS[2], ARGV[2])
UNCOUNT
redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[4], ARGV[1], ARGV[4])
redis.call('ZADD', KEYS[5], ARGV[5], ARGV[1])
redis.call('ZADD', KEYS[6], ARGV[6], ARGV[1])
redis.call('HINCRBY', KEYS[8], ARGV[4], 1)
return 1
"#;

/// KEYS: dead, dead_order, leases, the event's keys (`EVENT_KEYS`, from
/// 4), dead_counts (13). ARGV: id, order key, event number, webhook, `1`
/// while the event log is kept.
const DELETE: &str = r#"
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[2], ARGV[2])
UNCOUNT
redis.call('HDEL', KEYS[3], ARGV[1])
RELEASE
return 1
"#;

/// A finished target of a kept event queued again with a new job.
/// KEYS: sequence, jobs, targets, queue, age, queued, the event's keys
/// (`EVENT_KEYS`, from 7). ARGV: the part, the event number, the target,
/// the job record without the leading `{"id":0,"event":0,`, now ms, the
/// outcome without its closing brace (ending in `"job":`). The new job's
/// id, or 0 when the event is no longer kept.
const REDELIVER: &str = r#"
if redis.call('HEXISTS', KEYS[8], ARGV[2]) == 0 then return 0 end
local id = redis.call('INCRBY', KEYS[1], 1) * 1024 + tonumber(ARGV[1])
local text = string.format('%d', id)
local member = string.format('%020d', id)
redis.call('HSET', KEYS[2], member, '{"id":' .. text .. ',"event":' .. ARGV[2] .. ',' .. ARGV[4])
redis.call('HSET', KEYS[3], member, ARGV[3])
redis.call('ZADD', KEYS[4], ARGV[5], member)
redis.call('ZADD', KEYS[5], ARGV[5], member)
redis.call('HINCRBY', KEYS[6], ARGV[3], 1)
local idx = redis.call('HGET', KEYS[10], ARGV[2])
local was_finished = idx and redis.call('ZREM', KEYS[14], split(idx, '\30')[1]) == 1
if was_finished then redis.call('HSET', KEYS[7], ARGV[2], 1) else redis.call('HINCRBY', KEYS[7], ARGV[2], 1) end
redis.call('HSET', KEYS[15], ARGV[2] .. '\31' .. ARGV[3], ARGV[6] .. text .. '}')
return id
"#;

/// Drops finished events of one part. KEYS: the event's keys
/// (`EVENT_KEYS`). ARGV: their `finished` members. How many went (a member
/// another replica dropped first, or queued again, is passed over).
const PRUNE: &str = r#"
local dropped = 0
for i = 1, #ARGV do
  if redis.call('ZREM', KEYS[8], ARGV[i]) == 1 then
    local ev = string.format('%d', tonumber(string.sub(ARGV[i], 17)))
    drop_event(KEYS, ev)
    dropped = dropped + 1
  end
end
return dropped
"#;

/// Every script, loaded once per process (`EVALSHA`, falling back to `EVAL`
/// on `NOSCRIPT`, which a promoted replica answers).
pub struct Scripts {
    pub accept: redis::Script,
    pub lease: redis::Script,
    pub retry: redis::Script,
    pub ack: redis::Script,
    pub dead_letter: redis::Script,
    pub replay: redis::Script,
    pub delete: redis::Script,
    pub set_aside: redis::Script,
    pub redeliver: redis::Script,
    pub prune: redis::Script,
}

impl Default for Scripts {
    fn default() -> Self {
        Self {
            accept: redis::Script::new(ACCEPT),
            lease: draining(LEASE),
            retry: guarded(false, RETRY),
            ack: guarded(true, &ACK.replace("RELEASE", &release_event(7, 4, 5))),
            dead_letter: guarded(true, DEAD_LETTER),
            replay: draining(&REPLAY.replace("UNCOUNT", &uncount(7, 7))),
            delete: draining(
                &DELETE
                    .replace("UNCOUNT", &uncount(13, 4))
                    .replace("RELEASE", &release_event(4, 3, 5)),
            ),
            set_aside: draining(SET_ASIDE),
            // Both are operators' (a redelivery adds little; retention
            // frees room): allowed over maxmemory.
            redeliver: draining(&format!("{DROP_EVENT}{REDELIVER}")),
            prune: draining(&format!("{DROP_EVENT}{PRUNE}")),
        }
    }
}

/// The first line of a script Redis runs even over `maxmemory`.
const ALLOW_OOM: &str = "#!lua flags=allow-oom\n";

/// A script that drains the queue: allowed over `maxmemory`.
fn draining(body: &str) -> redis::Script {
    redis::Script::new(&format!("{ALLOW_OOM}{body}"))
}

/// A script that first checks the lease, then (if `removes`) takes the
/// job off the queue, then runs `body`; it drains the queue.
fn guarded(removes: bool, body: &str) -> redis::Script {
    let remove = if removes { REMOVE_JOB } else { "" };
    draining(&format!("{HOLDS_LEASE}{remove}{body}"))
}
