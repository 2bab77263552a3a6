-- Adds one partner's share of a batch of bot and suspect tallies once,
-- however often the batch is sent: the batch marker, kept a day (longer
-- than any retry), makes a resent batch a no-op.
-- KEYS: the batch marker, then the day hashes the cells name.
-- ARGV, five per cell: index of its day hash in KEYS, the field
-- (`campaign\tterm`), bots, suspects, the hash's expiry (unix s).
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', 86400) then return 0 end
for i = 1, #ARGV, 5 do
  local key = KEYS[tonumber(ARGV[i])]
  local field = ARGV[i + 1]
  if tonumber(ARGV[i + 2]) > 0 then redis.call('HINCRBY', key, 'b\t' .. field, ARGV[i + 2]) end
  if tonumber(ARGV[i + 3]) > 0 then redis.call('HINCRBY', key, 's\t' .. field, ARGV[i + 3]) end
  redis.call('EXPIREAT', key, ARGV[i + 4])
end
return 1
