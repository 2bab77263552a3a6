-- Adds one partner's share of a batch of bot and suspect tallies once,
-- however often the batch is sent: the batch marker, kept a day (longer
-- than any retry), makes a resent batch a no-op.
-- KEYS: the batch marker, then the day hashes the cells name.
-- ARGV, seven per cell: index of its day hash in KEYS, the field
-- (`campaign\tterm`), bots, suspects, overwrites won, overwrites lost,
-- the hash's expiry (unix s).
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', 86400) then return 0 end
local kinds = {'b', 's', 'w', 'l'}
for i = 1, #ARGV, 7 do
  local key = KEYS[tonumber(ARGV[i])]
  local field = ARGV[i + 1]
  for k, kind in ipairs(kinds) do
    local n = ARGV[i + 1 + k]
    if tonumber(n) > 0 then redis.call('HINCRBY', key, kind .. '\t' .. field, n) end
  end
  redis.call('EXPIREAT', key, ARGV[i + 6])
end
return 1
