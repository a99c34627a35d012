-- Writes a scenario's success-ratio view unless the one stored counts more events:
-- views computed from older counts (a replica whose write was delayed) never
-- replace newer ones, so the view only moves forward.
--
-- KEYS[1]   scenario:<id>:success_ratio
-- ARGV[1]   the view, JSON
-- ARGV[2]   its total_count
-- ARGV[3]   "force" to write it whatever is stored (after counts were found lost)
-- Returns 1 when written, 0 when the stored view was newer.
if ARGV[3] ~= 'force' then
  local old = redis.call('GET', KEYS[1])
  if old then
    local ok, view = pcall(cjson.decode, old)
    if ok and type(view) == 'table' then
      local stored = tonumber(view['total_count'])
      if stored and stored > tonumber(ARGV[2]) then
        return 0
      end
    end
  end
end
redis.call('SET', KEYS[1], ARGV[1])
return 1
