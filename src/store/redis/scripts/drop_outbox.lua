-- Drops a partner's outbox entries up to a stream id when no endpoint is
-- registered (nobody would hear of them), by moving its gathered mark
-- past them; the caller then trims the stream.
-- KEYS: gathered marks, endpoints. ARGV: partner, the mark read, the
-- last stream id.
-- Answers 1 dropped, 0 the mark moved meanwhile, -1 endpoints exist.
if (redis.call('HGET', KEYS[1], ARGV[1]) or '0-0') ~= ARGV[2] then return 0 end
if redis.call('HLEN', KEYS[2]) > 0 then return -1 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
