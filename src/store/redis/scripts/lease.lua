-- Takes a lease, or renews it for its holder. KEYS: the lease.
-- ARGV: holder, milliseconds. Answers 1 held, 0 held by another.
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
