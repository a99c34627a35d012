-- Adds one scenario's share of one partition batch to its counters, exactly once.
--
-- KEYS[1]   counts hash of the scenario
-- KEYS[2]   fence hash of the scenario: "<group>|<topic>|<partition>" -> last applied offset
-- KEYS[3..] per-minute bucket hashes, in the order the event tokens refer to them (1 = KEYS[3])
-- ARGV[1]   fence field
-- ARGV[2]   prefix of the per-plugin-version count fields, e.g. "v:scenario@3:"
-- ARGV[3]   bucket retention, seconds
-- ARGV[4]   offset the first token's delta counts from
-- ARGV[5]   events in offset order, one token each: <delta><code><bucket>, where delta is
--           the offset minus the previous event's (the first: minus ARGV[4]), code is
--           E/e emitted, D/d dropped, F/f failed (upper case: matched), bucket indexes KEYS[2+n]
-- ARGV[6]   now, unix milliseconds: kept as `since` when the counts hash is first written,
--           so a Redis that lost its data (restart without persistence) shows when
--           counting started again
--
-- Events at or below the fence were applied before (a replay after a crash or a
-- rebalance, with the same or other batch boundaries) and are not counted again.
-- Returns {applied events, total, matched, errors, dropped} (the last four cumulative).
local fence = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '-1')
local offset = tonumber(ARGV[4])
local total, matched, errors, dropped = 0, 0, 0, 0
local bucket_total, bucket_success, bucket_errors = {}, {}, {}
local last = fence
for delta, code, bucket in string.gmatch(ARGV[5], '(%d+)(%a)(%d+)') do
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
    last = offset
  end
end
if total > 0 then
  local version = ARGV[2]
  redis.call('HSETNX', KEYS[1], 'since', ARGV[6])
  redis.call('HINCRBY', KEYS[1], 'total', total)
  redis.call('HINCRBY', KEYS[1], version .. 'total', total)
  if matched > 0 then
    redis.call('HINCRBY', KEYS[1], 'matched', matched)
    redis.call('HINCRBY', KEYS[1], version .. 'matched', matched)
  end
  if errors > 0 then
    redis.call('HINCRBY', KEYS[1], 'errors', errors)
    redis.call('HINCRBY', KEYS[1], version .. 'errors', errors)
  end
  if dropped > 0 then
    redis.call('HINCRBY', KEYS[1], 'dropped', dropped)
    redis.call('HINCRBY', KEYS[1], version .. 'dropped', dropped)
  end
  for b, n in pairs(bucket_total) do
    local key = KEYS[2 + b]
    redis.call('HINCRBY', key, 'total', n)
    if bucket_success[b] then redis.call('HINCRBY', key, 'success', bucket_success[b]) end
    if bucket_errors[b] then redis.call('HINCRBY', key, 'errors', bucket_errors[b]) end
    redis.call('EXPIRE', key, ARGV[3])
  end
  redis.call('HSET', KEYS[2], ARGV[1], string.format('%d', last))
end
local now = redis.call('HMGET', KEYS[1], 'total', 'matched', 'errors', 'dropped')
return {total, tonumber(now[1]) or 0, tonumber(now[2]) or 0, tonumber(now[3]) or 0, tonumber(now[4]) or 0}
