-- Queues events whose id was never seen. KEYS: the id set, the stream.
-- ARGV, two per event: id, event JSON.
local accepted = 0
for i = 1, #ARGV, 2 do
  if redis.call('SADD', KEYS[1], ARGV[i]) == 1 then
    redis.call('XADD', KEYS[2], '*', 'e', ARGV[i + 1])
    accepted = accepted + 1
  end
end
return accepted
