-- Forgets that a partner's outbox may hold events, unless it was marked
-- again since. KEYS: the marks. ARGV: partner, the mark read.
if redis.call('ZSCORE', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('ZREM', KEYS[1], ARGV[1])
end
return 1
