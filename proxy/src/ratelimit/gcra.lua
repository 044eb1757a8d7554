-- GCRA for a batch of tokens, evaluated atomically by Redis (EVALSHA).
--
-- KEYS[1]  the bucket: {prefix}:{route}:{hash of the key value}
-- ARGV[1]  emission interval T, in microseconds (1 / requestsPerSecond)
-- ARGV[2]  burst (capacity, in tokens)
-- ARGV[3]  tokens wanted (the replica's batch)
--
-- The key holds the theoretical arrival time (TAT), in microseconds of
-- Redis's own clock (TIME), so replicas' clocks never matter. A bucket
-- admits n more tokens while TAT + n*T <= now + burst*T. Up to the wanted
-- number are granted at once; the key expires when the bucket is full
-- again (TAT reached), so idle keys cost nothing.
--
-- Returns {granted, wait}: wait is the microseconds until the next token
-- after this grant (0 when one is available now).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local wanted = tonumber(ARGV[3])

local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then
  tat = now
end

local available = math.floor((now + burst * interval - tat) / interval)
local granted = math.max(0, math.min(wanted, available))
if granted > 0 then
  tat = tat + granted * interval
  local ttl = math.ceil((tat - now) / 1000)
  redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.max(1, ttl))
end

local wait = tat + interval - burst * interval - now
if wait < 0 then
  wait = 0
end
return {granted, math.ceil(wait)}
