-- Keeps each visitor's latest click as `time:click id`, whatever order
-- clicks are written in. KEYS: visitor keys. ARGV, three per key: click
-- time, click id, expiry (unix s).
for i = 1, #KEYS do
  local at = ARGV[3 * i - 2]
  local stored = redis.call('GET', KEYS[i])
  if (not stored) or tonumber(string.match(stored, '^%d+')) <= tonumber(at) then
    redis.call('SET', KEYS[i], at .. ':' .. ARGV[3 * i - 1], 'EXAT', ARGV[3 * i])
  end
end
return 1
