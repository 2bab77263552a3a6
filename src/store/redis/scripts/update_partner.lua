-- KEYS: partners, version, changes. ARGV: id, record.
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[3], redis.call('INCR', KEYS[2]), 'p\t' .. ARGV[1])
return 1
