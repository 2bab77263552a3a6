-- Saves an endpoint's place and the delivery it attempted, if the endpoint
-- still exists; keeps its newest deliveries only.
-- KEYS: endpoints, cursors, the endpoint's deliveries (event id → JSON),
-- its delivery ids by feed position.
-- ARGV: endpoint id, cursor JSON or '', event id or '', delivery JSON,
-- feed position, deliveries kept.
-- Answers 1 saved, 0 the endpoint is gone.
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
if ARGV[2] ~= '' then redis.call('HSET', KEYS[2], ARGV[1], ARGV[2]) end
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[3], ARGV[3], ARGV[4])
  redis.call('ZADD', KEYS[4], ARGV[5], ARGV[3])
  local extra = redis.call('ZCARD', KEYS[4]) - tonumber(ARGV[6])
  if extra > 0 then
    local old = redis.call('ZRANGE', KEYS[4], 0, extra - 1)
    redis.call('HDEL', KEYS[3], unpack(old))
    redis.call('ZREMRANGEBYRANK', KEYS[4], 0, extra - 1)
  end
end
return 1
