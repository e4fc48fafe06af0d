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
/// dead, dead_order, dead_counts, then each target's queue (all of one
/// part). ARGV: window ms, metadata, now ms, body, webhook, the part's
/// number, then per target its name and its job record without the leading
/// `{"id":0,"event":0,` (or, unrouted, just that record). Numbers are
/// counted per part and written `local * 1024 + part`.
const ACCEPT: &str = r#"
if not redis.call('SET', KEYS[1], ARGV[3], 'NX', 'PX', ARGV[1]) then return -1 end
local part = tonumber(ARGV[6])
local function global(n) return n * 1024 + part end
local targets = math.floor((#ARGV - 6) / 2)
local jobs = math.max(targets, 1)
local seq = redis.call('INCRBY', KEYS[2], 1 + jobs) - jobs
local event = string.format('%d', global(seq))
redis.call('HSET', KEYS[3], event, ARGV[2])
redis.call('HSET', KEYS[4], event, ARGV[4])
redis.call('HSET', KEYS[5], event, jobs)
if targets == 0 then
  local id = global(seq + 1)
  local record = '{"job":{"id":' .. string.format('%d', id) .. ',"event":' .. event .. ',' .. ARGV[7] .. ',"reason":"unrouted","dead_at_ms":' .. ARGV[3] .. '}'
  redis.call('HSET', KEYS[10], string.format('%020d', id), record)
  redis.call('ZADD', KEYS[11], 0, string.format('%020d.%020d', tonumber(ARGV[3]), id))
  redis.call('HINCRBY', KEYS[12], ARGV[5], 1)
else
  for i = 1, targets do
    local id = global(seq + i)
    local member = string.format('%020d', id)
    redis.call('HSET', KEYS[6], member, '{"id":' .. string.format('%d', id) .. ',"event":' .. event .. ',' .. ARGV[6 + 2 * i])
    redis.call('HSET', KEYS[7], member, ARGV[5 + 2 * i])
    redis.call('HINCRBY', KEYS[8], ARGV[5 + 2 * i], 1)
    redis.call('ZADD', KEYS[12 + i], ARGV[3], member)
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

/// KEYS[7..9]: refs, events, bodies. ARGV[4]: the event number.
const ACK: &str = r#"
redis.call('HDEL', KEYS[1], ARGV[1])
RELEASE
return 1
"#;

/// KEYS[7..9]: dead, dead_order, dead_counts. ARGV[4]: the dead-letter
/// record, ARGV[5]: its order key, ARGV[6]: its webhook.
const DEAD_LETTER: &str = r#"
redis.call('HSET', KEYS[7], ARGV[1], ARGV[4])
redis.call('ZADD', KEYS[8], 0, ARGV[5])
redis.call('HINCRBY', KEYS[9], ARGV[6], 1)
return 1
"#;

/// One job or dead letter fewer refers to the event ARGV[`event_arg`]; the
/// last one takes the event and its body with it. KEYS[`refs`] and the two
/// after it: refs, events, bodies.
fn release_event(refs: usize, event_arg: usize) -> String {
    let (events, bodies) = (refs + 1, refs + 2);
    format!(
        "if redis.call('HINCRBY', KEYS[{refs}], ARGV[{event_arg}], -1) <= 0 then\n  redis.call('HDEL', KEYS[{refs}], ARGV[{event_arg}])\n  redis.call('HDEL', KEYS[{events}], ARGV[{event_arg}])\n  redis.call('HDEL', KEYS[{bodies}], ARGV[{event_arg}])\nend\n"
    )
}

/// One dead letter fewer for a webhook (KEYS[n], ARGV[m] in the caller).
fn uncount(counts_key: usize, webhook_arg: usize) -> String {
    format!(
        "if redis.call('HINCRBY', KEYS[{counts_key}], ARGV[{webhook_arg}], -1) <= 0 then redis.call('HDEL', KEYS[{counts_key}], ARGV[{webhook_arg}]) end\n"
    )
}

/// KEYS: dead, dead_order, jobs, targets, queue, age, dead_counts, queued.
/// ARGV: id, order key, job record, target, due ms, received ms, webhook.
const REPLAY: &str = r#"
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[2], ARGV[2])
UNCOUNT
redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[4], ARGV[1], ARGV[4])
redis.call('ZADD', KEYS[5], ARGV[5], ARGV[1])
redis.call('ZADD', KEYS[6], ARGV[6], ARGV[1])
redis.call('HINCRBY', KEYS[8], ARGV[4], 1)
return 1
"#;

/// KEYS: dead, dead_order, leases, refs, events, bodies, dead_counts.
/// ARGV: id, order key, event number, webhook.
const DELETE: &str = r#"
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[2], ARGV[2])
UNCOUNT
redis.call('HDEL', KEYS[3], ARGV[1])
RELEASE
return 1
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
}

impl Default for Scripts {
    fn default() -> Self {
        Self {
            accept: redis::Script::new(ACCEPT),
            lease: draining(LEASE),
            retry: guarded(false, RETRY),
            ack: guarded(true, &ACK.replace("RELEASE", &release_event(7, 4))),
            dead_letter: guarded(true, DEAD_LETTER),
            replay: draining(&REPLAY.replace("UNCOUNT", &uncount(7, 7))),
            delete: draining(
                &DELETE
                    .replace("UNCOUNT", &uncount(7, 4))
                    .replace("RELEASE", &release_event(4, 3)),
            ),
            set_aside: draining(SET_ASIDE),
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
