-- KEYS: partners, tokens, version, changes. ARGV: id, record, token hash.
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[4], redis.call('INCR', KEYS[3]), 'p\t' .. ARGV[1])
return 1
