-- Registers an endpoint and starts it after the feed's newest event.
-- KEYS: endpoints, cursors, feed counter. ARGV: id, endpoint JSON.
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local head = tonumber(redis.call('GET', KEYS[3]) or '0')
redis.call('HSET', KEYS[2], ARGV[1], '{"after":' .. head .. ',"retry":null}')
return 1
