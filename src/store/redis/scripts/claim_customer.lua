-- Claims a customer unless claimed; answers the claim that holds and the
-- parked records. KEYS: claim, parked. ARGV: the claim JSON.
local before = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'GET')
return {before or ARGV[1], redis.call('LRANGE', KEYS[2], 0, -1)}
