-- Adds one partition batch to the counters of one consumer group, exactly once, and
-- refuses it when Redis has lost counts it had (see "Rollbacks" in aggregate/mod.rs).
--
-- KEYS[1]   fence hash of the group: "<topic>|<partition>" -> "<last counted offset>",
--           optionally followed by "@<journal partition>:<journal offset>", where the
--           journal holds the results of the batch that ended there
-- KEYS[2..] per scenario, in ARGV order: its counts hash, then its minute buckets
-- ARGV[1]   fence field
-- ARGV[2]   the lowest fence the caller knows was counted before (-1: none known);
--           a fence below it means Redis lost writes, and nothing is applied
-- ARGV[3]   the batch's last offset
-- ARGV[4]   the fence value to store when the batch moves the fence
-- ARGV[5]   bucket retention, seconds
-- ARGV[6]   now, unix milliseconds: kept as `since` when a counts hash is first
--           written, so counts that started again from empty say when
-- ARGV[7]   scenarios in the batch
-- then per scenario, four arguments:
--           prefix of its per-plugin-version fields, e.g. "v:scenario@3:"
--           how many minute buckets it has (they follow its counts hash in KEYS)
--           the offset its first token's delta counts from
--           its events in offset order, one token each: <delta><code><bucket>, where
--           delta is the offset minus the previous event's (the first: minus the
--           offset above), code is E/e emitted, D/d dropped, F/f failed (upper case:
--           matched), bucket indexes the scenario's minute buckets from 1
--
-- Events at or below the fence were counted before (a replay after a crash or a
-- rebalance, with the same or other batch boundaries) and are not counted again.
-- Returns {1, then per scenario: newly counted, total, matched, errors, dropped
-- (the last four cumulative)}, or {0, the stored fence value or ""} when Redis is
-- behind what the caller knows was counted.
local stored = redis.call('HGET', KEYS[1], ARGV[1])
local fence = -1
if stored then
  fence = tonumber(string.match(stored, '^(-?%d+)')) or -1
end
if fence < tonumber(ARGV[2]) then
  return {0, stored or ''}
end
local reply = {1}
local key = 2
local arg = 8
for _ = 1, tonumber(ARGV[7]) do
  local counts = KEYS[key]
  local version = ARGV[arg]
  local buckets = tonumber(ARGV[arg + 1])
  local offset = tonumber(ARGV[arg + 2])
  local tokens = ARGV[arg + 3]
  local total, matched, errors, dropped = 0, 0, 0, 0
  local bucket_total, bucket_success, bucket_errors = {}, {}, {}
  for delta, code, bucket in string.gmatch(tokens, '(%d+)(%a)(%d+)') do
    offset = offset + tonumber(delta)
    if offset > fence then
      local b = tonumber(bucket)
      total = total + 1
      bucket_total[b] = (bucket_total[b] or 0) + 1
      if code == 'E' or code == 'D' or code == 'F' then
        matched = matched + 1
        bucket_success[b] = (bucket_success[b] or 0) + 1
      end
      if code == 'F' or code == 'f' then
        errors = errors + 1
        bucket_errors[b] = (bucket_errors[b] or 0) + 1
      elseif code == 'D' or code == 'd' then
        dropped = dropped + 1
      end
    end
  end
  if total > 0 then
    redis.call('HSETNX', counts, 'since', ARGV[6])
    redis.call('HINCRBY', counts, 'total', total)
    redis.call('HINCRBY', counts, version .. 'total', total)
    if matched > 0 then
      redis.call('HINCRBY', counts, 'matched', matched)
      redis.call('HINCRBY', counts, version .. 'matched', matched)
    end
    if errors > 0 then
      redis.call('HINCRBY', counts, 'errors', errors)
      redis.call('HINCRBY', counts, version .. 'errors', errors)
    end
    if dropped > 0 then
      redis.call('HINCRBY', counts, 'dropped', dropped)
      redis.call('HINCRBY', counts, version .. 'dropped', dropped)
    end
    for b, n in pairs(bucket_total) do
      local minute = KEYS[key + b]
      redis.call('HINCRBY', minute, 'total', n)
      if bucket_success[b] then redis.call('HINCRBY', minute, 'success', bucket_success[b]) end
      if bucket_errors[b] then redis.call('HINCRBY', minute, 'errors', bucket_errors[b]) end
      redis.call('EXPIRE', minute, ARGV[5])
    end
  end
  local now = redis.call('HMGET', counts, 'total', 'matched', 'errors', 'dropped')
  reply[#reply + 1] = total
  for i = 1, 4 do
    reply[#reply + 1] = tonumber(now[i]) or 0
  end
  key = key + 1 + buckets
  arg = arg + 4
end
if tonumber(ARGV[3]) > fence then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[4])
end
return reply
