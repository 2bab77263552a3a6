-- KEYS: the partner's campaigns, version, changes. ARGV: slug, record,
-- partner id.
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('ZADD', KEYS[3], redis.call('INCR', KEYS[2]), 'c\t' .. ARGV[3] .. '\t' .. ARGV[1])
return 1
