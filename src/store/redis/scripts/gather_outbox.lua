-- Moves a partner's outbox entries into the webhook feed, once: only if
-- the partner's gathered mark is still where the reader found it. With
-- no endpoint registered they are dropped: nobody would hear of them, and
-- an endpoint registered later starts after them anyway.
-- KEYS: gathered marks (partner → stream id), feed, feed counter,
-- endpoints.
-- ARGV: partner, stream id read after, last stream id read, then events.
-- Answers 1 moved, 0 moved already.
if (redis.call('HGET', KEYS[1], ARGV[1]) or '0-0') ~= ARGV[2] then return 0 end
if redis.call('HLEN', KEYS[4]) > 0 then
  for i = 4, #ARGV do
    local seq = redis.call('INCR', KEYS[3])
    redis.call('ZADD', KEYS[2], seq, ARGV[i])
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
